"""AuditSettings: environment parsing, defaults, clear errors naming the variable, secrets kept out of sight."""

from __future__ import annotations

import logging

import pytest

from audit_db_core import AuditSettings, ConfigurationError, Period

URL = "postgresql://app:Sup3rS3cret@db.example:5432/audit"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("AUDIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AUDIT_DATABASE_URL", URL)
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    s = AuditSettings()
    assert s.partitions.interval == Period(months=1)
    assert s.partitions.active_window == Period(days=90)
    assert s.partitions.premake >= 1
    assert s.retention.default == Period(months=84)
    assert s.breakers.primary.failure_threshold == 5 and s.breakers.primary.reset_timeout_seconds == 30
    assert s.breakers.replica.failure_threshold == 3 and s.breakers.replica.window_seconds == 15
    assert s.breakers.redis.failure_threshold == 10 and s.breakers.redis.reset_timeout_seconds == 5
    assert s.breakers.partitions.failure_threshold == 2 and s.breakers.partitions.reset_timeout_seconds == 60
    assert s.replica_urls == [] and s.redis_url is None


def test_environment_with_nested_sections(env: pytest.MonkeyPatch) -> None:
    env.setenv("AUDIT_REPLICA_URLS", "postgresql://r1/audit, postgresql://r2/audit")
    env.setenv("AUDIT_REDIS_URL", "redis://:pw@cache:6379/0")
    env.setenv("AUDIT_POOL__MAX_SIZE", "25")
    env.setenv("AUDIT_PARTITIONS__INTERVAL", "quarterly")
    env.setenv("AUDIT_PARTITIONS__PREMAKE", "6")
    env.setenv("AUDIT_RETENTION__POLICIES", '{"PHI": "10 years", "PUBLIC": "1 year"}')
    env.setenv("AUDIT_BREAKERS__PRIMARY__FAILURE_THRESHOLD", "7")
    s = AuditSettings()
    assert len(s.replica_urls) == 2
    assert s.pool.max_size == 25
    assert s.partitions.interval == Period(months=3) and s.partitions.premake == 6
    assert s.retention.for_policy("PHI") == Period(months=120)
    assert s.retention.for_policy("unknown") == Period(months=84)
    # A partial override keeps the other defaults of that breaker.
    assert s.breakers.primary.failure_threshold == 7 and s.breakers.primary.window_seconds == 30


@pytest.mark.parametrize(
    "value,expected",
    [("monthly", Period(months=1)), ("2 months", Period(months=2)), ("weekly", Period(days=7)),
     ("14 days", Period(days=14)), ("yearly", Period(months=12))],
)
def test_custom_intervals(env: pytest.MonkeyPatch, value: str, expected: Period) -> None:
    env.setenv("AUDIT_PARTITIONS__INTERVAL", value)
    assert AuditSettings().partitions.interval == expected


BAD_SETTINGS = [
    ("AUDIT_DATABASE_URL", "mysql://x/db", "AUDIT_DATABASE_URL"),
    ("AUDIT_DATABASE_URL", "", "AUDIT_DATABASE_URL"),
    ("AUDIT_REPLICA_URLS", "postgresql://ok/db,http://nope", "AUDIT_REPLICA_URLS"),
    ("AUDIT_REPLICA_URLS", "[not json", "AUDIT_REPLICA_URLS"),
    ("AUDIT_REDIS_URL", "memcached://x", "AUDIT_REDIS_URL"),
    ("AUDIT_POOL__MAX_SIZE", "many", "AUDIT_POOL__MAX_SIZE"),
    ("AUDIT_POOL__MAX_SIZE", "0", "AUDIT_POOL__MAX_SIZE"),
    ("AUDIT_POOL__MIN_SIZE", "50", "AUDIT_POOL"),
    ("AUDIT_PARTITIONS__INTERVAL", "fortnightly", "AUDIT_PARTITIONS__INTERVAL"),
    ("AUDIT_PARTITIONS__INTERVAL", "5 months", "AUDIT_PARTITIONS__INTERVAL"),
    ("AUDIT_PARTITIONS__PREMAKE", "-1", "AUDIT_PARTITIONS__PREMAKE"),
    ("AUDIT_PARTITIONS__ACTIVE_WINDOW", "0 days", "AUDIT_PARTITIONS__ACTIVE_WINDOW"),
    ("AUDIT_RETENTION__DEFAULT", "forever", "AUDIT_RETENTION__DEFAULT"),
    ("AUDIT_RETENTION__POLICIES", '{"PHI": "ten years"}', "AUDIT_RETENTION__POLICIES"),
    ("AUDIT_RETENTION__POLICIES", "PHI=7y", "AUDIT_RETENTION__POLICIES"),
    ("AUDIT_CACHE__ENABLED", "maybe", "AUDIT_CACHE__ENABLED"),
    ("AUDIT_BREAKERS__REDIS__FAILURE_THRESHOLD", "0", "AUDIT_BREAKERS__REDIS__FAILURE_THRESHOLD"),
    ("AUDIT_QUERY__MAX_PAGE_SIZE", "100000", "AUDIT_QUERY__MAX_PAGE_SIZE"),
    ("AUDIT_INGEST__BATCH_SIZE", "0", "AUDIT_INGEST__BATCH_SIZE"),
]


