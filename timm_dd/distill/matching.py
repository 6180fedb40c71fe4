"""The MTT / ATT inner loop and its meta-gradient.

One outer iteration starts a student at an expert checkpoint ``θ_0 = θ*_t``, takes ``N`` plain SGD steps on the
synthetic images ``θ_{k+1} = θ_k − α ∇θ CE(f(DSA_k(X[idx_k]); θ_k), y[idx_k])`` and matches
``L = ‖θ_K − θ*‖² / ‖θ_0 − θ*‖²`` with ``θ* = θ*_{t+M}``; ``K = N`` (MTT) or the step closest to ``θ*`` in L1
(ATT, ties to the later step). The gradient of ``L`` w.r.t. the images ``X`` and the step size ``α`` is computed

* ``'unrolled'``: one autograd graph over all steps (memory grows with ``N``), or
* ``'recompute'``: exact reverse accumulation; the forward stores only ``θ_0..θ_K`` and the backward
  rebuilds one step's graph at a time from ``θ_k`` and the recorded batch indices and DSA draws, so activation
  memory is that of one step.

Both modes take a :class:`StepPlan` (batch indices and DSA draws of every step, drawn up front from a generator)
so they see the same stochastic steps and return the same gradient.

Several processes (:class:`Shards`): every process holds the same images, step size, plan and parameter vectors;
each inner step's minibatch is split over the processes (sample ``i`` of the batch goes to process ``i % K``), each
computes the gradient of its share of the summed loss, and collective sums make every per-step parameter gradient,
Hessian-vector product, image gradient and step-size gradient equal to the one-process value (up to summation
order). This is exact for networks without cross-sample statistics (instance/group norm: the ConvNets of MTT/ATT);
batch norm would see smaller batches, so it is refused.
"""
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..augment import DSA, DSADraw

__all__ = ['FlatModel', 'StepGradient', 'cpu_compiler_available', 'Shards', 'StepPlan', 'MatchResult', 'plan_steps',
           'match_unrolled', 'match_recompute',
           'match_budgeted', 'trajectory_match', 'GRAD_MODES', 'ATT_NORMS']

GRAD_MODES = ('unrolled', 'recompute')
ATT_NORMS = ('l1', 'l2')


class FlatModel:
    """Run a module on a flat parameter vector (``named_parameters()`` order) with ``functional_call``.

    Buffers stay the module's own (none in the GroupNorm ConvNet).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.num_params = sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))


@dataclass(frozen=True)
class Shards:
    """This process's share of every inner-step minibatch: samples ``rank, rank + world, ...``.

    ``world == 1`` (the default) is the one-process computation, bit for bit as without sharding.
    """
    rank: int = 0
    world: int = 1

    @classmethod
    def from_accelerator(cls, accelerator: Any) -> 'Shards':
        if accelerator is None or accelerator.num_processes == 1:
            return cls()
        return cls(accelerator.process_index, accelerator.num_processes)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the processes, in place (a no-op for one process)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def check_model(self, module: nn.Module) -> None:
        if self.world > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            raise ValueError('splitting the synthetic minibatch over processes is exact only for networks without '
                             'batch norm (batch statistics would change); use an instance/group-norm ConvNet or '
                             'run the distillation in one process')


class _CopyToShards(torch.autograd.Function):
    """Identity forward; backward sums the gradient over processes (the replicated θ feeds every shard)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shards: Shards) -> torch.Tensor:
        ctx.shards = shards
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.shards.sum_(grad.clone()), None


