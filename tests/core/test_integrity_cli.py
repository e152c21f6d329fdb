"""``audit-platform verify`` and ``audit-platform integrity …``, run as a user runs them (a subprocess)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings

CLI = [sys.executable, "-m", "audit_db_core.cli"]
UTC = dt.UTC
TODAY = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        umask: int | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    return subprocess.run([*CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=120,
                          input=stdin, umask=-1 if umask is None else umask)


def test_keygen_seal_verify_prove_and_check_proof(fresh_database: str, tmp_path: Path) -> None:
    keygen = run("integrity", "keygen")
    assert keygen.returncode == 0, keygen.stderr
    generated = dict(line.split("=", 1) for line in keygen.stdout.splitlines())
    private, public = generated["AUDIT_INTEGRITY__SIGNING_KEY"], generated["AUDIT_INTEGRITY__PUBLIC_KEYS"]
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_INTEGRITY__SIGNING_KEY": private,
           "AUDIT_INTEGRITY__CUTOFF_GRACE_SECONDS": "0.05", "AUDIT_INTEGRITY__SEAL_DELAY_SECONDS": "0"}
    events = [AuditEvent(action="user.login", status="success", principal_id=f"u{i}",
                         event_time=TODAY - dt.timedelta(days=2, hours=-i)) for i in range(3)]
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(events)
    time.sleep(0.2)

    sealed = run("integrity", "seal", env=env)
    assert sealed.returncode == 0, sealed.stderr
    assert "sealed: 2 digest(s), 3 event(s)" in sealed.stdout
    verified = run("verify", "--json", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["status"] == "verified" and report["events_checked"] == 3 and report["problems"] == []
    human = run("verify", "--from", (TODAY - dt.timedelta(days=2)).date().isoformat(), env=env)
    assert human.returncode == 0 and human.stdout.startswith("verified:")
    head = json.loads(run("integrity", "head", "--json", env=env).stdout)
    assert head["chain_seq"] == 2
    anchored = run("verify", "--chain-only", "--anchor", f"2:{head['digest_hash']}", env=env)
    assert anchored.returncode == 0, anchored.stdout

    proof_file = tmp_path / "proofs" / "proof.json"
    target = events[1]
    proved = run("integrity", "prove", target.event_time.isoformat(), str(target.event_id), "--output",
                 str(proof_file), env=env, umask=0)
    assert proved.returncode == 0, proved.stderr
    # The proof names an event of the log: owner-only even under a permissive umask, and so is the directory made.
    assert (proof_file.stat().st_mode & 0o777, proof_file.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    # The auditor's side: the proof and the public key, no database, no other setting.
    checked = run("integrity", "check-proof", str(proof_file), "--public-key", public)
    assert checked.returncode == 0 and "proof verified" in checked.stdout, checked.stdout + checked.stderr
    from_stdin = run("integrity", "check-proof", "-", "--json", env={"AUDIT_INTEGRITY__PUBLIC_KEYS": public},
                     stdin=proof_file.read_text())
    assert from_stdin.returncode == 0 and json.loads(from_stdin.stdout)["ok"] is True
    doc = json.loads(proof_file.read_text())
    doc["leaf_index"] = 0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    rejected = run("integrity", "check-proof", str(tampered), "--public-key", public)
    assert rejected.returncode == 1 and "REJECTED" in rejected.stdout
    other_key = dict(line.split("=", 1) for line in run("integrity", "keygen").stdout.splitlines())
    stranger = run("integrity", "check-proof", str(proof_file), "--public-key", other_key["AUDIT_INTEGRITY__PUBLIC_KEYS"])
    assert stranger.returncode == 1 and "not trusted" in stranger.stdout
    not_a_key = run("integrity", "check-proof", str(proof_file), "--public-key", "not-a-key")
    assert not_a_key.returncode == 2 and "public_keys" in not_a_key.stderr

    outputs = " ".join(p.stdout + p.stderr for p in (sealed, verified, human, proved, checked, rejected))
    assert private not in outputs  # only keygen ever prints the signing key

    # Tampering: a row removed behind the library's back. Exit 1, and the event named.
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_log WHERE event_id = %s", (target.event_id,))
    failed = run("verify", env=env)
    assert failed.returncode == 1
    assert "deleted_row" in failed.stdout and str(target.event_id) in failed.stdout


def test_verify_exit_codes_for_bad_input_and_unsealed_periods(fresh_database: str) -> None:
    keys = dict(line.split("=", 1) for line in run("integrity", "keygen").stdout.splitlines())
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_INTEGRITY__PUBLIC_KEYS": keys["AUDIT_INTEGRITY__PUBLIC_KEYS"]}
    nothing = run("verify", env=env)
    assert nothing.returncode == 3 and "nothing has been sealed yet" in nothing.stdout  # never a false "verified"
    bad = run("verify", "--from", "last tuesday", env=env)
    assert bad.returncode == 2 and "--from" in bad.stderr
    naive = run("verify", "--to", "2026-11-01T08:00:00", env=env)
    assert naive.returncode == 2 and "--to" in naive.stderr
    backwards = run("verify", "--from", "2026-11-20", "--to", "2026-11-10", env=env)
    assert backwards.returncode == 2 and "until" in backwards.stderr
    no_keys = run("verify", env={"AUDIT_DATABASE_URL": fresh_database})
    assert no_keys.returncode == 2 and "AUDIT_INTEGRITY__PUBLIC_KEYS" in no_keys.stderr
    no_signing_key = run("integrity", "seal", env=env)
    assert no_signing_key.returncode == 2 and "AUDIT_INTEGRITY__SIGNING_KEY" in no_signing_key.stderr
    unknown = run("integrity", "prove", "2026-11-01T00:00:00Z", "0190f3a0-0000-7000-8000-000000000000", env=env)
    assert unknown.returncode == 2 and "not in any digest" in unknown.stderr
