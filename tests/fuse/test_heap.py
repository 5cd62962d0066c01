"""The daemon's malloc settings (mimeifs.heap)."""

import ctypes
import subprocess
import sys


def test_settings_apply_and_keep_freed_memory():
    """In a fresh process: applied, and a freed 8 MiB buffer stays in the process
    (RSS does not drop back) instead of going back to the kernel."""
    code = r"""
import ctypes, sys
from mimeifs.heap import keep_freed_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "on":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
p = libc.malloc(8 << 20); libc.memset(p, 1, 8 << 20)
before = rss(); libc.free(p); after = rss()
print(before - after)
"""
    dropped = {m: int(subprocess.run([sys.executable, "-c", code, m], check=True,
                                     capture_output=True, text=True).stdout)
               for m in ("on", "off")}
    assert dropped["off"] >= 7 << 20   # glibc's default: the 8 MiB goes back at once
    assert dropped["on"] < 1 << 20      # kept for the next write
