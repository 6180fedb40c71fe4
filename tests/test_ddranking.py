"""DD-Ranking's protocol pieces: its soft-label losses, lr search rule, scores, CutMix, quarter cosine, relabelling."""
import math

import pytest
import torch

from timm_dd.augment import cutmix_images
from timm_dd.train.config import TrainConfig, load_config
from timm_dd.train.ddranking import (
    LR_GRID, augmentation_robust_score, label_robust_score, mean_std, score_rounds, search_lr, with_class_labels,
)
from timm_dd.train.losses import label_loss, soft_target_loss
from timm_dd.train.schedules import LRSchedule
from timm_dd.train.task import task_loss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize('t2', [False, True])
@pytest.mark.parametrize('T', [1.0, 2.5])
def test_soft_losses_divide_the_students_logits_by_T(T, t2):
    s = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 1.5]])
    p = torch.softmax(teacher / T, dim=1)
    sce = kl = 0.0
    for i in range(2):
        ps, pt = _softmax(s[i].tolist(), T), _softmax(teacher[i].tolist(), T)
        sce += -sum(a * math.log(b) for a, b in zip(pt, ps))
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    scale = T * T if t2 else 1.0
    assert soft_target_loss(s, p, 'sce', T, t2).item() == pytest.approx(scale * sce / 2, rel=1e-5)
    assert soft_target_loss(s, p, 'kl', T, t2).item() == pytest.approx(scale * kl / 2, rel=1e-5)
    # 'ce' (DP+KD, FRePo) leaves the student's logits as they are, whatever T made the targets
    ce = sum(-sum(a * math.log(b) for a, b in zip(_softmax(teacher[i].tolist(), T), _softmax(s[i].tolist(), 1.0)))
             for i in range(2)) / 2
    assert soft_target_loss(s, p, 'ce', T, t2).item() == pytest.approx(ce, rel=1e-5)
    # a set's soft labels through label_loss: probabilities, the student's logits divided by its temperature
    assert label_loss(s, p, form='kl', t2=t2, student_temperature=T).item() == pytest.approx(scale * kl / 2, rel=1e-5)
    with pytest.raises(ValueError, match='soft loss'):
        soft_target_loss(s, p, 'mse', T)


def test_recipes_need_a_temperature_for_the_ddranking_losses_and_one_teacher_role():
    with pytest.raises(ValueError, match='soft_label_temperature'):
        TrainConfig(soft_loss='kl')
    with pytest.raises(ValueError, match='relabel'):
        TrainConfig(relabel=True, kd=True)
    assert TrainConfig(relabel=True).uses_teacher and not TrainConfig().uses_teacher


def test_relabel_trains_on_the_teachers_outputs_alone():
    torch.manual_seed(0)
    cfg = load_config('ddranking-soft')
    assert cfg.relabel and cfg.soft_loss == 'kl' and cfg.cutmix_beta == 1.0 and cfg.lr_schedule == 'quarter_cosine'
    logits, x = torch.randn(4, 3), torch.randn(4, 2)
    teacher = torch.nn.Linear(2, 3)
    hard = torch.tensor([0, 1, 2, 0])
    loss = task_loss({'logits': logits}, hard, cfg, teacher, x, None)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), torch.softmax(teacher(x), 1),
                                          reduction='batchmean')
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the labels play no part: other labels, the same loss
    assert task_loss({'logits': logits}, hard.flip(0), cfg, teacher, x, None).item() == pytest.approx(loss.item())


def test_quarter_cosine_is_ddrankings_lambda_lr():
    sched = LRSchedule('quarter_cosine', epochs=300)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / 300 / 2)))
    for epoch in range(300):
        assert sched.factor(epoch, 3, 5) == pytest.approx(opt.param_groups[0]['lr'], abs=1e-12)
        opt.step()
        ref.step()
    assert sched.factor(299, 0, 1) > 0.5


