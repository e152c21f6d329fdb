"""The development environment of a local directory: the ``AUDIT_*`` variables with which every command of
``audit-platform`` works against the local servers of that directory.

``local up`` prints them for ``eval``; ``dev`` sets them for itself and for Dagster. One function makes them for
both, so that what runs under ``dev`` also runs after ``eval "$(audit-platform local up)"``:

- ``AUDIT_DATABASE_URL``, ``AUDIT_REPLICA_URLS``, ``AUDIT_REDIS_URL``: the local servers;
- ``AUDIT_ARCHIVE__ROOT_URI``: ``<dir>/archive`` (0700), for ``partitions archive`` / ``purge`` / ``restore``;
- ``AUDIT_REPORTS__DIRECTORY``: ``<dir>/reports``;
- ``AUDIT_INTEGRITY__SIGNING_KEY`` / ``AUDIT_INTEGRITY__PUBLIC_KEYS``: a development key pair kept (0600) in
  ``<dir>/integrity-dev-key.json``, for ``integrity seal`` and ``verify``;
- ``AUDIT_PRIVACY__LOOKUP_KEY``: a development key of the subject mapping's lookup index kept (0600) in
  ``<dir>/privacy-dev-key``, for ``subject export`` / ``erase``;
- ``AUDIT_CACHE__KEY``: a development key of the Redis cache (32 random bytes, base64) kept (0600) in
  ``<dir>/cache-dev-key``, where the installed core has that setting.

The keys are for development only: production keys live in a secret store (``audit-platform integrity keygen``).

Example::

    variables = local_environment(Path(".audit-platform"), LocalServers(".audit-platform").up())
    print(shell_exports(variables), end="")        # export AUDIT_DATABASE_URL=postgresql://… (shell-quoted)
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from audit_db_core.private_files import make_private_dirs, write_private

if TYPE_CHECKING:
    from audit_local.servers import LocalEndpoints

logger = logging.getLogger("audit_local.environment")

#: The files in the directory that hold the development keys.
SIGNING_KEY_FILE = "integrity-dev-key.json"
LOOKUP_KEY_FILE = "privacy-dev-key"
CACHE_KEY_FILE = "cache-dev-key"
SIGNING_KEY = "AUDIT_INTEGRITY__SIGNING_KEY"
PUBLIC_KEYS = "AUDIT_INTEGRITY__PUBLIC_KEYS"
LOOKUP_KEY = "AUDIT_PRIVACY__LOOKUP_KEY"
CACHE_KEY = "AUDIT_CACHE__KEY"
#: The development keys other than the signing pair: variable, file, how a new key is made.
SECRETS: tuple[tuple[str, str, Callable[[], str]], ...] = (
    (LOOKUP_KEY, LOOKUP_KEY_FILE, lambda: secrets.token_urlsafe(32)),  # at least 32 characters
    (CACHE_KEY, CACHE_KEY_FILE, lambda: base64.b64encode(secrets.token_bytes(32)).decode()),  # 32 bytes, base64
)


def server_variables(endpoints: LocalEndpoints) -> dict[str, str]:
    """The URLs of the local servers. A server the directory does not run is exported empty, which the settings
    read as unset, so that no URL of an earlier ``eval`` stays behind."""
    return {
        "AUDIT_DATABASE_URL": endpoints.database_url,
        "AUDIT_REPLICA_URLS": ",".join(endpoints.replica_urls),
        "AUDIT_REDIS_URL": endpoints.redis_url,
    }


def development_variables(directory: Path, *, keep: Mapping[str, str] | None = None) -> dict[str, str]:
    """Archive root, reports directory and development keys under ``directory`` (made when missing), except the
    variables already set (non-empty) in ``keep``: ``dev`` passes its environment, so an operator's own archive
    root or signing key wins. The key pair goes together: a signing key of one's own is never given a development
    public key."""
    directory = directory.expanduser().resolve()
    kept = {name for name, value in (keep or {}).items() if value.strip()}
    out: dict[str, str] = {}
    if "AUDIT_ARCHIVE__ROOT_URI" not in kept:
        out["AUDIT_ARCHIVE__ROOT_URI"] = make_private_dirs(directory / "archive").as_uri()
    if "AUDIT_REPORTS__DIRECTORY" not in kept:  # made by the first report written there
        out["AUDIT_REPORTS__DIRECTORY"] = str(directory / "reports")
    if SIGNING_KEY not in kept:
        keys = development_keys(directory / SIGNING_KEY_FILE)
        out[SIGNING_KEY] = keys[SIGNING_KEY]
        if PUBLIC_KEYS not in kept:
            out[PUBLIC_KEYS] = keys[PUBLIC_KEYS]
    for name, file, make in SECRETS:
        if name not in kept:
            out[name] = development_secret(directory / file, make)
    return out


def local_environment(directory: Path, endpoints: LocalEndpoints) -> dict[str, str]:
    """Everything ``local up`` exports: the servers' URLs and :func:`development_variables` of ``directory``."""
    return {**server_variables(endpoints), **development_variables(directory)}


def shell_exports(variables: Mapping[str, str]) -> str:
    """``export NAME=value`` lines, values shell-quoted, for ``eval "$(...)"``."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def development_keys(path: Path) -> dict[str, str]:
    """The development signing key pair kept in ``path`` (made, 0600 in a 0700 directory, when missing) as
    ``{AUDIT_INTEGRITY__SIGNING_KEY: …, AUDIT_INTEGRITY__PUBLIC_KEYS: …}``."""
    from audit_db_core import integrity

    if path.exists():
        keys = json.loads(path.read_text())
    else:
        private, public = integrity.generate_key_pair()
        keys = {"signing_key": private, "public_key": public}
        make_private_dirs(path.parent)
        write_private(path, json.dumps(keys).encode(), exclusive=True)
        logger.info("made a development signing key in %s", path)
    return {SIGNING_KEY: keys["signing_key"], PUBLIC_KEYS: keys["public_key"]}


def development_secret(path: Path, make: Callable[[], str]) -> str:
    """The development key kept in ``path`` (made by ``make``, 0600 in a 0700 directory, when missing)."""
    if path.exists():
        return path.read_text().strip()
    key = make()
    make_private_dirs(path.parent)
    write_private(path, (key + "\n").encode(), exclusive=True)
    logger.info("made a development key in %s", path)
    return key
