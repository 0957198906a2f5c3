"""Identity of files on disk, for per-process caches that must notice a rewritten file."""

from __future__ import annotations

import os
from pathlib import Path


def file_stamp(path: str | os.PathLike | None, base_dir: str | None = None) -> tuple | None:
    """``(path, mtime_ns, size, inode)`` of a file or folder, or ``None`` if there is none.

    A cache keyed on this tuple serves a new object once the file is rewritten, replaced or
    touched, even if it keeps its name (a config path alone does not change then).
    """
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    try:
        st = p.stat()
    except OSError:
        return (str(p), None)
    return (str(p), st.st_mtime_ns, st.st_size, st.st_ino)
