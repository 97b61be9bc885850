"""TF Serving's version folders under a model base path: listing them, numbering the next one, and
the temporary folders an atomic export writes first.

A version appears atomically: it is written to a hidden temporary folder
inside ``BASE`` (TF Serving ignores names that are not integers), flushed to
disk and renamed, so a file-system watcher never sees half a version.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = [
    "list_versions",
    "next_version",
    "clean_stale_temporaries",
]


_TMP_PREFIX = ".tmp-export-"

_TMP_RE = re.compile(r"^\.tmp-export-v\d+-pid(\d+)-")


def list_versions(base_path: str | os.PathLike) -> list[int]:
    """Versions under ``base_path``: sub-folders named by a non-negative integer, sorted.

    Temporary export folders (hidden, non-integer names) are not versions,
    neither for this function nor for TF Serving.
    """
    base = Path(base_path)
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        if child.name.isdigit() and child.is_dir():
            found.append(int(child.name))
    return sorted(found)


def next_version(base_path: str | os.PathLike) -> int:
    """One more than the newest version under ``base_path`` (1 for an empty base)."""
    versions = list_versions(base_path)
    return versions[-1] + 1 if versions else 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(base_path: str | os.PathLike) -> list[str]:
    """Removes temporary export folders left by exports that died (their process is gone).

    Returns:
        The removed paths.
    """
    base = Path(base_path)
    removed = []
    if not base.is_dir():
        return removed
    for child in base.iterdir():
        m = _TMP_RE.match(child.name)
        if m and child.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(str(child))
    return removed


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    """Flushes every file and folder under ``root`` to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
