"""One prepared GPU check: MTT iteration cost vs the official loop, expert / dpkd epoch cost, a short real run.

Sections (each under its own time limit; the whole run under ``--budget`` seconds, default 420 on a GPU):

1. ``mtt``: MTT on CIFAR-10 IPC 10 as published -- ConvNet-3 (``convnet3``, width 128), ZCA, ``syn_steps`` 30, all
   100 images every inner step, DSA on. Seconds per iteration and peak memory for ``grad_mode`` ``unrolled`` and
   ``recompute`` in strict fp32 (TF32 off for matmuls and convolutions), and ``recompute`` with speed options
   (the inner step's gradient through ``torch.compile``, i.e. ``--set compile=true``; TF32 = ``allow_tf32`` on for
   matmul and cuDNN, i.e. matmul precision 'high'; channels_last images); each option
   is kept only when its meta-gradient differs from the fp32 one by < 1e-3 (relative L2, images and step size),
   and the fastest kept variant is the ``recompute+speed`` row. With ``--official PATH`` (a checkout of
   GeorgeCazenavette/mtt-distillation, imported at run time by ``benchmarks/official_mtt.py``) the official inner
   loop runs on the same images, start/target parameters and machine (strict fp32, and PyTorch's defaults, which
   is how the official script runs), and ratios timm_dd / official are reported; also the relative difference
   between the official gradient and timm_dd's ``unrolled`` one on the same batches without DSA, in float64.
   The start point is a fresh initialization and the target a 1e-3 perturbation of it (the cost does not depend
   on the expert).
2. ``experts``: seconds per epoch of expert training on the CIFAR-10 training set
   (``timm_dd.distill.experts.train_expert`` with the preset's ``ExpertConfig``: batch 256, DSA, SGD lr 0.01).
3. ``dpkd``: seconds per epoch of the ``dpkd`` recipe (Lion, DropPath schedule, 2-fold DSA, KD from a ConvNet-3
   teacher; the teacher is untrained here since only the cost is measured) on ``resnet18_dd`` and 100 images.
4. ``real``: a short real run with the library's end-to-end functions (``get_preset('cifar10-ipc10-mtt')``,
   ``load_distillation_data``, ``run_experts``, ``run_distill``): a few experts with fewer epochs than published, then as many
   MTT iterations at IPC 10 as the remaining time allows (capped by ``--max-iterations``), then ConvNet-3 test
   accuracy of the result against 10 random real images per class (same training recipe, ``baseline``). The
   settings actually used are written to the output.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``peak_mb``) and that minus
the memory allocated at the reset (``growth_mb``: what one iteration needs); on CPU the process peak RSS (VmHWM after
a ``/proc/self/clear_refs`` reset) instead. Times are the best of the timed repeats after a warm-up iteration,
with ``torch.cuda.synchronize`` around them.

Usage::

    # GPU (one H100/H200, < 8 min; data: the CIFAR-10 JPEG copy, see --data)
    python benchmarks/gpu_check.py --official carry/mtt-distillation [--out FILE]
    # CPU smoke test (< 2 min; tiny sizes, digits and random data; what tests/test_gpu_check.py runs)
    python benchmarks/gpu_check.py --smoke [--out FILE] [--official carry/mtt-distillation]
    # the full run's code path (CIFAR-10 copy, ZCA, real images) at tiny sizes on a CPU (~1.5 min on 2 cores)
    python benchmarks/gpu_check.py --quick --official carry/mtt-distillation --out /tmp/quick.json

On this project's device machine (the repository travels, ``../shared`` does not)::

    mkdir -p carry && cp -r ../shared/data/cifar10-jpeg carry/      # once; carry/ is git-ignored
    run(command='PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --official carry/mtt-distillation '
                '--data carry/cifar10-jpeg --out $OUT/gpu_check.json',
        carry=['carry/mtt-distillation', 'carry/cifar10-jpeg'], timeout_s=570)

(``carry/mtt-distillation``: ``git clone https://github.com/GeorgeCazenavette/mtt-distillation`` there, or an
exported snapshot with a ``COMMIT`` file naming its commit. The official code is imported at run time, never
copied into this repository.) Lower ``--budget`` (seconds, default 420) to leave more room; the real run adapts its
expert epochs, iteration count and evaluation epochs to the time left and states them.

The JSON goes to ``--out`` (default ``benchmarks/results/gpu_check.json``, smoke:
``benchmarks/results/gpu_check_smoke.json``); the markdown table is printed and written next to it (``.md``).
Exit status 0 when every section ran (sections skipped for lack of time or data, or official rows skipped for lack
of a checkout, count as ran), 1 when a section failed (its error is in the JSON), 2 for bad arguments.
"""
import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / 'benchmarks'))  # official_mtt, _memory
from _memory import reset_peak, status_mb  # noqa: E402

os.environ.setdefault('TQDM_DISABLE', '1')  # the library's progress bars would flood a captured log (before tqdm)
import torch  # noqa: E402

warnings.filterwarnings('ignore', message='torch.meshgrid')  # official DiffAugment

DATA_CANDIDATES = (REPO.parent / 'shared' / 'data' / 'cifar10-jpeg', REPO / 'shared' / 'data' / 'cifar10-jpeg',
                   REPO / 'carry' / 'cifar10-jpeg')
GRAD_TOL = 1e-3

_logger = logging.getLogger('gpu_check')


# ---------------------------------------------------------------------------------------------------------------
# settings


