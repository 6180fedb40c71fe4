"""Short runs of batch-norm networks: ``recompute_bn`` makes eval mode agree with batch statistics on the training
images, and the stale-statistics warning fires when (and only when) they disagree."""
import logging

import pytest
import timm
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import timm_dd  # noqa: F401  registers the models
from timm_dd.data import ImageSet
from timm_dd.train import load_config, train_model
from timm_dd.train.batchnorm import recompute_bn_stats, train_accuracies


def _problem():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    # far from the running statistics' initial (0, 1): a few momentum-0.1 updates leave them far behind
    images = torch.randn(40, 1, 8, 8, generator=g) * 0.3 + 6.0 + labels.view(-1, 1, 1, 1).float()
    test = DataLoader(TensorDataset(images[:8], labels[:8]), batch_size=8)
    return ImageSet(images, labels, num_classes=4), test


def _run(recompute: bool, epochs: int = 4):
    train_set, test = _problem()
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=4, in_chans=1, img_size=8, width=8, norm='batch')
    cfg = load_config('baseline', dict(epochs=epochs, eval_every=0, batch_size=40, lr=0.05, dsa=False,
                                       recompute_bn=recompute))
    return model, train_model(model, train_set, test, cfg, Accelerator(cpu=True), 'convnet3', distributed=False)


def test_recompute_bn_makes_eval_mode_match_batch_statistics(caplog):
    with caplog.at_level(logging.WARNING, logger='timm_dd'):
        _, stale = _run(recompute=False)
    last = stale.history[-1]
    assert last['train_acc_batch_stats'] - last['train_acc'] > 0.2  # stale: eval mode far below
    assert any('--recompute-bn' in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='timm_dd'):
        _, fresh = _run(recompute=True)
    last = fresh.history[-1]
    assert abs(last['train_acc_batch_stats'] - last['train_acc']) <= 0.05
    assert fresh.train_acc == last['train_acc']
    assert not any('--recompute-bn' in r.getMessage() for r in caplog.records)


def test_recompute_uses_the_exact_average_and_train_accuracies_leave_the_statistics():
    train_set, _ = _problem()
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=4, in_chans=1, img_size=8, width=8, norm='batch')
    recompute_bn_stats(model, train_set.images, batch_size=40)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = model.features[0]
    with torch.no_grad():
        z = first_conv(train_set.images)
    assert torch.allclose(bn.running_mean, z.mean((0, 2, 3)), atol=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_accuracies(model, train_set.images, train_set.labels)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize('norm', ['instance'])
def test_no_warning_without_batch_norm(caplog, norm):
    train_set, test = _problem()
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=4, in_chans=1, img_size=8, width=8, norm=norm)
    cfg = load_config('baseline', dict(epochs=2, eval_every=0, batch_size=40, lr=0.05, dsa=False))
    with caplog.at_level(logging.WARNING, logger='timm_dd'):
        train_model(model, train_set, test, cfg, Accelerator(cpu=True), 'convnet3', distributed=False)
    assert not any('recompute' in r.getMessage() for r in caplog.records)
