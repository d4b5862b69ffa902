"""The cluster router's slot map, without a cluster (the cluster tests run it for real)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import MovedError

from receiver.store.routing import ClusterAddress, ClusterRouter, Node, _parse_slots


def _router() -> tuple[ClusterRouter, list[Node]]:
    made: list[Node] = []

    def make(node: Node, address: ClusterAddress) -> Any:
        made.append(node)
        return f"client of {node[1]}"  # a stand-in: at_slot only hands clients out

    return ClusterRouter(ClusterAddress((("127.0.0.1", 7000),)), make), made


def test_cluster_slots_become_the_map_a_slot_is_routed_by() -> None:
    reply = [
        [10923, 16383, [b"127.0.0.1", 7002, b"id3"], [b"127.0.0.1", 7005, b"id6"]],
        [0, 5460, [b"", 7000, b"id1"]],  # no host: the node that answered
        [5461, 10922, [b"127.0.0.1", 7001, b"id2"]],
    ]
    slots = _parse_slots(reply, ("10.0.0.9", 7000))
    assert slots.ranges == [
        (0, 5460, ("10.0.0.9", 7000)),
        (5461, 10922, ("127.0.0.1", 7001)),
        (10923, 16383, ("127.0.0.1", 7002)),
    ]
    assert [slots.node(s) for s in (0, 5460, 5461, 16383)] == [
        ("10.0.0.9", 7000),
        ("10.0.0.9", 7000),
        ("127.0.0.1", 7001),
        ("127.0.0.1", 7002),
    ]
    assert _parse_slots([[0, 99, [b"h", 1]]], ("h", 1)).node(100) is None  # not served


def test_a_moved_answer_routes_its_slot_to_the_node_it_names() -> None:
    router, made = _router()
    router._map = _parse_slots([[0, 16383, [b"127.0.0.1", 7000]]], ("127.0.0.1", 7000))
    client_of: Any = router.at_slot
    assert client_of(1584) == "client of 7000"
    router.moved(MovedError("1584 127.0.0.1:7004"))
    assert client_of(1584) == "client of 7004"
    assert client_of(1585) == "client of 7000"
    assert made == [("127.0.0.1", 7000), ("127.0.0.1", 7004)]
