"""Dataset loading (digits, folders, zips, CIFAR), the decode cache and class-balanced selection."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm_dd.data.folders as dsmod  # the image-folder reader, whose decoding the cache tests count
from timm_dd.data.cache import load_cached
from timm_dd.data import (
    CIFAR10_CLASSES, CIFAR10_MEAN, DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, ImageSet, ImageSpace, load_dataset,
    select_ipc,
)

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'cifar10-jpeg'


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    # never touch the user's cache, even if a test forgets cache_dir
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'default_cache'))
    monkeypatch.setenv('TIMM_DD_DATA', str(tmp_path / 'default_data'))


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    orig = dsmod._decode_image

    def counting(fp, size):
        calls.append(fp)
        return orig(fp, size)

    monkeypatch.setattr(dsmod, '_decode_image', counting)
    return calls


def _pixels(label: int, idx: int, size=(8, 8), grey=False) -> np.ndarray:
    rng = np.random.default_rng(100 * label + idx)
    shape = size if grey else (*size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


CLASSES = ['b_dog', 'a_cat', 'c_eel']  # deliberately unsorted: labels follow the sorted order
PER_CLASS = 3


def _write_tree(root: Path, size=(8, 8), grey=False) -> None:
    for c in CLASSES:
        label = sorted(CLASSES).index(c)
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            Image.fromarray(_pixels(label, i, size, grey)).save(root / c / f'{i:03d}.png')
    (root / 'a_cat' / 'notes.txt').write_text('not an image')
    (root / '.hidden').mkdir()


def _zip_tree(root: Path, archive: Path, prefix: str = '') -> None:
    with zipfile.ZipFile(archive, 'w', compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(root.rglob('*')):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(root).as_posix())


def _expected(size=(8, 8), grey=False) -> torch.Tensor:
    arrs = [_pixels(label, i, size, grey) for label in range(len(CLASSES)) for i in range(PER_CLASS)]
    t = torch.from_numpy(np.stack(arrs))
    t = t.unsqueeze(1) if grey else t.permute(0, 3, 1, 2)
    return t.float() / 255


def test_digits_offline_fixed_split():
    tr = load_dataset('digits')
    te = load_dataset('digits', 'test')
    assert tr.images.shape == (1433, 1, 32, 32) and te.images.shape == (364, 1, 32, 32)
    assert tr.images.dtype == torch.float32 and tr.labels.dtype == torch.int64
    assert tr.num_classes == 10 and tr.class_names == [str(i) for i in range(10)]
    assert 0 <= tr.images.min() and tr.images.max() <= 1
    assert tr.labels.bincount().tolist() == [142, 145, 141, 146, 144, 145, 144, 143, 139, 144]
    again = load_dataset('DIGITS')
    assert torch.equal(again.images, tr.images) and torch.equal(again.labels, tr.labels)
    # the documented statistics are those of the train split
    assert round(tr.images.mean().item(), 4) == DIGITS_MEAN[0]
    assert round(tr.images.std(unbiased=False).item(), 4) == DIGITS_STD[0]
    assert len(tr) + len(te) == 1797
    assert te.labels.bincount().tolist() == [36, 37, 36, 37, 37, 37, 37, 36, 35, 36]
    assert load_dataset('digits', image_size=16).images.shape == (1433, 1, 16, 16)
    with pytest.raises(ValueError, match='split'):
        load_dataset('digits', 'val')


def test_image_dataset_helpers():
    ds = load_dataset('digits', 'test')
    sub = ds.subset([3, 1, 2])
    assert len(sub) == 3 and torch.equal(sub.images[0], ds.images[3]) and sub.labels[1] == ds.labels[1]
    assert sub.class_names == ds.class_names and sub.normalization == ds.normalization
    norm = ds.normalized()
    torch.testing.assert_close(norm, (ds.images - DIGITS_MEAN[0]) / DIGITS_STD[0])
    assert 'digits' in repr(ds)
    with pytest.raises(ValueError):
        ImageSet(ds.images, ds.labels[:-1], ds.class_names, ds.normalization)
    with pytest.raises(ValueError):
        ImageSet(ds.images, ds.labels, ds.class_names, ImageSpace.normalized((0.5, 0.5, 0.5), (0.2,) * 3))


def test_folder_loading(tmp_path):
    root = tmp_path / 'tiny'
    _write_tree(root)
    ds = load_dataset(str(root), cache_dir=tmp_path / 'c')
    assert ds.class_names == sorted(CLASSES) and ds.name == 'tiny'
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(ds.pixels(), _expected()) and ds.stores_pixels  # PNG is lossless; kept as uint8
    assert ds.normalization.mean == IMAGENET_MEAN
    # parent folder with split subfolders
    parent = tmp_path / 'parent'
    _write_tree(parent / 'train')
    ds2 = load_dataset(str(parent), 'train', cache_dir=tmp_path / 'c')
    assert torch.equal(ds2.images, ds.images) and ds2.name == 'parent'
    with pytest.raises(FileNotFoundError, match="'test'"):
        load_dataset(str(parent), 'test', cache_dir=tmp_path / 'c')
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / 'does_not_exist'))


@pytest.mark.parametrize('prefix', ['', 'top/'])
def test_zip_loading(tmp_path, prefix):
    root = tmp_path / 'tree'
    _write_tree(root)
    parent = tmp_path / 'zipped'
    parent.mkdir()
    _zip_tree(root, parent / 'train.zip', prefix)
    for src, split in ((parent / 'train.zip', 'train'), (parent, 'train')):
        ds = load_dataset(str(src), split, cache_dir=tmp_path / 'c', use_cache=False)
        assert ds.class_names == sorted(CLASSES) and ds.name == 'zipped'
        assert torch.equal(ds.pixels(), _expected())
        assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_grey_resize_and_size_mismatch(tmp_path):
    root = tmp_path / 'grey'
    _write_tree(root, grey=True)
    ds = load_dataset(str(root), cache_dir=tmp_path / 'c')
    assert ds.images.shape == (9, 1, 8, 8) and torch.equal(ds.pixels(), _expected(grey=True))
    assert len(ds.normalization.mean) == 1
    Image.fromarray(_pixels(0, 0, (6, 5))).save(root / 'a_cat' / 'odd.png')
    with pytest.raises(ValueError, match='image_size'):
        load_dataset(str(root), cache_dir=tmp_path / 'c')
    ds = load_dataset(str(root), cache_dir=tmp_path / 'c', image_size=4)
    assert ds.images.shape == (10, 3, 4, 4)  # one RGB image makes the whole set RGB


def test_corrupt_image_names_file(tmp_path):
    root = tmp_path / 'bad'
    _write_tree(root)
    (root / 'b_dog' / '001.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    with pytest.raises(ValueError, match='001.png'):
        load_dataset(str(root), cache_dir=tmp_path / 'c')
    # truncated JPEG inside a zip
    good = tmp_path / 'good'
    _write_tree(good)
    jpg = good / 'c_eel' / 'cut.jpg'
    Image.fromarray(_pixels(2, 9)).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[:-40])
    _zip_tree(good, tmp_path / 'bad.zip')
    with pytest.raises(ValueError, match='c_eel/cut.jpg'):
        load_dataset(str(tmp_path / 'bad.zip'), cache_dir=tmp_path / 'c')


def test_cache_written_reused_and_rebuilt(tmp_path, count_decodes):
    root = tmp_path / 'tree'
    _write_tree(root)
    _zip_tree(root, tmp_path / 'data.zip', 'wrap/')
    cache = tmp_path / 'cache'
    first = load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache)
    assert len(count_decodes) == 9
    files = list(cache.glob('*.safetensors'))
    assert len(files) == 1 and not list(cache.glob('*.tmp'))
    second = load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache)
    assert len(count_decodes) == 9  # served from the cache
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.class_names == first.class_names

    # a different image_size is a different cache entry
    load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache, image_size=4)
    assert len(count_decodes) == 18 and len(list(cache.glob('*.safetensors'))) == 2

    # truncated file: detected, rebuilt, then valid again
    blob = files[0].read_bytes()
    files[0].write_bytes(blob[:len(blob) // 2])
    third = load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache)
    assert len(count_decodes) == 27 and torch.equal(third.images, first.images)
    assert load_cached(files[0]) is not None
    # flipped byte in the pixel data: the CRC catches it
    garbled = bytearray(files[0].read_bytes())
    garbled[-20] ^= 0xFF
    files[0].write_bytes(bytes(garbled))
    fourth = load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache)
    assert len(count_decodes) == 36 and torch.equal(fourth.images, first.images)
    load_dataset(str(tmp_path / 'data.zip'), cache_dir=cache)
    assert len(count_decodes) == 36


def test_folder_cache_invalidated_by_change(tmp_path, count_decodes):
    root = tmp_path / 'tree'
    _write_tree(root)
    cache = tmp_path / 'cache'
    load_dataset(str(root), cache_dir=cache)
    load_dataset(str(root), cache_dir=cache)
    assert len(count_decodes) == 9
    Image.fromarray(_pixels(0, 7)).save(root / 'a_cat' / 'new.png')
    ds = load_dataset(str(root), cache_dir=cache)
    assert len(count_decodes) == 19 and len(ds) == 10


def test_default_cache_dir_from_env(tmp_path, monkeypatch, count_decodes):
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'env_cache'))
    root = tmp_path / 'tree'
    _write_tree(root)
    load_dataset(str(root))
    assert len(list((tmp_path / 'env_cache').glob('*.safetensors'))) == 1


def test_select_ipc():
    labels = torch.arange(5).repeat_interleave(torch.tensor([7, 9, 5, 12, 8]))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    idx = select_ipc(labels, 4, generator=torch.Generator().manual_seed(1))
    assert idx.dtype == torch.int64 and idx.shape == (20,)
    assert labels[idx].tolist() == [c for c in range(5) for _ in range(4)]
    assert len(set(idx.tolist())) == 20
    again = select_ipc(labels, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)
    other = [select_ipc(labels, 4, generator=torch.Generator().manual_seed(s)) for s in range(2, 6)]
    assert any(not torch.equal(idx, o) for o in other)
    assert select_ipc(labels, 5).shape == (25,)
    with pytest.raises(ValueError, match='class 2 has 5 images'):
        select_ipc(labels, 6)
    with pytest.raises(ValueError, match='class 5'):
        select_ipc(labels, 1, num_classes=6)
    with pytest.raises(ValueError):
        select_ipc(labels, 0)


def test_cifar10_missing_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match='download=True') as info:
        load_dataset('cifar10', root=tmp_path / 'nothing_here')
    assert 'root=' in str(info.value)
    # the command-line flags that fix it, not only the Python keyword
    assert '--data-root DIR' in str(info.value) and '--dataset DIR' in str(info.value)
    assert 'cifar-10-batches-py' in str(info.value) and 'train.zip' in str(info.value)
    with pytest.raises(FileNotFoundError, match='download=True'):
        load_dataset('cifar100', 'test', root=tmp_path / 'nothing_here')
    with pytest.raises(ValueError, match='split'):
        load_dataset('cifar10', 'val', root=tmp_path)


@pytest.fixture(scope='module')
def shared_cifar(tmp_path_factory):
    if not (SHARED_CIFAR / 'train.zip').is_file() or not (SHARED_CIFAR / 'test.zip').is_file():
        pytest.skip(f'shared CIFAR-10 JPEG copy not found at {SHARED_CIFAR}')
    cache = tmp_path_factory.mktemp('cifar_cache')
    return {split: load_dataset(str(SHARED_CIFAR), split, cache_dir=cache) for split in ('train', 'test')}, cache


def test_shared_cifar10_jpeg(shared_cifar):
    data, cache = shared_cifar
    train, test = data['train'], data['test']
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.class_names == list(CIFAR10_CLASSES) == test.class_names
    assert train.normalization.mean == CIFAR10_MEAN and train.num_classes == 10
    assert len(list(Path(cache).glob('*.safetensors'))) == 2
    # the cached reload is identical
    again = load_dataset(str(SHARED_CIFAR), 'test', cache_dir=cache)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def _write_cifar_copy(root: Path, as_zip: bool = False, classes=CIFAR10_CLASSES, per_class: int = 2) -> None:
    """A tiny CIFAR-10 image-folder copy: ``root/{train,test}/<class>/*.png`` (or ``train.zip`` / ``test.zip``)."""
    for split, offset in (('train', 0), ('test', 50)):
        tree = root / (f'_{split}_tree' if as_zip else split)
        for label, c in enumerate(classes):
            (tree / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_pixels(label, offset + i)).save(tree / c / f'{i:04d}.png')
        if as_zip:
            _zip_tree(tree, root / f'{split}.zip')
            import shutil
            shutil.rmtree(tree)


@pytest.mark.parametrize('layout', ['root-folders', 'root-zips', 'sub-cifar10', 'sub-CIFAR-10-jpeg'])
def test_cifar10_from_an_image_folder_copy_in_data_root(tmp_path, layout):
    root = tmp_path / 'data'
    where = {'root-folders': root, 'root-zips': root, 'sub-cifar10': root / 'cifar10',
             'sub-CIFAR-10-jpeg': root / 'CIFAR-10-jpeg'}[layout]
    _write_cifar_copy(where, as_zip=layout != 'root-folders')
    _write_cifar_copy(root / 'cifar100', classes=[f'c{i:02d}' for i in range(10)])  # never taken for cifar10
    for split, offset in (('train', 0), ('test', 50)):
        ds = load_dataset('cifar10', split, root=root, cache_dir=tmp_path / 'c')
        assert ds.name == 'cifar10' and ds.split == split
        assert ds.class_names == list(CIFAR10_CLASSES) and ds.normalization.mean == CIFAR10_MEAN
        assert ds.images.shape == (20, 3, 8, 8) and ds.labels.tolist() == [k for k in range(10) for _ in range(2)]
        assert torch.equal(ds.pixels(3), torch.from_numpy(_pixels(1, offset + 1)).permute(2, 0, 1).float() / 255)
    assert load_dataset('cifar10', 'test', root=root, cache_dir=tmp_path / 'c', image_size=4).image_size == (4, 4)


def test_cifar10_copy_with_other_classes_is_refused(tmp_path):
    _write_cifar_copy(tmp_path / 'cifar10', classes=[f'k{i}' for i in range(10)], per_class=1)
    with pytest.raises(ValueError, match="not CIFAR-10's") as info:
        load_dataset('cifar10', 'test', root=tmp_path, cache_dir=tmp_path / 'c')
    assert '--dataset' in str(info.value)
    other = tmp_path / 'other'
    _write_cifar_copy(other / 'cifar100', per_class=1)  # a CIFAR-100 folder is not a CIFAR-10 copy
    with pytest.raises(FileNotFoundError, match='--data-root'):
        load_dataset('cifar10', 'test', root=other, cache_dir=tmp_path / 'c')


def test_shared_cifar10_jpeg_through_data_root(shared_cifar):
    data, cache = shared_cifar
    for root in (SHARED_CIFAR, SHARED_CIFAR.parent):  # the copy itself, or the folder that holds it
        test = load_dataset('cifar10', 'test', root=root, cache_dir=cache)
        assert test.name == 'cifar10' and test.class_names == list(CIFAR10_CLASSES)
        assert test.normalization.mean == CIFAR10_MEAN
        assert torch.equal(test.images, data['test'].images) and torch.equal(test.labels, data['test'].labels)


def test_shared_cifar10_jpeg_as_typed_on_the_command_line(shared_cifar, tmp_path, capsys):
    """The README's `train.py --dataset cifar10 --data-root ../shared/data/cifar10-jpeg` (the decode cache of the
    fixture keeps it quick)."""
    import json
    from timm_dd.cli import train as train_cli
    _, cache = shared_cifar
    out = tmp_path / 'out'
    assert train_cli.main(['-c', 'baseline', '--dataset', 'cifar10', '--data-root', str(SHARED_CIFAR), '--real-ipc',
                           '1', '--model', 'convnet3', '--model-kwargs', 'width=4', '--epochs', '1', '--no-plots',
                           '--cpu', '--cache-dir', str(cache), '--output', str(out)]) == 0, capsys.readouterr().err
    result = json.loads((out / 'results.json').read_text())
    assert [r['test_count'] for r in result['runs']] == [10000] and result['data']['dataset'] == 'cifar10'


def test_a_recorded_space_is_compared_by_name_statistics_and_eps():
    from timm_dd.data import ZCA
    cifar = ImageSpace.normalized(CIFAR10_MEAN, (0.25, 0.24, 0.26))
    assert cifar.disagreement(cifar.to_dict()) is None
    rounded = dict(cifar.to_dict(), mean=[round(m, 2) for m in CIFAR10_MEAN])  # published, rounded statistics
    assert cifar.disagreement(rounded) is None
    assert 'mean' in cifar.disagreement(dict(cifar.to_dict(), mean=[0.13] * 3))  # another dataset's
    zca = ImageSpace(zca=ZCA.fit(torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0)), eps=0.1))
    assert cifar.disagreement(zca.to_dict()) == 'zca space, not normalized'
    assert zca.disagreement(zca.to_dict()) is None
    assert 'eps' in zca.disagreement(dict(zca.to_dict(), zca_eps=0.01))


# -- images kept as uint8 pixels -----------------------------------------------------------------------------------

def test_a_folder_keeps_uint8_pixels_and_batches_give_the_float_images(tmp_path):
    root = tmp_path / 'root'
    _write_tree(root)
    ds = load_dataset(str(root), cache_dir=tmp_path / 'c')
    assert ds.stores_pixels and ds.images.dtype == torch.uint8
    space = ds.normalization
    normalized = ds.in_space(space)
    assert normalized.images is ds.images and normalized.space is space  # a normalization copies nothing
    reference = space.to_model(ds.images.float() / 255)  # what a float copy of the set held before
    idx = torch.tensor([4, 0, 7])
    assert torch.equal(normalized.batch(idx), reference[idx])
    assert torch.equal(normalized.float_images().images, reference)
    assert torch.equal(normalized.normalized(), reference)
    zca = ImageSpace.fit('zca', ds.pixels(), 0.1)
    whitened = ds.in_space(zca)  # ZCA mixes the pixels of an image: applied to the whole set, as floats
    assert not whitened.stores_pixels and torch.allclose(whitened.images, zca.to_model(ds.pixels()))


def test_the_cache_is_memory_mapped_and_a_safetensors_file(tmp_path):
    from safetensors import safe_open
    root = tmp_path / 'root'
    _write_tree(root)
    first = load_dataset(str(root), cache_dir=tmp_path / 'c')
    again = load_dataset(str(root), cache_dir=tmp_path / 'c')
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    (path,) = (tmp_path / 'c').glob('*.safetensors')
    with safe_open(str(path), framework='pt') as f:  # any safetensors reader reads it
        assert torch.equal(f.get_tensor('images'), first.images) and f.metadata()['crc32']
    mapped = [line for line in open('/proc/self/maps') if str(path) in line]
    assert mapped, 'the cached images are not mapped from the file'


def test_a_folder_too_large_for_the_machine_is_refused_before_decoding(tmp_path, count_decodes):
    root = tmp_path / 'root'
    _write_tree(root)
    with pytest.raises(ValueError, match=r'need \d+\.\d GiB of memory as uint8 pixels, but this machine has '
                                         r'\d+\.\d GiB available'):
        # 9 images of 2,000,000 x 2,000,000 pixels: 32 TiB, more than any machine has
        load_dataset(str(root), cache_dir=tmp_path / 'c', image_size=2_000_000)
    assert count_decodes == []  # refused before any image was decoded
    from timm_dd.data.folders import check_fits_in_memory
    check_fits_in_memory(1 << 20, root, 'a MiB')  # what fits passes
    with pytest.raises(ValueError, match='16777216.0 GiB'):
        check_fits_in_memory(1 << 54, root, 'a lot')


def test_a_checksum_streamed_block_by_block_equals_the_whole_tensors():
    from timm_dd.io import tensor_checksum
    x = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert tensor_checksum((x[i:i + 3] for i in range(0, 10, 3)), x.shape) == tensor_checksum(x)


def test_a_sets_loader_gives_the_float_batches_without_a_float_copy():
    from accelerate import Accelerator
    from timm_dd.train.trainer import class_balanced_loader
    pixels = torch.randint(0, 256, (23, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    stored = ImageSet(pixels, torch.arange(23) % 4, num_classes=4).in_space(ImageSpace.normalized((0.4,) * 3,
                                                                                                 (0.2,) * 3))
    loader = stored.loader(10)
    assert loader.dataset.images.images.dtype == torch.uint8  # the set itself, still pixels
    floats = stored.float_images()
    got = list(loader)
    assert [len(y) for _, y in got] == [10, 10, 3]
    assert torch.equal(torch.cat([x for x, _ in got]), floats.images)  # the same arithmetic, per batch
    assert torch.equal(torch.cat([y for _, y in got]), stored.labels)
    balanced = list(class_balanced_loader(loader, 2, Accelerator(cpu=True), False))
    labels = torch.cat([y for _, y in balanced])
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(torch.cat([x for x, _ in balanced]), floats.images[:8])