@dataclasses.dataclass
class Settings:
    """Sizes of one run: ``full`` (GPU, published sizes) or ``smoke`` (CPU, tiny)."""
    mode: str
    preset: str
    overrides: Dict[str, Any]  # applied to the preset for the data and the real run
    width: int  # ConvNet width of the timing sections
    timing_ipc: int
    timing_steps: int
    timing_size: int  # image size of the MTT timing section (smoke: random 3-channel images)
    repeats: int
    expert_epochs: int  # timed epochs of the expert section
    dpkd_epochs: int
    dpkd_model_kwargs: Dict[str, Any]
    teacher_kwargs: Dict[str, Any]
    real_ipc: int
    real_experts: int
    real_max_start_epochs: tuple  # candidates, largest that fits the expert budget first
    real_syn_steps: Optional[int]  # None: the preset's
    eval_epochs: tuple  # (preferred, when short of time)
    eval_seeds: int
    budgets: Dict[str, float]  # per-section time limits (s)
    eval_reserve: float  # seconds kept for the evaluation of the real run


def full_settings() -> Settings:
    return Settings(
        mode='full', preset='cifar10-ipc10-mtt', overrides={}, width=128, timing_ipc=10, timing_steps=30,
        timing_size=32, repeats=5, expert_epochs=2, dpkd_epochs=20, dpkd_model_kwargs={}, teacher_kwargs={},
        real_ipc=10, real_experts=3, real_max_start_epochs=(20, 10, 5, 3, 2), real_syn_steps=None,
        eval_epochs=(1000, 300), eval_seeds=2,
        budgets=dict(mtt=150, experts=45, dpkd=30, real_experts=80), eval_reserve=60)


def smoke_settings() -> Settings:
    return Settings(
        mode='smoke', preset='digits-ipc10-mtt',
        overrides=dict(image_size=8, model_kwargs={'width': 8}, zca=True, ipc=2, syn_steps=2),
        width=8, timing_ipc=2, timing_steps=2, timing_size=8, repeats=1, expert_epochs=1, dpkd_epochs=2,
        dpkd_model_kwargs=dict(widths=(4, 8, 8, 16)), teacher_kwargs=dict(width=4),
        real_ipc=2, real_experts=2, real_max_start_epochs=(2,), real_syn_steps=2, eval_epochs=(50, 20),
        eval_seeds=1, budgets=dict(mtt=75, experts=15, dpkd=15, real_experts=20), eval_reserve=10)


def quick_settings() -> Settings:
    """The full run's code path (CIFAR-10 JPEG copy, ZCA, real images) at tiny sizes: for checking the script on a
    CPU before spending GPU time; its figures mean nothing."""
    return dataclasses.replace(
        full_settings(), mode='quick', overrides=dict(model_kwargs={'width': 8}), width=8, timing_steps=2,
        repeats=1, expert_epochs=1, dpkd_epochs=2, dpkd_model_kwargs=dict(widths=(4, 8, 8, 16)),
        teacher_kwargs=dict(width=4), real_experts=2, real_max_start_epochs=(2,), real_syn_steps=2,
        eval_epochs=(20, 10), eval_seeds=1, budgets=dict(mtt=60, experts=60, dpkd=30, real_experts=60),
        eval_reserve=30)


class Clock:
    """The run's deadline and per-section limits."""

    def __init__(self, budget: float):
        self.t0 = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.budget - self.elapsed()


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)



class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on a GPU, process peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = self.base_mb = float('nan')

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2 ** 20
        else:
            self.base_mb = status_mb('VmRSS' if reset_peak() else 'VmHWM')
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            _sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.peak_mb = status_mb('VmHWM')

    @property
    def growth_mb(self) -> float:
        return max(0.0, self.peak_mb - self.base_mb)

    @property
    def method(self) -> str:
        if self.device.type == 'cuda':
            return 'torch.cuda.max_memory_allocated after reset_peak_memory_stats; growth = peak - allocated at reset'
        return 'process peak RSS (VmHWM after /proc/self/clear_refs reset); growth = peak - RSS at reset'


@contextlib.contextmanager
def precision(tf32: bool, cudnn_tf32: Optional[bool] = None):
    """TF32 on (matmul precision 'high', cuDNN TF32) or strict fp32 for matmuls and convolutions; ``cudnn_tf32``
    sets the convolutions apart (``precision(False, True)``: PyTorch's out-of-the-box flags, how the official
    script runs)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32 if cudnn_tf32 is None else cudnn_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _json_safe(x: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _time_block(fn: Callable[[int], Any], device: torch.device, repeats: int, limit: float) -> Dict[str, Any]:
    """Warm-up call, then up to ``repeats`` timed calls (fewer when ``limit`` seconds are used up), under
    :class:`PeakMemory`."""
    t_start = time.perf_counter()
    fn(0)
    _sync(device)
    warm = time.perf_counter() - t_start
    times = []
    with PeakMemory(device) as mem:
        for r in range(repeats):
            if times and time.perf_counter() - t_start + min(times) > limit:
                break
            _sync(device)
            t0 = time.perf_counter()
            fn(r + 1)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return dict(seconds=min(times), mean_seconds=sum(times) / len(times), repeats=len(times),
                warmup_seconds=warm, peak_mb=mem.peak_mb, growth_mb=mem.growth_mb)


# ---------------------------------------------------------------------------------------------------------------
# data


def find_data(arg: Optional[str]) -> Optional[Path]:
    if arg:
        return Path(arg)
    for p in DATA_CANDIDATES:
        if (p / 'train.zip').is_file() or (p / 'train').is_dir():
            return p
    return None


def load_data(s: Settings, data_path: Optional[Path], accelerator, device) -> tuple:
    """``(cfg, DataSplits or None, description)`` for the run's preset (CIFAR-10 in the ZCA space on a GPU run)."""
    from timm_dd.distill import get_preset, load_distillation_data
    cfg = get_preset(s.preset, s.overrides)
    if s.mode == 'smoke':
        data = load_distillation_data(cfg)
        return cfg, data, f'digits (embedded) at {cfg.image_size} px, ZCA={cfg.zca}'
    if data_path is None or not data_path.exists():
        return cfg, None, (f'CIFAR-10 JPEG copy not found (tried {", ".join(map(str, DATA_CANDIDATES))}; pass '
                           f'--data): timing sections use random data, the real run is skipped')
    data = load_distillation_data(cfg, data_path)
    return cfg, data, f'CIFAR-10 JPEG copy {data_path} (50,000 train / 10,000 test), ZCA eps {cfg.zca_eps}'


