"""Admin commands: ``mimeifs ledger …`` and ``mimeifs credit …`` (click groups).

The main CLI adds the module-level groups :data:`ledger` and :data:`credit`; it puts the
store path in ``ctx.obj["store_path"]``. Output is human-readable by default and JSON with
``--json``. Errors (no store, no ledger, refused transfer, bad proof) exit 1 with a message.

Keys: the organization's key is ``<store>/ledger/org.key``; the node key (``me`` or
``founder``) is the founder and supervisor; other local accounts made by ``ledger join
NAME`` keep their keys in ``<store>/ledger/keys/NAME.key`` (mode 0600) and their pending
applications in ``<store>/ledger/applications/NAME.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import click

from ..engine.db import Store, StoreError
from ..ids import NodeKey, is_id
from . import records as R
from .credit import CreditBook, CreditError, iso_utc
from .ledger import Ledger, LedgerError
from .proof import BadProof, Proof, verify
from .smt import SMTError

_SIZE = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
         "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}
_DUR = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_DURATION = 100 * 366 * 86400


def parse_size(s: str) -> int:
    """'100MiB' -> 104857600; plain integers are bytes. Raises click.BadParameter."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", s)
    if not m or m.group(2).lower() not in _SIZE:
        raise click.BadParameter(f"not a size: {s!r} (e.g. 500, 100MiB, 2GB)")
    n = int(m.group(1)) * _SIZE[m.group(2).lower()]
    if n >= 1 << 64:
        raise click.BadParameter(f"a size is below 2**64 bytes, not {s!r}")
    return n


def parse_duration(s: str) -> int:
    """'30d' -> seconds; units s, m, h, d, w. Raises click.BadParameter."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", s)
    if not m:
        raise click.BadParameter(f"not a duration: {s!r} (e.g. 3600, 12h, 30d)")
    secs = int(m.group(1)) * _DUR[m.group(2) or "s"]
    if secs > _MAX_DURATION:
        raise click.BadParameter(f"a duration is at most 100 years, not {s!r}")
    return secs


def _store(ctx) -> Store:
    path = (ctx.obj or {}).get("store_path")
    if not path:
        raise click.ClickException("no store path (use --store or $MIMEIFS_STORE)")
    try:
        s = Store.open(path)
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    ctx.call_on_close(s.close)
    return s


def _ledger(ctx) -> Ledger:
    try:
        return Ledger(_store(ctx))
    except LedgerError as e:
        raise click.ClickException(str(e)) from e


def _out(as_json: bool, obj, human: str) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True) if as_json else human)


def _keys_dir(store: Store) -> str:
    d = os.path.join(store.path, "ledger", "keys")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def _by_prefix(prefix: str, candidates, what: str) -> str | None:
    """The one candidate ID that starts with ``prefix`` (at least 4 lowercase hex digits,
    git's short hashes), None if none does or ``prefix`` is no such prefix. Raises
    click.ClickException listing the candidates when several do."""
    if not re.fullmatch(r"[0-9a-f]{4,40}", prefix):
        return None
    found = sorted({c for c in candidates if c.startswith(prefix)})
    if len(found) > 1:
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        raise click.ClickException(f"{what} prefix {prefix!r} is ambiguous: it starts {shown}")
    return found[0] if found else None


def _local_keys(store: Store) -> list[NodeKey]:
    d = _keys_dir(store)
    return [store.key] + [NodeKey.load(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.endswith(".key")]


def _local_key(store: Store, who: str) -> NodeKey:
    """A local key by name ('me'/'founder' = the node key, NAME), its ID or a unique
    prefix of its ID."""
    if who in ("me", "founder", store.key.id):
        return store.key
    d = _keys_dir(store)
    path = os.path.join(d, who + ".key")
    if re.fullmatch(r"[A-Za-z0-9_.-]+", who) and os.path.exists(path):
        return NodeKey.load(path)
    keys = _local_keys(store)
    for k in keys:
        if k.id == who:
            return k
    full = _by_prefix(who, [k.id for k in keys], "local key ID")
    if full is not None:
        return next(k for k in keys if k.id == full)
    raise click.ClickException(f"no local key {who!r} (make one with: mimeifs ledger join NAME)")


def _account_id(led: Ledger, who: str) -> str:
    """An account ID from an ID, a local key's name, or a unique prefix of the ID of an
    admitted account or a local key."""
    if is_id(who):
        return who
    if who in ("me", "founder") or (re.fullmatch(r"[A-Za-z0-9_.-]+", who)
                                    and os.path.exists(os.path.join(_keys_dir(led.store), who + ".key"))):
        return _local_key(led.store, who).id  # a name wins over an ID prefix
    full = _by_prefix(who, [m["id"] for m in led.members()] + [k.id for k in _local_keys(led.store)],
                      "account ID")
    return full if full is not None else _local_key(led.store, who).id


json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
PULSE = click.IntRange(0, (1 << 32) - 1)  # pulses are u32 in the store
pulse_opt = click.option("--pulse", type=PULSE, default=None, help="A past pulse (default: the last).")


@click.group()
def ledger():
    """The organization's ledger: accounts, transfers, pulses, proofs (seed 002 Part II)."""


@ledger.command("init")
@click.option("--org", "name", required=True, help="Organization name.")
@click.option("--supply", default=1_000_000, show_default=True, type=int, help="Construction reward to the founder.")
@click.option("--reason", default="", help="Reason announced with the construction reward.")
@json_opt
@click.pass_context
def init_cmd(ctx, name, supply, reason, as_json):
    """Found an organization: new org key, this node's user as supervisor, pulse 0."""
    store = _store(ctx)
    try:
        led = Ledger.create(store, name, supply, reason)
    except LedgerError as e:
        raise click.ClickException(str(e)) from e
    rec = led.pulse_record(0)
    _out(as_json, {"org": led.org_id, "name": name, "supervisor": led.supervisor, "pulse": rec},
         f"organization {name} {led.org_id}\nsupervisor {led.supervisor}\n"
         f"pulse 0 root {rec['root']} total {rec['total']}")


@ledger.command("join")
@click.argument("name")
@click.option("--role", type=click.Choice(["member", "guest"]), default="member", show_default=True)
@json_opt
@click.pass_context
def join_cmd(ctx, name, role, as_json):
    """Make a local key NAME and its signed application to join (awaits approval)."""
    led = _ledger(ctx)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in ("me", "founder"):
        raise click.ClickException(f"bad key name {name!r}")
    path = os.path.join(_keys_dir(led.store), name + ".key")
    if os.path.exists(path):
        raise click.ClickException(f"a local key {name!r} already exists")
    k = NodeKey.generate()
    k.save(path)
    app = R.application(k, led.org_id, role)
    adir = os.path.join(led.store.path, "ledger", "applications")
    os.makedirs(adir, mode=0o700, exist_ok=True)
    with open(os.path.join(adir, name + ".json"), "w") as f:
        json.dump(app, f)
    _out(as_json, app, f"{name} {k.id} applied as {role}; approve with: mimeifs ledger approve {name}")


@ledger.command("approve")
@click.argument("applicant")
@json_opt
@click.pass_context
def approve_cmd(ctx, applicant, as_json):
    """Approve an application (a local NAME, or a path to an application JSON file)."""
    led = _ledger(ctx)
    path = applicant if os.path.isfile(applicant) else os.path.join(
        led.store.path, "ledger", "applications", applicant + ".json")
    try:
        with open(path) as f:
            app = json.load(f)
        ap = led.approve(app)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read application {applicant!r}: {e}") from e
    except LedgerError as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, ap, f"admitted {ap['who']} as {ap['role']} (account opens at pulse {led.open_pulse})")