class _SumShards(torch.autograd.Function):
    """Sum over processes forward; identity backward (what follows is replicated on every process)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shards: Shards) -> torch.Tensor:
        return shards.sum_(x.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


@dataclass
class StepPlan:
    """The stochastic choices of the ``N`` inner steps: batch indices and DSA draws (``None``: no augmentation)."""
    indices: List[torch.Tensor]
    draws: List[Optional[DSADraw]]

    def __len__(self) -> int:
        return len(self.indices)


def plan_steps(
        num_images: int,
        syn_steps: int,
        batch_syn: Optional[int],
        image_size: int,
        dsa: Optional[DSA],
        generator: torch.Generator,
        device: torch.device = torch.device('cpu'),
) -> StepPlan:
    """Draw every inner step's batch and DSA parameters from ``generator`` (the reference code's order).

    Batches are chunks of a fresh ``randperm`` of size ``batch_syn`` (default: all images), popped from the end
    (the possibly short chunk comes first), refilled when empty; not class-balanced.
    """
    batch_syn = num_images if not batch_syn else min(int(batch_syn), num_images)
    queue: List[torch.Tensor] = []
    indices, draws = [], []
    for _ in range(syn_steps):
        if not queue:
            queue = list(torch.randperm(num_images, generator=generator).split(batch_syn))
        idx = queue.pop().to(device)
        indices.append(idx)
        draws.append(dsa.sample(idx.numel(), image_size, device, generator) if dsa is not None else None)
    return StepPlan(indices, draws)


@dataclass
class MatchResult:
    """Outcome of one outer iteration's inner loop.

    ``loss`` is detached; ``grad_images``/``grad_lr`` are ``dL/dX`` and ``dL/dα``; ``n_opt`` the matched step
    (``N`` for MTT); ``distances`` the per-step distance to the target (ATT only, steps 1..N).
    """
    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    n_opt: int
    distances: Optional[List[float]] = None


def cpu_compiler_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: a C++ compiler (inductor's, ``$CXX``, g++ or clang++)."""
    from torch._inductor import config as inductor_config
    cxx = inductor_config.cpp.cxx[-1] if inductor_config.cpp.cxx else None
    return any(shutil.which(c) for c in (cxx, os.environ.get('CXX'), 'g++', 'clang++') if c)


def _check_compilable(fmodel: FlatModel) -> None:
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fmodel.module.modules()):
        # torch.func.grad refuses the in-place update of the running statistics
        raise ValueError('compile=True needs a network without batch norm (its running statistics are updated in '
                         'place during the step); use an instance/group-norm ConvNet, or leave compile off')
    # inductor generates C++ for the CPU; without a compiler it fails deep inside the first call
    param = next(fmodel.module.parameters(), None)
    if param is not None and param.device.type == 'cpu' and not cpu_compiler_available():
        raise RuntimeError('compile=True on the CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX); '
                           'install one, or leave compile off')


def _standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides, size-1 dimensions included (``contiguous()`` leaves those as they are, and
    the compiled function's guards would see a new layout)."""
    stride, expected = x.stride(), []
    step = 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    if tuple(reversed(expected)) == stride:
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


class StepGradient:
    """One inner step's parameter gradient ``g = ∇θ CE(f(x; θ), y)`` (the batch mean, or a shard's part of it).

    ``compile=False``: PyTorch autograd (``create_graph`` when the outer gradient must pass through ``g``).
    ``compile=True``: ``torch.compile`` of ``torch.func.grad`` of the loss: the forward, the backward and, when the
    caller differentiates ``g``, the double backward become generated kernels with element-wise operations fused
    (fewer memory passes and kernel launches; the convolutions stay library calls). The value and its derivatives
    are the same functions, equal up to floating-point summation order. It compiles once per input shape and
    grad mode (and TF32 setting; tens of seconds on a CPU, where it needs a C++ compiler). Networks with batch
    norm are refused (their running statistics change in place). All instances share one compiled function
    cache (``torch._dynamo.config.recompile_limit`` entries): a process that builds many of them for different
    networks ends up running the later ones uncompiled, with a warning from PyTorch.
    """

    def __init__(self, fmodel: FlatModel, compile: bool = False):
        self.fmodel = fmodel
        self.compile = compile
        if compile:
            _check_compilable(fmodel)
        self._compiled = torch.compile(torch.func.grad(self._reduced_loss), dynamic=False) if compile else None

    def _reduced_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.cross_entropy(self.fmodel(theta, x), y, reduction=reduction)

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, denom: Optional[int] = None,
                 create_graph: bool = False) -> torch.Tensor:
        """``g`` at ``theta`` (which must require grad); differentiable when ``create_graph``."""
        reduction = 'mean' if denom is None else 'sum'  # a shard: the summed loss over the whole batch's size
        if self._compiled is None:
            loss = self._reduced_loss(theta, x, y, reduction)
            g, = torch.autograd.grad(loss if denom is None else loss / denom, theta, create_graph=create_graph)
            return g
        x = _standard_layout(x)  # DSA ops leave different strides; one layout, one compiled graph
        # compiled, the division comes after the gradient (it is linear in the loss): a new batch size does not
        # compile again
        if create_graph:
            g = self._compiled(theta, x, y, reduction)
        else:
            with torch.no_grad():
                g = self._compiled(theta.detach(), x.detach(), y, reduction)
        return g if denom is None else g / denom


