"""Dataset card (``README.md``) for a distilled set, built with ``huggingface_hub.DatasetCardData``.

The YAML header uses only standard Hub keys (``license``, ``pretty_name``, ``task_categories``, ``tags`` with
``dataset-distillation`` and ``ipc-N``, ``size_categories``, ``source_datasets``, and ``configs`` when a parquet
view is pushed) so the Hub's YAML validation and dataset viewer accept it; everything else lives in
``distill_config.json``, which is authoritative over the card. The card is rendered from that config (the dict
of :meth:`~timm_dd.distilled.DistilledSet.to_config`), so it can only state what the config records.
"""
import json
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional

from huggingface_hub import DatasetCardData

from .format import CONFIG_FILE, DISTILLED_FILE, ZCA_FILE

__all__ = ['render_card', 'card_data', 'size_category', 'pretty_name']

# the Hub's size_categories buckets
_SIZE_BUCKETS = (
    (1_000, 'n<1K'), (10_000, '1K<n<10K'), (100_000, '10K<n<100K'), (1_000_000, '100K<n<1M'),
    (10_000_000, '1M<n<10M'), (100_000_000, '10M<n<100M'), (1_000_000_000, '100M<n<1B'),
)
_EVAL_COLUMNS = ('arch', 'top1_mean', 'top1_std', 'num_eval', 'protocol')


# extra keys about the machine the set was made on (local paths): not shown on a card
_LOCAL_KEYS = ('real_data', 'experts')  # the experts are stated above the table, by folder name


def size_category(n: int) -> str:
    """Hub ``size_categories`` bucket for ``n`` samples."""
    for limit, name in _SIZE_BUCKETS:
        if n < limit:
            return name
    return '1B<n<10B'


def pretty_name(config: Mapping[str, Any]) -> str:
    """E.g. 'cifar10 distilled with MTT (IPC 10)'."""
    ipc = f' (IPC {config["ipc"]})' if config.get('ipc') is not None else ''
    return f'{config["source_dataset"]} distilled with {config["method"]}{ipc}'


