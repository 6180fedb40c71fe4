"""Property tests over the set loaders: a damaged or altered file gives the same set, another valid set, or one
clear error that names the file (a ``ValueError``/``OSError``: the command line turns those into one ``error:`` line,
exit 2), never a traceback from inside torch, json or safetensors and never an invalid set.

Mutations: truncation, byte flips and inserted bytes in every file; the JSON metadata's values replaced by values of
other types (or removed); the other tools' tensor files replaced by tensors of other shapes and dtypes, non-finite
values or other Python objects. Examples are drawn deterministically (``derandomize``), so a run is reproducible;
``pytest --long`` draws twenty times as many.
"""
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timm_dd  # noqa: F401
from timm_dd.distilled import DistilledSet
from timm_dd.distilled.interchange import export_distilled, import_distilled

CLEAR_ERRORS = (ValueError, OSError)
NUM_CLASSES, IPC, SIZE = 10, 2, 8  # the embedded digits data: 10 classes, 8x8, one channel


@pytest.fixture(scope='module')
def examples(request) -> Callable:
    scale = 20 if request.config.getoption('--long') else 1

    def configured(n: int):
        return settings(max_examples=n * scale, deadline=None, derandomize=True, database=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    return configured


def _valid_set(soft: bool = False) -> DistilledSet:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(IPC)
    soft_labels = torch.randn(len(labels), NUM_CLASSES, generator=g) if soft else None
    return DistilledSet(images=torch.randn(len(labels), 1, SIZE, SIZE, generator=g), labels=labels,
                        class_names=[str(i) for i in range(NUM_CLASSES)], method='MTT', source_dataset='digits',
                        ipc=IPC, image_space='normalized', normalization={'mean': [0.3], 'std': [0.4]}, lr=0.01,
                        soft_labels=soft_labels, soft_label_kind='logits' if soft else None,
                        soft_label_temperature=1.0 if soft else None)


@pytest.fixture(scope='module')
def saved(tmp_path_factory) -> Path:
    return _valid_set().save(tmp_path_factory.mktemp('fuzz') / 'set')


def _fresh_copy(src: Path, tmp: Path) -> Path:
    dst = tmp / f'case{len(list(tmp.iterdir()))}'
    shutil.copytree(src, dst)
    return dst


def _assert_valid(dset: DistilledSet) -> None:
    """What every set that loads must satisfy, whatever its files said."""
    assert dset.images.dim() == 4 and dset.images.is_floating_point() and torch.isfinite(dset.images).all()
    assert dset.labels.dtype == torch.int64 and dset.labels.shape == (dset.images.shape[0],)
    if dset.labels.numel():
        assert 0 <= int(dset.labels.min()) and int(dset.labels.max()) < dset.num_classes
    if dset.soft_labels is not None:
        assert dset.soft_labels.shape == (dset.images.shape[0], dset.num_classes)
        assert torch.isfinite(dset.soft_labels).all()
    assert dset.lr is None or (math.isfinite(float(dset.lr)) and float(dset.lr) > 0)


def _load_or_clear_error(load: Callable[[], DistilledSet], folder: Path):
    try:
        dset = load()
    except CLEAR_ERRORS as e:
        message = str(e)
        assert str(folder) in message and '\n' not in message.strip(), message  # names the file, one line
        return None
    _assert_valid(dset)
    return dset


def _mutate_bytes(path: Path, kind: str, position: float, value: int) -> None:
    data = bytearray(path.read_bytes())
    at = min(int(position * len(data)), max(len(data) - 1, 0))
    if kind == 'truncate':
        del data[at:]
    elif kind == 'flip':
        data[at] ^= value or 1
    else:
        data[at:at] = bytes([value])
    path.write_bytes(bytes(data))


byte_mutations = st.tuples(st.sampled_from(['truncate', 'flip', 'insert']), st.floats(0, 1), st.integers(0, 255))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


# --- timm_dd's own format: the payload is guarded by sha256 ------------------------------------------------------

def test_damaged_set_files_load_the_same_set_or_name_the_file(saved, tmp_path, examples):
    original = DistilledSet.load(saved)

    @examples(40)
    @given(name=st.sampled_from(['distilled.safetensors', 'distill_config.json']), mutation=byte_mutations)
    def check(name, mutation):
        folder = _fresh_copy(saved, tmp_path)
        _mutate_bytes(folder / name, *mutation)
        dset = _load_or_clear_error(lambda: DistilledSet.load(folder), folder)
        if dset is not None and name == 'distilled.safetensors':  # checksummed: only an unchanged payload loads
            assert torch.equal(dset.images, original.images) and torch.equal(dset.labels, original.labels)
    check()


def test_altered_set_metadata_loads_a_valid_set_or_names_the_file(saved, tmp_path, examples):
    config = json.loads((saved / 'distill_config.json').read_text())

    @examples(60)
    @given(key=st.sampled_from(sorted(config)), value=json_values, remove=st.booleans())
    def check(key, value, remove):
        folder = _fresh_copy(saved, tmp_path)
        changed = dict(config)
        if remove:
            changed.pop(key)
        else:
            changed[key] = value
        (folder / 'distill_config.json').write_text(json.dumps(changed))  # NaN/Infinity as Python's json writes them
        _load_or_clear_error(lambda: DistilledSet.load(folder), folder)
    check()


# --- other tools' layouts: plain torch.save files --------------------------------------------------------------

_FACTS = 'timm_dd_export.json'  # what export_distilled writes beside the other tool's files
_LAYOUT_FILES = {'mtt': ('images_best.pt', 'labels_best.pt', 'lr_best.pt', _FACTS),
                 'ddranking': ('images.pt', 'labels.pt', 'lr.pt', _FACTS),
                 'frepo': ('images_best.pt', 'labels_best.pt', 'lr_best.pt', _FACTS)}

_dtypes = st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8,
                           torch.bool])