@ledger.command("transfer")
@click.argument("sender")
@click.argument("receiver")
@click.argument("amount", type=int)
@json_opt
@click.pass_context
def transfer_cmd(ctx, sender, receiver, amount, as_json):
    """Transfer AMOUNT from SENDER to RECEIVER (local keys: both sign), queued for the pulse."""
    if amount <= 0:
        raise click.ClickException(f"transfer refused: the amount must be positive, not {amount}")
    if amount >= 1 << 64:
        raise click.ClickException(f"transfer refused: the amount must be below 2**64, not {amount}")
    led = _ledger(ctx)
    sk, rk = _local_key(led.store, sender), _local_key(led.store, receiver)
    try:
        seq = led.account(sk.id, pending=True)["seq"] + 1
        t = R.Transfer.make(sk, led.org_id, rk.id, amount, seq, led.open_pulse).countersign(rk)
        led.submit(t)
    except (LedgerError, R.RecordError) as e:
        raise click.ClickException(f"transfer refused: {e}") from e
    _out(as_json, dict(t.to_json(), id=t.id()),
         f"queued {amount} {sk.id} -> {rk.id} seq {seq} for pulse {led.open_pulse} (run: mimeifs ledger pulse)")


@ledger.command("pulse")
@json_opt
@click.pass_context
def pulse_cmd(ctx, as_json):
    """Close the open pulse and sign its record as bookkeeper."""
    led = _ledger(ctx)
    rec = led.close_pulse()
    _out(as_json, rec, f"pulse {rec['pulse']}: {rec['count']} entries, root {rec['root']}, total {rec['total']}")


