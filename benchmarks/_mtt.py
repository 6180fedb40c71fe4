"""The MTT iteration the CPU benchmarks time: ConvNet-3 at 32x32, 10 classes, a fresh initialization as the start
and start + 1e-3 noise as the target (the cost does not depend on the expert), DSA on."""
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch

__all__ = ['mtt_problem', 'timm_dd_iteration', 'measure_iteration', 'save_images']


def mtt_problem(images: torch.Tensor, width: int = 128) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor, torch.Tensor]:
    """``(model, labels, start, target, lr)`` for class-major ``images``."""
    import timm
    import timm_dd  # noqa: F401
    labels = torch.arange(10).repeat_interleave(images.shape[0] // 10)
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=10, in_chans=3, img_size=32, width=width)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = start + 1e-3 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    return model, labels, start, target, torch.tensor(0.01)


def timm_dd_iteration(mode: str, images: torch.Tensor, width: int = 128) -> Callable[[int, int], None]:
    """``iteration(steps, seed)``: one timm_dd MTT iteration (``mode`` 'unrolled' or 'recompute', with a
    '+compile' suffix: the inner step's gradient through ``torch.compile``, as ``--set compile=true``)."""
    from timm_dd.augment import DSA
    from timm_dd.distill import FlatModel, StepGradient, plan_steps, trajectory_match
    model, labels, start, target, lr = mtt_problem(images, width)
    mode, _, option = mode.partition('+')
    fm, dsa = StepGradient(FlatModel(model), compile=option == 'compile'), DSA()

    def iteration(steps: int, seed: int) -> None:
        plan = plan_steps(images.shape[0], steps, None, 32, dsa, torch.Generator().manual_seed(seed))
        trajectory_match(mode, fm, images, labels, lr, start, target, plan, dsa, 'mtt')
    return iteration


def measure_iteration(iteration: Callable[[int, int], None], steps: int, repeats: int) -> Dict[str, Any]:
    """Warm up with one inner step, then time ``repeats`` iterations of ``steps`` inner steps with the peak RSS
    reset before them (see ``_memory.timed_peak``)."""
    from _memory import timed_peak
    iteration(1, 0)
    times, rss0, rss1, method = timed_peak(lambda r: iteration(steps, r), repeats)
    return {'seconds': min(times), 'all_seconds': times, 'peak_rss_growth_mb': rss1 - rss0, 'peak_rss_mb': rss1,
            'baseline_rss_mb': rss0, 'peak_method': method}


def save_images(ipc: int, folder: Path, data: Path) -> Tuple[Path, str]:
    """``ipc`` images per class (the real CIFAR-10 copy at ``data`` when present, else random), saved for a child."""
    path = folder / f'ipc{ipc}.pt'
    if (data / 'train.zip').is_file():
        from timm_dd.data import load_dataset, select_ipc
        ds = load_dataset(str(data), 'train')
        idx = select_ipc(ds.labels, ipc, torch.Generator().manual_seed(0), num_classes=10)
        x, source = ds.subset(idx).normalized(), f'real CIFAR-10 images from {data}'
    else:
        x, source = torch.randn(10 * ipc, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 'random data'
    torch.save(x.contiguous(), path)
    return path, source
