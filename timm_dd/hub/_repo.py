""" Small helpers shared by the distilled-set, teacher and expert-buffer Hub functions """
import logging
import os
import re
from pathlib import Path
from typing import Optional, Tuple, Union

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.utils import LocalEntryNotFoundError

from ._errors import _is_transport_error, with_retries

__all__ = ['prepare_repo', 'split_source', 'download_snapshot']

_logger = logging.getLogger(__name__)

_SHA_RE = re.compile(r'^[0-9a-f]{40}$')
_REPO_ID_RE = re.compile(r'^(?:[\w.-]+/)?[\w.-]+$')  # what a Hub repo id can look like: [<org>/]<name>
LOCAL_PREFIX = 'local-dir:'
HUB_PREFIX = 'hf-hub:'


def split_source(repo_id_or_path: Union[str, os.PathLike]) -> Tuple[Optional[Path], Optional[str]]:
    """``(folder, None)`` for a local folder or ``local-dir:<folder>``, ``(None, repo_id)`` for a Hub repo.

    An existing folder wins over a Hub repo of the same name (like ``from_pretrained`` in transformers);
    ``hf-hub:<repo_id>`` forces the Hub.
    """
    if isinstance(repo_id_or_path, os.PathLike):
        return Path(repo_id_or_path), None
    name = str(repo_id_or_path)
    if name.startswith(LOCAL_PREFIX):
        return Path(name[len(LOCAL_PREFIX):]), None
    if name.startswith(HUB_PREFIX):
        return None, name[len(HUB_PREFIX):]
    if os.path.isdir(name):
        return Path(name), None
    if os.path.exists(name):
        raise FileNotFoundError(f'{name} is a file; expected a folder (or a Hub repo id <org>/<name>)')
    if os.path.islink(name):  # a path on this machine, never a Hub lookup
        raise FileNotFoundError(f'{name} is a symbolic link to {os.readlink(name)!r}, which does not lead to a folder '
                                f'(missing, or a loop of links); fix the link or pass the folder itself')
    if not _REPO_ID_RE.match(name) or name.startswith(('.', '~')):
        raise FileNotFoundError(f'{name}: no such folder, and it is not a Hub repo id (<org>/<name>); check the path')
    first = name.split('/')[0]
    if '/' in name and (os.path.isdir(first) or os.path.islink(first)):
        raise FileNotFoundError(f'{name}: no such folder (though {first}/ is one here); check the path, or write '
                                f'{HUB_PREFIX}{name} for the Hub repo of that name')
    return None, name


def prepare_repo(api, repo_id: str, repo_type: str, private: bool, revision: Optional[str]) -> str:
    """Create the repo (no-op if it exists) and, for a new branch name, the branch; returns the repo id.

    Args:
        api: a ``huggingface_hub.HfApi``.
        repo_id: ``<org>/<name>``.
        repo_type: ``'model'`` or ``'dataset'``.
        private: visibility of a newly created repo (an existing repo keeps its visibility).
        revision: branch to push to; created from the default branch if missing. A commit sha is rejected.
    """
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    repo_id = getattr(url, 'repo_id', None) or repo_id
    if revision is not None and revision != 'main':
        if _SHA_RE.match(revision):
            raise ValueError(f'Cannot push to commit {revision}: pass a branch name as revision.')
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        _logger.debug(f'Pushing to branch {revision!r} of {repo_type} repo {repo_id!r}.')
    return repo_id


def download_snapshot(
        action: str,
        repo_id: str,
        revision: Optional[str] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
        allow_patterns: Optional[Union[str, list]] = None,
        local_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """``snapshot_download`` of a dataset repo, bounded in time, retried, with one clear error.

    The Hub is probed first with a request bounded by ``HF_HUB_ETAG_TIMEOUT`` (``snapshot_download``'s own first
    call has no timeout, so a server that accepts and never answers would block it); when the Hub cannot be
    reached the local cache answers, as ``snapshot_download`` does. Server errors and network failures are retried
    (:func:`with_retries`). Files are downloaded to temporary names and renamed when complete, and a distilled set
    is checked against its checksums on load, so an interrupted download never looks like a valid set.
    """


    kwargs = dict(repo_type='dataset', allow_patterns=allow_patterns, token=token,
                  cache_dir=None if cache_dir is None else str(cache_dir),
                  local_dir=None if local_dir is None else str(local_dir), etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)

    def fetch() -> Path:
        if not constants.HF_HUB_OFFLINE:
            try:
                HfApi(token=token).repo_info(repo_id, repo_type='dataset', revision=revision,
                                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
            except Exception as e:  # noqa: BLE001
                if not _is_transport_error(e):
                    raise
                try:  # unreachable or too slow: the cache answers if it can
                    return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, **kwargs))
                except LocalEntryNotFoundError as missing:
                    raise missing from e
        return Path(snapshot_download(repo_id, revision=revision, **kwargs))

    return with_retries(fetch, action, repo_id, 'dataset', revision)
