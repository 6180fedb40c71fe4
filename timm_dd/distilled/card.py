"""Dataset card (``README.md``) for a distilled set, built with ``huggingface_hub.DatasetCardData``.

The YAML header uses only standard Hub keys (``license``, ``pretty_name``, ``task_categories``, ``tags`` with
``dataset-distillation`` and ``ipc-N``, ``size_categories``, ``source_datasets``, and ``configs`` when a parquet
view is pushed) so the Hub's YAML validation and dataset viewer accept it; everything else lives in
``distill_config.json``, which is authoritative over the card.
"""
import json
import re
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:
    from .distilled_set import DistilledSet

__all__ = ['render_card', 'card_data', 'size_category', 'pretty_name']

# the Hub's size_categories buckets
_SIZE_BUCKETS = (
    (1_000, 'n<1K'), (10_000, '1K<n<10K'), (100_000, '10K<n<100K'), (1_000_000, '100K<n<1M'),
    (10_000_000, '1M<n<10M'), (100_000_000, '10M<n<100M'), (1_000_000_000, '100M<n<1B'),
)
_EVAL_COLUMNS = ('arch', 'top1_mean', 'top1_std', 'num_eval', 'protocol')


# extra keys about the machine the set was made on (local paths): not shown on a card
_LOCAL_KEYS = ('real_data',)


def size_category(n: int) -> str:
    """Hub ``size_categories`` bucket for ``n`` samples."""
    for limit, name in _SIZE_BUCKETS:
        if n < limit:
            return name
    return '1B<n<10B'


def pretty_name(dset: 'DistilledSet') -> str:
    """E.g. 'cifar10 distilled with MTT (IPC 10)'."""
    ipc = f' (IPC {dset.ipc})' if dset.ipc is not None else ''
    return f'{dset.source_dataset} distilled with {dset.method}{ipc}'


def _tag(s: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')


def _yaml_str(s: str) -> str:
    # a JSON string is a valid YAML double-quoted scalar
    return json.dumps(s, ensure_ascii=False)


def _cell(v: Any) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        v = f'{v:.4g}'
    elif not isinstance(v, str):
        v = json.dumps(v, ensure_ascii=False)
    return v.replace('|', '\\|').replace('\n', ' ')


def _table(header: List[str], rows: List[List[Any]]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in rows]
    return lines


def card_data(dset: 'DistilledSet', parquet_file: Optional[str] = None):
    """The card's YAML header as ``huggingface_hub.DatasetCardData``."""
    from huggingface_hub import DatasetCardData
    tags = ['dataset-distillation', 'distilled', 'timm_dd']
    if dset.ipc is not None:
        tags.append(f'ipc-{dset.ipc}')
    src_tag = _tag(dset.source_dataset)
    if src_tag and src_tag not in tags:
        tags.append(src_tag)
    extra = {}
    if parquet_file is not None:  # what datasets.load_dataset(repo) and the dataset viewer read
        extra['configs'] = [{'config_name': 'default', 'data_files': [{'split': 'train', 'path': parquet_file}]}]
    return DatasetCardData(license=dset.license or 'unknown', pretty_name=pretty_name(dset),
                           task_categories=['image-classification'], tags=tags,
                           size_categories=[size_category(dset.num_images)], source_datasets=[dset.source_dataset],
                           **extra)


def render_card(dset: 'DistilledSet', repo_id: Optional[str] = None, parquet_file: Optional[str] = None) -> str:
    """Markdown dataset card with YAML front matter; ``repo_id`` is used in the usage snippet; ``parquet_file``
    declares the parquet view."""
    from .distilled_set import CONFIG_FILE, DISTILLED_FILE, ZCA_FILE
    name = pretty_name(dset)
    lines = ['---', card_data(dset, parquet_file).to_yaml(), '---', '', f'# {name}', '']
    c, h, w = dset.image_size
    space = {
        'pixel': 'pixel space ([0, 1])',
        'normalized': 'normalized space (`(pixel - mean) / std`)',
        'zca': 'ZCA-whitened space (invert with `zca.safetensors`)',
    }[dset.image_space]
    lines += [
        f'A synthetic training set of {dset.num_images} images of size {c}x{h}x{w} '
        f'({dset.num_classes} classes) distilled from `{dset.source_dataset}` with **{dset.method}**, '
        f'made with `timm_dd` {dset.library_version}.',
        '',
        f'The images are learned float tensors stored exactly in `{DISTILLED_FILE}` '
        f'({str(dset.images.dtype).replace("torch.", "")}), in {space}; training on them as PNG/JPEG would '
        f'change the results. `{CONFIG_FILE}` holds the machine-readable metadata and is authoritative over '
        f'this card.',
        '',
        '## Metadata',
        '',
    ]
    rows = [
        ['method', dset.method],
        ['source dataset', dset.source_dataset],
        ['classes', dset.num_classes],
        ['images per class (IPC)', dset.ipc],
        ['images', dset.num_images],
        ['image size (C, H, W)', list(dset.image_size)],
        ['image space', dset.image_space],
        ['normalization', dset.normalization],
        ['ZCA', None if dset.zca is None else f'eps={dset.zca.eps} (`{ZCA_FILE}`)'],
        ['labels', dset.label_type + (f' ({dset.soft_label_kind})' if dset.soft_labels is not None else '')],
        ['soft label temperature', dset.soft_label_temperature],
        ['learned lr', None if dset.lr is None else float(dset.lr)],
        ['distillation architecture', dset.distill_arch],
        ['seed', dset.seed],
    ]
    lines += _table(['key', 'value'], rows)
    if dset.eval_results:
        cols = list(_EVAL_COLUMNS)
        for r in dset.eval_results:
            cols += [k for k in r if k not in cols]
        cols = [k for k in cols if any(k in r for r in dset.eval_results)]
        lines += ['', '## Evaluation', '', *_table(cols, [[r.get(k) for k in cols] for r in dset.eval_results])]
    params = [[k, v] for k, v in dset.extra.items() if k not in _LOCAL_KEYS]
    if params:
        lines += ['', '## Hyper-parameters', '', *_table(['name', 'value'], params)]
    target = repo_id or '<repo_id or path>'
    lines += [
        '',
        '## Usage',
        '',
        '```python',
        'import timm_dd',
        f'dset = timm_dd.load_distilled({target!r})',
        'images, labels = dset.images, dset.labels  # images in the space named by dset.image_space',
        'pixels = dset.to_pixel_space()  # [N, C, H, W], nominally in [0, 1]',
        '```',
        '',
    ]
    if parquet_file is not None:
        lines += ['With `datasets` (a preview, not the data: PNG `image` in pixel space, the exact `tensor`, '
                  'the `label`):', '', '```python', 'import datasets',
                  f'ds = datasets.load_dataset({target!r}, split="train")', '```', '']
    if dset.class_names is not None:
        names = ', '.join(f'{i}: {n}' for i, n in enumerate(dset.class_names))
        lines += ['## Classes', '', names.replace('|', '\\|'), '']
    return '\n'.join(lines)