@ledger.command("balance")
@click.argument("account", required=False)
@pulse_opt
@json_opt
@click.pass_context
def balance_cmd(ctx, account, pulse, as_json):
    """Balance of ACCOUNT (ID or local name), or of every account."""
    led = _ledger(ctx)
    try:
        ids = [_account_id(led, account)] if account else [m["id"] for m in led.members()]
        rows = []
        for i in ids:
            a = led.account(i)
            if pulse is not None:
                got = led.tree.get(bytes.fromhex(i), pulse)
                a["balance"], a["seq"] = got if got else (0, 0)
            rows.append(a)
    except (LedgerError, SMTError) as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, rows, "\n".join(f"{r['id']} {r['role']:10} {r['balance']:>20} seq {r['seq']}" for r in rows))


@ledger.command("root")
@pulse_opt
@json_opt
@click.pass_context
def root_cmd(ctx, pulse, as_json):
    """The sparse Merkle tree root of a pulse."""
    led = _ledger(ctx)
    p = led.pulse if pulse is None else pulse
    try:
        r = led.tree.root(p).hex()
    except SMTError as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, {"pulse": p, "root": r}, r)


@ledger.command("prove")
@click.argument("account")
@pulse_opt
@click.option("--out", type=click.Path(dir_okay=False), help="Write the proof bytes to a file.")
@json_opt
@click.pass_context
def prove_cmd(ctx, account, pulse, out, as_json):
    """Inclusion (or non-inclusion) proof of ACCOUNT against a pulse's root."""
    led = _ledger(ctx)
    aid = _account_id(led, account)
    p = led.pulse if pulse is None else pulse
    try:
        pr = led.tree.prove(bytes.fromhex(aid), p)
        root = led.tree.root(p).hex()
    except SMTError as e:
        raise click.ClickException(str(e)) from e
    raw = pr.to_bytes()
    if out:
        with open(out, "wb") as f:
            f.write(raw)
    acc = pr.account
    _out(as_json, dict(pr.to_json(), root=root, pulse=p, hex=raw.hex()),
         f"{pr.kind} proof of {aid} at pulse {p}, {len(raw)} bytes"
         + (f": balance {acc[0]} seq {acc[1]}" if acc else "") + f"\nroot {root}\n{raw.hex()}")


@ledger.command("verify")
@click.argument("proof")
@click.option("--root", required=True, help="Root hash (64 hex) to check against.")
@click.option("--account", default=None, help="The account the proof must be about (ID).")
@json_opt
def verify_cmd(proof, root, account, as_json):
    """Check PROOF (hex, a file of bytes / hex / JSON, or '-' for stdin) against --root.
    Needs no store. Exits 1 if the proof does not verify."""
    try:
        if proof == "-":
            data = sys.stdin.buffer.read()
        elif os.path.exists(proof):
            with open(proof, "rb") as f:
                data = f.read()
        elif re.fullmatch(r"\s*(\{.*|[0-9a-fA-F]+)\s*", proof, re.S):
            data = proof.encode()
        else:
            raise click.ClickException(f"no such file: {proof!r} (PROOF is a file, hex, JSON or '-')")
        text = data.strip()
        if text.startswith(b"{"):
            obj = json.loads(text)
        else:
            try:
                obj = bytes.fromhex(text.decode())
            except (UnicodeDecodeError, ValueError):
                obj = data
        if isinstance(obj, dict) and "hex" in obj:
            obj = bytes.fromhex(obj["hex"])
        acc = verify(obj, root, account)
        pr = obj if isinstance(obj, dict) else Proof.from_bytes(obj).to_json()
    except (BadProof, ValueError, OSError) as e:
        raise click.ClickException(f"proof does NOT verify: {e}") from e
    key = pr["key"]
    _out(as_json, {"ok": True, "key": key, "kind": pr["kind"],
                   "account": None if acc is None else {"balance": acc[0], "seq": acc[1]}},
         f"OK: {key} " + (f"balance {acc[0]} seq {acc[1]}" if acc else "is not in the tree"))


