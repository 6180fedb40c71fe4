"""Crash-safe file writes (the one place that writes a file), the checksums that identify files and tensors, and
the one walk over a user's folder tree (links followed, loops refused).

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
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, List, Optional, Sequence, Union

import torch

__all__ = ['atomic_write', 'atomic_write_json', 'atomic_write_with', 'default_file_mode', 'FolderLock',
           'folder_lock_holder', 'FolderInUseError', 'atomic_folder', 'check_replaceable', 'remove_stale_temporaries',
           'file_sha256', 'read_torch_file', 'tensor_checksum', 'append_line', 'make_folder', 'remove_file',
           'walk_files', 'available_memory', 'TMP_PREFIX',
           'OLD_PREFIX', 'LOCK_FILE']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: the names this library gives its temporary files and folders and its lock: the only names it ever removes or
#: renames on its own (a user's ``.notes.tmp`` or ``.lock`` beside a run is never touched)
TMP_PREFIX = '.timm_dd-tmp-'
OLD_PREFIX = '.timm_dd-old-'
LOCK_FILE = '.timm_dd.lock'


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
        if not isinstance(e, KeyboardInterrupt) and _interrupted(e):
            # Ctrl-C inside torch.save surfaces as torch's "inline_container ... unexpected pos" RuntimeError, which
            # reads like corruption: the write was interrupted and its target kept, so say that
            raise KeyboardInterrupt(f'interrupted while writing {path} (its previous version is kept)') from None
        raise


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` was raised while handling a KeyboardInterrupt (Ctrl-C) somewhere down its context chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__context__ or err.__cause__
    return False


@contextlib.contextmanager
def atomic_folder(folder: PathLike) -> Iterator[Path]:
    """``with atomic_folder(folder) as tmp: <write files into tmp>``: ``folder`` is replaced by the complete new
    folder or left as it was.

    The files go to a hidden sibling (``.timm_dd-tmp-<name>-*``) that is renamed into place; an existing ``folder``
    is first renamed aside (``.timm_dd-old-<name>-*``) and deleted after the swap. A crash between the two renames
    leaves the old folder aside, which :func:`remove_stale_temporaries` moves back.
    """
    folder = Path(folder)
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'{TMP_PREFIX}{folder.name}-', dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's 0700
        yield tmp
        _fsync_dir(tmp)
        if folder.exists():
            old = parent / f'{OLD_PREFIX}{folder.name}-{os.urandom(4).hex()}'
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


def check_replaceable(folder: PathLike, own_files: Iterable[str], what: str) -> None:
    """Refuse to replace ``folder`` (with :func:`atomic_folder`) unless it is missing, empty, or holds only files
    named in ``own_files`` (paths relative to it: the files a ``what`` consists of).

    Replacing a folder deletes everything in it, so a user's file beside a saved set (``notes.txt``) or a folder that
    was never a ``what`` stops the save with an error naming what would be lost, instead of losing it.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise FileExistsError(f'{folder} exists and is not a folder; choose another output path for the {what}')
    own = {Path(name) for name in own_files}
    own_folders = {parent for name in own for parent in name.parents if parent != Path('.')}
    foreign = []
    for path in sorted(folder.rglob('*')):
        rel = path.relative_to(folder)
        if rel in own and path.is_file() and not path.is_symlink():
            continue
        if rel in own_folders and path.is_dir() and not path.is_symlink():
            continue
        foreign.append(str(rel))
    if foreign:
        shown = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more' if len(foreign) > 5 else '')
        raise FileExistsError(f'{folder} holds files that are not part of a {what} ({shown}); saving the {what} '
                              f'there would replace the folder and lose them: choose a new or empty folder, or move '
                              f'those files out')


def _temporary(path: Path, suffix: str):
    """``mkstemp`` beside ``path``, with an error that names the folder when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f'{TMP_PREFIX}{path.name}.', suffix=suffix, dir=path.parent)
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
    """Clean up after writers of this library that were killed mid-write in ``folder``; returns what was removed.

    Only call it while no live process writes there (under :class:`FolderLock`). It touches nothing but names this
    library gives and a user's file cannot have by chance: temporary files of :func:`atomic_write`
    (``.timm_dd-tmp-<name>.<random>...``) and temporary folders of a folder swap (``.timm_dd-tmp-<name>-<random>``)
    are removed; a folder set aside by an interrupted swap (``.timm_dd-old-<name>-<random>``) is moved back when
    ``<name>`` is missing (it is the last complete version), else removed. Subfolders are searched (runs write
    there too), but not through symbolic links, and no other name is ever touched.
    """
    removed: List[Path] = []
    for path in sorted(_own_temporaries(Path(folder)), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            continue
        if name.startswith(TMP_PREFIX):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        elif path.is_dir():  # OLD_PREFIX: '<name>-<hex>' after the prefix
            target = path.with_name(name[len(OLD_PREFIX):].rsplit('-', 1)[0])
            if target.exists() or target.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
            removed.append(path)
    return removed


def _own_temporaries(folder: Path) -> Iterator[Path]:
    """Paths under ``folder`` named with this library's temporary prefixes (not following symbolic links)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name.startswith((TMP_PREFIX, OLD_PREFIX)):
                yield Path(root) / name
        dirs[:] = [d for d in dirs if not d.startswith((TMP_PREFIX, OLD_PREFIX))]


