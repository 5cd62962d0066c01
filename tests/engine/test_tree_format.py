"""The version tree encoding (objects.encode_tree / decode_tree)."""

import stat

from mimeifs.engine.objects import Entry, decode_tree, encode_tree


def test_tree_encoding_is_stable():
    """Tree hashes name versions and dedupe trees across backups, so the encoding must
    never change: a fixed tree (a file, a dir, a symlink, a device, xattrs, a non-UTF-8
    name) against the bytes and hash the format produced when it was written."""
    es = [Entry(b"b.txt", stat.S_IFREG | 0o644, 1000, 100, 12345, 1700000000123456789, 0,
                b"h" * 32, b"", ()),
          Entry(b"a-dir", stat.S_IFDIR | 0o755, 0, 0, 999, 1600000000000000001, 0, b"d" * 32,
                b"", ()),
          Entry(b"link", stat.S_IFLNK | 0o777, 0, 0, 5, 1, 0, b"", b"b.txt", ()),
          Entry(b"dev", stat.S_IFCHR | 0o600, 0, 0, 0, 2, 259, b"", b"", ()),
          Entry(b"x\xffattr", stat.S_IFREG | 0o600, 5, 6, 7, -8, 0, b"q" * 32, b"",
                ((b"user.a", b"1"), (b"user.bb", b"\x00" * 300)))]
    h, enc = encode_tree(es)
    assert h.hex() == "dfcb40f3f944fda15031da224fd219785f20e873ccec38ce71d1c3e6e87601b9"
    assert enc.hex() == (
        "54000000050005612d646972000041ed000000000000000000000000000003e716345785d8a00001"
        "00000000000000002064646464646464646464646464646464646464646464646464646464646464"
        "640000000000000005622e747874000081a4000003e800000064000000000000303917979cfe3d85"
        "cd150000000000000000206868686868686868686868686868686868686868686868686868686868"
        "68686800000000000000036465760000218000000000000000000000000000000000000000000000"
        "000200000000000001030000000000000000046c696e6b0000a1ff00000000000000000000000000"
        "00000500000000000000010000000000000000000005622e74787400000000000678ff6174747200"
        "00818000000005000000060000000000000007fffffffffffffff800000000000000002071717171"
        "71717171717171717171717171717171717171717171717171717171000000000146000675736572"
        "2e6100000001310007757365722e62620000012c0000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000")
    assert decode_tree(h, enc).entries == sorted(es)


def test_object_cache_is_bounded_by_entries():
    """The decoded-object cache evicts by weight (1 + entries), least recently used
    first, and keeps a single object heavier than the bound (it is in use)."""
    from mimeifs.engine.objects import ObjectCache, Tree

    def tree(i, n):
        return Tree(bytes([i]) * 32, [Entry(b"f%d" % k, stat.S_IFREG | 0o644, 0, 0, 0, 0, 0,
                                            b"h" * 32, b"", ()) for k in range(n)])
    c = ObjectCache(max_weight=100)
    for i in range(5):
        c._put((b"T", bytes([i]) * 32), tree(i, 19), 20)   # 5 x 20 = 100: all fit
    assert all(c.cached_tree(bytes([i]) * 32) for i in range(5))
    c.cached_tree(bytes([0]) * 32)                          # 0 is now the most recent
    c._put((b"T", bytes([9]) * 32), tree(9, 39), 40)        # evicts 1 and 2, the oldest
    assert c.cached_tree(bytes([1]) * 32) is None and c.cached_tree(bytes([2]) * 32) is None
    assert c.cached_tree(bytes([0]) * 32) is not None and c._weight <= 100
    c._put((b"T", bytes([7]) * 32), tree(7, 500), 501)      # heavier than the bound
    assert c.cached_tree(bytes([7]) * 32) is not None and len(c._d) == 1


def test_tree_get_finds_entries_by_name():
    t = decode_tree(*encode_tree([Entry(b"b", stat.S_IFREG, 0, 0, 1, 0, 0, b"h" * 32, b"", ()),
                                  Entry(b"a", stat.S_IFDIR, 0, 0, 0, 0, 0, b"d" * 32, b"", ())]))
    assert [e.name for e in t.entries] == [b"a", b"b"]
    assert t.get(b"b").size == 1 and t.get(b"a").hash == b"d" * 32 and t.get(b"c") is None
