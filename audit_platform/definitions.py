"""The Dagster code location: ``defs`` is what ``workspace.yaml`` loads.

Loading needs no database: resources connect when a run, check, schedule or sensor uses them. URLs and the
webhook are passed as ``dg.EnvVar`` so the UI shows the variables' names, never their values; optional ones
(``AUDIT_REPLICA_URLS``, ``AUDIT_REDIS_URL``, ``AUDIT_ALERT_WEBHOOK_URL``, ``AUDIT_UI_BASE_URL``) only when set
at load time, since an ``EnvVar`` of an unset variable fails the run that resolves it. Every other setting comes
from the ``AUDIT_*`` environment through ``AuditSettings``.
"""

from __future__ import annotations

import os
import warnings
from typing import TypeVar

import dagster as dg

# The assets use `backfill_policy` deliberately (one run per backfill range); Dagster marks the parameter beta and
# says so on every load of the code location — in the code server, each run and each step. Known, not actionable:
# silenced before the modules that use it are imported. Every other warning, beta ones included, still shows.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)

from audit_platform.alerts import AlertResource  # noqa: E402  (after the filter above)
from audit_platform.assets import ASSETS  # noqa: E402
from audit_platform.checks import CHECKS  # noqa: E402
from audit_platform.jobs import JOBS, SCHEDULES  # noqa: E402
from audit_platform.resources import AuditDatabaseResource  # noqa: E402
from audit_platform.sensors import SENSORS  # noqa: E402


_T = TypeVar("_T", str, None)


def _env_if_set(name: str, default: _T) -> str | _T:
    """``dg.EnvVar(name)`` when the variable is set (non-empty) now, else ``default``."""
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else default


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "audit_db": AuditDatabaseResource(
            database_url=dg.EnvVar("AUDIT_DATABASE_URL"),
            replica_urls=_env_if_set("AUDIT_REPLICA_URLS", ""),
            redis_url=_env_if_set("AUDIT_REDIS_URL", ""),
        ),
        "alerts": AlertResource(
            webhook_url=_env_if_set("AUDIT_ALERT_WEBHOOK_URL", None),
            ui_base_url=_env_if_set("AUDIT_UI_BASE_URL", None),
        ),
    },
)
