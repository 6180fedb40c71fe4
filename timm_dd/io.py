"""Crash-safe file writes (the one place that writes a file) and the checksums that identify files and tensors.

A file is written to a temporary sibling with a name unique to the writing process (``mkstemp``), flushed to disk
and renamed into place, so a reader sees either the previous complete file or the new complete one, never half
of one, and two processes never share a temporary name. Files get the mode ``open()`` would give them
(``0666 & ~umask``), not ``mkstemp``'s 0600.
"""
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Union

__all__ = ['atomic_write', 'atomic_write_json', 'atomic_write_with', 'default_file_mode', 'FolderLock',
           'FolderInUseError', 'atomic_folder', 'remove_stale_temporaries', 'file_sha256', 'tensor_checksum', 'append_line']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode a new file would get from ``open()``: ``0o666`` minus the process umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears complete or not at all.

    On an exception inside the block the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    with _replacing(path, '.tmp') as (fd, _):
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:  # text is UTF-8
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_with(path: PathLike, write: Callable[[str], None]) -> Path:
    """Atomically create ``path`` with a writer that only takes a file name (``safetensors.save_file``,
    ``matplotlib``'s ``savefig``, ``PIL``'s ``save``): ``write(tmp_name)`` fills the temporary sibling."""
    path = Path(path)
    with _replacing(path, '.tmp' + path.suffix) as (fd, tmp):
        os.close(fd)
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
    return path


@contextlib.contextmanager
def _replacing(path: Path, suffix: str) -> Iterator[tuple]:
    """A temporary sibling ``(fd, name)`` that replaces ``path`` when the block ends, or is removed if it fails."""
    fd, tmp = _temporary(path, suffix)
    try:
        yield fd, tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_disk_full(e, path)
        raise


@contextlib.contextmanager
def atomic_folder(folder: PathLike) -> Iterator[Path]:
    """``with atomic_folder(folder) as tmp: <write files into tmp>``: ``folder`` is replaced by the complete new
    folder or left as it was.

    The files go to a hidden sibling (``.<name>.tmp-*``) that is renamed into place; an existing ``folder`` is first
    renamed aside (``.<name>.old-*``) and deleted after the swap. A crash between the two renames leaves the old
    folder aside, which :func:`remove_stale_temporaries` moves back.
    """
    folder = Path(folder)
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's 0700
        yield tmp
        _fsync_dir(tmp)
        if folder.exists():
            old = parent / f'.{folder.name}.old-{os.urandom(4).hex()}'
            os.replace(folder, old)
            try:
                os.replace(tmp, folder)
            except BaseException:
                os.replace(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        _fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(e, folder)
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary(path: Path, suffix: str):
    """``mkstemp`` beside ``path``, with an error that names the folder when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f'cannot write {path}: {e.strerror} (is {path.parent} writable?)') from None


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    # torch.save reports a full disk as "unexpected pos ..." from its zip writer; say what happened
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    if not full and isinstance(err, (RuntimeError, OSError)):
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(path.parent).free < 1 << 20
    if full:
        raise OSError(errno.ENOSPC, f'no space left on the device writing {path}; its previous version (if any) is '
                      f'kept. Free some space and run again (with --resume)') from err


def atomic_write_json(path: PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """Atomically write ``obj`` as JSON."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Clean up after writers that were killed mid-write in ``folder`` (recursively); returns what was removed.

    Only call it while no live process writes there (under :class:`FolderLock`). Removes the temporary files of
    :func:`atomic_write` (``.<name>.<random>.tmp*``) and the temporary folders of a folder swap
    (``.<name>.tmp-*``); a folder set aside by an interrupted swap (``.<name>.old-*``) is moved back when ``<name>``
    is missing (it is the last complete version), else deleted.
    """
    removed: List[Path] = []
    for path in sorted(Path(folder).rglob('.*'), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        if path.is_file() and '.tmp' in name and name != '.lock':
            path.unlink(missing_ok=True)
            removed.append(path)
        elif path.is_dir() and '.tmp-' in name:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif path.is_dir() and '.old-' in name:
            target = path.with_name(name[1:].split('.old-')[0])
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
            removed.append(path)
    return removed


class FolderInUseError(RuntimeError):
    """Another live run holds the lock of this output folder."""


class FolderLock:
    """An exclusive lock on an output folder, held while a run writes into it (``with FolderLock(folder): ...``).

    ``fcntl.flock`` on ``folder/.lock``: the kernel releases it when the process ends, also after ``kill -9``, so a
    crashed run never leaves a stale lock. A second run into the same folder fails at once with an error naming the
    folder and the process that holds it. Where ``fcntl`` is missing (Windows) the lock is a no-op.
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self._file: Any = None

    def __enter__(self) -> 'FolderLock':
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / '.lock', 'a+')
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            raise FolderInUseError(f'{self.folder} is in use by a running job ({holder}); wait for it to finish or choose '
                               f'another output folder') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()}')
        f.flush()
        self._file = f
        removed = remove_stale_temporaries(self.folder)  # we hold the lock: no live writer is using them
        if removed:
            _logger.info('removed %d temporary file(s) of an interrupted run in %s', len(removed), self.folder)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


def file_sha256(path: PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            h.update(chunk)
    return h.hexdigest()


def tensor_checksum(t: Any) -> str:
    """SHA-256 of a tensor's fp32 contents (shape included): identifies a dataset or an expert epoch."""
    t = t.detach().float().cpu().contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def append_line(path: PathLike, line: str) -> None:
    """Append one line to a log file (``metrics.jsonl``); one process owns each such file."""
    with open(path, 'a', encoding='utf-8') as f:
        f.write(line.rstrip('\n') + '\n')