def test_cutmix_pastes_one_box_from_the_batch_and_replays_from_its_generator():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
    out = cutmix_images(x, 1.0, torch.Generator().manual_seed(3))
    again = cutmix_images(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and torch.equal(x[:, :, 0, 0], torch.arange(4.0).view(4, 1).expand(4, 3))
    changed = (out != x).any(dim=1)  # [N, H, W]
    rows, cols = changed.any(dim=(0, 2)).nonzero().flatten(), changed.any(dim=(0, 1)).nonzero().flatten()
    if len(rows):  # one rectangle, the same in every image, each pixel from one other image of the batch
        box = torch.zeros(32, 32, dtype=torch.bool)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(changed.any(0), box)
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    different = [cutmix_images(x, 1.0, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.equal(d, out) for d in different)
    with pytest.raises(ValueError, match='beta'):
        cutmix_images(x, 0.0)


def test_lr_search_keeps_the_first_best_as_ddranking_does():
    assert search_lr({0.1: 40.0, 0.01: 45.0, 0.001: 45.0, 0.05: 44.9}) == (45.0, 0.001)
    assert search_lr({lr: 0.0 for lr in LR_GRID}) == (0.0, 0.0)
    assert LR_GRID == (0.001, 0.005, 0.01, 0.05, 0.1)


def test_scores_follow_ddrankings_formulas():
    s = label_robust_score(real_hard=84.0, syn_hard=60.0, syn_any=62.0, rdm_any=61.5)
    assert (s.hard_label_recovery, s.improvement_over_random) == (24.0, 0.5)
    alpha = 0.5 * 0.5 - 0.5 * 24.0  # percent points, as its code computes them
    assert s.label_robust_score == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    frac = label_robust_score(84.0, 60.0, 62.0, 61.5, accuracy_unit='fraction').label_robust_score
    assert frac == pytest.approx((math.exp(alpha / 100) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert 0.0 < frac < 1.0
    ars = augmentation_robust_score(70.0, 50.0, 40.0, 30.0, weight=0.25)
    beta = 0.25 * 20.0 + 0.75 * 10.0
    assert ars['augmentation_robust_score'] == pytest.approx((math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(1.25)))  # numpy.std: population
    rounds = [dict(syn_hard=60.0, syn_any=62.0, rdm_any=61.0), dict(syn_hard=58.0, syn_any=63.0, rdm_any=61.0)]
    summary = score_rounds(rounds, real_hard=84.0)
    assert summary['hard_label_recovery'] == pytest.approx((25.0, 1.0))
    assert summary['improvement_over_random'] == pytest.approx((1.5, 0.5))
    with pytest.raises(ValueError, match='accuracy_unit'):
        label_robust_score(1, 1, 1, 1, accuracy_unit='permille')
    with pytest.raises(ValueError, match='weight'):
        label_robust_score(1, 1, 1, 1, weight=2)


def test_hard_label_runs_label_a_set_by_position(tiny_splits_soft):
    hard = with_class_labels(tiny_splits_soft, ipc=2)
    assert hard.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(hard.train.images, tiny_splits_soft.train.images)
    with pytest.raises(ValueError, match='per class'):
        with_class_labels(tiny_splits_soft, ipc=3)


@pytest.fixture
def tiny_splits_soft():
    from timm_dd.data.sets import DataSplits, ImageSet
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 3, generator=g), dim=1)
    train = ImageSet(torch.rand(6, 3, 8, 8, generator=g), probs, ['a', 'b', 'c'], num_classes=3)
    test = ImageSet(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), ['a', 'b', 'c'])
    return DataSplits(train, test, 'tiny')


def test_ddranking_soft_trains_a_student_on_a_relabelling_teacher_with_cutmix():
    import timm
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    import timm_dd  # noqa: F401  (registers the models)
    from timm_dd.data.datasets import load_dataset
    from timm_dd.data.sets import ImageSet
    from timm_dd.train.trainer import train_model
    train, test = load_dataset('digits', 'train'), load_dataset('digits', 'test')
    train_set = ImageSet(train.normalized()[:40], train.labels[:40], list(train.class_names), num_classes=10)
    loader = DataLoader(TensorDataset(test.normalized()[:50], test.labels[:50]), batch_size=50)
    torch.manual_seed(0)
    teacher = timm.create_model('convnet3', num_classes=10, in_chans=1, img_size=32, width=8)
    student = timm.create_model('convnet3', num_classes=10, in_chans=1, img_size=32, width=8)
    seen_by = {'teacher': [], 'student': []}
    for name, net in (('teacher', teacher), ('student', student)):
        net.register_forward_pre_hook(
            lambda m, args, name=name: seen_by[name].append(args[0].detach().clone()) if name == 'teacher'
            or m.training else None)
    cfg = load_config('ddranking-soft', dict(epochs=2, batch_size=20, eval_every=1, lr=1e-3))
    run = train_model(student, train_set, loader, cfg, Accelerator(cpu=True), 'convnet3', teacher=teacher)
    assert len(seen_by['student']) == 4 and all(torch.equal(a, b) for a, b in zip(seen_by['teacher'],
                                                                                 seen_by['student']))
    assert all(math.isfinite(h['loss']) for h in run.history) and len(run.history) == 2
    raw = train_set.images.to(seen_by['student'][0].device)
    assert not any(torch.equal(s, raw[:20]) or torch.equal(s, raw[20:]) for s in seen_by['student'][:1])