def timing_images(s: Settings, data, num_classes: int = 10) -> tuple:
    """``[C*ipc, 3, H, W]`` images (first real ones per class when CIFAR is loaded, else random) and labels."""
    from timm_dd.data import select_ipc
    n = num_classes * s.timing_ipc
    if data is not None and data.in_chans == 3 and data.img_size == s.timing_size:
        idx = select_ipc(data.train.labels, s.timing_ipc, torch.Generator().manual_seed(0), num_classes=num_classes)
        return data.train.images[idx].clone(), torch.arange(num_classes).repeat_interleave(s.timing_ipc), 'real'
    x = torch.randn(n, 3, s.timing_size, s.timing_size, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(num_classes).repeat_interleave(s.timing_ipc), 'random'


# ---------------------------------------------------------------------------------------------------------------
# section 1: MTT iteration


def section_mtt(s: Settings, cfg, data, device: torch.device, official: Optional[str], limit: float) -> Dict[str, Any]:
    import timm
    import timm_dd  # noqa: F401
    from timm_dd.augment import DSA
    from timm_dd.distill import FlatModel, StepGradient, plan_steps, trajectory_match

    t_section = time.perf_counter()
    images, labels, source = timing_images(s, data)
    images, labels = images.to(device), labels.to(device)
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=10, in_chans=3, img_size=s.timing_size, width=s.width)
    model = model.to(device)
    fm = FlatModel(model)
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = th0 + 1e-3 * torch.randn(th0.shape, generator=torch.Generator().manual_seed(1)).to(device)
    syn_lr = torch.tensor(float(cfg.lr_teacher), device=device)
    dsa = DSA(cfg.dsa_strategy)
    n, steps, size = images.shape[0], s.timing_steps, s.timing_size
    setting = dict(model=f'convnet3 width {s.width}, {size}x{size}, 10 classes ({fm.num_params:,} parameters)',
                   images=f'{n} ({s.timing_ipc} per class, {source}), all per inner step', syn_steps=steps,
                   dsa=cfg.dsa_strategy, syn_lr=float(cfg.lr_teacher), zca=bool(cfg.zca) and source == 'real',
                   start_target='fresh init; target = start + 1e-3 N(0, 1)')

    def plan(seed: int):
        return plan_steps(n, steps, None, size, dsa, torch.Generator().manual_seed(seed), device)

    def ours(mode: str, x: torch.Tensor, step=fm):
        return lambda r: trajectory_match(mode, step, x, labels, syn_lr, th0, target, plan(1000 + r), dsa, 'mtt')

    per_row = max(1.0, limit / 8)
    rows: List[Dict[str, Any]] = []
    with precision(False):
        for mode in ('unrolled', 'recompute'):
            rows.append(dict(row=f'timm_dd {mode}', grad_mode=mode, precision='fp32', memory_format='contiguous',
                             **_time_block(ours(mode, images), device, s.repeats, per_row)))
        ref_plan = plan(7)
        ref = trajectory_match('recompute', fm, images, labels, syn_lr, th0, target, ref_plan, dsa, 'mtt')
        unr = trajectory_match('unrolled', fm, images, labels, syn_lr, th0, target, ref_plan, dsa, 'mtt')
    checks = dict(unrolled_vs_recompute_fp32=dict(images=_rel(unr.grad_images, ref.grad_images),
                                                  lr=_rel(unr.grad_lr, ref.grad_lr)))
    del unr

    # the official loop first: its rows give the ratios, the speed variants use what time is left
    try:  # a broken checkout must not lose the timm_dd rows
        official_out = section_official(s, fm, images, labels, syn_lr, th0, target, device, official,
                                        limit - (time.perf_counter() - t_section), per_row)
    except Exception as e:
        official_out = dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc())
        print(traceback.format_exc(), file=sys.stderr, flush=True)

    # speed options: each checked against the fp32 meta-gradient on the same plan; the compiled step first (the
    # likeliest to pay off; its warm-up includes the compilation)
    cl = images.contiguous(memory_format=torch.channels_last)
    speed_rows = []
    try:
        compiled = StepGradient(fm, compile=True)
    except RuntimeError as e:  # no C++ compiler for a CPU run
        compiled = None
        speed_rows.append(dict(row='timm_dd recompute compile', skipped=str(e)))
    # TF32 changes nothing off CUDA (and each TF32 setting compiles its own graph): GPU only; the uncompiled
    # variants before tf32+compile, whose compilation may use up the section's time
    variants = [('compile', False, images, compiled), ('tf32', True, images, fm), ('channels_last', False, cl, fm),
                ('tf32+channels_last', True, cl, fm), ('tf32+compile', True, images, compiled)]
    variants = [v for v in variants if v[3] is not None and (device.type == 'cuda' or not v[1])]
    for name, tf32, x, step in variants:
        if time.perf_counter() - t_section > limit * 0.75:
            speed_rows.append(dict(row=f'timm_dd recompute {name}', skipped='section time limit'))
            continue
        try:  # one failing option (say, compilation on an unusual set-up) must not lose the other rows
            with precision(tf32):
                res = trajectory_match('recompute', step, x, labels, syn_lr, th0, target, ref_plan, dsa, 'mtt')
                diff = dict(images=_rel(res.grad_images, ref.grad_images), lr=_rel(res.grad_lr, ref.grad_lr))
                row = dict(row=f'timm_dd recompute {name}', grad_mode='recompute',
                           precision='tf32' if tf32 else 'fp32', compiled=step is compiled,
                           memory_format='channels_last' if x is cl else 'contiguous', grad_rel_diff=diff,
                           grad_ok=max(diff.values()) < GRAD_TOL, effective=device.type == 'cuda' or not tf32,
                           **_time_block(ours('recompute', x, step), device, s.repeats, per_row))
        except Exception as e:
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            row = dict(row=f'timm_dd recompute {name}', skipped=f'failed: {type(e).__name__}: {e}'[:500], failed=True)
        speed_rows.append(row)
    # the fp32 target (recompute <= 0.7x the official fp32 loop) may be met by the compiled step alone: its own row
    rows += [dict(r) for r in speed_rows if r.get('compiled') and r['precision'] == 'fp32' and r.get('grad_ok')]
    ok = [r for r in speed_rows if r.get('grad_ok')]
    best = min(ok, key=lambda r: r['seconds']) if ok else None
    if best is not None:
        rows.append(dict(best, row='timm_dd recompute+speed', chosen=best['row'].replace('timm_dd recompute ', '')))
    plain = next(r for r in rows if r['row'] == 'timm_dd recompute')
    out = dict(setting=setting, rows=rows, speed_variants=speed_rows, grad_checks=checks, official=official_out,
               speed_choice=(best['row'] if best else None),
               speed_beats_fp32=best is not None and best['seconds'] < plain['seconds'],
               speed_note=('fastest speed variant whose meta-gradient is within %g (relative L2) of the fp32 one'
                           % GRAD_TOL) if best else 'no speed variant passed the gradient check')
    off_rows = {r['row']: r for r in out['official'].get('rows', [])}
    base = off_rows.get('official fp32')
    if base is not None and 'seconds' in base:
        out['ratios_vs_official_fp32'] = {
            r['row']: dict(time=r['seconds'] / base['seconds'],
                           growth=r['growth_mb'] / base['growth_mb'] if base['growth_mb'] > 0 else float('nan'),
                           peak=r['peak_mb'] / base['peak_mb'])
            for r in rows}
        dflt = off_rows.get('official torch-defaults')
        if dflt is not None and 'seconds' in dflt and best is not None:
            out['speed_vs_official_torch_defaults'] = dict(
                time=best['seconds'] / dflt['seconds'],
                growth=best['growth_mb'] / dflt['growth_mb'] if dflt['growth_mb'] > 0 else float('nan'))
    return out


