"""The DHT on loopback: kademlia nodes in their own threads, validated and merged
records, the highest version kept, forged and downgraded records refused."""

import asyncio
import time

import pytest

from mimeifs.ids import NodeKey, mimei_id
from mimeifs.net import records as R
from mimeifs.net.dht import DHT


def _info(author: NodeKey, mark="m"):
    mid = mimei_id(author.id, "", "fs", mark)
    return author.sign_record({"type": "mimei", "id": mid, "author": author.id, "app_type": "",
                               "mimei_type": "fs", "ext": "", "mark": mark, "created": 1, "rights": 0o644})


def _version(author: NodeKey, mid: str, n: int):
    return author.sign_record({"type": "version", "mimei": mid, "n": n, "kind": "fs", "root": "00" * 32,
                               "parent": n - 1 if n else None, "fork_of": None, "time": n, "size": 0,
                               "memo": "", "refs": [], "author": author.id})


@pytest.fixture
def net():
    keys = [NodeKey.generate() for _ in range(8)]
    nodes = [DHT(k.id, "127.0.0.1", 0, ksize=20, alpha=10, wait_timeout=1.0, timeout=20) for k in keys]
    for d in nodes:
        d.start()
    try:
        for d in nodes[1:]:
            d.bootstrap([("127.0.0.1", nodes[0].port)])
        for d in nodes[:1]:
            d.bootstrap([("127.0.0.1", nodes[1].port)])
        yield keys, nodes
    finally:
        for d in nodes:
            d.stop()


def test_providers_merge_and_are_found_from_any_node(net):
    keys, nodes = net
    author = NodeKey.generate()
    mid = _info(author)["id"]
    assert nodes[1].announce(keys[1], mid, ("127.0.0.1", 4001), ttl=60) > 0
    assert nodes[2].announce(keys[2], mid, ("127.0.0.1", 4002), ttl=60) > 0
    for d in nodes[3:]:
        got = d.providers(mid)
        assert {r["node"] for r in got} == {keys[1].id, keys[2].id}
        assert all(r["mimei"] == mid for r in got)
    assert nodes[5].stats()["hops_median"] <= 3
    assert nodes[4].providers(_info(author, "other")["id"]) == []


def test_highest_version_wins_and_downgrade_is_refused(net):
    keys, nodes = net
    author = NodeKey.generate()
    info = _info(author)
    mid = info["id"]
    nodes[1].publish_version(info, _version(author, mid, 3))
    nodes[2].publish_version(info, _version(author, mid, 1))   # older: kept nowhere over 3
    for d in nodes:
        assert d.newest_version(mid)["version"]["n"] == 3
    nodes[3].publish_version(info, _version(author, mid, 4))
    assert nodes[6].newest_version(mid)["version"]["n"] == 4


def test_forged_records_are_refused_by_storing_nodes(net):
    keys, nodes = net
    author, mallory = NodeKey.generate(), NodeKey.generate()
    info = _info(author)
    mid = info["id"]
    # a version record for author's MiMei signed by mallory
    forged = _version(mallory, mid, 9)
    forged_val = R.msgpack.packb({"k": "ver", "info": info, "version": forged}, use_bin_type=True)
    with pytest.raises(R.InvalidRecord):
        nodes[1].server.storage[R.ver_key(mid)] = forged_val
    # a tampered signature field
    v = _version(author, mid, 9)
    v["n"] = 10
    with pytest.raises(R.InvalidRecord):
        R.check_version({"info": info, "version": v})
    # an info whose MiMei ID does not derive from its author
    fake = mallory.sign_record(dict({k: x for k, x in info.items() if k not in ("key", "sig")}, author=mallory.id))
    with pytest.raises(R.InvalidRecord):
        R.check_version({"info": fake, "version": _version(mallory, mid, 1)})
    # a provider record signed by another node than it names
    rec = R.provider_record(keys[1], mid, ("127.0.0.1", 1), 60)
    rec2 = keys[2].sign_record(dict({k: x for k, x in rec.items() if k not in ("key", "sig")}))
    with pytest.raises(R.InvalidRecord):
        R.check_provider(rec2)
    # an expired one
    old = keys[1].sign_record({"type": "provider", "mimei": mid, "node": keys[1].id, "addr": ["h", 1],
                               "expires": int(time.time()) - 1})
    with pytest.raises(R.InvalidRecord):
        R.check_provider(old)

    # a remote store of the forged value over UDP is answered False (not stored)
    d = nodes[2]
    target = nodes[3]

    async def store():
        return await d.server.protocol.store(("127.0.0.1", target.port), d.server.node.id, R.ver_key(mid), forged_val)
    ok, answer = d._run(store())
    assert ok and answer is False
    assert target.server.protocol.refused >= 1
    assert target.newest_version(mid) is None


