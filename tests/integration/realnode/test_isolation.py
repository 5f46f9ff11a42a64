"""The real node's namespaces: nothing in them can reach the machine's network or resolver."""

from __future__ import annotations

import json

from tests.integration.realnode.node import RealNode


def test_no_route_or_link_leaves_the_namespace_and_no_resolver_is_configured(real_node: RealNode) -> None:
    links = json.loads(real_node.inside("ip", "-j", "link", "show").stdout)
    kinds = {link["ifname"]: link.get("link_type") for link in links}
    outside = [n for n in kinds if not (n in {"lo", "cni0"} or n.startswith("veth"))]
    assert not outside, f"links other than lo, the pods' bridge and their veths: {outside}"
    routes = json.loads(real_node.inside("ip", "-j", "-4", "route", "show", "table", "all").stdout)
    assert not [r for r in routes if r["dst"] == "default"], f"a default route: {routes}"
    main = {r["dst"] for r in routes if r.get("table", "main") == "main"}
    assert main <= {"10.231.0.0/24"}, f"routes beyond the pods' bridge: {main}"
    assert real_node.inside("cat", "/etc/resolv.conf").stdout == "", "a resolver is configured in the namespace"
    hosts = real_node.inside("getent", "hosts", real_node.name).stdout.split()
    assert hosts[:1] == [real_node.ip], f"{real_node.name} does not resolve locally to {real_node.ip}: {hosts}"
