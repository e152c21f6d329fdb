"""Files that hold PHI or keys — report and subject exports, inclusion proofs, archives on a local disk,
development keys — are created readable and writable by their owner only (0600), in directories only the owner
can enter (0700), whatever the process's umask.

The mode is given when the file is created (never a moment of wider access) and set again with ``fchmod``, since a
umask can only take bits away. Directories that already exist are left as they are: they are the operator's.

Example::

    make_private_dirs(Path("exports/2026"))
    write_private(Path("exports/2026/p-123.json"), data)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: Mode of a file holding PHI or key material: owner read/write.
FILE_MODE: Final = 0o600
#: Mode of a directory this library creates for such files: owner only.
DIR_MODE: Final = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents with mode 0700; return it. Existing directories are untouched."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(directory, DIR_MODE)  # mkdir's mode passes through the umask
    return target


def create_private(path: str | os.PathLike[str], *, exclusive: bool = False) -> int:
    """Open ``path`` for writing as a new or emptied 0600 file; return the descriptor (the caller closes it)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` as a 0600 file (``exclusive``: refuse to replace an existing file)."""
    with os.fdopen(create_private(path, exclusive=exclusive), "wb") as f:
        f.write(data)


def make_private(path: str | os.PathLike[str]) -> None:
    """Set an existing file (written by a library that chose its own mode, e.g. pyarrow) to 0600."""
    os.chmod(path, FILE_MODE)
