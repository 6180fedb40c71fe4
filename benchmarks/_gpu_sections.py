"""gpu_check's sections: MTT iteration cost (ours and the official loop), expert and dpkd epoch cost, and the
short real run. Each returns a JSON-ready dict."""
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from _gpu_common import (
    GRAD_TOL, Clock, PeakMemory, Settings, precision, rel_diff, sync, time_block, timing_images,
)

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
                             **time_block(ours(mode, images), device, s.repeats, per_row)))
        ref_plan = plan(7)
        ref = trajectory_match('recompute', fm, images, labels, syn_lr, th0, target, ref_plan, dsa, 'mtt')
        unr = trajectory_match('unrolled', fm, images, labels, syn_lr, th0, target, ref_plan, dsa, 'mtt')
    checks = dict(unrolled_vs_recompute_fp32=dict(images=rel_diff(unr.grad_images, ref.grad_images),
                                                  lr=rel_diff(unr.grad_lr, ref.grad_lr)))
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
                diff = dict(images=rel_diff(res.grad_images, ref.grad_images), lr=rel_diff(res.grad_lr, ref.grad_lr))
                row = dict(row=f'timm_dd recompute {name}', grad_mode='recompute',
                           precision='tf32' if tf32 else 'fp32', compiled=step is compiled,
                           memory_format='channels_last' if x is cl else 'contiguous', grad_rel_diff=diff,
                           grad_ok=max(diff.values()) < GRAD_TOL, effective=device.type == 'cuda' or not tf32,
                           **time_block(ours('recompute', x, step), device, s.repeats, per_row))
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
                             **time_block(lambda r: off.iteration(images, labels, syn_lr, th0, target, steps),
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
        exact = dict(steps=n64, dtype='float64', dsa=False, loss=rel_diff(ours.loss, loss),
                     images=rel_diff(ours.grad_images, gx), lr=rel_diff(ours.grad_lr, glr))
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
    sync(device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        traj = train_expert(x, y, ecfg, 0, **kw)
    sec = time.perf_counter() - t0
    return dict(setting=dict(data=source, arch=ecfg.arch, model_kwargs=mk, batch=ecfg.batch_size, lr=ecfg.lr,
                             dsa=ecfg.dsa, epochs_timed=ecfg.epochs),
                seconds_per_epoch=sec / ecfg.epochs, total_seconds=sec, peak_mb=mem.peak_mb,
                growth_mb=mem.growth_mb, checkpoints=len(traj))


# ---------------------------------------------------------------------------------------------------------------
# section: published scale on synthetic data


def section_scale(s: Settings, device: torch.device, limit: float) -> Dict[str, Any]:
    """One ImageNet-1K-shaped MTT iteration per IPC (random 64x64 images, 1000 classes, ConvNet-4, TESLA-style
    minibatches of the synthetic set, the exact gradient under ``graph_budget='auto'``) and one Tiny-ImageNet-shaped
    expert epoch (100,000 random 64x64 images, 200 classes, ConvNet-4, batch 256, DSA): the published-scale rows."""
    import timm
    import timm_dd  # noqa: F401
    from timm_dd.augment import DSA
    from timm_dd.distill import FlatModel, StepGradient, graph_step_bytes, graph_steps_for_budget, match_budgeted, \
        plan_steps
    from timm_dd.distill.experts import ExpertConfig, train_expert
    t_section, size, k = time.perf_counter(), s.scale_size, s.scale_classes
    torch.manual_seed(0)
    model = timm.create_model('convnet4', num_classes=k, in_chans=3, img_size=size, width=s.scale_width).to(device)
    fm = StepGradient(FlatModel(model))
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = th0 + 1e-3 * torch.randn(th0.shape, generator=torch.Generator().manual_seed(1)).to(device)
    lr, dsa = torch.tensor(0.01, device=device), DSA()
    rows = []
    for ipc in s.scale_ipcs:
        if time.perf_counter() - t_section > limit / 2:
            rows.append(dict(ipc=ipc, skipped='out of time'))
            continue
        n = ipc * k
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(ipc)).to(device)
        y = torch.arange(k, device=device).repeat_interleave(ipc)

        def plan(seed: int):
            return plan_steps(n, s.scale_steps, s.scale_batch_syn, size, dsa, torch.Generator().manual_seed(seed),
                              device)
        step_bytes = graph_step_bytes(fm, x, y, th0, plan(0), dsa, lr)
        keep = graph_steps_for_budget('auto', step_bytes, s.scale_steps, device)
        run = lambda r: match_budgeted(fm, x, y, lr, th0, target, plan(r), dsa, 'mtt', graph_steps=keep)  # noqa
        rows.append(dict(ipc=ipc, images=n, graph_steps_kept=keep, step_graph_mb=step_bytes / 2 ** 20,
                         **time_block(run, device, 1, limit / 2)))
        del x, y
    # Tiny-ImageNet-shaped expert epoch
    n = s.tiny_images
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    y = torch.arange(n) % s.tiny_classes
    ecfg = ExpertConfig(arch='convnet4', model_kwargs=dict(num_classes=s.tiny_classes, in_chans=3, img_size=size,
                                                          width=s.scale_width),
                        num_experts=1, epochs=1, lr=0.01, batch_size=256, dsa=True, seed=0, dataset='random')
    train_expert(x[:1024], y[:1024], ecfg, 0, device=device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        train_expert(x, y, ecfg, 0, device=device)
    epoch = time.perf_counter() - t0
    return dict(setting=dict(distill=f'MTT, convnet4 width {s.scale_width}, {size}x{size}, {k} classes, random '
                                     f'images, N = {s.scale_steps}, batch_syn {s.scale_batch_syn}, DSA, '
                                     "graph_budget='auto'",
                             experts=f'convnet4 width {s.scale_width}, {n:,} random {size}x{size} images, '
                                     f'{s.tiny_classes} classes, batch 256, DSA, 1 epoch'),
                distill_rows=rows, expert_seconds_per_epoch=epoch, expert_peak_mb=mem.peak_mb)


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
        return train_model(model, ImageSet(x, y, num_classes=k), _test_loader(accelerator, tx, ty), make(epochs),
                           accelerator,
                           model_name='resnet18_dd', teacher=teacher)

    run(2)  # warm-up
    sync(device)
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
