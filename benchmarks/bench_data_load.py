"""Time loading CIFAR-10 (train + test) from the shared JPEG zips: first load (decode + cache) vs cached load.

Usage: python benchmarks/bench_data_load.py [--data DIR] [--out benchmarks/results/data_load.json]
"""
import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
from timm_dd.data import load_dataset  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'


def _load_both(data: Path, cache_dir: str) -> float:
    t0 = time.perf_counter()
    train = load_dataset(str(data), 'train', cache_dir=cache_dir)
    test = load_dataset(str(data), 'test', cache_dir=cache_dir)
    elapsed = time.perf_counter() - t0
    assert len(train) == 50000 and len(test) == 10000, (len(train), len(test))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='folder holding train.zip and test.zip')
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'data_load.json')
    parser.add_argument('--repeats', type=int, default=3, help='cached loads to time (the best is reported)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')

    missing = [n for n in ('train.zip', 'test.zip') if not (args.data / n).is_file()]
    if missing:
        print(f'error: CIFAR-10 JPEG zips not found: {", ".join(str(args.data / n) for n in missing)}. This '
              f'benchmark needs the shared copy (../shared/data/cifar10-jpeg beside the checkout) or --data DIR.',
              file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix='timm_dd_bench_cache_') as cache_dir:
        first = _load_both(args.data, cache_dir)
        cached = [_load_both(args.data, cache_dir) for _ in range(max(1, args.repeats))]
        cache_bytes = sum(f.stat().st_size for f in Path(cache_dir).iterdir())
    best = min(cached)
    result = {
        'benchmark': 'data_load',
        'dataset': 'cifar10-jpeg train+test (60,000 images)',
        'first_load_s': round(first, 3),
        'cached_load_s': round(best, 3),
        'cached_load_all_s': [round(t, 3) for t in cached],
        'speedup': round(first / best, 1),
        'cache_bytes': cache_bytes,
        'torch': torch.__version__,
        'python': platform.python_version(),
        'cpu_count': os.cpu_count(),
        'platform': platform.platform(),
    }
    print(f'first load (decode + cache write): {first:.2f} s')
    print(f'cached load (best of {len(cached)}):      {best:.3f} s')
    print(f'ratio first / cached:              {first / best:.1f}x')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
