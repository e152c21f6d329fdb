"""Re-exports imported on first use (PEP 562): a package names what it offers in its ``__init__`` without importing
the modules that need the database driver until a caller asks for one of their names. So a module with no database
— the offline integrity model, :mod:`audit_db_core.integrity.model` — can be imported without psycopg.

Example::

    _ON_FIRST_USE = {"AuditDatabase": "database"}      # name -> submodule of this package
    __getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE, globals())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def on_first_use(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: a name of ``names`` is imported from its
    submodule when first looked up, then kept in ``namespace`` (the package's ``globals()``), so the hook runs once
    per name."""

    def getattr_(name: str) -> Any:
        submodule = names.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
