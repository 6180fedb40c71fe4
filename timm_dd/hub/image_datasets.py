"""Real image datasets stored on the Hub as parquet files (``hf://datasets/<owner>/<name>`` as a dataset or data root).

Only the repo's ``.parquet`` files and its card are downloaded, once, into the Hugging Face cache, with the same
time bound, retries and single error as every other download here (:func:`~timm_dd.hub._repo.download_snapshot`);
:mod:`timm_dd.data.parquet_images` reads them. Registered with the data layer on import, so ``load_dataset`` (which
may not import the Hub layer above it) can fetch through it.
"""
from pathlib import Path
from typing import Optional

from ..data.parquet_images import register_hub_fetcher
from ._repo import download_snapshot

__all__ = ['download_image_dataset']

#: what a real dataset needs from its repo: the data and the card (class names may be stated there too)
DATASET_FILES = ['*.parquet', 'README.md']


def download_image_dataset(repo_id: str, revision: Optional[str] = None) -> Path:
    """The local folder of the Hub dataset repo ``repo_id`` (its parquet files and card), downloaded once."""
    return download_snapshot('download image dataset from', repo_id, revision, allow_patterns=DATASET_FILES)


register_hub_fetcher(download_image_dataset)
