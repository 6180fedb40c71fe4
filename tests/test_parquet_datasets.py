"""Real image datasets stored as parquet (the Hub's layout), written by the real ``datasets`` library and read
from a folder or from ``hf://datasets/...`` on the loopback fake Hub: pixels, labels, class names, split files, the
subset of ImageNet's rows, the cache, and the errors."""
import uuid
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

import timm_dd  # noqa: F401  registers the Hub fetcher
from timm_dd.data import IMAGENET_MEAN, load_dataset
from timm_dd.data.imagenet_subsets import IMAGENET_SUBSETS, SUBSET_WNIDS

datasets = pytest.importorskip('datasets')


def _pixels(n: int, seed: int, side: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _write(path: Path, pixels: np.ndarray, labels: List[int], names: Optional[List[str]] = None) -> None:
    """One parquet file as ``datasets`` writes it: PNG-encoded ``Image`` cells and a ``ClassLabel``."""
    features = datasets.Features({'image': datasets.Image(),
                                  'label': datasets.ClassLabel(names=names) if names else datasets.Value('int64')})
    ds = datasets.Dataset.from_dict({'image': [Image.fromarray(p) for p in pixels], 'label': labels},
                                    features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def _repo(folder: Path, names=('cat', 'dog', 'emu')) -> dict:
    train, test = _pixels(7, 0), _pixels(3, 1)
    _write(folder / 'data' / 'train-00000-of-00002.parquet', train[:4], [0, 1, 2, 0], list(names))
    _write(folder / 'data' / 'train-00001-of-00002.parquet', train[4:], [2, 2, 1], list(names))
    _write(folder / 'data' / 'validation-00000-of-00001.parquet', test, [1, 0, 2], list(names))
    (folder / 'README.md').write_text('---\nlicense: mit\n---\n')
    return dict(train=train, test=test)


def test_a_parquet_folder_reads_as_uint8_with_its_class_names(tmp_path):
    pixels = _repo(tmp_path / 'pets')
    train = load_dataset(str(tmp_path / 'pets'), 'train', cache_dir=tmp_path / 'cache')
    assert train.stores_pixels and train.name == 'pets' and train.class_names == ['cat', 'dog', 'emu']
    assert torch.equal(train.images, torch.from_numpy(pixels['train']).permute(0, 3, 1, 2))  # shard 0 first
    assert train.labels.tolist() == [0, 1, 2, 0, 2, 2, 1] and train.normalization.mean == IMAGENET_MEAN
    test = load_dataset(str(tmp_path / 'pets'), 'test', cache_dir=tmp_path / 'cache')  # validation files
    assert test.split == 'test' and test.labels.tolist() == [1, 0, 2]
    assert torch.equal(test.images, torch.from_numpy(pixels['test']).permute(0, 3, 1, 2))
    again = load_dataset(str(tmp_path / 'pets'), 'train', cache_dir=tmp_path / 'cache')
    assert torch.equal(again.images, train.images) and len(list((tmp_path / 'cache').glob('pets-train-*'))) == 1
    resized = load_dataset(str(tmp_path / 'pets'), 'train', image_size=4, use_cache=False)
    assert tuple(resized.images.shape) == (7, 3, 4, 4)
    # the Hub's converted layout: <config>/<split>/<shard>.parquet
    _write(tmp_path / 'converted' / 'default' / 'train' / '0000.parquet', pixels['test'], [2, 1, 0], ['a', 'b', 'c'])
    converted = load_dataset(str(tmp_path / 'converted'), 'train', use_cache=False)
    assert converted.labels.tolist() == [2, 1, 0] and converted.class_names == ['a', 'b', 'c']


def test_a_hub_repo_reads_like_the_folder(hub_env, tmp_path):
    from huggingface_hub import HfApi
    _repo(tmp_path / 'src')
    repo = f'org/pets-{uuid.uuid4().hex[:8]}'
    HfApi().create_repo(repo, repo_type='dataset')
    HfApi().upload_folder(repo_id=repo, folder_path=str(tmp_path / 'src'), repo_type='dataset')
    hub = load_dataset(f'hf://datasets/{repo}', 'train', cache_dir=tmp_path / 'cache')
    local = load_dataset(str(tmp_path / 'src'), 'train', use_cache=False)
    assert torch.equal(hub.images, local.images) and torch.equal(hub.labels, local.labels)
    assert hub.name == repo.split('/')[1] and hub.class_names == local.class_names
    with pytest.raises(timm_dd.HubError):
        load_dataset(f'hf://datasets/org/missing-{uuid.uuid4().hex[:8]}', 'train')
    with pytest.raises(ValueError, match='<owner>/<name>'):
        load_dataset('hf://datasets/', 'train')


def test_subsets_from_parquet_imagenet_decode_only_their_rows(hub_env, tmp_path):
    names = [f'class {k}' for k in range(1000)]  # the Hub's imagenet-1k names its classes in words
    labels = [0, 5, 217, 482, 999, 701, 0]
    _write(tmp_path / 'in1k' / 'data' / 'train-00000-of-00001.parquet', _pixels(7, 2), labels, names)
    _write(tmp_path / 'in1k' / 'data' / 'validation-00000-of-00001.parquet', _pixels(2, 3), [701, 3], names)
    _write(tmp_path / 'in1k' / 'data' / 'test-00000-of-00001.parquet', _pixels(2, 4), [-1, -1], names)
    nette = load_dataset('imagenette', 'train', root=tmp_path / 'in1k', image_size=6, use_cache=False)
    assert nette.labels.tolist() == [0, 1, 2, 9, 0]  # classes 0, 217, 482, 701 at MTT's positions; 5 and 999 dropped
    assert nette.class_names == [names[i] for i in IMAGENET_SUBSETS['imagenette']] and nette.num_classes == 10
    test = load_dataset('imagenette', 'test', root=tmp_path / 'in1k', image_size=6, use_cache=False)
    assert test.labels.tolist() == [9]  # ImageNet's labelled validation images, not the unlabelled test split
    woof_names = sorted(SUBSET_WNIDS['imagewoof'])  # a copy of the subset alone, classes named by wnid
    _write(tmp_path / 'woof' / 'train.parquet', _pixels(3, 5), [0, 9, 4], woof_names)
    woof = load_dataset('imagewoof', 'train', root=tmp_path / 'woof', use_cache=False)
    assert woof.class_names == list(SUBSET_WNIDS['imagewoof']) and tuple(woof.images.shape[-2:]) == (128, 128)
    assert woof.labels.tolist() == [SUBSET_WNIDS['imagewoof'].index(woof_names[k]) for k in (0, 9, 4)]


def test_parquet_files_that_cannot_be_read_as_a_dataset_are_refused(tmp_path):
    _write(tmp_path / 'unlabelled' / 'test-00000.parquet', _pixels(2, 6), [-1, -1], ['a', 'b'])
    with pytest.raises(ValueError, match='unlabelled.*validation'):
        load_dataset(str(tmp_path / 'unlabelled'), 'test', use_cache=False)
    with pytest.raises(FileNotFoundError, match="no parquet files of the 'train' split.*'test'"):
        load_dataset(str(tmp_path / 'unlabelled'), 'train', use_cache=False)
    plain = datasets.Dataset.from_dict({'text': ['a', 'b'], 'score': [1, 2]})
    (tmp_path / 'text').mkdir()
    plain.to_parquet(str(tmp_path / 'text' / 'train.parquet'))
    with pytest.raises(ValueError, match="image column.*'text', 'score'"):
        load_dataset(str(tmp_path / 'text'), 'train', use_cache=False)
    _write(tmp_path / 'five' / 'train.parquet', _pixels(2, 7), [0, 4], ['a', 'b', 'c', 'd', 'e'])
    with pytest.raises(ValueError, match='5 named classes; imagewoof needs'):
        load_dataset('imagewoof', 'train', root=tmp_path / 'five', use_cache=False)
