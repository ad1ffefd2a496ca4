"""On-disk cache location and atomic writes shared by every stage that caches.

The cache root is ``$EAPBENCH_CACHE`` if set, else ``~/.cache/eapbench``. Writers go
through :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_save`
so that an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-folder of it), created on demand."""
    root = Path(os.environ.get("EAPBENCH_CACHE", Path.home() / ".cache" / "eapbench"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def read_json_entry(path: str | os.PathLike, what: str = "cache file", *, expect: type = dict) -> Any:
    """A cache entry's parsed JSON, or None if it is missing. An unreadable entry (binary garbage,
    truncated or invalid JSON, not an ``expect``) is named in a warning and deleted, so that the
    caller recomputes it: a corrupt cache file never raises and never blocks the cache."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(data, expect):
            raise ValueError(f"expected a JSON {expect.__name__}, found {type(data).__name__}")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        drop_corrupt(path, what, exc)
        return None


def drop_corrupt(path: str | os.PathLike, what: str, exc: BaseException) -> None:
    """Warn that the cache entry ``path`` is unreadable (naming it and why) and delete it."""
    logging.getLogger("eapbench.cache").warning(
        "corrupt %s %s (%s: %s): deleted, it will be recomputed", what, path, type(exc).__name__, exc)
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as err:  # e.g. a read-only cache: still never fatal
        logging.getLogger("eapbench.cache").warning("could not delete %s: %s", path, err)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _final_mode(path))  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _final_mode(path: Path) -> int:
    """The mode of the file being replaced, else 0666 less the process umask (what ``open(path, "w")`` gives)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        pass
    try:  # Linux: read the umask without changing it (os.umask would race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_save(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_save(path, lambda p: p.write_text(text))
