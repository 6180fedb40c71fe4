"""TESLA's teacher labels (``teacher_label``): the exact meta-gradient with soft targets, labels taken from the target
expert, resume, and the soft labels reaching the evaluation and the saved sets."""
import pytest
import torch
from accelerate import Accelerator

import timm
import timm_dd  # noqa: F401
from timm_dd.augment import DSA
from timm_dd.distill import (
    FlatModel, TrajectoryMatching, get_preset, load_distillation_data, plan_steps, run_distill, run_experts,
)
from timm_dd.distill.matching import match_recompute, match_unrolled
from timm_dd.distilled import DistilledSet
from timm_dd.seeding import Stream, generator_for

from test_distill import _fake_experts, _one_thread  # noqa: F401 - the same one-thread fixture: tiny convolutions


def test_the_meta_gradient_with_soft_labels_is_exact():
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=3, in_chans=1, img_size=8, width=4).double()
    fm, g = FlatModel(model), torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = th0 + 0.05 * torch.randn(th0.shape, generator=g, dtype=torch.float64)
    dsa = DSA()
    plan = plan_steps(6, 3, 4, 8, dsa, torch.Generator().manual_seed(1))
    lr = torch.tensor(0.05, dtype=torch.float64)
    res = match_recompute(fm, x, y, lr, th0, target, plan, dsa)
    unrolled = match_unrolled(fm, x, y, lr, th0, target, plan, dsa)
    assert torch.allclose(res.grad_images, unrolled.grad_images, rtol=1e-9, atol=1e-12)
    v, eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64), 1e-5
    loss = lambda xx: float(match_recompute(fm, xx, y, lr, th0, target, plan, dsa).loss)
    fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
    assert float((res.grad_images * v).sum()) == pytest.approx(fd, rel=1e-5)
    hard = match_recompute(fm, x, y.argmax(1), lr, th0, target, plan, dsa)
    assert not torch.allclose(hard.grad_images, res.grad_images)  # the soft targets are what it trained on


def _tm(tmp_path, **overrides):
    model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
    pool = _fake_experts(tmp_path / 'buf', model)
    cfg = get_preset(None, {**dict(method='mtt', ipc=2, syn_steps=3, expert_epochs=2, max_start_epoch=2, lr_img=10.0,
                                   lr_lr=1e-5, lr_teacher=0.01, iterations=4, eval_every=0, checkpoint_every=2,
                                   teacher_label=True), **overrides})
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return lambda out, eval_fn=None: TrajectoryMatching(cfg, images, torch.tensor([0, 0, 1, 1]), model, pool,
                                                        out_dir=out, eval_fn=eval_fn)


def full_first_labels(make) -> torch.Tensor:
    """The soft labels after one iteration of a fresh run (the ones the evaluation at iteration 1 must get)."""
    tm = make(None)
    tm.run(iterations=1)
    return tm.soft_labels


def test_teacher_labels_come_from_the_target_expert_and_survive_resume(tmp_path):
    make = _tm(tmp_path)
    tm = make(None)
    before = tm.images.detach().clone()
    tm.match(0)
    expert = tm.experts[tm.expert_for(0)]
    start = int(torch.randint(0, 2, (1,), generator=generator_for(0, 0, Stream.MATCH_STEP)))
    probs = lambda epoch: torch.softmax(tm.fmodel(expert.get(epoch), before), dim=1)
    assert tm.soft_labels.shape == (4, 2) and torch.allclose(tm.soft_labels.sum(1), torch.ones(4))
    assert torch.allclose(tm.soft_labels, probs(start + 2), atol=1e-6)  # the target, not the start
    assert not torch.allclose(tm.soft_labels, probs(start), atol=1e-6)
    full = make(tmp_path / 'full')
    full.run()
    part = make(tmp_path / 'part')
    part.run(iterations=2)
    resumed = make(tmp_path / 'part')
    assert resumed.resume() and torch.equal(resumed.soft_labels, part.soft_labels)
    resumed.run()
    assert torch.equal(full.images, resumed.images) and torch.equal(full.soft_labels, resumed.soft_labels)
    seen = []
    evaluated = _tm(tmp_path / 'evaluated', eval_every=1)
    evaluated(None, lambda it, images, ema, lr, **labels: seen.append(labels) or {}).run(iterations=2)
    assert seen[0] == {}  # iteration 0: not labelled by a teacher yet
    assert torch.equal(seen[1]['soft_labels'], full_first_labels(evaluated))
    with pytest.raises(ValueError, match='teacher_label.*DM'):
        get_preset(None, dict(method='dm', teacher_label=True))


def test_the_saved_sets_and_the_evaluation_use_the_soft_labels(tmp_path):
    cfg = get_preset('digits-ipc10-mtt', dict(
        image_size=8, model_kwargs={'width': 4}, ipc=1, num_experts=1, expert_train_epochs=3, syn_steps=2,
        expert_epochs=1, max_start_epoch=1, iterations=2, eval_every=1, eval_epochs=2, eval_seeds=1,
        teacher_label=True, checkpoint_every=0))
    accelerator = Accelerator(cpu=True)
    data = load_distillation_data(cfg)
    run_experts(cfg, data, tmp_path / 'buf', accelerator)
    dset = run_distill(cfg, data, tmp_path / 'buf', tmp_path / 'run', accelerator)
    assert dset.soft_labels.shape == (10, 10) and dset.soft_label_kind == 'probs'
    assert torch.allclose(dset.soft_labels.sum(1), torch.ones(10), atol=1e-5)
    saved = DistilledSet.load(tmp_path / 'run' / 'distilled')
    assert torch.equal(saved.soft_labels, dset.soft_labels) and saved.extra['config']['teacher_label'] is True
    assert torch.allclose(saved.to_image_set().labels, dset.soft_labels)  # what train.py --data trains on
    best = DistilledSet.load(tmp_path / 'run' / 'distilled_best')
    # iteration 0 is evaluated before any teacher has labelled the images: hard labels there, as in TESLA's code
    assert (best.soft_labels is None) == (best.extra['selected_iteration'] == 0)
