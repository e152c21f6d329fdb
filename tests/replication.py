"""Test helpers for the streaming replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest


@contextmanager
def replay_paused(replica_url: str) -> Iterator[None]:
    """Hold WAL replay on a real replica for the block, so writes on the primary make real lag; resume after.

    Skips when the replica's role may not pause replay: that only happens with a replica given through
    ``AUDIT_TEST_REPLICA_URLS`` (the suite's own local replica runs as a superuser).
    """
    with psycopg.connect(replica_url, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_wal_replay_pause()")
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("pausing WAL replay needs a superuser on the replica")
        try:
            for _ in range(100):
                if conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() == ("paused",):
                    break
                time.sleep(0.05)
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
