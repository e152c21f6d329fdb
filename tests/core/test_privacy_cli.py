"""``audit-platform subject export|erase``, run as a user runs it (a subprocess), against real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings

CLI = [sys.executable, "-m", "audit_db_core.cli"]
LOOKUP_KEY = "cli-test-lookup-key-0123456789abcdefghij"
PATIENT = "patient-cli-42"


def run(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    return subprocess.run([*CLI, *args], env={**base, **env}, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_export_and_erase_from_the_command_line(fresh_database: str, tmp_path: Path) -> None:
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_PRIVACY__PSEUDONYMIZE": "principal_id,target_resource_id",
           "AUDIT_PRIVACY__LOOKUP_KEY": LOOKUP_KEY}
    settings = AuditSettings(database_url=fresh_database,
                             privacy={"pseudonymize": ["principal_id", "target_resource_id"], "lookup_key": LOOKUP_KEY})
    with AuditDatabase(settings) as db:
        db.insert_many([AuditEvent(action="patient.record.read", status="success", principal_id="dr.cli",
                                   target_resource_id=PATIENT) for _ in range(2)])

    out = tmp_path / "exports" / "subject.json"
    export = run("subject", "export", "--field", "target_resource_id", "--value", PATIENT, "--output", str(out),
                 env=env)
    assert export.returncode == 0, export.stderr
    assert "wrote 2 event(s) of 1 subject(s)" in export.stdout and PATIENT not in export.stdout
    doc = json.loads(out.read_text())
    assert doc["event_count"] == 2 and {e["target_resource_id"] for e in doc["events"]} == {PATIENT}

    # The identifier from stdin (out of the shell history), the export to stdout.
    piped = run("subject", "export", "--value", "-", env=env, stdin=PATIENT + "\n")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["subjects"][0]["identifier"] == PATIENT

    refused = run("subject", "erase", "--value", PATIENT, env=env)  # no terminal to confirm on, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    erase = run("subject", "erase", "--value", PATIENT, "--yes", "--requested-by", "dpo", env=env)
    assert erase.returncode == 0, erase.stderr
    assert "erased 1 subject(s)" in erase.stdout and "2 event(s) no longer linked" in erase.stdout
    assert PATIENT not in erase.stdout + erase.stderr

    gone = run("subject", "erase", "--value", PATIENT, "--yes", "--json", env=env)
    assert gone.returncode == 3 and json.loads(gone.stdout)["found"] is False
    missing = run("subject", "export", "--value", PATIENT, "--field", "target_resource_id", env=env)
    assert missing.returncode == 3 and json.loads(missing.stdout)["events"] == []

    bad = run("subject", "export", "--subject-id", "nope", env=env)
    assert bad.returncode == 2 and "--subject-id: is not a UUID" in bad.stderr
    with AuditDatabase(settings) as db:
        assert db.count(AuditQuery(target_resource_id=PATIENT)) == 0 and db.count(AuditQuery()) == 2
