"""The Dagster code location: ``defs`` is what ``workspace.yaml`` loads.

The lifecycle assets, schedules, checks and sensors join here; every one of them calls ``audit_db_core``.
"""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