def _as_step_gradient(fmodel: Union[FlatModel, StepGradient]) -> StepGradient:
    return fmodel if isinstance(fmodel, StepGradient) else StepGradient(fmodel)


def _step_grad(step_grad: StepGradient, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               plan: StepPlan, dsa: Optional[DSA], k: int, shards: Shards, create_graph: bool) -> torch.Tensor:
    """Step ``k``'s gradient: of the batch mean (one process) or of this shard's part of it (sum / batch size)."""
    idx, draw = plan.indices[k], plan.draws[k]
    if shards.world == 1:
        x = images[idx]
        if draw is not None:
            x = dsa.apply(x, draw)
        return step_grad(theta, x, labels[idx], None, create_graph)
    mine = slice(shards.rank, None, shards.world)
    if idx[mine].numel() == 0:  # fewer samples than processes: a zero gradient that still depends on θ (and
        # through its derivative), so every process runs the same collectives
        g, = torch.autograd.grad((theta * theta).sum() * 0, theta, create_graph=create_graph)
        return g
    x = images[idx[mine]]
    if draw is not None:
        x = dsa.apply(x, DSADraw(draw.ops, {n: v[mine] for n, v in draw.params.items()}, draw.image_size,
                                 draw.siamese) if not draw.siamese else draw)
    return step_grad(theta, x, labels[idx[mine]], idx.numel(), create_graph)


def _distance(theta: torch.Tensor, target: torch.Tensor, norm: str) -> float:
    d = theta.detach() - target
    return float(d.abs().sum()) if norm == 'l1' else float(d.pow(2).sum())


def _select_step(distances: Sequence[float]) -> int:
    # argmin over steps 1..N; best starts at +inf, `<=` sends ties to the later step (ATT's `best >= d`)
    best, n_opt = math.inf, len(distances)
    for k, d in enumerate(distances, start=1):
        if d <= best:
            best, n_opt = d, k
    return n_opt


def _check(method: str, norm: str) -> None:
    if method not in ('mtt', 'att'):
        raise ValueError(f"method must be 'mtt' or 'att', got {method!r}")
    if norm not in ATT_NORMS:
        raise ValueError(f'att_norm must be one of {ATT_NORMS}, got {norm!r}')


def _first_order_steps(step_grad: StepGradient, thetas: List[torch.Tensor], images: torch.Tensor,
                       labels: torch.Tensor, alpha: torch.Tensor, plan: StepPlan, dsa: Optional[DSA],
                       steps: range, shards: Shards, distances: List[float], target: torch.Tensor, method: str,
                       norm: str) -> None:
    """Inner steps ``steps`` to first order (no graph kept between steps), appending each ``θ`` to ``thetas``."""
    for k in steps:
        theta = thetas[-1].requires_grad_(True)
        g = _step_grad(step_grad, theta, images, labels, plan, dsa, k, shards, create_graph=False)
        shards.sum_(g)
        thetas[-1] = theta.detach()
        thetas.append(thetas[-1] - alpha * g)
        if method == 'att':
            distances.append(_distance(thetas[-1], target, norm))


def _graph_steps(step_grad: StepGradient, thetas: List[torch.Tensor], x_leaf: torch.Tensor, labels: torch.Tensor,
                 lr_leaf: torch.Tensor, plan: StepPlan, dsa: Optional[DSA], steps: range, shards: Shards,
                 distances: List[float], target: torch.Tensor, method: str, norm: str) -> None:
    """Inner steps ``steps`` keeping their whole graph (``create_graph``), appending each ``θ`` to ``thetas``."""
    for k in steps:
        theta_k = thetas[-1] if shards.world == 1 else _CopyToShards.apply(thetas[-1], shards)
        g = _step_grad(step_grad, theta_k, x_leaf, labels, plan, dsa, k, shards, create_graph=True)
        if shards.world > 1:
            g = _SumShards.apply(g, shards)
        thetas.append(thetas[-1] - lr_leaf * g)
        if method == 'att':
            distances.append(_distance(thetas[-1], target, norm))


