"""Atomic writes: an export either lands complete at OUT or leaves nothing there.

The artifact is written to a temporary name in OUT's own directory (so the final
``os.replace`` is a rename on one filesystem, atomic on POSIX and Windows), then moved over OUT.
Any exception, KeyboardInterrupt included, removes the temporary file and leaves an existing
OUT untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_writable(path, *, arg: str = "path") -> Path:
    """Resolve ``path`` and check that a file can be created there, before any slow work.
    Raises ValueError naming ``arg`` when the directory is missing, not a directory or not
    writable, or when ``path`` itself is a directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path).expanduser()
    if str(path) == "" or p.is_dir():
        raise ValueError(f"{arg} must name a file, got a directory: {str(path)!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise ValueError(f"{arg}: directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{arg}: {str(parent)!r} is not a directory")
    # a real file made and removed: os.access says yes to root on a read-only filesystem
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"{arg}: directory {str(parent)!r} is not writable ({exc.strerror})"
        ) from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{arg}: {str(p)!r} exists and is not writable")
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, *, arg: str = "path") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so tools that look at the
    extension still work); on success move it over ``path``, on failure delete it."""
    final = check_writable(path, arg=arg)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists() or tmp_path.stat().st_size == 0:
            raise RuntimeError(f"export wrote nothing to the temporary file for {final}")
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists() and tmp_path != final:
                tmp_path.unlink()
