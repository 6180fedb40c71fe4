"""Datasets past memory: load time and peak memory of image folders kept as uint8 pixels, projected to ImageNet-1K at
64x64, and the CIFAR-10 expert epoch on stored pixels against a float copy, in one run.

1. **Growth.** Synthetic image folders of growing size (``--sizes``, default 1,000, 10,000 and 100,000 64x64 RGB
   PNGs in 100 class folders: smooth random images, a few KB each) are loaded with ``timm_dd.data.load_dataset`` in
   a fresh subprocess each: first decoding the files (which also writes the decode cache), then from the cache
   (memory-mapped). Reported: seconds, peak RSS growth over the process's RSS before the load (``VmHWM`` after a
   ``/proc/self/clear_refs`` reset), and that growth over the set's uint8 size. A least-squares line through the
   sizes projects both to ImageNet-1K at 64x64 (1,281,167 images, 15.7 GB of uint8 pixels). Target: peak RSS <= 1.1x
   the uint8 size + a constant (the largest size is the test of it; the constant is the fitted intercept).
   With ``--format parquet`` the same images are first written as parquet shards of 10,000 rows (the Hub's layout:
   an ``image`` struct of the PNG bytes and an integer ``label``) and loaded from those: the same targets for
   :mod:`timm_dd.data.parquet_images`.
2. **Expert epoch.** One ConvNet-3 expert epoch (width 128, batch 256, DSA, SGD lr 0.01; MTT's recipe) on
   ``--expert-images`` CIFAR-10 training images (the shared JPEG copy when present, else random pixels), once with
   the images stored as uint8 pixels converted batch by batch (what a loaded dataset does now) and once from a float
   copy of the same normalized images (what it did before), alternating ``--repeats`` times in one process; the
   ratio of the best times. Target: stored pixels not slower (ratio <= 1.0, within noise).

Usage: python benchmarks/bench_data_memory.py [--sizes 1000 10000 100000] [--expert-images 5000] [--repeats 2]
       [--format folder|parquet] [--out benchmarks/results/data_memory.json]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))
from _memory import allocator_env, reset_peak, status_mb  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'
IMAGENET_64 = 1281167
SIDE = 64


def make_folder(root: Path, count: int, classes: int = 100, seed: int = 0) -> None:
    """``count`` smooth random ``SIDE`` x ``SIDE`` RGB PNGs in ``classes`` class folders (a few KB each)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / 'train' / f'c{c:03d}').mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((SIDE, SIDE), Image.BILINEAR)
        image.save(root / 'train' / f'c{i % classes:03d}' / f'{i:07d}.png')


