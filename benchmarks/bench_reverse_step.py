"""Where the time of one exact reverse step of trajectory matching goes, and two ways that do not make it cheaper.

One reverse step of ``recompute`` (and, summed over the steps, the backward of ``unrolled`` and of the official MTT
loop) needs, at the step's parameters ``θ`` and images ``x``, the products ``H v`` and ``(∂g/∂x)ᵀ v`` of the
parameter gradient ``g = ∇θ CE`` with a cotangent ``v``. Measured here, ConvNet-3 (width 128, instance norm) on
32x32 CIFAR-10 images (the shared JPEG copy when present, else random), one thread, best of ``--repeats``:

* ``first_order``: forward + first-order backward (what the forward sweep of ``recompute`` costs per step);
* ``reverse_over_reverse``: forward, backward with ``create_graph``, backward of that (what timm_dd and the
  official loop do);
* ``reverse_over_forward``: the same products as the gradient of the forward-mode directional derivative
  ``<∇θ CE, v>`` (``torch.autograd.forward_ad``), checked equal to ``reverse_over_reverse``;
* ``composite_instance_norm``: ``reverse_over_reverse`` with the instance norm written as mean / variance
  arithmetic instead of ``nn.GroupNorm``'s fused kernel (whose double backward is a composite);
* ``*_compiled``: ``first_order`` and ``reverse_over_reverse`` with the step's gradient through ``torch.compile``
  (``StepGradient(compile=True)``, i.e. ``--set compile=true``; compiled before the timing);
* a profile of ``reverse_over_reverse`` by operator family;
* the convolution floor: the seconds the convolutions alone take in ``reverse_over_reverse`` and ``first_order``
  (profiled, best of ``--repeats``) as a share of ``reverse_over_reverse``. Every exact formulation computes these
  convolutions (nine per layer and step), so with everything else free an ``unrolled`` (or official) step could cost
  no less than ``floor_unrolled`` of today's, and a ``recompute`` step (which adds a first-order sweep) no less than
  ``floor_recompute``.

Usage: python benchmarks/bench_reverse_step.py [--ipc 10] [--repeats 5] [--out benchmarks/results/reverse_step.json]
(``--ipc 1 --out benchmarks/results/reverse_step_ipc1.json`` for the 10-image step)
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))
from _memory import allocator_env  # noqa: E402
from _mtt import mtt_problem, save_images  # noqa: E402
from timm_dd.distill import FlatModel, StepGradient  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'


def _ce_forward_mode(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # cross-entropy from primitive ops: torch's fused log-softmax/logsumexp forward-mode formulas modify a saved
    # tensor in place, which a backward over them rejects
    m = fwAD.unpack_dual(z).primal.max(1, keepdim=True).values.detach()
    lse = (z - m).exp().sum(1).log() + m[:, 0]
    return (lse - z.gather(1, labels[:, None])[:, 0]).mean()


def _variants(fm, x0: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor,
              v: torch.Tensor) -> Dict[str, Callable[[], tuple]]:
    def first_order():
        th = theta.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(fm(th, x0), labels), th)

    def reverse_over_reverse():
        x, th = x0.detach().requires_grad_(True), theta.detach().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(fm(th, x), labels), th, create_graph=True)
        return torch.autograd.grad(g, (th, x), grad_outputs=v)

    def reverse_over_forward():
        x, th = x0.detach().requires_grad_(True), theta.detach().requires_grad_(True)
        with fwAD.dual_level():
            s = fwAD.unpack_dual(_ce_forward_mode(fm(fwAD.make_dual(th, v), x), labels)).tangent
        return torch.autograd.grad(s, (th, x))

    compiled = StepGradient(fm, compile=True)

    def first_order_compiled():
        return compiled(theta.detach().requires_grad_(True), x0, labels)

    def reverse_over_reverse_compiled():
        x, th = x0.detach().requires_grad_(True), theta.detach().requires_grad_(True)
        return torch.autograd.grad(compiled(th, x, labels, None, True), (th, x), grad_outputs=v)

    return {'first_order': first_order, 'reverse_over_reverse': reverse_over_reverse,
            'reverse_over_forward': reverse_over_forward, 'first_order_compiled': first_order_compiled,
            'reverse_over_reverse_compiled': reverse_over_reverse_compiled}


def _composite_instance_norm(self, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean((2, 3), keepdim=True)
    xc = x - mu
    y = xc * torch.rsqrt((xc * xc).mean((2, 3), keepdim=True) + self.eps)
    return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _best(f: Callable[[], tuple], repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _profile(f: Callable[[], tuple]) -> Dict[str, float]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        f()
    families = {'convolution': ('conv',), 'group_norm (incl. its double backward)': ('group_norm', 'GroupNorm'),
                'pooling': ('pool',), 'elementwise (mul/add/sub/div/fill)': ('aten::mul', 'aten::add', 'aten::sub',
                                                                           'aten::div', 'aten::fill_')}
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    out = {}
    for family, keys in families.items():
        if family.startswith('group_norm'):  # the composite double backward runs inside NativeGroupNormBackward0
            share = sum(e.cpu_time_total for e in events if e.key == 'NativeGroupNormBackward0')
        else:
            share = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
        out[family] = round(share / total, 3)
    return out


def _convolution_seconds(f: Callable[[], tuple], repeats: int) -> float:
    # self CPU time of the convolution kernels (forward, backward and double backward), best of `repeats`
    from torch.profiler import ProfilerActivity, profile
    best = float('inf')
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f()
        best = min(best, sum(e.self_cpu_time_total for e in prof.key_averages() if 'conv' in e.key) / 1e6)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ipc', type=int, default=10)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--data', type=Path, default=DEFAULT_DATA)
    p.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'reverse_step.json')
    args = p.parse_args()
    torch.set_num_threads(1)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path, source = save_images(args.ipc, Path(tmp), args.data)
        x0 = torch.load(path)
    model, labels, theta, _, _ = mtt_problem(x0)
    fm = FlatModel(model)
    v = 1e-3 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(2))
    variants = _variants(fm, x0, labels, theta, v)
    rr, rf = variants['reverse_over_reverse'](), variants['reverse_over_forward']()
    rc = variants['reverse_over_reverse_compiled']()  # compiles (outside the timing)
    seconds = {name: _best(f, args.repeats) for name, f in variants.items()}
    profile = _profile(variants['reverse_over_reverse'])
    conv = {name: _convolution_seconds(variants[name], args.repeats)
            for name in ('reverse_over_reverse', 'first_order')}
    floor = {'convolution_seconds': {k: round(t, 4) for k, t in conv.items()},
             'floor_unrolled': round(conv['reverse_over_reverse'] / seconds['reverse_over_reverse'], 3),
             'floor_recompute': round((conv['reverse_over_reverse'] + conv['first_order'])
                                      / seconds['reverse_over_reverse'], 3)}
    native_forward = torch.nn.GroupNorm.forward
    torch.nn.GroupNorm.forward = _composite_instance_norm
    try:
        composite = variants['reverse_over_reverse']()
        seconds['composite_instance_norm'] = _best(variants['reverse_over_reverse'], args.repeats)
        seconds['composite_instance_norm_first_order'] = _best(variants['first_order'], args.repeats)
    finally:
        torch.nn.GroupNorm.forward = native_forward
    result = {
        'setting': f'ConvNet-3 width 128, {x0.shape[0]} images 32x32 ({source}), one inner step, fp32, 1 thread, '
                   f'best of {args.repeats}',
        'seconds': {k: round(t, 4) for k, t in seconds.items()},
        'ratio_to_reverse_over_reverse': {k: round(t / seconds['reverse_over_reverse'], 3) for k, t in seconds.items()},
        'agreement': {'reverse_over_forward_Hv': _rel(rr[0], rf[0]), 'reverse_over_forward_x': _rel(rr[1], rf[1]),
                      'compiled_Hv': _rel(rr[0], rc[0]), 'compiled_x': _rel(rr[1], rc[1]),
                      'composite_Hv': _rel(rr[0], composite[0]), 'composite_x': _rel(rr[1], composite[1])},
        'profile_share_reverse_over_reverse': profile,
        'convolution_floor': floor,
        'allocator_env': allocator_env(),
        'machine': platform.platform(), 'torch': torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
