"""Keep-rate DropPath semantics: residual DropPath, virtual shortcut, and the keep-rate setter."""
import math

import pytest
import timm
import torch
from timm.layers import DropPath as TimmDropPath

import timm_dd
from timm_dd.layers import DropPath, VirtualShortcut, keep_rates_from_drop_path_rate
from timm_dd.models._common import conv_dp_block
from timm_dd.models.resnet_dd import BasicBlock, Bottleneck, _downsample

UNITS = {'resnet18_dd': 8, 'resnet50_dd': 16, 'resnet18_mtt': 8, 'vgg11_dd': 3, 'alexnet_dd': 2,
         'convnet3': 0, 'vgg11_mtt': 0, 'alexnet_mtt': 0}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize('p', [0.3, 0.5, 0.8])
def test_residual_droppath_statistics(p):
    dp = DropPath(1 - p, generator=_gen(1)).train()
    x = torch.ones(20_000, 2, 3, 3)
    out = dp(x)
    kept = out[:, 0, 0, 0] != 0
    assert abs((~kept).float().mean().item() - (1 - p)) < 0.015  # ~5 sigma at n = 20k
    # a kept sample is scaled by exactly 1/p (per sample: all its elements are equal)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / p))
    assert (out[~kept] == 0).all()
    assert torch.allclose(out.mean(), torch.tensor(1.0), atol=0.03)  # unbiased in expectation


def test_droppath_eval_and_full_keep_are_identity():
    x = torch.randn(16, 4, 2, 2)
    dp = DropPath(0.5)
    assert torch.equal(dp.eval()(x), x)
    dp.train().keep_rate = 1.0
    assert torch.equal(dp(x), x)


def _shortcut_and_branch(block, x):
    """Recompute a residual block's shortcut and branch (before DropPath) separately."""
    shortcut = x if block.downsample is None else block.downsample(x)
    if isinstance(block, Bottleneck):
        h = block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x))))))
        return shortcut, block.bn3(block.conv3(h))
    return shortcut, block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))


@pytest.mark.parametrize('block_cls,in_chs,planes,stride', [(BasicBlock, 8, 16, 2), (Bottleneck, 8, 4, 1)])
def test_residual_block_drops_whole_branch_per_sample(block_cls, in_chs, planes, stride):
    torch.manual_seed(0)
    out_chs = planes * block_cls.expansion
    ds = _downsample(in_chs, out_chs, stride, 'instance', 'maxpool', True, {})
    block = block_cls(in_chs, planes, stride, ds, norm='instance', keep_rate=0.5).train()
    block.drop_path.generator = _gen(3)
    x = torch.randn(64, in_chs, 8, 8)
    out = block(x)
    shortcut, branch = _shortcut_and_branch(block, x)
    dropped = torch.relu(shortcut)
    kept = torch.relu(branch / 0.5 + shortcut)
    n_dropped = n_kept = 0
    for i in range(x.shape[0]):
        if torch.allclose(out[i], dropped[i], atol=1e-6):
            n_dropped += 1
        else:
            torch.testing.assert_close(out[i], kept[i], atol=1e-5, rtol=1e-5)  # scaled by 1/p before the add
            n_kept += 1
    assert n_dropped > 10 and n_kept > 10


def test_virtual_shortcut_outputs_exactly_main_or_shortcut():
    torch.manual_seed(0)
    block = conv_dp_block(8, 12, 16, (3, 3), 'instance', pool_between=True, keep_rate=0.6).train()
    block.generator = _gen(5)
    x = torch.randn(400, 8, 8, 8)
    out = block(x)
    main, short = block.main(x), block.shortcut(x)
    is_main = torch.tensor([torch.equal(out[i], main[i]) for i in range(len(x))])
    is_short = torch.tensor([torch.equal(out[i], short[i]) for i in range(len(x))])
    assert (is_main ^ is_short).all(), 'every sample must equal exactly one path (no rescaling, no sum)'
    assert abs(is_main.float().mean().item() - 0.6) < 0.1
    # the shortcut pools, 1x1-convs and normalizes; no ReLU on it
    assert isinstance(block.shortcut[0], torch.nn.MaxPool2d) and block.shortcut[1].kernel_size == (1, 1)
    assert (short < 0).any()
    # eval: the main path only, deterministic
    block.eval()
    assert torch.equal(block(x), main) and torch.equal(block(x), block(x))


