"""gpu_check's shared pieces: run sizes (``Settings``), the time budget, peak-memory probes, precision switches,
timing, and the data the sections time on."""
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

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
    # published-scale rows on synthetic data (section 'scale'): ImageNet-1K 64x64 distillation, Tiny-ImageNet experts
    scale_size: int = 64
    scale_classes: int = 1000
    scale_ipcs: tuple = (1, 10)
    scale_steps: int = 20
    scale_batch_syn: int = 100  # TESLA's ImageNet-1K runs: minibatches of the synthetic set
    scale_width: int = 128
    tiny_images: int = 100000
    tiny_classes: int = 200


def full_settings() -> Settings:
    return Settings(
        mode='full', preset='cifar10-ipc10-mtt', overrides={}, width=128, timing_ipc=10, timing_steps=30,
        timing_size=32, repeats=5, expert_epochs=2, dpkd_epochs=20, dpkd_model_kwargs={}, teacher_kwargs={},
        real_ipc=10, real_experts=3, real_max_start_epochs=(20, 10, 5, 3, 2), real_syn_steps=None,
        eval_epochs=(1000, 300), eval_seeds=2,
        budgets=dict(mtt=150, experts=45, dpkd=30, scale=60, real_experts=80), eval_reserve=60)


def smoke_settings() -> Settings:
    return Settings(
        mode='smoke', preset='digits-ipc10-mtt',
        overrides=dict(image_size=8, model_kwargs={'width': 8}, zca=True, ipc=2, syn_steps=2),
        width=8, timing_ipc=2, timing_steps=2, timing_size=8, repeats=1, expert_epochs=1, dpkd_epochs=2,
        dpkd_model_kwargs=dict(widths=(4, 8, 8, 16)), teacher_kwargs=dict(width=4),
        real_ipc=2, real_experts=2, real_max_start_epochs=(2,), real_syn_steps=2, eval_epochs=(50, 20),
        eval_seeds=1, budgets=dict(mtt=75, experts=15, dpkd=15, scale=20, real_experts=20), eval_reserve=10,
        scale_size=16, scale_classes=20, scale_ipcs=(1, 2), scale_steps=2, scale_batch_syn=8, scale_width=8,
        tiny_images=400, tiny_classes=20)


def quick_settings() -> Settings:
    """The full run's code path (CIFAR-10 JPEG copy, ZCA, real images) at tiny sizes: for checking the script on a
    CPU before spending GPU time; its figures mean nothing."""
    return dataclasses.replace(
        full_settings(), mode='quick', overrides=dict(model_kwargs={'width': 8}), width=8, timing_steps=2,
        repeats=1, expert_epochs=1, dpkd_epochs=2, dpkd_model_kwargs=dict(widths=(4, 8, 8, 16)),
        teacher_kwargs=dict(width=4), real_experts=2, real_max_start_epochs=(2,), real_syn_steps=2,
        eval_epochs=(20, 10), eval_seeds=1, budgets=dict(mtt=60, experts=60, dpkd=30, scale=30, real_experts=60),
        eval_reserve=30, scale_size=16, scale_classes=20, scale_ipcs=(1, 2), scale_steps=2, scale_batch_syn=8,
        scale_width=8, tiny_images=400, tiny_classes=20)


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


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)



class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on a GPU, process peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = self.base_mb = float('nan')

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2 ** 20
        else:
            self.base_mb = status_mb('VmRSS' if reset_peak() else 'VmHWM')
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            sync(self.device)
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


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def json_safe(x: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def time_block(fn: Callable[[int], Any], device: torch.device, repeats: int, limit: float) -> Dict[str, Any]:
    """Warm-up call, then up to ``repeats`` timed calls (fewer when ``limit`` seconds are used up), under
    :class:`PeakMemory`."""
    t_start = time.perf_counter()
    fn(0)
    sync(device)
    warm = time.perf_counter() - t_start
    times = []
    with PeakMemory(device) as mem:
        for r in range(repeats):
            if times and time.perf_counter() - t_start + min(times) > limit:
                break
            sync(device)
            t0 = time.perf_counter()
            fn(r + 1)
            sync(device)
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
