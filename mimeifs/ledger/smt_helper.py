"""The helper process of the sparse Merkle tree's batch update (:mod:`mimeifs.ledger.smt`).

A batch of ``SparseMerkleTree.parallel_min`` keys or more can be split: this process
updates the lower half of the pulse's subtrees while a second interpreter, started once
as ``python -m mimeifs.ledger.smt_helper``, updates the upper half
(:func:`mimeifs.ledger.smt_batch.batch_update` on both sides). Messages are pickles with
an 8-byte length, over the child's stdin/stdout; the child only reads LMDB.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading

from .smt_batch import batch_update

_U32 = struct.Struct(">I")
HELPER_IB = 1 << 30  # the helper's node indexes; the top pass uses 1 << 31
_LEN = struct.Struct(">Q")


def send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)))
    f.write(data)
    f.flush()


def recv(f):
    head = f.read(8)
    if len(head) < 8:
        return None
    n = _LEN.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


class Helper:
    """A child interpreter (``python -m mimeifs.ledger.smt_helper``) that updates the upper half
    of a pulse's subtrees while this process does the lower half.

    Python runs one thread at a time and a tree node costs a few microseconds of it, so a
    second core is used by a second process. The helper opens the same LMDB environment
    read-only and reads the newest *committed* tree (it refuses, and this process does
    all the work, if the base pulse is not committed yet); it writes nothing and returns
    its new nodes, stale refs and subtree links over a pipe. It keeps its own top-level
    cache under the same rule as the tree's (trusted only for the pulse it last did).
    A fresh interpreter rather than fork(): the parent may run threads (FUSE, LMDB).
    """

    def __init__(self):
        env = dict(os.environ)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "mimeifs.ledger.smt_helper"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


_helper: Helper | None = None
_helper_lock = threading.Lock()


def get_helper() -> Helper | None:
    global _helper
    with _helper_lock:
        if _helper is None or not _helper.alive():
            try:
                _helper = Helper()
            except OSError:
                return None
            atexit.register(_helper.close)
        return _helper


def helper_main() -> None:  # pragma: no cover - runs in the child process
    import lmdb
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    envs: dict = {}
    caches: dict = {}  # (env path, tree name) -> [cache, pulse it is trusted for]
    while True:
        msg = recv(inp)
        if msg is None:
            return
        path, map_size, name, cd, pulse, base_pulse, base, tasks, keys, kv = msg
        env = envs.get(path)
        if env is None:
            for old in list(envs):  # keep one environment open: stores come and go
                envs.pop(old).close()
                for c in [c for c in caches if c[0] == old]:
                    del caches[c]
            env = envs[path] = lmdb.open(path, readonly=True, lock=True, max_dbs=64, max_readers=512,
                                         map_size=map_size, readahead=False)
        slot = caches.setdefault((path, name), [{}, None])
        cache = slot[0]
        if slot[1] != base_pulse or len(cache) > 1 << 18:
            cache.clear()
        slot[1] = None
        try:
            txn = env.begin()
        except lmdb.MapResizedError:  # the store grew its map (engine/space.py): adopt it
            env.set_mapsize(0)
            txn = env.begin()
        with txn:
            try:
                roots = env.open_db((name + ".roots").encode(), txn=txn, create=False)
                ok = txn.get(_U32.pack(base_pulse), db=roots) == base
            except lmdb.Error:
                ok = False
            if not ok:
                send(out, None)  # the base pulse is not committed: the parent does it all
                continue
            db = env.open_db((name + ".nodes").encode(), txn=txn, create=False)
            res, puts, stale = batch_update(txn, db, cache, cd, pulse, keys, kv, None, HELPER_IB, tasks)
        slot[1] = pulse
        same = [0 if r is t[0] else r for r, t in zip(res, tasks)]
        send(out, (same, puts, stale))


if __name__ == "__main__":
    helper_main()