def test_virtual_shortcut_identity_when_channels_match():
    block = conv_dp_block(8, 8, 8, (3, 3), 'batch')
    assert isinstance(block.shortcut, torch.nn.Identity)
    # the reference's unused shortcut norm is kept (for the parameter count) but frozen, so DDP/optimizers skip it
    assert all(not p.requires_grad for p in block.unused_norm.parameters())


@pytest.mark.parametrize('name', sorted(UNITS))
def test_set_keep_rate_reaches_every_unit(name):
    model = timm.create_model(name)  # drop_path_rate 0: the units still exist
    assert timm_dd.set_keep_rate(model, 0.6) == UNITS[name]
    rates = timm_dd.get_keep_rates(model)
    assert len(rates) == UNITS[name] and all(math.isclose(r, 0.6) for r in rates.values())
    expected = 0.6 if UNITS[name] else None
    assert timm_dd.get_keep_rate(model) == (pytest.approx(expected) if expected else None)


def test_set_keep_rate_on_stock_timm_model():
    # zero_init_last=False: timm zero-inits the last BN of each branch, which would hide the drops
    model = timm.create_model('resnet18', drop_path_rate=0.1, num_classes=10, zero_init_last=False)
    n_units = sum(1 for m in model.modules() if isinstance(m, TimmDropPath))
    assert n_units > 0
    assert timm_dd.set_keep_rate(model, 0.5) == n_units
    assert all(m.drop_prob == pytest.approx(0.5) for m in model.modules() if isinstance(m, TimmDropPath))
    assert timm_dd.get_keep_rate(model) == pytest.approx(0.5)
    model.train()
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b), 'masks must actually be drawn'


@pytest.mark.parametrize('name', ['resnet18_dd', 'vgg11_dd', 'alexnet_dd'])
def test_masks_drawn_after_setter_and_eval_deterministic(name):
    extra = {'first_norm': 'instance'} if name == 'alexnet_dd' else {}  # instance norm everywhere (alexnet_dd: BN first)
    model = timm.create_model(name, num_classes=4, norm='instance', **extra)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    timm_dd.set_keep_rate(model, 1.0)
    ref = model(x)
    assert torch.equal(ref, model(x)), 'p=1 must not drop anything'
    timm_dd.set_keep_rate(model, 0.3)
    outs = [model(x) for _ in range(3)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    model.eval()
    assert torch.equal(model(x), model(x))
    torch.testing.assert_close(model(x), ref)  # instance norm: eval == train without drops


def test_drop_generator_makes_masks_reproducible():
    model = timm.create_model('resnet18_dd', num_classes=4, norm='instance', widths=(8, 8, 8, 8), drop_path_rate=0.5)
    model.train()
    x = torch.randn(16, 3, 32, 32)
    assert timm_dd.set_drop_generator(model, _gen(7)) == 8
    a = model(x)
    timm_dd.set_drop_generator(model, _gen(7))
    b = model(x)
    timm_dd.set_drop_generator(model, _gen(8))
    c = model(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_drop_path_rate_uniform_and_linear_rules():
    model = timm.create_model('resnet18_dd', drop_path_rate=0.3)
    assert timm_dd.get_keep_rate(model) == pytest.approx(0.7)  # uniform: the paper's rule
    model = timm.create_model('resnet18_dd', drop_path_rate=0.3, drop_path_rule='linear')
    rates = list(timm_dd.get_keep_rates(model).values())
    assert rates[0] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.7)
    assert rates == sorted(rates, reverse=True)
    with pytest.raises(ValueError, match='different keep rates'):
        timm_dd.get_keep_rate(model)
    assert keep_rates_from_drop_path_rate(0.2, 3, 'linear') == pytest.approx([1.0, 0.9, 0.8])
    vgg = timm.create_model('vgg11_dd', drop_path_rate=0.4)
    assert all(isinstance(m, VirtualShortcut) and m.keep_rate == pytest.approx(0.6)
               for _, m in timm_dd.keep_rate_units(vgg))


@pytest.mark.parametrize('p', [0.0, -0.1, 1.01, float('nan'), 'half'])
def test_bad_keep_rate_names_the_argument(p):
    model = timm.create_model('resnet18_dd')
    with pytest.raises(ValueError, match='keep rate p'):
        timm_dd.set_keep_rate(model, p)
