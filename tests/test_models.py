"""timm model contract for every timm_dd model, in the spirit of timm's own ``tests/test_models.py``."""
import pytest
import timm
import torch
from timm.models import FeatureInfo

import timm_dd  # noqa: F401  (registers the models)
from timm_dd.models.convnet_dd import ConvNet

MODEL_NAMES = [
    'convnet3', 'convnet4', 'convnet5', 'convnet3_frepo', 'convnet3_w512',
    'resnet18_dd', 'resnet50_dd', 'resnet18_mtt',
    'vgg11_dd', 'vgg11_mtt',
    'alexnet_dd', 'alexnet_mtt',
]
# a few small kwargs keep the big networks cheap on a 2-core CPU without changing their structure
SMALL = {
    'convnet3_w512': dict(width=32), 'convnet5': dict(width=16), 'convnet4': dict(width=16),
    'resnet18_dd': dict(widths=(16, 32, 64, 128)), 'resnet18_mtt': dict(widths=(16, 32, 64, 128)),
    'resnet50_dd': dict(widths=(8, 16, 32, 64)),
}

# (name, kwargs, parameter count): counts from the reference definitions (specs/architectures-and-droppath.md)
PARAM_COUNTS = [
    ('convnet3', dict(num_classes=10), 320_010),
    ('convnet3', dict(num_classes=100), 504_420),
    ('convnet4', dict(num_classes=200), 857_160),
    ('convnet5', dict(num_classes=10), 615_690),
    ('convnet3_frepo', dict(num_classes=10), 1_562_634),
    ('resnet18_dd', dict(num_classes=10), 11_178_762),
    ('resnet18_dd', dict(num_classes=10, shortcut='conv'), 11_178_762),  # the improved shortcut adds nothing
    ('resnet50_dd', dict(num_classes=10), 23_547_402),
    ('vgg11_dd', dict(num_classes=10), 9_398_282),
    ('vgg11_mtt', dict(num_classes=10), 9_231_114),
    ('vgg11_mtt', dict(num_classes=10, norm='batch'), 9_231_114),  # DP+KD plain `vgg`
    ('alexnet_dd', dict(num_classes=10), 1_957_386),
    ('alexnet_mtt', dict(num_classes=10, norm='batch'), 1_874_122),  # DP+KD plain `alexnet`
]


def _create(name, **kwargs):
    return timm.create_model(name, **{**SMALL.get(name, {}), **kwargs})


def _input(model, batch=2, **overrides):
    c, h, w = model.pretrained_cfg['input_size']
    return torch.randn(batch, overrides.get('in_chans', c), overrides.get('size', h), overrides.get('size', w))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name,kwargs,expected', PARAM_COUNTS)
def test_parameter_counts(name, kwargs, expected):
    assert n_params(timm.create_model(name, **kwargs)) == expected


def test_registered_in_timm():
    for name in MODEL_NAMES:
        assert timm.is_model(name), name
    assert set(timm.list_models('*_dd')) >= {'resnet18_dd', 'resnet50_dd', 'vgg11_dd', 'alexnet_dd'}
    # registry module names do not merge into timm's own `resnet`/`vgg` modules
    assert 'resnet18_dd' not in timm.list_models(module='resnet')
    assert 'resnet18' in timm.list_models(module='resnet')  # timm's own resnet18 is untouched
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('resnet19_dd')


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_model_default_cfgs(name):
    model = _create(name)
    cfg = model.pretrained_cfg
    assert cfg['input_size'][1:] in ((32, 32), (64, 64), (128, 128))
    assert cfg['crop_pct'] == 1.0 and len(cfg['mean']) == 3 and len(cfg['std']) == 3
    assert model.num_classes == cfg['num_classes']
    state_dict = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict
    x = _input(model)
    feat = model.forward_features(x)
    assert feat.shape[1] == model.num_features
    assert tuple(feat.shape[-2:]) == tuple(cfg['pool_size'])
    pre = model.forward_head(feat, pre_logits=True)
    assert pre.shape == (2, model.head_hidden_size)
    assert model.get_classifier() is getattr(model, cfg['classifier'])
    # reset to no head: forward returns pre-logits
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_model_forward_backward(name):
    model = _create(name, num_classes=5)
    model.train()
    x = _input(model).requires_grad_(True)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    num_grad = sum(1 for p in model.parameters() if p.grad is not None)
    num_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert num_grad == num_trainable


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_model_features_only(name):
    model = _create(name, features_only=True)
    x = torch.randn(2, 3, *timm.get_pretrained_cfg(name).input_size[1:])
    feats = model(x)
    info = FeatureInfo(model.feature_info, list(range(len(feats))))
    assert len(feats) == len(model.feature_info.channels())
    reductions = model.feature_info.reduction()
    assert reductions == sorted(reductions)
    for f, chs, red in zip(feats, info.channels(), reductions):
        assert f.shape[1] == chs
        assert f.shape[-1] == x.shape[-1] // red


