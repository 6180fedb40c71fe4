"""A parquet view of a distilled set, for ``datasets.load_dataset`` and the Hub's dataset viewer.

Written next to the exact ``distilled.safetensors`` when a set is pushed (``data/train-00000-of-00001.parquet``,
declared in the card's ``configs:``). Columns: ``image``, a PNG preview in pixel space (8 bits: a preview, not
the data); ``tensor``, the exact float32 image in the set's own space; ``label``, a ``ClassLabel`` (the arg-max of the
soft labels when the set has them); ``soft_label``, the soft labels as stored. Needs the ``datasets`` package
(``pip install "timm_dd[hub]"``).
"""
from pathlib import Path
from typing import Any

from PIL import Image

from .._optional import require
from ..data.space import to_uint8
from ..io import atomic_write_with

# a DistilledSet, typed loosely: the set's module calls this one
DistilledSet = Any

__all__ = ['PARQUET_FILE', 'write_parquet_view']

PARQUET_FILE = 'data/train-00000-of-00001.parquet'


def write_parquet_view(dset: DistilledSet, folder: Path) -> Path:
    """Write ``folder / PARQUET_FILE`` for ``dset``; returns its path."""
    datasets = require('datasets', 'hub', 'the Hub dataset viewer (parquet view) of a distilled set')
    pixels = to_uint8(dset.to_pixel_space()).cpu()
    mode = 'L' if pixels.shape[1] == 1 else 'RGB'
    previews = [Image.fromarray(p.squeeze(0).numpy() if mode == 'L' else p.permute(1, 2, 0).numpy(), mode)
                for p in pixels]
    c, h, w = dset.image_shape
    names = list(dset.class_names) if dset.class_names else [str(i) for i in range(dset.num_classes)]
    labels = dset.labels if dset.soft_labels is None else dset.soft_labels.argmax(1)
    columns = {'image': previews, 'tensor': dset.images.float().cpu().numpy(), 'label': labels.tolist()}
    features = {'image': datasets.Image(), 'tensor': datasets.Array3D(shape=(c, h, w), dtype='float32'),
                'label': datasets.ClassLabel(names=names)}
    if dset.soft_labels is not None:
        columns['soft_label'] = dset.soft_labels.float().cpu().numpy().tolist()
        features['soft_label'] = datasets.List(datasets.Value('float32'))
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    path = Path(folder) / PARQUET_FILE
    return atomic_write_with(path, lambda tmp: table.to_parquet(tmp))