def test_provider_records_expire(net):
    keys, nodes = net
    mid = _info(NodeKey.generate())["id"]
    nodes[1].announce(keys[1], mid, ("127.0.0.1", 4001), ttl=2)
    assert nodes[4].providers(mid)
    time.sleep(2.2)
    assert nodes[4].providers(mid) == []


def test_a_contact_survives_one_missed_reply(net):
    keys, nodes = net
    d = nodes[1]
    proto = d.server.protocol
    victim = next(iter(proto.router.buckets[0].nodes.values()))
    for i in range(proto.max_misses - 1):
        proto.handle_call_response((False, None), victim)
        assert proto.router.is_new_node(victim) is False
    proto.handle_call_response((False, None), victim)
    assert proto.router.is_new_node(victim) is True


def test_dead_nodes_are_not_asked_again_and_lookups_still_find(net):
    """Nodes killed (UDP socket gone, no reply ever): the first lookup after waits for
    them once; later lookups do not ask them again (each round of a crawl used to wait
    ``wait_timeout`` for every dead node the live ones still name), and still find
    every live provider. A lookup that finds nothing asks them after all; a silent node
    that speaks again is asked again."""
    keys, nodes = net
    mid = _info(NodeKey.generate())["id"]
    assert nodes[1].announce(keys[1], mid, ("127.0.0.1", 4001), ttl=60) > 0
    assert nodes[2].announce(keys[2], mid, ("127.0.0.1", 4002), ttl=60) > 0
    dead = nodes[5:]
    for d in dead:
        d.stop()
    dead_ids = {bytes.fromhex(k.id) for k in keys[5:]}
    reader = nodes[3]
    proto = reader.server.protocol
    asked: list[bytes] = []
    real = proto.call_find_value

    async def counting(peer, target):
        asked.append(peer.id)
        return await real(peer, target)
    proto.call_find_value = counting

    assert {r["node"] for r in reader.providers(mid)} == {keys[1].id, keys[2].id}
    met = dead_ids & set(asked)
    assert met                               # the first lookup met them
    # it did not wait for them (STRAGGLE); their misses are recorded when their
    # requests time out (wait_timeout 1 s here)
    deadline = time.monotonic() + 10
    while not all(proto.is_silent(i) for i in met) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(proto.is_silent(i) for i in met)
    for _ in range(3):
        asked.clear()
        assert {r["node"] for r in reader.providers(mid)} == {keys[1].id, keys[2].id}
        assert not dead_ids & set(asked), "a node known to be dead was asked again"
    assert reader.stats()["skipped"] > 0

    # nothing found among the live ones: the silent ones are asked too, once
    asked.clear()
    assert reader.providers(_info(NodeKey.generate(), "none")["id"]) == []
    assert dead_ids & set(asked)

    # a silent node that sends a request is alive again: asked by the next lookup
    live = nodes[4]
    lid = bytes.fromhex(keys[4].id)
    proto.silent[lid] = time.monotonic()
    assert proto.is_silent(lid)
    live.bootstrap([("127.0.0.1", reader.port)])   # pings the reader
    assert not proto.is_silent(lid)
    asked.clear()
    reader.providers(mid)
    assert lid in asked
