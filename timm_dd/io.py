"""Crash-safe file writes: the one place that writes a file atomically.

A file is written to a temporary sibling with a name unique to the writing process (``mkstemp``), flushed to disk
and renamed into place, so a reader sees either the previous complete file or the new complete one, never half
of one, and two processes never share a temporary name. Files get the mode ``open()`` would give them
(``0666 & ~umask``), not ``mkstemp``'s 0600.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Union

__all__ = ['atomic_write', 'atomic_write_json', 'atomic_write_with', 'default_file_mode']

PathLike = Union[str, os.PathLike]


def default_file_mode() -> int:
    """The mode a new file would get from ``open()``: ``0o666`` minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears complete or not at all.

    On an exception inside the block the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_with(path: PathLike, write: Callable[[str], None]) -> Path:
    """Atomically create ``path`` with a writer that only takes a file name (``safetensors.save_file``,
    ``matplotlib``'s ``savefig``, ``PIL``'s ``save``): ``write(tmp_name)`` fills the temporary sibling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp' + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """Atomically write ``obj`` as JSON."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)