def _reverse_steps(step_grad: StepGradient, thetas: List[Optional[torch.Tensor]], images: torch.Tensor,
                   labels: torch.Tensor, alpha: torch.Tensor, plan: StepPlan, dsa: Optional[DSA], first: int,
                   lam: torch.Tensor, grad_x: torch.Tensor, grad_lr: torch.Tensor, shards: Shards) -> None:
    """Reverse accumulation over steps ``first-1 .. 0`` from the adjoint ``lam = ∂L/∂θ_first``, rebuilding each step's
    graph from its stored ``θ``; adds into ``grad_x`` (this process's part) and ``grad_lr``."""
    for k in range(first - 1, -1, -1):
        theta = thetas[k].requires_grad_(True)
        x_leaf = images.detach().requires_grad_(True)
        g = _step_grad(step_grad, theta, x_leaf, labels, plan, dsa, k, shards, create_graph=True)
        s = torch.dot(lam, g)
        h, d = torch.autograd.grad(s, (theta, x_leaf), allow_unused=shards.world > 1)
        s = s.detach()
        if shards.world > 1:
            # this process had no sample in the step; one collective per step: Σ H_i λ and Σ ⟨λ, g_i⟩
            d = torch.zeros_like(images) if d is None else d
            packed = shards.sum_(torch.cat([h, s.view(1)]))
            h, s = packed[:-1], packed[-1]
        grad_x -= alpha * d
        grad_lr -= s
        lam = lam - alpha * h
        thetas[k] = None  # free the stored step as soon as it is used


