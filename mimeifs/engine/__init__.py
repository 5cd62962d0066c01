"""The engine: the store and everything it holds, knowing no protocol and no network.

Modules: ``db`` (the LMDB environment), ``space`` (map growth, a full disk), ``blocks`` / ``packs`` (chunks and packs),
``objects`` (manifests, trees), ``chunkstore`` (every object read; missing vs corrupt;
the fetcher seam of ``fetch``), ``worktree`` (cur: over ``inode``, ``inodetable``,
``pages``), ``backup`` (freeze, checkout),
``mimei`` (the :class:`~.mimei.Engine` facade), ``remote`` (MiMei from elsewhere),
``importer`` / ``scan`` (OS directories into cur), ``maintenance`` (check, gc),
``errors`` (the errno vocabulary every door maps once).

Concurrency contract
--------------------
- Any thread may call the engine. Reads open an LMDB read transaction (an MVCC
  snapshot) for the one call and never wait for a writer.
- LMDB has ONE write transaction per environment at a time, across threads and
  processes. Each engine call that writes opens it, fills it and commits it on its own
  thread before returning (a write transaction must stay on the thread that opened it).
  Who holds it, for how long:

  * a cur operation (create, write, rename, setattr ...): one request, at most one
    1 MiB write of pages;
  * ``Engine.backup``: the whole freeze, from the first dirty tree to the signed version
    record (hashing and compression run in the chunk pool meanwhile), so cur writes
    from the mount wait for it; ``restore`` and ``fork``: the checkout of the tree;
  * an import: batches, committed every few hundred files or MiB;
  * ``maintenance.gc``: the whole mark and sweep (no writer may add a reference
    half-way); ``ChunkStore.accept``: the puts of one batch of fetched blocks, after
    their verification.
- Every transaction passes the store's gate (``space.Space``): the map is grown only
  when no transaction of the process is open, so a thread that wants to grow it (a write
  finding the map three quarters full, or full) makes new transactions wait up to 2 s
  for the open ones to end; a thread already inside a transaction never waits there.
- The fetcher (``fetch.Fetcher``, the network node) is called only outside any write
  transaction and only on threads that allow it (``fetch.fetching_allowed``): a miss
  inside a write aborts it (nothing half-done is kept), the objects are fetched, the
  call runs again. A fetcher must not call back into the engine's write paths while it
  is being asked, and must return (or raise ``FetchError``) in bounded time.
- Change listeners (``Engine.subscribe``) run on the thread that made the change and
  must only schedule work, never block.
"""
