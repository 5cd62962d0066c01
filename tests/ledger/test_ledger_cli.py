"""The admin commands through click, on a real store."""

import json

import click
import pytest
from click.testing import CliRunner

from mimeifs.engine.db import Store
from mimeifs.ledger.cli import credit, ledger


@click.group()
@click.option("--store", "store_path", required=True)
@click.pass_context
def main(ctx, store_path):
    ctx.obj = {"store_path": store_path}


main.add_command(ledger)
main.add_command(credit)


@pytest.fixture
def run(tmp_path):
    path = str(tmp_path / "s")
    Store.create(path, map_size=1 << 26).close()
    runner = CliRunner()

    def run(*args, ok=True):
        r = runner.invoke(main, ["--store", path, *args], catch_exceptions=False)
        assert (r.exit_code == 0) == ok, r.output
        return r.output

    return run


def test_ledger_session(run, tmp_path):
    out = json.loads(run("ledger", "init", "--org", "acme", "--supply", "500", "--json"))
    assert out["pulse"]["total"] == 500
    run("ledger", "init", "--org", "again", ok=False)
    alice = json.loads(run("ledger", "join", "alice", "--json"))["who"]
    run("ledger", "approve", "alice")
    run("ledger", "transfer", "me", "alice", "120")
    assert "balance would go negative" in run("ledger", "transfer", "alice", "me", "999", ok=False)
    rec = json.loads(run("ledger", "pulse", "--json"))
    assert rec["pulse"] == 1 and rec["total"] == 500
    bal = {r["id"]: r["balance"] for r in json.loads(run("ledger", "balance", "--json"))}
    assert bal[alice] == 120 and sum(bal.values()) == 500
    assert json.loads(run("ledger", "balance", "alice", "--pulse", "0", "--json"))[0]["balance"] == 0
    root = run("ledger", "root").strip()
    proof = json.loads(run("ledger", "prove", "alice", "--json"))
    assert proof["kind"] == "inclusion" and proof["root"] == root
    assert "balance 120" in run("ledger", "verify", proof["hex"], "--root", root, "--account", alice)
    pf = tmp_path / "p.bin"
    run("ledger", "prove", "alice", "--out", str(pf))
    assert json.loads(run("ledger", "verify", str(pf), "--root", root, "--json"))["ok"]
    # a wrong root and a tampered proof are refused
    assert "NOT verify" in run("ledger", "verify", proof["hex"], "--root", "00" * 32, ok=False)
    bad = proof["hex"][:-2] + ("00" if proof["hex"][-2:] != "00" else "01")
    run("ledger", "verify", bad, "--root", root, ok=False)
    old_root = json.loads(run("ledger", "root", "--pulse", "0", "--json"))["root"]
    assert old_root != root
    hist = run("ledger", "history", "alice", "--check")
    assert "transfer 120" in hist and "audit:" in hist
    run("ledger", "root", "--pulse", "99", ok=False)


def test_credit_session(run):
    peer = "ab" * 20
    run("credit", "grant", peer, "--cap", "1MiB", "--expires", "30d")
    assert json.loads(run("credit", "use", peer, "1000KiB", "--json"))["used"] == 1024000
    assert "pass its cap" in run("credit", "use", peer, "100KiB", ok=False)
    rows = json.loads(run("credit", "show", "--json"))
    assert rows[0]["granted"]["cap"] == 1 << 20 and rows[0]["used"] == 1024000
    run("credit", "revoke", peer)
    assert "revoked" in run("credit", "use", peer, "1", ok=False)
    assert json.loads(run("credit", "settle", peer, "--json"))["net"] == 0
    run("credit", "grant", "nothex", "--cap", "1", ok=False)
    run("credit", "grant", peer, "--cap", "lots", ok=False)


def test_missing_store_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(main, ["--store", str(tmp_path / "none"), "ledger", "pulse"])
    assert r.exit_code == 1 and "no store" in r.output
    path = str(tmp_path / "s")
    Store.create(path, map_size=1 << 26).close()
    r = CliRunner().invoke(main, ["--store", path, "ledger", "balance"])
    assert r.exit_code == 1 and "no ledger" in r.output


def test_out_of_range_numbers_are_clean_errors(run):
    """Pulses are u32, sizes and amounts below 2**64, durations bounded: a number outside
    is a one-line error (click's usage error or a ClickException), never a struct.error."""
    run("ledger", "init", "--org", "acme")
    for args in (["ledger", "root", "--pulse", "-1"], ["ledger", "root", "--pulse", str(1 << 40)],
                 ["ledger", "balance", "--pulse", str(1 << 32)], ["ledger", "prove", "me", "--pulse", str(1 << 33)],
                 ["ledger", "history", "--since", str(1 << 40)], ["ledger", "history", "--since", "-3"],
                 ["ledger", "transfer", "me", "me", "--", "-5"], ["ledger", "transfer", "me", "me", str(1 << 64)],
                 ["credit", "grant", "ab" * 20, "--cap", "99999999TiB"],
                 ["credit", "grant", "ab" * 20, "--cap", "1MiB", "--expires", "99999999999d"]):
        out = run(*args, ok=False)
        assert "Error" in out and "struct.error" not in out and "Traceback" not in out, (args, out)
    assert "must be positive" in run("ledger", "transfer", "me", "me", "--", "-5", ok=False)