def _tail_loss(theta_start: torch.Tensor, theta_target: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """MTT's normalized matching loss ``‖θ − θ*‖² / ‖θ_0 − θ*‖²``."""
    return (theta - theta_target).pow(2).sum() / (theta_start - theta_target).pow(2).sum()


def match_unrolled(
        fmodel: Union[FlatModel, 'StepGradient'],
        images: torch.Tensor,
        labels: torch.Tensor,
        syn_lr: torch.Tensor,
        theta_start: torch.Tensor,
        theta_target: torch.Tensor,
        plan: StepPlan,
        dsa: Optional[DSA] = None,
        method: str = 'mtt',
        att_norm: str = 'l1',
        shards: Shards = Shards(),
) -> MatchResult:
    """Reference meta-gradient: keep the whole ``N``-step graph and backpropagate once.

    ``fmodel``: the network on flat parameters, or a :class:`StepGradient` of it (e.g. compiled).
    """
    _check(method, att_norm)
    step_grad = _as_step_gradient(fmodel)
    x_leaf = images.detach().requires_grad_(True)
    lr_leaf = syn_lr.detach().requires_grad_(True)
    thetas, distances = [theta_start.detach().requires_grad_(True)], []
    _graph_steps(step_grad, thetas, x_leaf, labels, lr_leaf, plan, dsa, range(len(plan)), shards, distances,
                 theta_target, method, att_norm)
    n_opt = _select_step(distances) if method == 'att' else len(plan)
    loss = _tail_loss(theta_start, theta_target, thetas[n_opt])
    gx, glr = torch.autograd.grad(loss, (x_leaf, lr_leaf), allow_unused=True)
    gx = shards.sum_(torch.zeros_like(images) if gx is None else gx)  # each process has its samples' part
    glr = torch.zeros_like(syn_lr) if glr is None else glr  # computed from replicated values: the same everywhere
    return MatchResult(loss.detach(), gx, glr, n_opt, distances or None)


def match_recompute(
        fmodel: Union[FlatModel, 'StepGradient'],
        images: torch.Tensor,
        labels: torch.Tensor,
        syn_lr: torch.Tensor,
        theta_start: torch.Tensor,
        theta_target: torch.Tensor,
        plan: StepPlan,
        dsa: Optional[DSA] = None,
        method: str = 'mtt',
        att_norm: str = 'l1',
        shards: Shards = Shards(),
) -> MatchResult:
    """Exact meta-gradient by reverse accumulation with per-step recomputation.

    Adjoint ``λ_K = ∂L/∂θ_K``; for ``k = K-1..0``: rebuild step ``k``'s gradient ``g_k`` with ``create_graph`` from
    the stored ``θ_k``, take ``(h, d) = ∇_(θ_k, X) ⟨λ, g_k⟩``, then ``dL/dX -= α d``, ``dL/dα -= ⟨λ, g_k⟩`` and
    ``λ -= α h`` (``θ_{k+1} = θ_k − α g_k`` so ``∂θ_{k+1}/∂θ_k = I − α H_k``).
    """
    return match_budgeted(fmodel, images, labels, syn_lr, theta_start, theta_target, plan, dsa, method, att_norm,
                          shards, graph_steps=0)


def match_budgeted(
        fmodel: Union[FlatModel, 'StepGradient'],
        images: torch.Tensor,
        labels: torch.Tensor,
        syn_lr: torch.Tensor,
        theta_start: torch.Tensor,
        theta_target: torch.Tensor,
        plan: StepPlan,
        dsa: Optional[DSA] = None,
        method: str = 'mtt',
        att_norm: str = 'l1',
        shards: Shards = Shards(),
        graph_steps: int = 0,
) -> MatchResult:
    """Exact meta-gradient keeping the graphs of the last ``graph_steps`` inner steps and recomputing the others.

    The first ``N - graph_steps`` steps run to first order (their ``θ`` stored, as :func:`match_recompute`); the
    last ``graph_steps`` keep their graph from a stored ``θ`` (as :func:`match_unrolled`). One backward through that
    graph gives its part of ``dL/dX`` and ``dL/dα`` and the adjoint at its first step, from which the earlier steps
    are reversed one at a time, each rebuilt from its ``θ``. Memory: ``graph_steps`` steps' graphs, then one.
    ``graph_steps >= N`` is :func:`match_unrolled`, ``0`` is :func:`match_recompute`. With ATT, when the matched
    step comes before the kept graphs, they are dropped unused and the reverse starts at that step.
    """
    _check(method, att_norm)
    n = len(plan)
    if graph_steps >= n:
        return match_unrolled(fmodel, images, labels, syn_lr, theta_start, theta_target, plan, dsa, method,
                              att_norm, shards)
    step_grad = _as_step_gradient(fmodel)
    images, alpha = images.detach(), syn_lr.detach()
    theta_start, theta_target = theta_start.detach(), theta_target.detach()
    split = n - max(graph_steps, 0)
    thetas, distances = [theta_start], []
    _first_order_steps(step_grad, thetas, images, labels, alpha, plan, dsa, range(split), shards, distances,
                       theta_target, method, att_norm)
    grad_x, grad_lr = torch.zeros_like(images), torch.zeros_like(alpha)
    tail = [thetas[split].requires_grad_(True)]
    x_leaf, lr_leaf = images.detach().requires_grad_(True), alpha.detach().requires_grad_(True)
    _graph_steps(step_grad, tail, x_leaf, labels, lr_leaf, plan, dsa, range(split, n), shards, distances,
                 theta_target, method, att_norm)
    n_opt = _select_step(distances) if method == 'att' else n
    if n_opt > split:  # the loss is inside the kept graph
        loss = _tail_loss(theta_start, theta_target, tail[n_opt - split])
        gx, glr, lam = torch.autograd.grad(loss, (x_leaf, lr_leaf, tail[0]), allow_unused=True)
        if gx is not None:
            grad_x += gx
        if glr is not None:
            grad_lr += glr.reshape(grad_lr.shape)
        first = split
    else:  # ATT matched an earlier step: the kept graphs do not reach the loss
        loss = _tail_loss(theta_start, theta_target, thetas[n_opt])
        lam = 2.0 * (thetas[n_opt] - theta_target) / (theta_start - theta_target).pow(2).sum()
        first = n_opt
    del tail
    thetas[split] = thetas[split].detach()
    del thetas[first + 1:]  # steps after the reverse's start do not reach the loss
    _reverse_steps(step_grad, thetas, images, labels, alpha, plan, dsa, first, lam.detach(), grad_x, grad_lr, shards)
    shards.sum_(grad_x)
    return MatchResult(loss.detach(), grad_x, grad_lr.reshape(syn_lr.shape), n_opt, distances or None)


def trajectory_match(grad_mode: str, *args, **kwargs) -> MatchResult:
    """Dispatch to :func:`match_unrolled` or :func:`match_recompute` by ``grad_mode`` (a memory budget between the
    two: :func:`match_budgeted`)."""
    if grad_mode == 'unrolled':
        return match_unrolled(*args, **kwargs)
    if grad_mode == 'recompute':
        return match_recompute(*args, **kwargs)
    raise ValueError(f'grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}')