@pytest.mark.parametrize("var,value,named", BAD_SETTINGS, ids=[f"{v}={x!r}" for v, x, _ in BAD_SETTINGS])
def test_invalid_setting_fails_at_start_naming_it(env: pytest.MonkeyPatch, var: str, value: str, named: str) -> None:
    env.setenv(var, value)
    with pytest.raises(ConfigurationError) as info:
        AuditSettings()
    assert named in info.value.fields, info.value.fields
    assert named in str(info.value)


def test_missing_database_url_is_named(env: pytest.MonkeyPatch) -> None:
    env.delenv("AUDIT_DATABASE_URL")
    with pytest.raises(ConfigurationError) as info:
        AuditSettings()
    assert "AUDIT_DATABASE_URL" in str(info.value)


def test_passwords_never_show(env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    env.setenv("AUDIT_REPLICA_URLS", "postgresql://ro:ReplicaPw9@r1/audit")
    env.setenv("AUDIT_REDIS_URL", "redis://:RedisPw7@cache:6379/0")
    s = AuditSettings()
    shown = " ".join([repr(s), str(s), s.display_database_url, *s.display_replica_urls, str(s.display_redis_url)])
    for secret in ("Sup3rS3cret", "ReplicaPw9", "RedisPw7"):
        assert secret not in shown
    assert s.display_database_url == "postgresql://app:***@db.example:5432/audit"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %r", s)
    assert "Sup3rS3cret" not in caplog.text
    # An error about a bad URL must not print it back either.
    env.setenv("AUDIT_REPLICA_URLS", "mysql://ro:LeakMe1@r1/audit")
    with pytest.raises(ConfigurationError) as info:
        AuditSettings()
    assert "LeakMe1" not in str(info.value)


def test_with_overrides_revalidates(env: pytest.MonkeyPatch) -> None:
    s = AuditSettings()
    t = s.with_overrides(redis_url="redis://h:1/0")
    assert t.redis_url is not None and t.database_url.get_secret_value() == URL
    with pytest.raises(ConfigurationError):
        s.with_overrides(redis_url="nope://h")


def test_multi_host_urls_are_one_url_each_and_masked(env: pytest.MonkeyPatch) -> None:
    """A libpq multi-host URL (every node of a cluster, the primary found by target_session_attrs) is one URL: its
    hosts are not split into replicas, its ports are checked, its password is masked."""
    primary = "postgresql://app:Sup3rS3cret@pg1:5432,pg2:5433,pg3:5434/audit?target_session_attrs=read-write"
    env.setenv("AUDIT_DATABASE_URL", primary)
    env.setenv("AUDIT_REPLICA_URLS", "postgresql://ro:ReplicaPw9@pg1:5432,pg2:5433/audit?target_session_attrs=standby,"
                                     " postgresql://ro:ReplicaPw9@pg3:5434/audit")
    s = AuditSettings()
    assert s.database_url.get_secret_value() == primary
    assert s.display_database_url == ("postgresql://app:***@pg1:5432,pg2:5433,pg3:5434/audit"
                                      "?target_session_attrs=read-write")
    assert s.display_replica_urls == [
        "postgresql://ro:***@pg1:5432,pg2:5433/audit?target_session_attrs=standby",
        "postgresql://ro:***@pg3:5434/audit",
    ]
    env.setenv("AUDIT_DATABASE_URL", "postgresql://app:Sup3rS3cret@pg1:5432,pg2:99999/audit")
    with pytest.raises(ConfigurationError) as info:
        AuditSettings()
    assert "AUDIT_DATABASE_URL" in str(info.value) and "Sup3rS3cret" not in str(info.value)


def test_synchronous_commit_reaches_the_sessions_and_off_is_refused(env: pytest.MonkeyPatch) -> None:
    from audit_db_core.connections import connect_kwargs

    assert "synchronous_commit" not in connect_kwargs(AuditSettings())["options"]  # the server's own setting
    env.setenv("AUDIT_INGEST__SYNCHRONOUS_COMMIT", "remote_apply")
    assert "-c synchronous_commit=remote_apply" in connect_kwargs(AuditSettings())["options"]
    env.setenv("AUDIT_INGEST__SYNCHRONOUS_COMMIT", "off")
    with pytest.raises(ConfigurationError) as info:
        AuditSettings()
    assert "AUDIT_INGEST__SYNCHRONOUS_COMMIT" in str(info.value)
