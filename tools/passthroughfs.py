#!/usr/bin/env python3
"""Run pyfuse3's own example passthrough filesystem, unchanged: the benchmark's anchor.

    python tools/passthroughfs.py SOURCE MOUNTPOINT [options of the example]

The anchor is ``examples/passthroughfs.py`` from the pyfuse3 project (Nikolaus Rath,
MIT-style licence, https://github.com/libfuse/pyfuse3), the example a pyfuse3 + trio
filesystem starts from. Its code is not copied into this repository: this launcher
takes the file from the pyfuse3 source distribution of exactly the pyfuse3 version
that is installed (``pip download --no-deps --no-binary pyfuse3 pyfuse3==<version>``,
PyPI through pip, once; the file is cached under ``$MIMEIFS_BENCH_CACHE`` or
``~/.cache/mimeifs-bench``) and runs it as ``__main__`` with the same arguments. So
the anchor is byte for byte upstream's: attribute and entry timeouts 0, readdir that
re-lists the directory on every call, writeback cache off unless
``--enable-writeback-cache`` is given (pyfuse3 3.5's default), no fsync handler.

``--print-path`` prints where the example file is (fetching it if needed) and exits.
The process stays in the foreground until the filesystem is unmounted
(``fusermount3 -u MOUNTPOINT``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import runpy
import subprocess
import sys
import tarfile
import tempfile

EXAMPLE = "examples/passthroughfs.py"


def cache_dir() -> str:
    return os.environ.get("MIMEIFS_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "mimeifs-bench")


def example_path() -> str:
    """Path of upstream's passthroughfs.py for the installed pyfuse3; fetch it once."""
    version = importlib.metadata.version("pyfuse3")
    dest_dir = os.path.join(cache_dir(), f"pyfuse3-{version}")
    dest = os.path.join(dest_dir, "passthroughfs.py")
    if os.path.exists(dest):
        return dest
    os.makedirs(dest_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyfuse3-sdist-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--no-binary", "pyfuse3", "-d", tmp, f"pyfuse3=={version}"],
            check=True, stdout=subprocess.DEVNULL)
        sdists = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if not sdists:
            raise SystemExit(f"no pyfuse3 {version} source distribution downloaded")
        with tarfile.open(os.path.join(tmp, sdists[0])) as tar:
            member = next((m for m in tar.getmembers()
                           if m.name.endswith("/" + EXAMPLE)), None)
            if member is None:
                raise SystemExit(f"{sdists[0]} has no {EXAMPLE}")
            data = tar.extractfile(member).read()
    tmp_dest = dest + ".tmp"
    with open(tmp_dest, "wb") as f:
        f.write(data)
    os.replace(tmp_dest, dest)
    with open(os.path.join(dest_dir, "SOURCE"), "w") as f:
        f.write(f"{sdists[0]}:{member.name} blake2b={hashlib.blake2b(data).hexdigest()}\n")
    return dest


def main() -> None:
    if sys.argv[1:] == ["--print-path"]:
        print(example_path())
        return
    path = example_path()
    sys.argv = [path] + sys.argv[1:]
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
