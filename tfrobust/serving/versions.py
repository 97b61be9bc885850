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
import tempfile
from pathlib import Path
from typing import Callable

__all__ = [
    "list_versions",
    "next_version",
    "clean_stale_temporaries",
    "claim_version",
    "write_version",
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
    removed: list[str] = []
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


def claim_version(base_path: str | os.PathLike, version: int | None = None) -> int:
    """Readies ``base_path`` for a new version and returns its number.

    Creates ``base_path`` if missing and removes the temporary folders of dead exports
    (:func:`clean_stale_temporaries`).

    Args:
        base_path: TF Serving's model base path.
        version: the number wanted; ``None`` for :func:`next_version`.

    Returns:
        The version number, not yet taken.

    Raises:
        ValueError: ``base_path/<version>`` already exists.
    """
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(base)
    version = next_version(base) if version is None else version
    final = base / str(version)
    if final.exists():
        raise ValueError(f"version {version} already exists at {str(final)!r}; choose another --version")
    return version


def write_version(base_path: str | os.PathLike, version: int, write: Callable[[Path], None]) -> str:
    """Writes ``base_path/<version>/`` atomically.

    ``write`` fills a hidden temporary folder inside ``base_path`` (named after this process, so
    :func:`clean_stale_temporaries` can tell a dead export's); the folder then gets the permissions
    of the umask, is flushed to disk and renamed to the version, so a watcher never sees half a
    version. On any failure, the temporary folder is removed.

    Args:
        base_path: TF Serving's model base path (existing, e.g. after :func:`claim_version`).
        version: the version number.
        write: called with the temporary folder; writes the version's files into it.

    Returns:
        The version folder, ``base_path/<version>``.

    Raises:
        ValueError: the version appeared while it was being written.
    """
    base = Path(base_path)
    final = base / str(version)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}v{version}-pid{os.getpid()}-", dir=base))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp made it private (0700)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError as err:
            raise ValueError(f"version {version} appeared at {str(final)!r} while exporting") from err
        _fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)
