"""The code location loads (what `dagster dev` / the webserver do first)."""

from __future__ import annotations

import dagster as dg


def test_definitions_load() -> None:
    from audit_platform.definitions import defs

    assert isinstance(defs, dg.Definitions)
    defs.get_repository_def()  # resolves everything, as the webserver does