def make_parquet(folder: Path, out: Path, rows_per_file: int = 10000) -> Path:
    """The images of ``folder``'s train split as parquet shards (``out/data/train-0000k-of-N.parquet``), their PNG
    bytes as they are (no decoding), labelled by class folder in sorted order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    classes = sorted(p.name for p in (folder / 'train').iterdir())
    files = [(f, label) for label, c in enumerate(classes) for f in sorted((folder / 'train' / c).iterdir())]
    shards = [files[i:i + rows_per_file] for i in range(0, len(files), rows_per_file)]
    (out / 'data').mkdir(parents=True, exist_ok=True)
    for k, shard in enumerate(shards):
        images = [{'bytes': f.read_bytes(), 'path': f.name} for f, _ in shard]
        table = pa.table({'image': images, 'label': pa.array([label for _, label in shard], pa.int64())})
        pq.write_table(table, out / 'data' / f'train-{k:05d}-of-{len(shards):05d}.parquet')
    return out


def _child_load(folder: str, cache: str) -> dict:
    from timm_dd.data import load_dataset
    reset = reset_peak()
    base = status_mb('VmRSS')
    t0 = time.perf_counter()
    ds = load_dataset(folder, 'train', cache_dir=cache)
    seconds = time.perf_counter() - t0
    peak = status_mb('VmHWM')
    nbytes = ds.images.numel() * ds.images.element_size()
    return dict(images=len(ds), seconds=seconds, peak_growth_mb=peak - base, uint8_mb=nbytes / 2 ** 20,
                dtype=str(ds.images.dtype).replace('torch.', ''), peak_reset=reset)


def _load_row(folder: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, '--child-load', str(folder), str(cache)], capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(xs, ys):
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def growth(sizes, tmp: Path, fmt: str = 'folder') -> dict:
    rows = []
    for n in sizes:
        folder, cache = tmp / f'folder{n}', tmp / f'cache{n}'
        t0 = time.perf_counter()
        make_folder(folder, n)
        if fmt == 'parquet':
            folder = make_parquet(folder, tmp / f'parquet{n}')
        made = time.perf_counter() - t0
        decode = _load_row(folder, cache)
        cached = _load_row(folder, cache)
        rows.append(dict(images=n, made_seconds=made, uint8_mb=decode['uint8_mb'], dtype=decode['dtype'],
                         decode_seconds=decode['seconds'], decode_peak_mb=decode['peak_growth_mb'],
                         cache_seconds=cached['seconds'], cache_peak_mb=cached['peak_growth_mb'],
                         decode_peak_over_uint8=decode['peak_growth_mb'] / decode['uint8_mb'],
                         cache_peak_over_uint8=cached['peak_growth_mb'] / decode['uint8_mb']))
        print(f"{n:>8,} images  uint8 {decode['uint8_mb']:8.1f} MB | decode {decode['seconds']:7.1f} s, peak "
              f"{decode['peak_growth_mb']:8.1f} MB ({rows[-1]['decode_peak_over_uint8']:.2f}x) | cache "
              f"{cached['seconds']:6.2f} s, peak {cached['peak_growth_mb']:8.1f} MB "
              f"({rows[-1]['cache_peak_over_uint8']:.2f}x)", flush=True)
    projection = {}
    uint8_target = IMAGENET_64 * 3 * SIDE * SIDE / 2 ** 20
    for key in ('decode_seconds', 'decode_peak_mb', 'cache_seconds', 'cache_peak_mb'):
        slope, intercept = _fit([r['images'] for r in rows], [r[key] for r in rows])
        projection[key] = dict(per_image=slope, intercept=intercept, imagenet_64=slope * IMAGENET_64 + intercept)
    largest = rows[-1]
    constant = {k: max(projection[k]['intercept'], 0.0) for k in ('decode_peak_mb', 'cache_peak_mb')}
    target = {k: largest[k] <= 1.1 * largest['uint8_mb'] + constant[k] for k in constant}
    return dict(format=fmt, rows=rows,
                projection=dict(projection, imagenet_64_uint8_mb=uint8_target, images=IMAGENET_64),
                target='peak RSS <= 1.1x uint8 size + constant (the fitted intercept), at the largest size',
                target_met=target)


def expert_epoch(count: int, repeats: int, data: Path) -> dict:
    from timm_dd.data import ImageSet, ImageSpace, load_dataset, select_ipc
    from timm_dd.distill.experts import ExpertConfig, train_expert
    if (data / 'train.zip').is_file() or (data / 'train').is_dir():
        full = load_dataset(str(data), 'train')
        idx = select_ipc(full.labels, count // 10, torch.Generator().manual_seed(0), num_classes=10)
        stored, source = full.subset(idx), f'{count} CIFAR-10 training images from {data}'
    else:
        g = torch.Generator().manual_seed(0)
        stored = ImageSet(torch.randint(0, 256, (count, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.arange(count) % 10, normalization=ImageSpace.normalized((0.5,) * 3, (0.25,) * 3))
        source = f'{count} random uint8 images'
    stored = stored.in_space(stored.normalization)
    floats = stored.float_images()
    assert stored.stores_pixels and not floats.stores_pixels
    cfg = ExpertConfig(arch='convnet3', model_kwargs=dict(num_classes=10, in_chans=3, img_size=32, width=128),
                       num_experts=1, epochs=1, lr=0.01, batch_size=256, dsa=True, seed=0, dataset='cifar10')
    times = {'uint8 pixels': [], 'float copy': []}
    trajectories = {}
    train_expert(stored, stored.labels, cfg, 0)  # warm-up
    for _ in range(repeats):
        for name, images in (('uint8 pixels', stored), ('float copy', floats.images)):
            t0 = time.perf_counter()
            trajectories[name] = train_expert(images, stored.labels, cfg, 0)
            times[name].append(time.perf_counter() - t0)
    same = all(torch.equal(a, b) for a, b in zip(trajectories['uint8 pixels'], trajectories['float copy']))
    best = {k: min(v) for k, v in times.items()}
    ratio = best['uint8 pixels'] / best['float copy']
    print(f"expert epoch ({source}): uint8 pixels {best['uint8 pixels']:.1f} s, float copy "
          f"{best['float copy']:.1f} s, ratio {ratio:.3f}; identical trajectories: {same}", flush=True)
    return dict(data=source, recipe='convnet3 width 128, batch 256, DSA, SGD lr 0.01, 1 epoch', seconds=times,
                best=best, ratio=ratio, identical_trajectories=same, target='ratio <= 1.0 (within noise)')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', type=int, default=[1000, 10000, 100000])
    parser.add_argument('--expert-images', type=int, default=5000)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--format', choices=['folder', 'parquet'], default='folder',
                        help='how the synthetic images are stored: PNG files in class folders, or parquet shards')
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'data_memory.json')
    parser.add_argument('--child-load', nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_load:
        print(json.dumps(_child_load(*args.child_load)))
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='bench_data_memory_') as tmp:
        grow = growth(args.sizes, Path(tmp), args.format)
    epoch = expert_epoch(args.expert_images, args.repeats, args.data) if args.expert_images else None
    proj = grow['projection']
    print(f"\n{args.format}: ImageNet-1K 64x64 ({IMAGENET_64:,} images, "
          f"{proj['imagenet_64_uint8_mb'] / 1024:.1f} GiB of uint8): "
          f"decode {proj['decode_seconds']['imagenet_64'] / 3600:.1f} h (one core), peak "
          f"{proj['decode_peak_mb']['imagenet_64'] / 1024:.1f} GiB; from the cache "
          f"{proj['cache_seconds']['imagenet_64']:.0f} s, peak {proj['cache_peak_mb']['imagenet_64'] / 1024:.1f} GiB "
          f"(float32 would be {4 * proj['imagenet_64_uint8_mb'] / 1024:.1f} GiB)")
    print(f"target {grow['target']}: {grow['target_met']}")
    result = dict(benchmark='data_memory', machine=f'{platform.machine()} {os.cpu_count()} cores, torch '
                                                   f'{torch.__version__}',
                  threads=1, allocator_env=allocator_env(), growth=grow, expert_epoch=epoch,
                  wall_seconds=time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
