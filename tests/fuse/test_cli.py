"""The CLI as a user drives it: where it finds the store, the whole-MiMei commands with
and without a mount, references through fork and restore, progress bars on a terminal,
``check`` reporting damage, ``mount --foreground``."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios

import lmdb
import pytest

from .conftest import CHILD_PYTHON, CLI, MimeiFS, as_user, cli_env, pid_alive, tree_digest, wait_for


def cli(*args, env_extra: dict | None = None, drop: tuple = (), cwd=None,
        check: bool = True) -> subprocess.CompletedProcess:
    """The CLI with no --store: the environment decides."""
    env = {k: v for k, v in cli_env(**(env_extra or {})).items() if k not in drop}
    p = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=300)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def on_terminal(m: MimeiFS, *args, timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on a pseudo-terminal; (exit code, output)."""
    env = cli_env(TERM="xterm")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm needs a width
    try:
        p = subprocess.Popen([*CLI, "--store", str(m.store), *map(str, args)], stdin=slave,
                             stdout=slave, stderr=slave, env=env, cwd=str(m.base))
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            r, _, _ = select.select([master], [], [], timeout)
            if not r:
                p.kill()
                raise AssertionError(f"{args}: no output for {timeout}s")
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(master)
    return p.wait(timeout), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def unmounted(tmp_path):
    """(MimeiFS, ID of an fs MiMei with mark "t") on a new store, not mounted."""
    m = MimeiFS(tmp_path)
    m.init()
    try:
        yield m, m.create("t")
    finally:
        m.cleanup(remove_mountpoint=True)


