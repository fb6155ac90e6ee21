"""Files only their owner may read: credentials, and configuration that names them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` (mode 0600, its directory created 0700 if missing), replacing any
    file there at once: a reader sees the old file or the new one, never a part. The temporary file
    is made anew (never a file someone placed there first)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