@pytest.mark.parametrize('name', ['convnet3', 'resnet18_dd', 'vgg11_dd', 'alexnet_dd', 'alexnet_mtt', 'vgg11_mtt'])
@pytest.mark.parametrize('num_classes,in_chans,size', [(10, 3, 32), (100, 1, 32), (3, 3, 64), (200, 1, 64)])
def test_variants_classes_chans_sizes(name, num_classes, in_chans, size):
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=size)
    model.eval()
    out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, num_classes)


@pytest.mark.parametrize('norm', ['instance', 'batch', 'group', 'layer', 'none'])
@pytest.mark.parametrize('name', ['convnet3', 'resnet18_dd', 'vgg11_dd', 'alexnet_dd'])
def test_norm_choices(name, norm):
    extra = {'first_norm': norm} if name == 'alexnet_dd' else {}  # its first norm is batch norm unless asked
    model = timm.create_model(name, norm=norm, num_classes=4, **extra)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    if norm == 'none':
        assert not norms
    elif norm == 'batch':
        assert norms and all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    else:
        expected_groups = {'instance': lambda c: c, 'group': lambda c: max(1, c // 16), 'layer': lambda c: 1}[norm]
        assert norms and all(isinstance(m, torch.nn.GroupNorm) for m in norms)
        assert all(m.num_groups == expected_groups(m.num_channels) for m in norms)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_convnet_instance_norm_is_groupnorm_per_channel():
    model = timm.create_model('convnet3')
    names = [n for n, _ in model.named_parameters()]
    # reference order: conv.w, conv.b, norm.w, norm.b per block, then the classifier
    assert names == [
        'features.0.weight', 'features.0.bias', 'features.1.weight', 'features.1.bias',
        'features.4.weight', 'features.4.bias', 'features.5.weight', 'features.5.bias',
        'features.8.weight', 'features.8.bias', 'features.9.weight', 'features.9.bias',
        'classifier.weight', 'classifier.bias']
    gn = model.features[1]
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == gn.num_channels == 128
    assert not list(model.buffers())  # instance norm keeps no running statistics
    assert model.head_hidden_size == 2048 and model.num_features == 128


def test_convnet_widths_and_pool_options():
    model = timm.create_model('convnet3', widths=(8, 16, 32), pool='max', num_classes=3)
    assert model.num_features == 32 and model.head_hidden_size == 32 * 4 * 4
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    model = timm.create_model('convnet3', width=8, pool='none', img_size=8, num_classes=3)
    assert model.forward_features(torch.randn(1, 3, 8, 8)).shape == (1, 8, 8, 8)
    gap = timm.create_model('convnet3', width=8, global_pool='avg', num_classes=3)
    assert gap.head_hidden_size == 8 and gap(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_shortcut_choices():
    improved = timm.create_model('resnet18_dd')
    classic = timm.create_model('resnet18_dd', shortcut='conv')
    ds_improved = improved.layer2[0].downsample
    ds_classic = classic.layer2[0].downsample
    assert isinstance(ds_improved[0], torch.nn.MaxPool2d) and ds_improved[1].stride == (1, 1)
    assert isinstance(ds_classic[0], torch.nn.Conv2d) and ds_classic[0].stride == (2, 2)
    # ResNet50 layer1: channel change at stride 1 -> the improved shortcut has no pooling
    r50 = timm.create_model('resnet50_dd')
    assert isinstance(r50.layer1[0].downsample[0], torch.nn.Identity)
    # the MTT-style ResNet18 has no conv biases and instance norm
    mtt = timm.create_model('resnet18_mtt')
    assert all(m.bias is None for m in mtt.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is not None for m in improved.modules() if isinstance(m, torch.nn.Conv2d))


def test_device_dtype_factory_kwargs():
    model = timm.create_model('resnet18_dd', device='cpu', dtype=torch.float64, num_classes=3)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize('name,kwargs,arg', [
    ('convnet3', dict(norm='bogus'), 'norm'),
    ('resnet18_dd', dict(norm='bogus'), 'norm'),
    ('vgg11_dd', dict(norm='bogus'), 'norm'),
    ('alexnet_dd', dict(norm='bogus'), 'norm'),
    ('resnet18_dd', dict(shortcut='avgpool'), 'shortcut'),
    ('convnet3', dict(pool='median'), 'pool'),
    ('convnet3', dict(drop_path_rate=0.2), 'drop_path_rate'),
    ('vgg11_mtt', dict(drop_path_rate=0.2), 'drop_path_rate'),
    ('alexnet_mtt', dict(drop_path_rate=0.2), 'drop_path_rate'),
    ('resnet18_dd', dict(drop_path_rate=1.5), 'drop_path_rate'),
    ('resnet18_dd', dict(drop_path_rule='cubic', drop_path_rate=0.1), 'drop_path_rule'),
    ('vgg11_dd', dict(img_size=48), 'img_size'),
    ('alexnet_dd', dict(img_size=20), 'img_size'),
    ('convnet3', dict(img_size=4), 'img_size'),
    ('convnet3', dict(global_pool='max'), 'global_pool'),
    ('convnet3', dict(in_chans=0), 'in_chans'),
])
def test_bad_arguments_name_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', ['convnet3', 'vgg11_dd', 'alexnet_dd'])
def test_wrong_input_size_is_a_clear_error(name):
    model = timm.create_model(name, img_size=32)
    with pytest.raises(ValueError, match='img_size'):
        model(torch.randn(1, 3, 64, 64))


def test_flatten_head_global_pool_reset():
    model = timm.create_model('convnet3', num_classes=10)
    model.reset_classifier(5, global_pool='avg')
    assert model.head_hidden_size == 128 and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    model.reset_classifier(5, global_pool='')
    assert model.head_hidden_size == 2048


def test_resnet_reset_classifier_unpooled():
    model = timm.create_model('resnet18_dd', num_classes=10)
    model.reset_classifier(0, '')
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512, 4, 4)


def test_direct_class_use_matches_factory():
    torch.manual_seed(0)
    a = ConvNet(num_classes=10)
    assert n_params(a) == n_params(timm.create_model('convnet3'))


def test_alexnet_dd_first_norm_is_batch_norm_as_in_the_reference():
    model = timm.create_model('alexnet_dd', norm='instance', num_classes=4)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    assert isinstance(norms[0], torch.nn.BatchNorm2d) and all(isinstance(m, torch.nn.GroupNorm) for m in norms[1:])
    plain = timm.create_model('alexnet_mtt', norm='instance', num_classes=4)
    assert all(isinstance(m, torch.nn.GroupNorm) for m in plain.modules() if isinstance(m, torch.nn.GroupNorm)) \
        and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