class FolderInUseError(RuntimeError):
    """Another live run holds the lock of this output folder."""


class FolderLock:
    """An exclusive lock on an output folder, held while a run writes into it (``with FolderLock(folder): ...``).

    ``fcntl.flock`` on ``folder/.timm_dd.lock`` (a name of this library's own: a user's ``.lock`` is never
    touched): the kernel releases it when the process ends, also after ``kill -9``, so a
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
        f = open(self.folder / LOCK_FILE, 'a+')
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            raise FolderInUseError(f'{self.folder} is in use by a running job ({holder}); wait for it to finish or '
                                   f'choose another output folder') from None
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


def folder_lock_holder(folder: PathLike) -> Optional[str]:
    """Who holds ``folder``'s :class:`FolderLock` right now (``'pid 123'``), or ``None`` when no live run does.

    Only reads: the lock file is never created or rewritten (a reader must not disturb a writer)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        f = open(Path(folder) / LOCK_FILE, 'r')
    except OSError:  # no lock file: no run ever held it
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return f.read().strip() or 'another process'
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def read_torch_file(path: PathLike, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers and containers of them, never code. An unreadable
    file is a one-line ``ValueError`` naming it (torch's own message spans a dozen lines and suggests
    ``weights_only=False``, which would run whatever the file holds)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.filename is not None:  # missing, unreadable: the message names the file
            raise
        raise ValueError(f'{path}: cannot read this torch.save file (truncated or damaged?): {e}') from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        if isinstance(e, pickle.UnpicklingError) and 'Weights only load failed' in str(e):
            reason = ('its bytes are damaged, or it holds objects other than tensors, numbers and containers of '
                      'them (it is read with weights_only=True, so nothing in it runs)')
        else:
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
        raise ValueError(f'{path}: cannot read this torch.save file (truncated or damaged?): {reason}') from e


def file_sha256(path: PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            h.update(chunk)
    return h.hexdigest()


def tensor_checksum(t: Any, shape: Optional[Sequence[int]] = None) -> str:
    """SHA-256 of a tensor's fp32 contents (shape included): identifies a dataset or an expert epoch. ``t`` may also
    be an iterable of consecutive row blocks of a tensor of ``shape`` (a set converted block by block): the same
    digest as the whole tensor's."""
    if isinstance(t, torch.Tensor):
        t, shape = [t], t.shape
    h = hashlib.sha256(str(tuple(shape)).encode())
    for block in t:
        h.update(block.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def append_line(path: PathLike, line: str) -> None:
    """Append one line to a log file (``metrics.jsonl``); one process owns each such file."""
    with open(path, 'a', encoding='utf-8') as f:
        f.write(line.rstrip('\n') + '\n')


def available_memory() -> Optional[int]:
    """Bytes the host can still give without swapping (``MemAvailable`` of ``/proc/meminfo``), or ``None`` where
    that cannot be read (not Linux): the one reading for the dataset size check and the ``auto`` graph budget."""
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return None


def make_folder(folder: PathLike) -> Path:
    """Create ``folder`` and its parents if missing (an existing one is left as it is); returns it as a Path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_file(path: PathLike) -> None:
    """Remove one file this library wrote (a finished run's checkpoint, a metrics log started again); a missing
    file is fine. Only ever called on a path the library names itself, never on what a folder happens to hold."""
    Path(path).unlink(missing_ok=True)


def walk_files(root: PathLike, skip: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Every file under ``root`` (as ``root/<relative path>``), in sorted order, following links; entries whose
    name ``skip`` accepts are left out (with everything under them).

    A link to a folder is followed unless it leads back into a folder this walk is inside or has already read
    (``up -> ..``, a class folder linked twice): that would loop or count images twice, so it is a ``ValueError``
    naming the link. Links to folders elsewhere (subsets of a large dataset made with ``ln -s``) are followed, and a
    broken link is a ``FileNotFoundError`` naming it.
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    inside = {real_root, *(str(p) for p in Path(real_root).parents)}  # the folders the walk is in, and above
    yield from _walk(root, inside, {real_root: root}, skip)


def _walk(folder: Path, inside: set, seen: dict, skip: Callable[[str], bool]) -> Iterator[Path]:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if skip(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            real = os.path.realpath(path)
            if real in inside:
                raise ValueError(f'{path} is a link to {real}, a folder that contains it: following it would never '
                                 f'end; remove the link')
            if real in seen:  # blame the link, whether it came first or second
                link, other = (seen[real], path) if seen[real].is_symlink() else (path, seen[real])
                raise ValueError(f'{link} is a link to {real}, a folder already read (as {other}): following it '
                                 f'would read its files twice; remove the link')
            seen[real] = path
            yield from _walk(path, inside | {real}, seen, skip)
        elif entry.is_file():
            yield path
        elif entry.is_symlink():
            raise FileNotFoundError(f'{path} is a broken link (to {os.readlink(path)}); remove it or restore its '
                                    f'target')
