"""`local up` gives what `dev` gives: after ``eval "$(audit-platform local up --dir X)"`` every command that needs a
setting finds it — migrate, demo, integrity seal, verify, partitions archive / purge, a report, a subject export —
and the development keys are kept, private, in X.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from audit_local.environment import (
    CACHE_KEY,
    LOOKUP_KEY,
    PUBLIC_KEYS,
    SIGNING_KEY,
    development_variables,
    shell_exports,
)

CLI = [sys.executable, "-m", "audit_db_core.cli"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_development_variables_are_kept_private_and_stable(tmp_path: Path) -> None:
    first = development_variables(tmp_path / "dev")
    assert first == development_variables(tmp_path / "dev")  # the same keys on every start
    assert first["AUDIT_ARCHIVE__ROOT_URI"] == (tmp_path / "dev" / "archive").resolve().as_uri()
    assert first["AUDIT_REPORTS__DIRECTORY"] == str((tmp_path / "dev" / "reports").resolve())
    assert {SIGNING_KEY, PUBLIC_KEYS, LOOKUP_KEY} <= set(first)
    assert CACHE_KEY in first
    for name in ("integrity-dev-key.json", "privacy-dev-key") + (("cache-dev-key",) if CACHE_KEY in first else ()):
        assert mode(tmp_path / "dev" / name) == 0o600, name
    assert mode(tmp_path / "dev") == 0o700 and mode(tmp_path / "dev" / "archive") == 0o700
    # Whatever is exported, the installed settings accept (a key they did not know would fail every command).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}, **first,
           "AUDIT_DATABASE_URL": "postgresql://u@127.0.0.1:1/db"}
    script = ("from audit_db_core.config import AuditSettings; s = AuditSettings(); "
              "print(s.archive.root_uri, s.integrity.signing_key is not None, s.privacy.lookup_key is not None)")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [first["AUDIT_ARCHIVE__ROOT_URI"], "True", "True"]


def test_an_operators_own_settings_win_and_a_signing_key_keeps_its_own_public_key(tmp_path: Path) -> None:
    keep = {"AUDIT_ARCHIVE__ROOT_URI": "s3://bucket/audit", SIGNING_KEY: "operator's key", "AUDIT_REPORTS__DIRECTORY": ""}
    made = development_variables(tmp_path / "dev", keep=keep)
    assert "AUDIT_ARCHIVE__ROOT_URI" not in made and SIGNING_KEY not in made
    assert PUBLIC_KEYS not in made  # a development public key would not match the operator's signing key
    assert "AUDIT_REPORTS__DIRECTORY" in made  # set but empty counts as unset
    assert not (tmp_path / "dev" / "integrity-dev-key.json").exists()


def test_shell_exports_survive_eval() -> None:
    variables = {"AUDIT_A": "x y $HOME 'q'", "AUDIT_B": "a+b/c=="}
    out = subprocess.run(["bash", "-c", shell_exports(variables) + 'printf "%s\\n" "$AUDIT_A" "$AUDIT_B"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == list(variables.values())


@pytest.mark.local_servers
def test_every_command_runs_after_eval_local_up(tmp_path: Path) -> None:
    data = tmp_path / "local"
    cli = " ".join(shlex.quote(part) for part in CLI)
    now = dt.datetime.now(dt.UTC)
    # A month past the active window (set to a day here): it ends at least nine days ago.
    old = (now - dt.timedelta(days=40)).strftime("%Y-%m")
    since, until = (now - dt.timedelta(days=60)).date(), (now + dt.timedelta(days=1)).date()
    script = f"""
set -euo pipefail
eval "$({cli} local up --dir {shlex.quote(str(data))})"
{cli} migrate
{cli} demo --events 300
sleep 1.5  # events stamped within the seal's cutoff grace (1 s) wait for the next seal; a fast machine gets here sooner
{cli} integrity seal
{cli} verify
export AUDIT_PARTITIONS__ACTIVE_WINDOW="1 day"
{cli} partitions create {old}
{cli} partitions archive {old}
{cli} verify
{cli} partitions purge
{cli} report summary --since {since} --until {until} --output {shlex.quote(str(data / "out" / "summary.csv"))}
{cli} subject export --value user-001 --field principal_id --output {shlex.quote(str(data / "out" / "subject.json"))}
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    try:
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=400, env=env)
        assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
        assert "wrote 300 demo events" in out.stdout
        assert out.stdout.count("verified: ") == 2, out.stdout  # before and after the archive
        assert f"audit_log_p{old.replace('-', '_')}  archived" in out.stdout, out.stdout
        assert "would purge 0 partitions" in out.stdout
        assert (data / "archive").is_dir() and any((data / "archive").iterdir())
        assert (data / "out" / "summary.csv").is_file()
        export = json.loads((data / "out" / "subject.json").read_text())
        assert export["events"] and mode(data / "out" / "subject.json") == 0o600
        warnings = [line for line in out.stderr.splitlines() if "WARNING" in line]
        assert warnings == [], warnings
        for name in ("integrity-dev-key.json", "privacy-dev-key"):
            assert mode(data / name) == 0o600
    finally:
        down = subprocess.run([*CLI, "local", "down", "--dir", str(data), "--remove"], capture_output=True,
                              text=True, timeout=120, env=env)
    assert down.returncode == 0, down.stderr
    assert not data.exists()
