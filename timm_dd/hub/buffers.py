""" Expert trajectory buffers on the Hugging Face Hub (dataset repos)

A buffer folder holds large ``.safetensors`` files (one or more expert trajectories each) plus small metadata.

Resumability of ``pull_expert_buffers``: files already downloaded (in the cache, or in ``local_dir`` with its
``.cache/huggingface`` metadata) are skipped, so re-running an interrupted pull only fetches what is missing; a
connection dropped in the middle of a file is resumed with an HTTP ``Range`` request by the client. (huggingface_hub
>= 1.x no longer resumes a ``.incomplete`` file left by a killed *process*: that file is restarted.)
"""
import logging
import os
from pathlib import Path
from typing import List, Optional, Union

from huggingface_hub import HfApi

from ._errors import with_retries
from ._repo import download_snapshot, prepare_repo, split_source

__all__ = ['push_expert_buffers', 'pull_expert_buffers']

_logger = logging.getLogger(__name__)


def push_expert_buffers(
        folder: Union[str, os.PathLike],
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
        path_in_repo: Optional[str] = None,
) -> str:
    """Upload a folder of expert trajectory buffers to a Hub dataset repo (created if missing).

    Uses ``upload_large_folder`` where ``huggingface_hub`` has it (1.x: resumable, several commits; 2.x folds this
    into ``upload_folder``, which streams a large folder in several commits). Files already in the repo are
    skipped, so pushing a folder again after adding buffers only uploads the new ones.

    Args:
        folder: local buffer folder.
        repo_id: ``<org>/<name>``, e.g. ``'dd-org/cifar10-convnet3-experts'``.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created if missing); default branch if None.
        token: Hub token; defaults to ``HF_TOKEN`` / the stored login.
        commit_message: commit summary.
        path_in_repo: sub-folder of the repo to upload into (default: the root).

    Returns:
        The commit: the repo's head sha after ``upload_large_folder``, else a ``CommitInfo`` (a ``str`` holding the
        commit url, ``.oid`` is the sha).

    Raises:
        HubError: the Hub refused or could not be reached.
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'Expert buffer folder {str(folder)!r} does not exist or is not a directory.')
    api = HfApi(token=token)

    ignore = ['.*', '**/.*']  # a running job's lock and temporary (half-written) files are never uploaded

    def push() -> str:
        target = prepare_repo(api, repo_id, 'dataset', private, revision)
        if path_in_repo is None and commit_message is None and hasattr(api, 'upload_large_folder'):
            # gigabytes of experts: resumable, in several commits, skipping what the repo has already
            # (huggingface_hub >= 2 folds this into upload_folder, which streams large folders in several commits)
            api.upload_large_folder(repo_id=target, folder_path=str(folder), repo_type='dataset', revision=revision,
                                    ignore_patterns=ignore, print_report=False)
            return api.repo_info(target, repo_type='dataset', revision=revision).sha
        return api.upload_folder(
            repo_id=target, folder_path=str(folder), path_in_repo=path_in_repo, repo_type='dataset',
            revision=revision, commit_message=commit_message or f'Upload expert buffers from {folder.name}',
            ignore_patterns=ignore)

    commit = with_retries(push, 'push expert buffers to', repo_id, 'dataset', revision, write=True)
    _logger.info(f'Pushed expert buffers to dataset repo {repo_id!r}: {commit}')
    return commit


def pull_expert_buffers(
        repo_id: Union[str, os.PathLike],
        local_dir: Optional[Union[str, os.PathLike]] = None,
        revision: Optional[str] = None,
        allow_patterns: Optional[Union[str, List[str]]] = None,
        token: Optional[str] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Download expert trajectory buffers from a Hub dataset repo (resumable, cached).

    Args:
        repo_id: dataset repo id ``<org>/<name>``; a local folder is returned as is.
        local_dir: download into this folder (real files) instead of the Hub cache (symlinks into blobs).
        revision: branch, tag or commit sha.
        allow_patterns: only files matching these glob patterns, e.g. ``['replay_buffer_0.safetensors']``.
        token: Hub token for private repos.
        cache_dir: Hub cache folder; defaults to ``HF_HUB_CACHE``.

    Returns:
        The folder holding the buffers.

    Raises:
        HubError: repo, revision or files not found, no permission, or offline with nothing cached.
    """
    folder, repo_id = split_source(repo_id)
    if folder is not None:
        return folder
    return download_snapshot('pull expert buffers from', repo_id, revision, cache_dir, token,
                             allow_patterns=allow_patterns, local_dir=local_dir)
