"""glibc malloc settings for processes that move large buffers (the mount daemon).

Every 1 MiB write to a cur file arrives as a fresh 1 MiB buffer, and its LMDB
transaction allocates, fills and frees about as much in dirty pages. With glibc's
defaults the freed memory at the top of the heap is given back to the kernel (trimmed)
as soon as more than 128 KiB is free there, so the next write faults it all in again:
``perf`` showed the daemon in ``exc_page_fault``, ``clear_page_erms`` and
``unmap_page_range``. Keeping up to 64 MiB of freed heap (``M_TRIM_THRESHOLD``) and
serving buffers up to 32 MiB from the heap (``M_MMAP_THRESHOLD``, ``mallopt(3)``) took
a 1 GiB ``dd`` into a fresh cur from 2.5-2.8 s to 1.35 s on the benchmark machine.
The cost is at most 64 MiB of memory the process keeps while idle.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 64 << 20
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit


def keep_freed_memory() -> bool:
    """Apply the settings above to this process; False where the C library has no
    ``mallopt`` (not glibc) or refuses them. Call once, early."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
