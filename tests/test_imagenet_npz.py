"""The downsampled ImageNet-1K release (npz batches) read as one uint8 set: layout, batch order, labels, the cache,
and the errors for files that are not that release."""
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_dd.data import IMAGENET_MEAN, load_dataset


def _batch(path: Path, count: int, side: int, seed: int, labels=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (count, 3 * side * side), dtype=np.uint8)
    labels = rng.integers(1, 1001, count) if labels is None else np.asarray(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data, labels=list(labels), mean=data.mean(0))
    return data, labels


def _release(root: Path, side: int = 8):
    batches = {i: _batch(root / 'Imagenet64_train_part1_npz' / f'train_data_batch_{i}.npz', 5 + i, side, i)
               for i in (1, 2, 10)}
    val = _batch(root / 'Imagenet64_val_npz' / 'val_data.npz', 4, side, 99)
    return batches, val


def test_the_release_reads_as_one_uint8_set_in_batch_order(tmp_path):
    batches, val = _release(tmp_path / 'imagenet64')
    train = load_dataset('imagenet64', 'train', root=tmp_path / 'imagenet64', cache_dir=tmp_path / 'cache')
    assert train.stores_pixels and train.images.shape == (6 + 7 + 15, 3, 8, 8) and train.num_classes == 1000
    data = np.concatenate([batches[i][0] for i in (1, 2, 10)])  # batch 2 before batch 10
    labels = np.concatenate([batches[i][1] for i in (1, 2, 10)])
    assert torch.equal(train.images, torch.from_numpy(data).reshape(-1, 3, 8, 8))  # planes: red, green, blue
    assert train.labels.tolist() == (labels - 1).tolist()  # the release counts classes from 1
    assert train.normalization.mean == IMAGENET_MEAN
    test = load_dataset('imagenet64', 'test', root=tmp_path / 'imagenet64', cache_dir=tmp_path / 'cache')
    assert torch.equal(test.images, torch.from_numpy(val[0]).reshape(-1, 3, 8, 8))
    again = load_dataset('imagenet64', 'train', root=tmp_path / 'imagenet64', cache_dir=tmp_path / 'cache')
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert len(list((tmp_path / 'cache').glob('imagenet64-train-*.safetensors'))) == 1


def test_files_that_are_not_the_release_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'no train_data_batch_\*\.npz under .*--data-root'):
        load_dataset('imagenet64', 'train', root=tmp_path / 'empty', use_cache=False)
    _batch(tmp_path / 'odd' / 'train_data_batch_1.npz', 3, 8, 0)
    bad = tmp_path / 'odd' / 'train_data_batch_2.npz'
    np.savez(bad, data=np.zeros((2, 100), np.uint8), labels=[1, 2])
    with pytest.raises(ValueError, match='train_data_batch_2.npz: data is uint8 \\(2, 100\\)'):
        load_dataset('imagenet64', 'train', root=tmp_path / 'odd', use_cache=False)
    _batch(tmp_path / 'labels' / 'val_data.npz', 2, 8, 0, labels=[0, 5])
    with pytest.raises(ValueError, match=r'labels range over \[0, 5\], not 1..1000'):
        load_dataset('imagenet64', 'test', root=tmp_path / 'labels', use_cache=False)
    with pytest.raises(ValueError, match='image_size does not apply'):
        load_dataset('imagenet64', 'train', root=tmp_path / 'odd', image_size=32)


def test_the_tesla_preset_loads_the_release_as_its_data(tmp_path):
    from timm_dd.distill import get_preset, load_distillation_data
    _release(tmp_path / 'imagenet64')
    data = load_distillation_data(get_preset('imagenet64-ipc1-tesla'), root=tmp_path / 'imagenet64')
    assert data.num_classes == 1000 and data.img_size == 8 and len(data.train) == 28 and len(data.test) == 4
    assert data.space.mean == IMAGENET_MEAN  # ImageNet's statistics, no ZCA (TESLA's transform)
