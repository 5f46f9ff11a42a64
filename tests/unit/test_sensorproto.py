"""The operator-sensor protocol: signed lines, credentials, signed commands and reports, and the sensor's
refusal of replayed and stale commands."""

from __future__ import annotations

import json

import pytest

from trainguard.api import sensorproto
from trainguard.api.sample import Endpoint
from trainguard.api.sensorproto import AllowedPeer, BadSignature, CutCommand, CutReport, CutSocket
from trainguard.sensor.cut import CutRefused, Cutter, Keep, NonceBook

KEY = b"k" * 32
OTHER = b"o" * 32
POD = "team/job-0-abcde"


def test_sample_line_round_trips_and_splits_at_the_last_tab() -> None:
    sample = json.dumps({"pod": POD, "argv": ["a\tb"]}).encode()  # JSON escapes the tab
    line = sensorproto.sign_sample(KEY, sample)
    assert line.endswith(b"\n") and line.count(b"\t") == 1
    assert sensorproto.verify_sample(KEY, line) == sample
    assert sensorproto.verify_sample(KEY, line.rstrip(b"\n") + b"\r\n") == sample


@pytest.mark.parametrize(
    "line",
    [
        b'{"pod":"team/job-0-abcde"}\n',  # unsigned: a v1 line
        b'{"pod":"team/job-0-abcde"}\t' + b"0" * 64 + b"\n",  # a made-up MAC
        sensorproto.sign_sample(OTHER, b'{"pod":"team/job-0-abcde"}'),  # signed with another job's key
        sensorproto.sign_sample(KEY, b'{"pod":"team/job-0-abcde"}').replace(b"abcde", b"abcdf"),  # tampered
        b"",
    ],
)
def test_forged_or_unsigned_lines_are_refused(line: bytes) -> None:
    with pytest.raises(BadSignature):
        sensorproto.verify_sample(KEY, line)


def test_a_sample_mac_is_not_a_command_signature() -> None:
    body = b'{"pod":"team/job-0-abcde"}'
    line_mac = sensorproto.sign_sample(KEY, body).rstrip(b"\n").rpartition(b"\t")[2].decode()
    assert not sensorproto.command_ok(KEY, body, line_mac)
    assert not sensorproto.report_ok(KEY, body, sensorproto.sign_command(KEY, body))


def test_credential_is_per_pod_and_per_key() -> None:
    good = f"Bearer {sensorproto.pod_credential(KEY, POD)}"
    assert sensorproto.credential_ok(KEY, POD, good)
    assert not sensorproto.credential_ok(KEY, "team/job-1-fghij", good)  # another pod's sensor refuses it
    assert not sensorproto.credential_ok(OTHER, POD, good)
    assert not sensorproto.credential_ok(KEY, POD, None)
    assert not sensorproto.credential_ok(KEY, POD, sensorproto.pod_credential(KEY, POD))  # no "Bearer "
    assert not sensorproto.credential_ok(KEY, POD, "Bearer ")


def test_command_and_report_round_trip() -> None:
    command = CutCommand(
        pod=POD, nonce="n0nce-123", issued_at=1.5, keep=[AllowedPeer(cidr="10.0.0.0/8", ports=[443])], pids=[7]
    )
    body = command.model_dump_json(by_alias=True).encode()
    assert b'"issuedAt"' in body
    signature = sensorproto.sign_command(KEY, body)
    assert sensorproto.command_ok(KEY, body, signature)
    assert not sensorproto.command_ok(KEY, body, None)
    assert not sensorproto.command_ok(OTHER, body, signature)
    assert not sensorproto.command_ok(KEY, body.replace(b"KILL", b"STOP").replace(b"[7]", b"[8]"), signature)
    assert CutCommand.model_validate_json(body) == command
    sock = CutSocket(proto="tcp", local=Endpoint(address="10.1.0.5", port=4242), remote=Endpoint(address="1.2.3.4"))
    report = CutReport(pod=POD, nonce=command.nonce, destroyed=[sock], stopped=[7])
    out = report.model_dump_json(by_alias=True).encode()
    assert sensorproto.report_ok(KEY, out, sensorproto.sign_report(KEY, out))
    assert CutReport.model_validate_json(out) == report and report.confirmed
    assert not CutReport(pod=POD, nonce="x" * 8, remaining=[sock]).confirmed
    assert not CutReport(pod=POD, nonce="x" * 8, failed=[sock]).confirmed
    assert not CutReport(pod=POD, nonce="x" * 8, errors=["pid 1: refused"]).confirmed


def test_nonce_is_bounded_in_length() -> None:
    with pytest.raises(ValueError):
        CutCommand(pod=POD, nonce="short", issued_at=0)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_replayed_nonce_and_stale_issued_at_are_refused() -> None:
    clock = Clock(1000.0)
    book = NonceBook(capacity=2, clock=clock)
    book.admit("nonce-0001", 1000.0)
    with pytest.raises(CutRefused, match="replayed") as replay:
        book.admit("nonce-0001", 1001.0)
    assert replay.value.status == 409
    with pytest.raises(CutRefused, match="stale") as stale:
        book.admit("nonce-0002", 1000.0 - sensorproto.MAX_COMMAND_AGE_SECONDS - 1)
    assert stale.value.status == 409
    with pytest.raises(CutRefused, match="stale"):
        book.admit("nonce-0003", 1000.0 + sensorproto.MAX_COMMAND_AGE_SECONDS + 1)  # from the future
    book.admit("nonce-0004", 1000.0)
    with pytest.raises(CutRefused) as full:  # two fresh nonces held: forgetting one would allow its replay
        book.admit("nonce-0005", 1000.0)
    assert full.value.status == 503
    clock.now += 2 * sensorproto.MAX_COMMAND_AGE_SECONDS + 1  # both expired: no command carrying them is fresh
    book.admit("nonce-0005", clock.now)
    assert len(book) == 1


def test_cutter_refuses_another_pods_command_and_bad_keep_before_doing_anything() -> None:
    reads: list[int] = []

    def reader() -> list[object]:
        reads.append(1)
        return []

    cutter = Cutter(POD, reader=reader)  # type: ignore[arg-type]
    with pytest.raises(CutRefused, match="for pod") as other:
        cutter.cut(CutCommand(pod="team/job-1-fghij", nonce="nonce-0001", issued_at=0))
    assert other.value.status == 403
    with pytest.raises(CutRefused, match="not a CIDR"):
        cutter.cut(CutCommand(pod=POD, nonce="nonce-0001", issued_at=0, keep=[AllowedPeer(cidr="10.0.0.0/33")]))
    assert reads == [] and len(cutter.nonces) == 0


def test_keep_matches_cidr_ports_and_v4_mapped_remotes() -> None:
    keep = Keep([AllowedPeer(cidr="10.96.0.10/32", ports=[53]), AllowedPeer(cidr="fd00::/64")])
    assert keep.keeps(Endpoint(address="10.96.0.10", port=53))
    assert keep.keeps(Endpoint(address="::ffff:10.96.0.10", port=53))
    assert not keep.keeps(Endpoint(address="10.96.0.10", port=22))
    assert not keep.keeps(Endpoint(address="10.96.0.11", port=53))
    assert keep.keeps(Endpoint(address="fd00::5", port=22))
    assert not keep.keeps(Endpoint(address="fd01::5", port=22))
    assert not Keep([]).keeps(Endpoint(address="127.0.0.1", port=80))