def section_official(s: Settings, fm, images, labels, syn_lr, th0, target, device, official: Optional[str],
                     limit: float, per_row: float) -> Dict[str, Any]:
    if not official:
        return dict(skipped='no --official PATH given: official MTT rows skipped')
    if not Path(official).is_dir():
        return dict(skipped=f'--official {official}: no such folder: official MTT rows skipped')
    from official_mtt import OfficialMTT, OfficialNotFound, import_official, official_commit
    try:
        import_official(official)
    except OfficialNotFound as e:
        return dict(skipped=f'{e}: official MTT rows skipped')
    from timm_dd.distill import plan_steps, trajectory_match
    t0 = time.perf_counter()
    size = images.shape[-1]
    off = OfficialMTT(official, channel=3, num_classes=10, im_size=size, net_width=s.width, device=device)
    if off.num_params != fm.num_params:
        raise RuntimeError(f'official ConvNet has {off.num_params} parameters, timm_dd convnet3 {fm.num_params}')
    steps = s.timing_steps
    torch.manual_seed(0)
    rows = []
    for name, ctx in (('official fp32', precision(False)), ('official torch-defaults', precision(False, True))):
        if rows and time.perf_counter() - t0 > limit:
            rows.append(dict(row=name, skipped='section time limit'))
            continue
        with ctx:
            rows.append(dict(row=name, precision='fp32' if 'fp32' in name else 'cuDNN TF32 (PyTorch default)',
                             **_time_block(lambda r: off.iteration(images, labels, syn_lr, th0, target, steps),
                                           device, s.repeats, per_row)))
    # exactness: same batches, no DSA, float64, a few steps
    n64 = min(3, steps)
    fm.module.double()  # in place: the exactness comparison below runs in float64
    try:
        off64 = OfficialMTT(official, channel=3, num_classes=10, im_size=size, net_width=s.width, device=device,
                            dtype=torch.float64)
        p = plan_steps(images.shape[0], n64, None, size, None, torch.Generator().manual_seed(3), device)
        x64, lr64, a64, b64 = images.double(), syn_lr.double(), th0.double(), target.double()
        ours = trajectory_match('unrolled', fm, x64, labels, lr64, a64, b64, p, None, 'mtt')
        loss, gx, glr = off64.iteration(x64, labels, lr64, a64, b64, n64, dsa=False, indices=p.indices)
        exact = dict(steps=n64, dtype='float64', dsa=False, loss=_rel(ours.loss, loss),
                     images=_rel(ours.grad_images, gx), lr=_rel(ours.grad_lr, glr))
    finally:
        fm.module.float()
    return dict(path=str(Path(official).resolve()), commit=official_commit(official), stubbed_imports=off.stubbed,
                note='official inner loop from benchmarks/official_mtt.py (its ReparamModule, ConvNet, DiffAugment); '
                     'network built once, outside the timed iteration',
                rows=rows, exact_vs_timm_dd_unrolled=exact)


# ---------------------------------------------------------------------------------------------------------------
# section 2: expert epochs


