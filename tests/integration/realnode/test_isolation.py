"""The real node's namespaces: nothing in them can reach the machine's network or resolver."""

from __future__ import annotations

import json

from tests.integration.realnode.node import RealNode, toolbox_pod


def test_no_route_or_link_leaves_the_namespace_and_no_resolver_is_configured(
    real_node: RealNode, node_namespace: str
) -> None:
    real_node.apply(node_namespace, toolbox_pod("probe", "exec sleep 100000"))
    real_node.wait_ready(node_namespace, "probe")
    links = [link["ifname"] for link in json.loads(real_node.inside("ip", "-j", "link", "show").stdout)]
    assert "cni0" in links, links
    outside = [name for name in links if not (name in {"lo", "cni0"} or name.startswith("veth"))]
    assert not outside, f"links other than lo, the pods' bridge and their veths: {outside}"
    routes = json.loads(real_node.inside("ip", "-j", "-4", "route", "show", "table", "all").stdout)
    assert not [r for r in routes if r["dst"] == "default"], f"a default route: {routes}"
    main = {r["dst"] for r in routes if r.get("table", "main") == "main"}
    assert main == {"10.231.0.0/24"}, f"routes beyond the pods' bridge: {main}"
    assert real_node.inside("cat", "/etc/resolv.conf").stdout == "", "a resolver is configured on the node"
    in_pod = real_node.kubectl("-n", node_namespace, "exec", "probe", "--", "cat", "/etc/resolv.conf").stdout
    assert in_pod == "", f"the pod has a resolver configuration: {in_pod!r}"
    hosts = real_node.inside("getent", "hosts", real_node.name).stdout.split()
    assert hosts[:1] == [real_node.ip], f"{real_node.name} does not resolve locally to {real_node.ip}: {hosts}"
