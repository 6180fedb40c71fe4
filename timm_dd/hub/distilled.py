""" Distilled datasets on the Hugging Face Hub (dataset repos)

A distilled set is published as a dataset repo holding exactly what ``DistilledSet.save`` writes
(``distilled.safetensors``, ``distill_config.json``, ``README.md`` and optionally ``zca.safetensors``; see
:mod:`timm_dd.distilled.format`). Downloads go through the standard Hub cache, so a set loaded once also loads with
``HF_HUB_OFFLINE=1``.
"""
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import HfApi

from timm_dd.distilled import DistilledSet

from ..distilled.interchange import import_distilled as import_folder
from ._errors import with_retries
from ._repo import download_snapshot, prepare_repo, split_source

__all__ = ['push_distilled', 'load_distilled']

_logger = logging.getLogger(__name__)


def push_distilled(
        dset,
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
) -> str:
    """Upload a distilled set to a Hub dataset repo (created if missing).

    Files already on the Hub with identical content are not re-uploaded; pushing an unchanged set makes no commit.

    Args:
        dset: the ``DistilledSet`` to publish.
        repo_id: ``<org>/<name>``, e.g. ``'dd-org/cifar10-dm-ipc10'``.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created if missing); default branch if None.
        token: Hub token; defaults to ``HF_TOKEN`` / the stored login.
        commit_message: defaults to ``'Upload <method> distilled <source> (IPC <n>)'``.

    Returns:
        The commit: a ``CommitInfo``, i.e. a ``str`` holding the commit url, whose ``.oid`` is the commit sha to pin
        downloads with ``load_distilled(repo_id, revision=sha)``.

    Raises:
        HubError: the Hub refused or could not be reached.
    """
    if commit_message is None:
        method, source = getattr(dset, 'method', None), getattr(dset, 'source_dataset', None)
        commit_message = f'Upload {method} distilled {source} (IPC {getattr(dset, "ipc", "?")})'
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix='timm_dd_push_') as tmp:
        # repo_id: the card's usage snippet then shows the Hub name instead of the temp folder
        folder = Path(dset.save(Path(tmp) / 'distilled', repo_id=repo_id, parquet_view=_has_datasets()))

        def push() -> str:
            target = prepare_repo(api, repo_id, 'dataset', private, revision)
            # delete_patterns: the repo mirrors the set (a file the set no longer has, e.g. zca.safetensors, goes)
            return api.upload_folder(repo_id=target, folder_path=str(folder), repo_type='dataset', revision=revision,
                                     commit_message=commit_message, delete_patterns=['*', '**/*'])

        commit = with_retries(push, 'push distilled set to', repo_id, 'dataset', revision, write=True)
    _logger.info(f'Pushed distilled set to dataset repo {repo_id!r}: {commit}')
    return commit


def import_distilled(source: Union[str, os.PathLike], layout: str, **kwargs):
    """:func:`timm_dd.distilled.interchange.import_distilled` for a local folder or a Hub dataset repo (downloaded
    first, cached): a set made by another tool (MTT/ATT/DATM, FRePo, DD-Ranking, image folders)."""
    folder, repo_id = split_source(source)
    if folder is None:
        folder = download_snapshot('import distilled set from', repo_id)
    return import_folder(folder, layout, **kwargs)


def _has_datasets() -> bool:
    if importlib.util.find_spec('datasets') is None:
        _logger.warning('`datasets` is not installed: the set is pushed without its parquet view (no dataset viewer, '
                        'no datasets.load_dataset); pip install "timm_dd[hub]" to add it')
        return False
    return True


def load_distilled(
        repo_id_or_path: Union[str, os.PathLike],
        revision: Optional[str] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
        strict: bool = False,
):
    """Load a distilled set from a local folder or a Hub dataset repo.

    Args:
        repo_id_or_path: a folder written by ``DistilledSet.save`` (or ``local-dir:<folder>``), or a dataset repo
            id ``<org>/<name>`` (or ``hf-hub:<org>/<name>``). An existing folder wins over a repo of the same name.
        revision: branch, tag or commit sha; pin a sha for reproducible experiments.
        cache_dir: Hub cache folder; defaults to ``HF_HUB_CACHE``.
        token: Hub token for private repos; defaults to ``HF_TOKEN`` / the stored login.
        strict: refuse a set whose files have no recorded checksum (else: loaded with a warning in ``load_notes``).

    Returns:
        The ``DistilledSet``.

    Raises:
        HubError: repo, revision or files not found, no permission, or offline with nothing cached.
    """
    folder, repo_id = split_source(repo_id_or_path)
    if folder is None:
        folder = download_snapshot('load distilled set from', repo_id, revision, cache_dir, token)
    return DistilledSet.load(folder, strict=strict)