def section_experts(s: Settings, cfg, data, device, accelerator, limit: float) -> Dict[str, Any]:
    from timm_dd.distill.experts import ExpertConfig, train_expert
    from timm_dd.distill.run import model_kwargs
    if data is not None:
        x, y, mk = data.train.images, data.train.labels, model_kwargs(cfg, data)
        source = f'{cfg.dataset} train split ({x.shape[0]:,} images, {"ZCA" if cfg.zca else "normalized"})'
    else:
        x = torch.randn(50000, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        y = torch.arange(50000) % 10
        mk, source = dict(num_classes=10, in_chans=3, img_size=32), 'random data (50,000 x 3 x 32 x 32)'
    ecfg = ExpertConfig(arch=cfg.arch, model_kwargs=mk, num_experts=1, epochs=s.expert_epochs, lr=cfg.expert_lr,
                        batch_size=cfg.expert_batch, dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy, seed=0,
                        dataset=cfg.dataset, zca=cfg.zca)
    kw = {'device': device}
    warm = dataclasses.replace(ecfg, epochs=1)
    train_expert(x[:4 * ecfg.batch_size], y[:4 * ecfg.batch_size], warm, 0, **kw)
    _sync(device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        traj = train_expert(x, y, ecfg, 0, **kw)
    sec = time.perf_counter() - t0
    return dict(setting=dict(data=source, arch=ecfg.arch, model_kwargs=mk, batch=ecfg.batch_size, lr=ecfg.lr,
                             dsa=ecfg.dsa, epochs_timed=ecfg.epochs),
                seconds_per_epoch=sec / ecfg.epochs, total_seconds=sec, peak_mb=mem.peak_mb,
                growth_mb=mem.growth_mb, checkpoints=len(traj))


# ---------------------------------------------------------------------------------------------------------------
# section 3: dpkd epochs


def _test_loader(accelerator, x, y, batch_size: int = 500):
    from torch.utils.data import DataLoader, TensorDataset
    return accelerator.prepare(DataLoader(TensorDataset(x, y), batch_size=batch_size))


def section_dpkd(s: Settings, cfg, data, device, accelerator, limit: float) -> Dict[str, Any]:
    import timm
    import timm_dd  # noqa: F401
    from timm_dd.data import select_ipc
    from timm_dd.train.config import load_config
    from timm_dd.data import ImageSet
    from timm_dd.train.trainer import train_model

    if data is not None:
        idx = select_ipc(data.train.labels, 10, torch.Generator().manual_seed(0), num_classes=data.num_classes)
        x, y, k = data.train.images[idx], data.train.labels[idx], data.num_classes
        tx, ty = data.test.images[:1000], data.test.labels[:1000]
        chans, size, source = data.in_chans, data.img_size, f'{x.shape[0]} {cfg.dataset} train images (10 per class)'
    else:
        g = torch.Generator().manual_seed(0)
        x, y, k = torch.randn(100, 3, 32, 32, generator=g), torch.arange(100) % 10, 10
        tx, ty = torch.randn(1000, 3, 32, 32, generator=g), torch.arange(1000) % 10
        chans, size, source = 3, 32, '100 random 3 x 32 x 32 images'

    def make(epochs: int):
        e = int(epochs)
        return load_config('dpkd', dict(epochs=e, period=max(1, e // 8), final_epochs=max(1, e // 4), eval_every=0,
                                        checkpoint_every=10 ** 6, seed=0))

    def run(epochs: int):
        torch.manual_seed(0)
        model = timm.create_model('resnet18_dd', num_classes=k, in_chans=chans, img_size=size, **s.dpkd_model_kwargs)
        teacher = timm.create_model('convnet3', num_classes=k, in_chans=chans, img_size=size, **s.teacher_kwargs)
        return train_model(model, ImageSet(x, y, num_classes=k), _test_loader(accelerator, tx, ty), make(epochs), accelerator,
                           model_name='resnet18_dd', teacher=teacher)

    run(2)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        res = run(s.dpkd_epochs)
    wall = time.perf_counter() - t0
    tcfg = make(s.dpkd_epochs)
    return dict(setting=dict(data=source, model='resnet18_dd ' + json.dumps(s.dpkd_model_kwargs or {}),
                             recipe='dpkd', epochs_timed=s.dpkd_epochs, batch_size=tcfg.batch_size,
                             teacher='convnet3, untrained (cost only)', test_images=int(tx.shape[0])),
                seconds_per_epoch=res.train_seconds / s.dpkd_epochs, wall_seconds=wall,
                images_per_second=res.images_per_second, peak_mb=mem.peak_mb, growth_mb=mem.growth_mb)


# ---------------------------------------------------------------------------------------------------------------
# section 4: short real run


def _eval_convnet(cfg, data, images, labels, lr: float, epochs: int, seeds: int, accelerator) -> List[float]:
    from timm_dd.distill.experts import create_arch
    from timm_dd.distill.run import model_kwargs
    from timm_dd.train.config import load_config
    from timm_dd.data import ImageSet
    from timm_dd.train.trainer import train_model
    accs = []
    for seed in range(seeds):
        tcfg = load_config('baseline', dict(epochs=epochs, eval_every=0, lr=lr, seed=seed, checkpoint_every=10 ** 6))
        torch.manual_seed(1000 + seed)
        model = create_arch(cfg.arch, model_kwargs(cfg, data))
        res = train_model(model, ImageSet(images.detach().cpu().float(), labels.cpu(), num_classes=data.num_classes),
                          _test_loader(accelerator, data.test.images, data.test.labels), tcfg, accelerator,
                          model_name=cfg.arch)
        accs.append(res.final_acc)
    return accs


def section_real(s: Settings, cfg, data, device, accelerator, clock: Clock, workdir: Path, expert_spe: Optional[float],
                 mtt_spi: Dict[str, float], max_iterations: int, compile_step: bool = False) -> Dict[str, Any]:
    from timm_dd.data import select_ipc
    from timm_dd.distill import run_distill, run_experts

    if data is None:
        return dict(skipped='no CIFAR-10 data (see --data)')
    t_section = time.perf_counter()
    notes = []
    # experts: as many epochs as the expert budget allows (published: 100 experts x 50 epochs, max_start_epoch 20)
    budget = min(s.budgets['real_experts'], max(0.0, clock.remaining() - s.eval_reserve) * 0.35)
    spe = expert_spe or 1.0
    ms = s.real_max_start_epochs[-1]
    for cand in s.real_max_start_epochs:
        if s.real_experts * (cand - 1 + cfg.expert_epochs) * spe <= budget:
            ms = cand
            break
    kw = {'accelerator': accelerator}
    on_device = 'accelerator' in kw or 'device' in kw
    # the faster meta-gradient measured in the mtt section (on this device); the preset's when not measured
    grad_mode = min(mtt_spi, key=mtt_spi.get) if mtt_spi and on_device else cfg.grad_mode
    over = dict(ipc=s.real_ipc, num_experts=s.real_experts, max_start_epoch=ms,
                expert_train_epochs=ms - 1 + cfg.expert_epochs, eval_every=0, checkpoint_every=10 ** 6,
                grad_mode=grad_mode, max_experts=None)
    if s.real_syn_steps:
        over['syn_steps'] = s.real_syn_steps
    if compile_step:  # the compiled inner step won the mtt section's speed variants
        over['compile'] = True
    if any(f.name == 'matmul_precision' for f in dataclasses.fields(cfg)):  # the library sets the flags itself
        over['matmul_precision'] = 'high' if device.type == 'cuda' and torch.backends.cuda.matmul.allow_tf32 \
            else 'highest'
    cfg = cfg.replace(**over)
    notes.append(f'{s.real_experts} experts x {cfg.expert_train_epochs} epochs (published: 100 x 50), '
                 f'max_start_epoch {ms} (published: 20), planned from {spe:.2f} s/epoch and a {budget:.0f} s budget')
    t0 = time.perf_counter()
    run_experts(cfg, data, workdir / 'experts', accelerator)
    experts_s = time.perf_counter() - t0

    # distillation: a first chunk to measure, then (resumed from its checkpoint) as many iterations as time allows
    distill_device = (f'accelerator ({accelerator.device})' if 'accelerator' in kw else
                      str(kw['device']) if 'device' in kw else 'cpu (run_distill takes no accelerator/device argument)')
    out_dir = workdir / 'distill'
    first = max(1, min(10 if on_device or device.type == 'cpu' else 2, max_iterations))
    t0 = time.perf_counter()
    dset = run_distill(cfg, data, workdir / 'experts', out_dir, resume=True, evaluate=False, iterations=first, **kw)
    spi_first = (time.perf_counter() - t0) / first
    left = clock.remaining() - s.eval_reserve
    total = first + max(0, min(max_iterations - first, int(left / spi_first * 0.9)))
    spi_steady = spi_first
    if total > first:
        t1 = time.perf_counter()
        dset = run_distill(cfg, data, workdir / 'experts', out_dir, resume=True, evaluate=False, iterations=total,
                           **kw)
        spi_steady = (time.perf_counter() - t1) / (total - first)
    distill_s = time.perf_counter() - t0
    notes.append(f'{total} MTT iterations (published: 5000), chosen from {spi_first:.2f} s/iteration (first '
                 f'{first}) and {max(0.0, left):.0f} s left; cap --max-iterations {max_iterations}')

    # evaluation: ConvNet-3, baseline recipe, distilled (learned lr) vs random real images (lr cfg.eval_lr); the
    # epochs are the published 1000 when the time left allows (calibrated on a short run), else fewer
    idx = select_ipc(data.train.labels, s.real_ipc, torch.Generator().manual_seed(12345), num_classes=data.num_classes)
    real_x, real_y = data.train.images[idx], data.train.labels[idx]
    t0 = time.perf_counter()
    calib = 20
    _eval_convnet(cfg, data, real_x, real_y, cfg.eval_lr, calib, 1, accelerator)
    spe_eval = (time.perf_counter() - t0) / calib
    fit = int((clock.remaining() - 5) / (2 * s.eval_seeds * spe_eval))
    epochs = max(min(s.eval_epochs), min(max(s.eval_epochs), fit))
    if epochs < max(s.eval_epochs):
        notes.append(f'evaluation shortened to {epochs} epochs (published: {max(s.eval_epochs)}) to fit the budget')
    t0 = time.perf_counter()
    lr = float(dset.lr) if dset.lr is not None else cfg.eval_lr
    syn_accs = _eval_convnet(cfg, data, dset.images, dset.labels, lr, epochs, s.eval_seeds, accelerator)
    real_accs = _eval_convnet(cfg, data, real_x, real_y, cfg.eval_lr, epochs, s.eval_seeds, accelerator)
    eval_s = time.perf_counter() - t0
    return dict(
        settings=dict(preset=s.preset, overrides=over, ipc=cfg.ipc, syn_steps=cfg.syn_steps,
                      expert_epochs=cfg.expert_epochs, lr_img=cfg.lr_img, lr_lr=cfg.lr_lr, lr_teacher=cfg.lr_teacher,
                      zca=cfg.zca, dsa=cfg.dsa, grad_mode=cfg.grad_mode, iterations=total,
                      distill_device=distill_device, eval_recipe='baseline', eval_epochs=epochs,
                      eval_seeds=s.eval_seeds, eval_arch=cfg.arch, real_baseline_lr=cfg.eval_lr,
                      precision=('matmul TF32' if torch.backends.cuda.matmul.allow_tf32 else 'matmul fp32') +
                      (', cuDNN TF32' if torch.backends.cudnn.allow_tf32 else ', cuDNN fp32') +
                      ('' if device.type == 'cuda' else ' (CPU: n/a)')),
        notes=notes, learned_lr=lr, distilled_acc_mean=sum(syn_accs) / len(syn_accs), distilled_accs=syn_accs,
        real_acc_mean=sum(real_accs) / len(real_accs), real_accs=real_accs,
        seconds=dict(experts=experts_s, distill=distill_s, per_iteration_first=spi_first,
                     per_iteration_steady=spi_steady, eval=eval_s, total=time.perf_counter() - t_section))


# ---------------------------------------------------------------------------------------------------------------
# report


def _fmt(x: Any, spec: str = '.3f') -> str:
    return format(x, spec) if _finite(x) else '-'


def markdown(result: Dict[str, Any]) -> str:
    sec = result['sections']
    lines = [f"## gpu_check ({result['mode']}): {result['env']['device_name']}, torch {result['env']['torch']}", '']
    mtt = sec.get('mtt', {})
    if 'rows' in mtt:
        st = mtt['setting']
        lines += [f"MTT iteration: {st['model']}; {st['images']}; N = {st['syn_steps']}; DSA {st['dsa']}", '',
                  '| row | s / iteration | peak MB | growth MB | time vs official fp32 | growth vs official fp32 | '
                  'grad rel. diff vs fp32 |', '| --- | --- | --- | --- | --- | --- | --- |']
        ratios = mtt.get('ratios_vs_official_fp32', {})
        for r in mtt['rows'] + mtt.get('official', {}).get('rows', []):
            if 'skipped' in r:
                lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | | | |")
                continue
            rr = ratios.get(r['row'], {})
            diff = r.get('grad_rel_diff')
            lines.append(f"| {r['row']}{' (' + r['chosen'] + ')' if 'chosen' in r else ''} | {_fmt(r['seconds'])} | "
                         f"{_fmt(r['peak_mb'], '.1f')} | {_fmt(r['growth_mb'], '.1f')} | "
                         f"{_fmt(rr.get('time'), '.2f')} | {_fmt(rr.get('growth'), '.2f')} | "
                         f"{_fmt(max(diff.values()), '.1e') if diff else '-'} |")
        for r in mtt.get('speed_variants', []):
            if 'skipped' in r:
                lines.append(f"| ({r['row']}) | skipped: {r['skipped']} | | | | | |")
            else:
                lines.append(f"| ({r['row']}) | {_fmt(r['seconds'])} | {_fmt(r['peak_mb'], '.1f')} | "
                             f"{_fmt(r['growth_mb'], '.1f')} | | | {_fmt(max(r['grad_rel_diff'].values()), '.1e')}"
                             f"{'' if r['grad_ok'] else ' (over ' + str(GRAD_TOL) + ')'} |")
        off = mtt.get('official', {})
        if 'skipped' in off:
            lines += ['', f"Official rows skipped: {off['skipped']}"]
        elif 'error' in off:
            lines += ['', f"Official rows failed: {off['error']}"]
        elif 'exact_vs_timm_dd_unrolled' in off:
            e = off['exact_vs_timm_dd_unrolled']
            lines += ['', f"Official vs timm_dd unrolled, same batches, no DSA, {e['dtype']}, {e['steps']} steps: "
                          f"relative difference images {e['images']:.1e}, lr {e['lr']:.1e}"]
        c = mtt['grad_checks']['unrolled_vs_recompute_fp32']
        lines.append(f"unrolled vs recompute (fp32, same plan): images {c['images']:.1e}, lr {c['lr']:.1e}; "
                     f"speed choice: {mtt.get('speed_choice')}")
        lines.append('')
    lines += ['| section | setting | s / epoch | peak MB |', '| --- | --- | --- | --- |']
    for name in ('experts', 'dpkd'):
        r = sec.get(name, {})
        if 'seconds_per_epoch' in r:
            st = r['setting']
            desc = (f"{st.get('arch', st.get('model'))}, {st['data']}, {st['epochs_timed']} epochs timed")
            lines.append(f"| {name} | {desc} | {_fmt(r['seconds_per_epoch'])} | {_fmt(r['peak_mb'], '.1f')} |")
        else:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error', 'not run')} | | |")
    real = sec.get('real', {})
    lines.append('')
    if 'distilled_acc_mean' in real:
        st = real['settings']
        lines += [f"Short real run ({st['preset']}, IPC {st['ipc']}, N {st['syn_steps']}, {st['iterations']} "
                  f"iterations, {st['grad_mode']}, distilled on {st['distill_device']}; {'; '.join(real['notes'])}):",
                  '', '| training set | ConvNet-3 test acc (mean) | seeds | eval epochs |', '| --- | --- | --- | --- |',
                  f"| distilled (learned lr {real['learned_lr']:.4g}) | {100 * real['distilled_acc_mean']:.2f}% | "
                  f"{st['eval_seeds']} | {st['eval_epochs']} |",
                  f"| {st['ipc']} random real images per class (lr {st['real_baseline_lr']}) | "
                  f"{100 * real['real_acc_mean']:.2f}% | {st['eval_seeds']} | {st['eval_epochs']} |"]
    else:
        lines.append(f"Short real run: {real.get('skipped') or real.get('error', 'not run')}")
    if result['errors']:
        lines += ['', 'Errors: ' + '; '.join(f'{k}: {v.splitlines()[-1]}' for k, v in result['errors'].items())]
    lines += ['', f"Wall time {result['wall_seconds']:.0f} s (budget {result['budget_seconds']:.0f} s)."]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------------------
# main


SECTIONS = ('mtt', 'experts', 'dpkd', 'real')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true', help='tiny CPU-sized run (what the test suite runs)')
    parser.add_argument('--quick', action='store_true',
                        help='the full run\'s code path (CIFAR-10, ZCA) at tiny sizes, to check the script on a CPU')
    parser.add_argument('--official', default=None, help='checkout of GeorgeCazenavette/mtt-distillation')
    parser.add_argument('--data', default=None, help='CIFAR-10 JPEG copy (folder with train.zip / test.zip); '
                        'default: the first of ' + ', '.join(map(str, DATA_CANDIDATES)) + ' that exists')
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--budget', type=float, default=None, help='seconds for the whole run (default 420, smoke 100)')
    parser.add_argument('--max-iterations', type=int, default=None,
                        help='cap on the real run\'s MTT iterations (default 500, smoke 100)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--device', default=None, help='default: cuda when available, else cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: 1 in smoke mode)')
    parser.add_argument('--workdir', type=Path, default=None, help='keep expert buffers / distillation output here')
    args = parser.parse_args(argv)

    clock = Clock(args.budget if args.budget is not None else (100.0 if args.smoke else 420.0 if not args.quick
                                                                   else 600.0))
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    if args.smoke and args.quick:
        parser.error('--smoke and --quick exclude each other')
    s = smoke_settings() if args.smoke else quick_settings() if args.quick else full_settings()
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.threads or args.smoke or args.quick:
        torch.set_num_threads(args.threads or 1)
    max_iterations = args.max_iterations or (100 if args.smoke else 5 if args.quick else 500)
    out = args.out or (REPO / 'benchmarks' / 'results' / f'gpu_check{"" if s.mode == "full" else "_" + s.mode}.json')

    import accelerate
    import timm
    import timm_dd  # noqa: F401
    accelerator = accelerate.Accelerator(cpu=device.type == 'cpu', mixed_precision='no')

    env = dict(device=str(device), device_name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                                               else f'CPU ({platform.machine()}, {os.cpu_count()} cores)'),
               torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == 'cuda' else None,
               threads=torch.get_num_threads(), cudnn_benchmark=torch.backends.cudnn.benchmark,
               memory_method=PeakMemory(device).method)
    result: Dict[str, Any] = dict(benchmark='gpu_check', mode=s.mode, env=env, budget_seconds=clock.budget,
                                  sections={}, errors={}, skipped=[])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='gpu_check_'))
    workdir.mkdir(parents=True, exist_ok=True)

    def run_section(name: str, fn: Callable[[], Dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        print(f'[{clock.elapsed():6.1f} s] {name} ...', flush=True)
        try:
            res = fn()
        except Exception as e:  # one failing section must not lose the others
            res = dict(error=f'{type(e).__name__}: {e}')
            result['errors'][name] = traceback.format_exc()
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        res['section_seconds'] = time.perf_counter() - t0
        result['sections'][name] = res
        if 'skipped' in res:
            result['skipped'].append(f'{name}: {res["skipped"]}')

    # data (ZCA on the CIFAR-10 train split for the full run)
    cfg = data = None
    data_path = find_data(args.data) if not args.smoke else None

    def _data():
        nonlocal cfg, data
        cfg, data, desc = load_data(s, data_path, accelerator, device)
        return dict(description=desc, train=list(data.train.images.shape) if data is not None else None)

    run_section('data', _data)
    if cfg is None:
        from timm_dd.distill import get_preset
        cfg = get_preset(s.preset, s.overrides)

    if 'mtt' in args.sections:
        run_section('mtt', lambda: section_mtt(s, cfg, data if not args.smoke else None, device, args.official,
                                               min(s.budgets['mtt'], clock.remaining())))
    if 'skipped' in result['sections'].get('mtt', {}).get('official', {}):
        result['skipped'].append('mtt.official: ' + result['sections']['mtt']['official']['skipped'])
    if 'error' in result['sections'].get('mtt', {}).get('official', {}):
        result['errors']['mtt.official'] = result['sections']['mtt']['official']['traceback']
    if 'experts' in args.sections:
        run_section('experts', lambda: section_experts(s, cfg, data, device, accelerator,
                                                       min(s.budgets['experts'], clock.remaining())))
    if 'dpkd' in args.sections:
        run_section('dpkd', lambda: section_dpkd(s, cfg, data, device, accelerator,
                                                 min(s.budgets['dpkd'], clock.remaining())))
    if 'real' in args.sections:
        mtt_rows = {r['grad_mode']: r['seconds'] for r in result['sections'].get('mtt', {}).get('rows', [])
                    if r['row'] in ('timm_dd unrolled', 'timm_dd recompute')}
        spe = result['sections'].get('experts', {}).get('seconds_per_epoch')
        if clock.remaining() < s.eval_reserve + 10:
            result['sections']['real'] = dict(skipped=f'out of time ({clock.remaining():.0f} s left)')
            result['skipped'].append('real: out of time')
        else:
            # the real run uses TF32 when it passed the gradient check in the mtt section, else strict fp32
            # (and the compiled inner step when it was the fastest variant on a GPU); neither when the fastest
            # variant is slower than plain fp32 recompute
            mtt = result['sections'].get('mtt', {})
            choice = (mtt.get('speed_choice') or '') if mtt.get('speed_beats_fp32') else ''
            with precision('tf32' in choice):
                run_section('real', lambda: section_real(s, cfg, data, device, accelerator, clock, workdir, spe,
                                                         mtt_rows, max_iterations,
                                                         'compile' in choice and device.type == 'cuda'))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    result['wall_seconds'] = clock.elapsed()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(result), indent=2, default=str, allow_nan=False) + '\n')
    md = markdown(result)
    out.with_suffix('.md').write_text(md + '\n')
    print(md)
    print(f'\nwrote {out} and {out.with_suffix(".md")}')
    return 1 if result['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