def test_store_is_found_by_flag_then_env_then_xdg(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # nothing set: ~/.local/share/mimeifs
    cli("init", env_extra={"HOME": str(home)}, drop=("MIMEIFS_STORE", "XDG_DATA_HOME"))
    assert (home / ".local/share/mimeifs/node.key").is_file()
    # XDG_DATA_HOME moves it
    cli("init", env_extra={"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg")},
        drop=("MIMEIFS_STORE",))
    assert (tmp_path / "xdg/mimeifs/node.key").is_file()
    # $MIMEIFS_STORE beats XDG
    env = {"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "MIMEIFS_STORE": str(tmp_path / "env")}
    cli("init", env_extra=env)
    assert (tmp_path / "env/node.key").is_file()
    mid = cli("create", "--type", "fs", "--mark", "e", env_extra=env).stdout.strip()
    assert cli("create", "--type", "fs", "--mark", "e", env_extra=env).stdout.strip() == mid
    # ... and --store beats $MIMEIFS_STORE: the env store's MiMei is unknown there
    p = cli("--store", tmp_path / "xdg/mimeifs", "log", mid, env_extra=env, check=False)
    assert p.returncode != 0 and mid in (p.stdout + p.stderr)
    assert cli("log", mid, "--json", env_extra=env).stdout.strip() == "[]"
    # a second init on the same store is refused and keeps the key
    key = (tmp_path / "env/node.key").read_bytes()
    assert cli("init", env_extra=env, check=False).returncode != 0
    assert (tmp_path / "env/node.key").read_bytes() == key


def test_create_options_through_the_cli(fresh_mfs):
    m = fresh_mfs
    a = m.run("create", "--type", "file", "--mark", "auto", "--ext", "txt",
              "--app-type", "notes").stdout.strip()
    b = m.run("create", "--type", "file", "--mark", "auto", "--ext", "txt",
              "--app-type", "notes").stdout.strip()
    assert a != b and len(a) == len(b) == 40
    info = json.loads((m.mm(a) / ".info").read_text())
    assert (info["mimei_type"], info["ext"], info["app_type"]) == ("file", "txt", "notes")
    assert info["mark"].startswith("auto")
    # the same author, app type, type and mark: the same ID; the mark with another app
    # type or type is refused (a mark names one MiMei per author, issue 11 item 8)
    c = m.run("create", "--type", "fs", "--mark", "same", "--app-type", "x").stdout.strip()
    assert m.run("create", "--type", "fs", "--mark", "same", "--app-type", "x").stdout.strip() == c
    for other in (["--type", "fs", "--app-type", "y"], ["--type", "file", "--app-type", "x"]):
        p = m.run("create", "--mark", "same", *other, check=False)
        assert p.returncode == 1 and c in p.stderr and "one MiMei per author" in p.stderr
    assert os.readlink(m.mnt / "name" / "same") == f"../mm/{c}"


def test_whole_mimei_commands_without_a_mount(unmounted, tmp_path):
    m, mid = unmounted
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("first\n")
    (src / "d" / "b.bin").write_bytes(os.urandom(200_000))
    out = m.run("import", src, mid, "--backup", "-m", "one").stdout.splitlines()
    assert out[0].startswith("imported 2 files") and out[1].split()[0] == "0"
    first = tree_digest(src)
    (src / "a.txt").write_text("second\n")
    out = m.run("import", src, "t", "--backup", "-m", "two").stdout.splitlines()  # by mark
    n, root = out[-1].split()
    assert n == "1" and len(root) == 64
    # plain log: n, time, size, root prefix, memo
    lines = m.run("log", mid).stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["0", "1"]
    assert lines[1].split()[-1] == "two" and root[:16] in lines[1]
    assert re.match(r"\s*1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\S+ \S+\s+[0-9a-f]{16}\s+two$",
                    lines[1]), lines[1]
    m.run("release", mid, "0")
    m.run("restore", mid, "0")
    fork = m.run("fork", mid, "--mark", "copy").stdout.strip()  # no @N: the last version
    recs = m.log(fork)
    assert recs[0]["fork_of"] == {"mimei": mid, "n": 1} and recs[0]["root"] == root
    assert m.run("fork", mid, "--mark", "copy", check=False).returncode != 0  # exists
    m.run("rm", fork)
    assert m.run("log", fork, check=False).returncode != 0
    # what the unmounted commands did shows once mounted
    m.mount()
    assert os.readlink(m.mm(mid) / "release") == "v/0"
    assert tree_digest(m.cur(mid)) == first          # restored to v/0
    assert (m.v(mid, 1) / "a.txt").read_text() == "second\n"
    assert not (m.mnt / "mm" / fork).exists()


def test_fork_and_restore_carry_references(mfs):
    m = mfs
    a, t1, t2 = m.create("ref-a"), m.create("ref-t1"), m.create("ref-t2")
    refs = m.mm(a) / ".refs"
    os.symlink(f"../../{t1}", refs / t1)
    m.backup(a)                                   # v/0 references t1
    os.unlink(refs / t1)
    os.symlink(f"../../{t2}", refs / t2)
    m.backup(a)                                   # v/1 references t2
    assert [r["refs"] for r in m.log(a)] == [[t1], [t2]]

    f = m.run("fork", f"{a}@0", "--mark", "ref-fork").stdout.strip()
    assert m.log(f)[0]["refs"] == [t1]
    assert json.loads(m.run("refs", f, "--json").stdout)["out"] == [t1]
    assert os.listdir(m.mm(f) / ".refs") == [t1]
    assert f in json.loads(m.run("refs", t1, "--json").stdout)["in"]

    m.run("restore", a, "0")
    assert json.loads(m.run("refs", a, "--json").stdout)["out"] == [t1]
    assert os.listdir(refs) == [t1]
    # t2 is still referenced by v/1 of a, t1 by a's cur and by the fork
    for t in (t1, t2):
        p = m.run("rm", t, check=False)
        assert p.returncode != 0 and a in p.stderr, p.stderr


_UNITS = {"": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _shown(out: str, desc: str) -> float:
    """How far a tqdm bar labelled ``desc`` got on the terminal: the largest percentage
    (a bar with a total) or byte count (a counter without one) among its frames."""
    best = 0.0
    for frame in re.split(r"[\r\n]", out):
        frame = frame.strip()
        if not frame.startswith(desc + ":"):
            continue
        rest = frame[len(desc) + 1:]
        if m := re.match(r"\s*(\d+)%\|", rest):
            best = max(best, float(m.group(1)))
        elif m := re.match(r"\s*(\d+(?:\.\d+)?)([kMG]?)B \[", rest):
            best = max(best, float(m.group(1)) * _UNITS[m.group(2)])
    return best


def test_progress_bars_on_a_terminal(unmounted, tmp_path):
    m, mid = unmounted
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"r{i}").write_bytes(os.urandom(8 << 20))
    code, out = on_terminal(m, "import", src, mid)
    assert code == 0, out
    assert _shown(out, "import") > 0, out[-2000:]            # a percentage moved

    def rewrite_cur() -> None:  # cur pages the next backup must chunk and hash
        for i in range(12):
            (m.cur(mid) / f"r{i}").write_bytes(os.urandom(8 << 20))

    m.mount()
    rewrite_cur()
    code, out = on_terminal(m, "backup", mid)     # mounted: the daemon backs up
    assert code == 0, out
    assert _shown(out, "backup") >= 8 << 20, out[-2000:]
    assert re.search(r"(^|\r)0 [0-9a-f]{64}", out, re.M), out[-500:]
    rewrite_cur()
    m.umount()
    code, out = on_terminal(m, "backup", mid)     # no mount: the CLI backs up itself
    assert code == 0, out
    assert _shown(out, "backup") >= 8 << 20, out[-2000:]
    assert re.search(r"(^|\r)1 [0-9a-f]{64}", out, re.M), out[-500:]
    code, out = on_terminal(m, "check")
    assert code == 0 and "clean" in out, out[-2000:]
    assert _shown(out, "check") > 0, out[-2000:]
    # not a terminal: no bar at all
    p = m.run("backup", mid, "--allow-empty")  # cur is unchanged since v/1
    assert "backup:" not in p.stderr and p.stdout.split()[0] == "2"


def test_check_reports_damage_and_exits_1(unmounted, tmp_path):
    m, mid = unmounted
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    m.run("import", src, mid, "--backup")
    assert m.run("check").stdout.strip().endswith("clean")
    env = lmdb.open(str(m.store / "lmdb"), max_dbs=64, map_size=1 << 40)
    blocks = env.open_db(b"blocks")
    with env.begin(write=True) as txn:
        k, v = next((k, v) for k, v in txn.cursor(db=blocks) if len(v) > 1000)
        txn.put(k, v[:1] + bytes(len(v) - 1), db=blocks)   # zeroed payload, same length
    env.close()
    p = m.run("check", check=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    problems = [ln for ln in p.stdout.splitlines() if ln.startswith("problem: ")]
    assert problems and "clean" not in p.stdout
    assert "problems" in p.stderr


def test_mount_in_the_foreground(unmounted):
    m, mid = unmounted
    p = subprocess.Popen([*CLI, "--store", str(m.store), "mount", "--foreground", str(m.mnt)],
                         env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.ismount(m.mnt) or p.poll() is not None, 30, "foreground mount")
        assert p.poll() is None, p.communicate()
        assert m.daemon_pid() == p.pid             # no fork: this process serves
        (m.cur(mid) / "hello").write_text("hi\n")
        m.backup(mid)
        assert (m.v(mid, 0) / "hello").read_text() == "hi\n"
        m.run("umount", m.mnt)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "mounted" in err and "unmounted" in err   # the log goes to stderr
        assert not os.path.ismount(m.mnt) and not pid_alive(p.pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_without_allow_other_only_the_mounting_user_gets_in(tmp_path):
    m = MimeiFS(tmp_path, allow_other=False)
    m.init()
    try:
        mid = m.create("mine")
        m.mount()
        (m.cur(mid) / "f").write_text("x")

        def stat_as(uid: int):
            return subprocess.run([CHILD_PYTHON, "-c", f"import os; os.stat({str(m.cur(mid) / 'f')!r})"],
                                  capture_output=True, text=True, preexec_fn=as_user(uid, uid),
                                  cwd="/", timeout=60)
        # the kernel refuses everyone but the mounting user (root here) without allow_other
        r = stat_as(1000)
        assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
        assert (m.cur(mid) / "f").read_text() == "x"
        m.umount()
        m.allow_other = True
        m.mount()
        assert stat_as(1000).returncode == 0
    finally:
        m.cleanup(remove_mountpoint=True)