def _tag(s: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')


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


def card_data(config: Mapping[str, Any], parquet_file: Optional[str] = None):
    """The card's YAML header as ``huggingface_hub.DatasetCardData``."""
    tags = ['dataset-distillation', 'distilled', 'timm_dd']
    if config.get('ipc') is not None:
        tags.append(f'ipc-{config["ipc"]}')
    src_tag = _tag(config['source_dataset'])
    if src_tag and src_tag not in tags:
        tags.append(src_tag)
    extra = {}
    if parquet_file is not None:  # what datasets.load_dataset(repo) and the dataset viewer read
        extra['configs'] = [{'config_name': 'default', 'data_files': [{'split': 'train', 'path': parquet_file}]}]
    return DatasetCardData(license=config.get('license') or 'unknown', pretty_name=pretty_name(config),
                           task_categories=['image-classification'], tags=tags,
                           size_categories=[size_category(config['num_images'])],
                           source_datasets=[config['source_dataset']], **extra)


_SPACE_TEXT = {
    'pixel': 'pixel space ([0, 1])',
    'normalized': 'normalized space (`(pixel - mean) / std`)',
    'zca': 'ZCA-whitened space (invert with `zca.safetensors`)',
}


def _description(config: Mapping[str, Any]) -> List[str]:
    c, h, w = config['image_size']
    return [
        f'A synthetic training set of {config["num_images"]} images of size {c}x{h}x{w} '
        f'({config["num_classes"]} classes) distilled from `{config["source_dataset"]}` with **{config["method"]}**, '
        f'made with `timm_dd` {config["library_version"]}.',
        '',
        f'The images are learned float tensors stored exactly in `{DISTILLED_FILE}` ({config["image_dtype"]}), in '
        f'{_SPACE_TEXT[config["image_space"]]}; training on them as PNG/JPEG would change the results. '
        f'`{CONFIG_FILE}` holds the machine-readable metadata and is authoritative over this card.',
    ]


def _provenance(config: Mapping[str, Any]) -> List[str]:
    """Where the settings come from (a preset's source, with what was changed) and the expert buffer used."""
    extra = config.get('extra') or {}
    settings = (extra.get('config') or {}).get('source') if isinstance(extra.get('config'), dict) else None
    experts = extra.get('experts')
    lines = []
    if settings:
        lines += ['', f'Settings: {settings}. Every effective value is in the hyper-parameters below.']
    if isinstance(experts, dict):
        planned = f' (of the {experts["planned"]} its recipe planned)' if experts.get('planned') else ''
        lines += ['', f'Expert trajectories: {experts.get("experts")} experts{planned} of {experts.get("epochs")} '
                      f'epochs '
                      f'({experts.get("arch")}, lr {experts.get("lr")}, batch {experts.get("batch_size")}) from the '
                      f'buffer `{Path(str(experts.get("path"))).name}`, sha256 `{str(experts.get("sha256"))[:16]}` '
                      f'(over every expert\'s per-epoch checksums).']
    return lines


def _metadata_rows(config: Mapping[str, Any], lr: Optional[float]) -> List[List[Any]]:
    zca, soft = config.get('zca'), config.get('label_type') == 'soft'
    return [
        ['method', config['method']],
        ['source dataset', config['source_dataset']],
        ['classes', config['num_classes']],
        ['images per class (IPC)', config.get('ipc')],
        ['images', config['num_images']],
        ['image size (C, H, W)', list(config['image_size'])],
        ['image space', config['image_space']],
        ['normalization', config.get('normalization')],
        ['ZCA', None if zca is None else f'eps={zca["eps"]} (`{ZCA_FILE}`)'],
        ['labels', config['label_type'] + (f' ({config["soft_label_kind"]})' if soft else '')],
        ['soft label temperature', config.get('soft_label_temperature')],
        ['learned lr', lr],
        ['distillation architecture', config.get('distill_arch')],
        ['seed', config.get('seed')],
    ]


def _evaluation(results: List[Mapping[str, Any]]) -> List[str]:
    if not results:
        return []
    cols = list(_EVAL_COLUMNS)
    for r in results:
        cols += [k for k in r if k not in cols]
    cols = [k for k in cols if any(k in r for r in results)]
    return ['', '## Evaluation', '', *_table(cols, [[r.get(k) for k in cols] for r in results])]


def _usage(target: str, parquet_file: Optional[str]) -> List[str]:
    lines = [
        '', '## Usage', '', '```python', 'import timm_dd', f'dset = timm_dd.load_distilled({target!r})',
        'images, labels = dset.images, dset.labels  # images in the space named by dset.image_space',
        'pixels = dset.to_pixel_space()  # [N, C, H, W], nominally in [0, 1]', '```', '',
    ]
    if parquet_file is not None:
        lines += ['With `datasets` (a preview, not the data: PNG `image` in pixel space, the exact `tensor`, '
                  'the `label`):', '', '```python', 'import datasets',
                  f'ds = datasets.load_dataset({target!r}, split="train")', '```', '']
    return lines


def render_card(config: Mapping[str, Any], lr: Optional[float] = None, repo_id: Optional[str] = None,
                parquet_file: Optional[str] = None) -> str:
    """Markdown dataset card with YAML front matter from a set's ``distill_config.json`` dict and its learned
    ``lr``; ``repo_id`` is used in the usage snippet; ``parquet_file`` declares the parquet view."""
    lines = ['---', card_data(config, parquet_file).to_yaml(), '---', '', f'# {pretty_name(config)}', '']
    lines += _description(config) + _provenance(config) + ['', '## Metadata', '']
    lines += _table(['key', 'value'], _metadata_rows(config, lr))
    lines += _evaluation(config.get('eval') or [])
    params = [[k, v] for k, v in (config.get('extra') or {}).items() if k not in _LOCAL_KEYS]
    if params:
        lines += ['', '## Hyper-parameters', '', *_table(['name', 'value'], params)]
    lines += _usage(repo_id or '<repo_id or path>', parquet_file)
    if config.get('class_names') is not None:
        names = ', '.join(f'{i}: {n}' for i, n in enumerate(config['class_names']))
        lines += ['## Classes', '', names.replace('|', '\\|'), '']
    return '\n'.join(lines)
