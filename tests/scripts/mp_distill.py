"""Run under ``accelerate launch --num_processes K`` (CPU): trajectory matching and DM split over the processes
against the same computation in one process (computed here too, without collectives). Writes rank 0's
comparison to ``argv[1]`` as JSON. Used by tests/test_distill_devices.py."""
import json
import sys

import timm
import torch
from accelerate import Accelerator

import timm_dd  # noqa: F401
from timm_dd.augment import DSA
from timm_dd.distill import (
    DistributionMatching, ExpertPool, FlatModel, Shards, StepGradient, TrajectoryMatching, get_preset,
    match_budgeted, plan_steps, save_trajectory, trajectory_match,
)

torch.set_num_threads(1)
acc = Accelerator(cpu=True)
shards = Shards.from_accelerator(acc)
out = {'world': acc.num_processes}


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# 1. one meta-gradient: 7 images (odd, so the shards differ in size), batches of 5, 3 steps, DSA on
torch.manual_seed(0)
model = timm.create_model('convnet3', num_classes=3, in_chans=1, img_size=8, width=4)
fm = FlatModel(model)
g = torch.Generator().manual_seed(0)
x = torch.randn(7, 1, 8, 8, generator=g)
y = torch.arange(7) % 3
th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
target = th0 + 0.05 * torch.randn(th0.shape, generator=g)
lr = torch.tensor(0.05)
dsa = DSA()
for mode in ('unrolled', 'recompute'):
    for method in ('mtt', 'att'):
        plan = plan_steps(7, 3, 5, 8, dsa, torch.Generator().manual_seed(1))
        one = trajectory_match(mode, fm, x, y, lr, th0, target, plan, dsa, method, 'l1')
        many = trajectory_match(mode, fm, x, y, lr, th0, target, plan, dsa, method, 'l1', shards)
        out[f'{mode}-{method}'] = dict(images=rel(many.grad_images, one.grad_images),
                                       lr=rel(many.grad_lr, one.grad_lr), loss=rel(many.loss, one.loss),
                                       n_opt=[one.n_opt, many.n_opt])
for method in ('mtt', 'att'):  # the middle under a memory budget: the last step keeps its graph, two are recomputed
    plan = plan_steps(7, 3, 5, 8, dsa, torch.Generator().manual_seed(1))
    one = trajectory_match('unrolled', fm, x, y, lr, th0, target, plan, dsa, method, 'l1')
    many = match_budgeted(fm, x, y, lr, th0, target, plan, dsa, method, 'l1', shards, graph_steps=1)
    out[f'budget-{method}'] = dict(images=rel(many.grad_images, one.grad_images), lr=rel(many.grad_lr, one.grad_lr),
                                   loss=rel(many.loss, one.loss), n_opt=[one.n_opt, many.n_opt])

# 1b. the compiled inner step (--set compile=true) splits the same way (all 7 images per step: one shape per rank)
if len(sys.argv) > 3 and sys.argv[3] == 'compile':
    compiled = StepGradient(fm, compile=True)
    for mode in ('unrolled', 'recompute'):
        plan = plan_steps(7, 3, None, 8, dsa, torch.Generator().manual_seed(2))
        one = trajectory_match(mode, fm, x, y, lr, th0, target, plan, dsa, 'mtt')
        many = trajectory_match(mode, compiled, x, y, lr, th0, target, plan, dsa, 'mtt', 'l1', shards)
        out[f'compiled-{mode}'] = dict(images=rel(many.grad_images, one.grad_images),
                                       lr=rel(many.grad_lr, one.grad_lr), loss=rel(many.loss, one.loss))

# 2. a few outer iterations: the images stay identical on every process and equal the one-process run
folder = sys.argv[2]
if acc.is_main_process:
    gen = torch.Generator().manual_seed(3)
    for i in range(2):
        traj, cur = [], th0.clone()
        for _ in range(5):
            traj.append(cur.clone())
            cur = cur + 0.01 * torch.randn(th0.shape, generator=gen)
        save_trajectory(f'{folder}/expert_{i:05d}.safetensors', traj,
                        {'arch': 'convnet3', 'params': [[n, list(p.shape)] for n, p in model.named_parameters()],
                         'zca': False})
acc.wait_for_everyone()
pool = ExpertPool(folder, min_epochs=3)
images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
labels = torch.arange(3).repeat_interleave(2)
for mode in ('unrolled', 'recompute'):
    for method in ('mtt', 'att'):
        cfg = get_preset(None, dict(method=method, ipc=2, syn_steps=3, expert_epochs=2, max_start_epoch=2,
                                    lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01, iterations=3, eval_every=0,
                                    checkpoint_every=0, batch_syn=5, grad_mode=mode,
                                    ema_decay=0.9 if method == 'att' else None))
        single = TrajectoryMatching(cfg, images, labels, model, pool)
        split = TrajectoryMatching(cfg, images, labels, model, pool, accelerator=acc)
        single.run()
        split.run()
        gathered = acc.gather(split.images.detach().unsqueeze(0))
        out[f'run-{mode}-{method}'] = dict(images=rel(split.images.detach(), single.images.detach()),
                                           lr=rel(split.syn_lr.detach(), single.syn_lr.detach()),
                                           moved=rel(single.images.detach(), images),
                                           same_on_all=bool((gathered == gathered[0]).all()))

# 3. DM: classes split over the processes
real_y = torch.arange(30) % 3
real = torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(6))
cfg = get_preset(None, dict(method='dm', ipc=2, lr_img=1.0, batch_real=6, iterations=3, eval_every=0,
                            checkpoint_every=0))
make = lambda: timm.create_model('convnet3', num_classes=3, in_chans=1, img_size=8, width=4)  # noqa: E731
single = DistributionMatching(cfg, images, labels, real, real_y, make)
split = DistributionMatching(cfg, images, labels, real, real_y, make, accelerator=acc)
single.run()
split.run()
out['dm'] = dict(images=rel(split.images.detach(), single.images.detach()),
                 moved=rel(single.images.detach(), images))


# 4. the periodic evaluation: seed s on process s % K, the record equals the one-process record
class OneProcess:
    """This process seen as a one-process run (for the reference evaluation)."""
    device, num_processes, process_index, is_main_process, is_local_main_process = acc.device, 1, 0, True, True
    mixed_precision = acc.mixed_precision
    autocast = acc.autocast


from timm_dd.data import DataSplits, ImageSet, ImageSpace  # noqa: E402
from timm_dd.distill import make_evaluator  # noqa: E402
space = ImageSpace.normalized([0.0], [1.0])
data = DataSplits(ImageSet(real, real_y, ['a', 'b', 'c'], space=space),
                  ImageSet(torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(7)), torch.arange(20) % 3,
                           ['a', 'b', 'c'], space=space), 'random')
cfg = get_preset(None, dict(method='mtt', ipc=2, eval_seeds=3, eval_epochs=3, model_kwargs=dict(width=4)))
ref = make_evaluator(cfg, data, OneProcess(), grid=False)(0, images, None, 0.01)
split = make_evaluator(cfg, data, acc, grid=False)(0, images, None, 0.01)
out['eval'] = dict(ref=ref['accs'], split=split['accs'])
if acc.is_main_process:
    with open(sys.argv[1], 'w') as f:
        json.dump(out, f)
acc.wait_for_everyone()
acc.end_training()  # destroys the process group: exiting with live gloo threads can abort a rank