@st.composite
def replacement_objects(draw) -> Any:
    """Another tensor (any shape and dtype, possibly non-finite) or a Python object where a tensor was."""
    kind = draw(st.sampled_from(['tensor', 'tensor', 'special', 'object']))
    if kind == 'object':
        return draw(st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=3)
                    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    shape = draw(st.lists(st.integers(0, 12), max_size=5))
    dtype = draw(_dtypes)
    t = torch.randint(-3, 20, shape).to(dtype) if not dtype.is_floating_point else torch.randn(shape).to(dtype)
    if kind == 'special' and dtype.is_floating_point and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e30]))
    return t


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('layouts')
    folders = {'mtt': export_distilled(_valid_set(), root / 'mtt', layout='mtt'),
               'ddranking': export_distilled(_valid_set(), root / 'ddranking', layout='ddranking')}
    frepo = root / 'frepo'  # FRePo writes learned label logits beside the images
    shutil.copytree(folders['mtt'], frepo)
    torch.save(_valid_set(soft=True).soft_labels, frepo / 'labels_best.pt')
    folders['frepo'] = frepo
    return folders


def _import(folder: Path, layout: str) -> DistilledSet:
    return import_distilled(folder, layout, dataset='digits', image_space='normalized')


@pytest.mark.parametrize('layout', sorted(_LAYOUT_FILES))
def test_other_tools_files_import_a_valid_set_or_name_the_file(layout, exported, tmp_path, examples):
    _assert_valid(_import(exported[layout], layout))  # the unaltered files import

    @examples(30)
    @given(index=st.integers(0, 3), how=st.sampled_from(['bytes', 'object', 'delete']), mutation=byte_mutations,
           replacement=replacement_objects(), fact=json_values)
    def check(index, how, mutation, replacement, fact):
        folder = _fresh_copy(exported[layout], tmp_path)
        path = folder / _LAYOUT_FILES[layout][index]
        if how == 'bytes':
            _mutate_bytes(path, *mutation)
        elif how == 'object' and path.name == _FACTS:  # one recorded fact of another type or value
            facts = json.loads(path.read_text())
            facts[sorted(facts)[mutation[2] % len(facts)]] = fact
            path.write_text(json.dumps(facts))
        elif how == 'object':
            torch.save(replacement, path)
        else:
            path.unlink()
        _load_or_clear_error(lambda: _import(folder, layout), folder)
    check()
