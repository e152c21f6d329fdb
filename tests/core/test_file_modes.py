"""Files holding PHI or keys are 0600 and the directories made for them 0700, whatever the umask: report and
subject exports, development keys (proofs: tests/core/test_integrity_cli.py; archives: tests/core/test_archive.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.private_files import make_private_dirs, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 000: whatever is not created private on purpose comes out world-readable (0666 / 0777)."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_helpers_under_a_permissive_umask(tmp_path: Path, permissive_umask: None) -> None:
    existing = tmp_path / "mine"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    made = make_private_dirs(existing / "a" / "b")
    assert (mode(existing), mode(existing / "a"), mode(made)) == (0o755, 0o700, 0o700)  # the operator's stays
    write_private(made / "f", b"x")
    assert mode(made / "f") == 0o600
    (made / "g").write_bytes(b"y")
    assert mode(made / "g") == 0o666  # the control: a plain write under this umask
    with pytest.raises(FileExistsError):
        write_private(made / "f", b"z", exclusive=True)
    write_private(made / "f", b"z")
    assert (made / "f").read_bytes() == b"z" and mode(made / "f") == 0o600


def test_report_and_subject_exports_are_private(fresh_database: str, tmp_path: Path, permissive_umask: None) -> None:
    pytest.importorskip("pandas", reason="HIPAA reports need the 'reports' extra")
    settings = AuditSettings(database_url=fresh_database,
                             privacy={"pseudonymize": ["target_resource_id"],
                                      "lookup_key": "file-mode-test-lookup-key-0123456789abcdef"})
    with AuditDatabase(settings) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="dr.who",
                             organization_id="org-1", target_resource_type="Patient", target_resource_id="p-1"))
        report = db.reports.compliance_summary("2020-01-01", "2100-01-01")
        for fmt in ("csv", "json", "parquet"):
            result = report.to_csv(tmp_path / "reports" / "2026" / f"s.{fmt}") if fmt == "csv" else \
                getattr(report, f"to_{fmt}")(tmp_path / "reports" / "2026" / f"s.{fmt}")
            assert mode(result.path) == 0o600, fmt
        assert (mode(tmp_path / "reports"), mode(tmp_path / "reports" / "2026")) == (0o700, 0o700)
        path, _, _ = db.privacy.export_subject("p-1").write(tmp_path / "exports" / "p-1.json")
        assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_development_keys_are_private(tmp_path: Path, permissive_umask: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit_local.cli import development_signing_key

    for name in ("AUDIT_INTEGRITY__SIGNING_KEY", "AUDIT_INTEGRITY__PUBLIC_KEYS"):  # restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    key = development_signing_key(tmp_path / "dev" / "integrity-dev-key.json")
    assert (mode(key), mode(key.parent)) == (0o600, 0o700)
    assert os.environ["AUDIT_INTEGRITY__SIGNING_KEY"]