@ledger.command("history")
@click.argument("account", required=False)
@click.option("--since", type=PULSE, default=0, help="First pulse.")
@click.option("--check", is_flag=True, help="Also audit the whole chain of pulse records.")
@json_opt
@click.pass_context
def history_cmd(ctx, account, since, check, as_json):
    """Pulse records and events (of ACCOUNT if given)."""
    led = _ledger(ctx)
    aid = _account_id(led, account) if account else None
    if check:
        try:
            led.audit()
        except LedgerError as e:
            raise click.ClickException(f"audit failed: {e}") from e
    evs = list(led.history(aid, since))
    recs = led.pulse_records(since)
    if as_json:
        _out(True, {"pulses": recs, "events": evs, "audited": check}, "")
        return
    lines = [f"pulse {r['pulse']}: {r['count']} entries, minted {r['minted']}, total {r['total']}, root {r['root'][:16]}…"
             for r in recs]
    for e in evs:
        if e["type"] == "transfer":
            lines.append(f"  [{e['pulse']}] transfer {e['amount']} {e['from']} -> {e['to']} seq {e['seq']}")
        elif e["type"] == "reward":
            lines.append(f"  [{e['pulse']}] reward ({e['kind']}: {e['reason']}) "
                         + ", ".join(f"{a} to {i}" for i, a in e["grants"]))
        else:
            lines.append(f"  [{e['pulse']}] admitted {e['who']} as {e['role']}")
    if check:
        lines.append("audit: every link, events hash, root and the total check out")
    click.echo("\n".join(lines))


# -- credit ------------------------------------------------------------------------------------
@click.group()
def credit():
    """Letters of credit and IOUs with peers (bytes of bandwidth as the base unit)."""


def _book(ctx) -> CreditBook:
    return CreditBook(_store(ctx))


def _peer(book: CreditBook, p: str) -> str:
    """A peer's node ID from the ID or a unique prefix of a peer the credit book knows."""
    if is_id(p):
        return p
    full = _by_prefix(p, [r["peer"] for r in book.show()], "peer ID")
    if full is None:
        raise click.BadParameter(f"not a node ID (40 hex) nor a unique prefix of a known peer's: {p!r}")
    return full


@credit.command("grant")
@click.argument("peer")
@click.option("--cap", required=True, help="Cap, e.g. 100MiB (bytes for bw).")
@click.option("--expires", default=None, help="Lifetime, e.g. 30d (default: never).")
@click.option("--unit", type=click.Choice(["bw", "storage", "cpu"]), default="bw", show_default=True)
@json_opt
@click.pass_context
def grant_cmd(ctx, peer, cap, expires, unit, as_json):
    """Grant PEER a letter of credit (or replace it: raise or lower the cap)."""
    book = _book(ctx)
    exp = time.time() + parse_duration(expires) if expires else 0
    try:
        loc = book.grant(_peer(book, peer), parse_size(cap), exp, unit)
    except CreditError as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, loc, f"letter of credit #{loc['seq']} to {peer}: cap {loc['cap']} {unit}"
         + (f", expires {iso_utc(exp)}" if exp else ""))


@credit.command("revoke")
@click.argument("peer")
@json_opt
@click.pass_context
def revoke_cmd(ctx, peer, as_json):
    """Revoke PEER's letter of credit now."""
    try:
        book = _book(ctx)
        loc = book.revoke(_peer(book, peer))
    except CreditError as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, loc, f"revoked the letter of credit of {peer}")


@credit.command("use")
@click.argument("peer")
@click.argument("amount")
@click.option("--unit", type=click.Choice(["bw", "storage", "cpu"]), default="bw", show_default=True)
@json_opt
@click.pass_context
def use_cmd(ctx, peer, amount, unit, as_json):
    """Record that PEER used AMOUNT (e.g. 10MiB) of service (for testing by hand)."""
    try:
        book = _book(ctx)
        used = book.record_use(_peer(book, peer), parse_size(amount), unit)
    except CreditError as e:
        raise click.ClickException(str(e)) from e
    _out(as_json, {"peer": peer, "used": used}, f"{peer} has used {used} bytes")


@credit.command("show")
@json_opt
@click.pass_context
def show_cmd(ctx, as_json):
    """Every peer: letter granted, use, letter received, IOUs and the net."""
    rows = _book(ctx).show()
    lines = []
    for r in rows:
        g = r["granted"]
        state = "none" if not g else ("revoked" if g.get("revoked") else f"cap {g['cap']} {g['unit']}")
        lines.append(f"{r['peer']}  granted: {state}  used {r['used']}  owed to me {r['owed_to_me']}"
                     f"  I owe {r['i_owe']}  net {r['net']:+d}")
    _out(as_json, rows, "\n".join(lines) or "no credit relations")


@credit.command("settle")
@click.argument("peer")
@json_opt
@click.pass_context
def settle_cmd(ctx, peer, as_json):
    """Net PEER's IOUs against ours and mark them settled."""
    try:
        book = _book(ctx)
        n = book.settle(_peer(book, peer))
    except CreditError as e:
        raise click.ClickException(str(e)) from e
    who = "owes this node" if n["net"] >= 0 else "is owed by this node"
    _out(as_json, n, f"{peer} {who} {abs(n['net'])} bytes (settled)")
