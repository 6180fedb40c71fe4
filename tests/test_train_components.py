"""Schedules, KD and ELF losses, and ELF split points."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_dd  # noqa: F401
from timm_dd.train.elf import elf_split
from timm_dd.train.losses import feature_loss, kd_loss, label_loss
from timm_dd.train.schedules import KeepRateSchedule, LRSchedule

KEEP_RATE_TABLE = [
    # (p_min, epoch, expected keep rate): the spec's table (architectures-and-droppath.md section 6.1)
    (0.5, 0, 1.0), (0.5, 499, 1.0), (0.5, 500, 0.9), (0.5, 999, 0.9), (0.5, 1000, 0.8), (0.5, 1500, 0.7),
    (0.5, 2000, 0.6), (0.5, 2500, 0.5), (0.5, 2999, 0.5), (0.5, 3000, 0.8), (0.5, 3999, 0.8),
    (0.35, 0, 1.0), (0.35, 500, 0.87), (0.35, 1000, 0.74), (0.35, 1500, 0.61), (0.35, 2000, 0.48),
    (0.35, 2500, 0.35), (0.35, 3000, 0.8),
]


@pytest.mark.parametrize('p_min,epoch,expected', KEEP_RATE_TABLE)
def test_keep_rate_schedule_table(p_min, epoch, expected):
    assert KeepRateSchedule(p_min=p_min)(epoch) == pytest.approx(expected)


def test_keep_rate_schedule_shortened_and_disabled():
    s = KeepRateSchedule(epochs=400, final_epochs=100, period=50)
    assert [s(e) for e in (0, 49, 50, 100, 250, 299, 300, 399)] == pytest.approx([1, 1, .9, .8, .5, .5, .8, .8])
    changes = {e: s(e) for e in range(400) if e == 0 or s(e) != s(e - 1)}
    assert changes == pytest.approx({0: 1.0, 50: 0.9, 100: 0.8, 150: 0.7, 200: 0.6, 250: 0.5, 300: 0.8})
    assert KeepRateSchedule(enabled=False)(2500) == 1.0
    with pytest.raises(ValueError, match='p_min'):
        KeepRateSchedule(p_min=0.0)


LR_TABLE = [
    # (epoch, expected factor) for `periodic` with one iteration per epoch (training-recipes.md section 3.4c)
    # the first step of a period runs at the lr the previous period ended at (the scheduler steps after it):
    # 0.587 x peak at epochs 500, 1000, ... and at the final phase's start (3000), not 0 (issue "Fidelity II")
    (0, 0.0), (1, 0.01), (100, 1.0), (499, 0.588), (500, 0.587), (501, 0.01), (600, 1.0), (3000, 0.587),
    (3100, 1.0), (3500, 0.587), (3999, 0.0),
]


@pytest.mark.parametrize('epoch,expected', LR_TABLE)
def test_periodic_lr_table(epoch, expected):
    assert LRSchedule('periodic').factor(epoch, 0, 1) == pytest.approx(expected, abs=1.5e-3)


def test_other_lr_schedules():
    decay = LRSchedule('periodic_decay')
    assert decay.factor(100, 0, 1) == pytest.approx(1.0)
    assert decay.factor(600, 0, 1) == pytest.approx(0.8)
    assert decay.factor(2600, 0, 1) == pytest.approx(0.8 ** 5)
    # the final phase (last 1000 of 4000 epochs, peak at its 100-epoch warmup end) adds the x0.1
    assert decay.factor(3100, 0, 1) == pytest.approx(0.8 ** 6 * 0.1)
    cos = LRSchedule('cosine', epochs=1000)
    assert cos.factor(0, 0, 1) == 0 and cos.factor(100, 0, 1) == pytest.approx(1.0)
    assert cos.factor(550, 0, 1) == pytest.approx(0.5) and cos.factor(999, 0, 1) < 1e-4
    # two iterations per epoch: the warmup counts iterations; only a period's first step keeps the old value
    assert LRSchedule('periodic').factor(0, 1, 2) == pytest.approx(1 / 200)
    assert LRSchedule('periodic').factor(500, 0, 2) == pytest.approx(0.587, abs=1e-3)
    assert LRSchedule('periodic').factor(500, 1, 2) == pytest.approx(1 / 200)
    # the released cosine scheduler doubles its warmup at step 1999: 0.751 -> 0.854 of the peak with 5 steps/epoch
    plain, quirk = LRSchedule('cosine', epochs=1000), LRSchedule('cosine', epochs=1000, step_1999_quirk=True)
    assert plain.factor(399, 3, 5) == quirk.factor(399, 3, 5) == pytest.approx(0.7505, abs=1e-3)  # step 1998
    assert plain.factor(399, 4, 5) == pytest.approx(0.750, abs=1e-3)
    assert quirk.factor(399, 4, 5) == pytest.approx(0.854, abs=1e-3)
    from timm_dd.train.config import load_config
    assert load_config('dpkd-no-dp').lr_step_1999_quirk and load_config('dpkd-no-dp-no-kd').lr_step_1999_quirk
    assert not load_config('dpkd').lr_step_1999_quirk
    ms = LRSchedule('multistep', epochs=1000, milestones=(500,))
    assert ms.factor(499, 0, 4) == 1.0 and ms.factor(500, 0, 4) == pytest.approx(0.1)
    with pytest.raises(ValueError, match='lr schedule'):
        LRSchedule('bogus')


def test_kd_loss_equals_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 1.5]])
    y = torch.tensor([1, 2])
    T, alpha = 1.5, 0.5
    out = kd_loss(s, t, y, alpha=alpha, temperature=T)
    kl = 0.0
    for i in range(2):
        p_t = [math.exp(v / T) for v in t[i].tolist()]
        p_s = [math.exp(v / T) for v in s[i].tolist()]
        p_t = [v / sum(p_t) for v in p_t]
        p_s = [v / sum(p_s) for v in p_s]
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    kl /= 2
    ce = 0.0
    for i in range(2):
        ce += -s[i, y[i]].item() + math.log(sum(math.exp(v) for v in s[i].tolist()))
    ce /= 2
    assert out['kd_loss'].item() == pytest.approx(T * T * kl, rel=1e-5)
    assert out['task_loss'].item() == pytest.approx(ce, rel=1e-5)
    assert out['loss'].item() == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-5)


def test_kd_loss_no_gradient_to_teacher_and_soft_labels():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    soft = torch.randn(4, 5)
    soft_copy = soft.clone()
    out = kd_loss(s, t, soft, soft_label_temperature=0.3)
    out['loss'].backward()
    assert t.grad is None and s.grad is not None
    assert torch.equal(soft, soft_copy), 'labels must not be modified in place'
    expected = F.cross_entropy(s, F.softmax(soft_copy / 0.3, dim=1))
    assert out['task_loss'].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match='soft labels'):
        label_loss(torch.randn(4, 5), torch.randn(4, 6))


def test_elf_front_loss_values():
    s = torch.randn(2, 3, 2, 2)
    t = torch.rand(2, 3, 2, 2)
    # per-pixel softmax over channels with raw non-negative target weights, averaged over N*H*W
    manual = -(t * F.log_softmax(s, dim=1)).sum(1).mean()
    assert feature_loss(s, t, 'ce').item() == pytest.approx(manual.item(), rel=1e-6)
    assert feature_loss(s, t, 'l2').item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    cos = 1 - (s.flatten() @ t.flatten()) / (s.norm() * t.norm())
    assert feature_loss(s, t, 'cos').item() == pytest.approx(cos.item(), rel=1e-5)
    with pytest.raises(ValueError, match='does not match'):
        feature_loss(s, t[:, :2])


@pytest.mark.parametrize('name,kwargs,shape', [
    ('resnet18_mtt', dict(widths=(8, 16, 32, 512)), (512, 4, 4)),
    ('resnet18_dd', dict(widths=(8, 16, 32, 512)), (512, 4, 4)),
    ('vgg11_mtt', {}, (512, 4, 4)),
    ('vgg11_dd', {}, (512, 4, 4)),
    ('convnet3', dict(width=16), (16, 4, 4)),
])
def test_elf_split_points(name, kwargs, shape):
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    split = elf_split(model)
    assert split.feature_shape == shape
    x = torch.randn(2, 3, 32, 32)
    feat = split.front(x)
    assert tuple(feat.shape[1:]) == shape and (feat >= 0).all()  # post-activation, like the ConvNet feature
    torch.testing.assert_close(split.rear(feat), model(x))
    if name.startswith('vgg'):
        convs_run = []
        hooks = [m.register_forward_hook(lambda *_: convs_run.append(1))
                 for m in model.features.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        split.front(x)
        for h in hooks:
            h.remove()
        # ELF's VGG11_L5 has five convs in the front; vgg11_dd's second droppable block holds convs 5 and 6
        assert len(convs_run) == (5 if name == 'vgg11_mtt' else 6)


def test_elf_split_alexnet_is_an_error():
    with pytest.raises(ValueError, match='AlexNet'):
        elf_split(timm.create_model('alexnet_dd'))


def test_published_recipes_equal_their_sources():
    from timm_dd.train.config import load_config
    base = load_config('dpkd-baseline')  # DP+KD Baseline: AdamW 5e-4 / 5e-4, 1000 epochs, batch 100, x0.1 at 500
    assert (base.opt, base.lr, base.weight_decay, base.epochs, base.batch_size) == ('adamw', 5e-4, 5e-4, 1000, 100)
    assert base.lr_schedule_fn().milestones == (500,) and base.dsa_k == 1 and not base.kd and not base.drop_path
    mtt = load_config('baseline')  # MTT evaluate_synset: range(1001), x0.1 after epoch 501 with a new optimizer
    assert mtt.epochs == 1001 and mtt.lr_schedule_fn().milestones == (502,) and mtt.reset_momentum_at_decay
    trace = mtt.lr_schedule_fn().trace()  # 502 epochs (0..501) at the peak, as `if ep in [Epoch // 2 + 1]` decays
    assert trace[501] == 1.0 and trace[502] == pytest.approx(0.1) and trace.count(1.0) == 502
    assert (mtt.opt, mtt.momentum, mtt.weight_decay, mtt.batch_size) == ('momentum', 0.9, 5e-4, 256)
    on_mtt, on_frepo = load_config('dpkd-mtt'), load_config('dpkd-frepo')
    assert on_mtt.student_norm == on_mtt.teacher_norm == 'instance' and on_mtt.opt == 'lion' and on_mtt.kd
    assert on_frepo.student_norm == on_frepo.teacher_norm == 'batch' and on_frepo.teacher_model == 'convnet3_frepo'
    assert on_frepo.soft_label_temperature == 0.3


def test_momentum_is_reset_at_the_decay():
    import timm
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset
    from timm_dd.train.config import load_config
    from timm_dd.data import ImageSet
    from timm_dd.train.trainer import train_model
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 2, num_classes=2)
    loader = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.arange(4) % 2), batch_size=4)
    weights = {}
    for reset in (True, False):
        torch.manual_seed(0)
        model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
        cfg = load_config('baseline', dict(epochs=4, eval_every=0, dsa=False, batch_size=8,
                                           reset_momentum_at_decay=reset))
        train_model(model, data, loader, cfg, Accelerator(cpu=True), 'convnet3', distributed=False)
        weights[reset] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(weights[True], weights[False])  # the reset changes the steps after epoch 2


def test_progress_says_what_acts_and_when_it_was_measured(caplog):
    """Issue "first hour": no evaluation after epoch 1 unless asked; the bar's accuracy carries its epoch; without
    a terminal the progress is plain log lines (no cursor codes)."""
    from timm_dd.train.config import load_config
    from timm_dd.train.loop import fit
    from timm_dd.train.trainer import eval_epochs
    cfg = load_config('dpkd', {'epochs': 300, 'eval_every': 100})
    assert eval_epochs(cfg) == {99, 199, 299}
    assert eval_epochs(cfg.replace(eval_after_first_epoch=True)) == {0, 99, 199, 299}
    with caplog.at_level('INFO', logger='timm_dd.train.loop'):
        fit(range(40), lambda e: {'loss': 1.0 / (e + 1)}, desc='net', progress=True,
            postfix=lambda r: {'loss': f"{r['loss']:.2f}"})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 20 and lines[-1] == 'net: epoch 40/40 loss=0.03' and '\x1b' not in ''.join(lines)
