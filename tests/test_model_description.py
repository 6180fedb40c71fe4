"""Models that describe themselves: ``in_chans``, a ``pretrained_cfg`` matching how they were built and the data they
were trained on, timm's ``forward_intermediates``, and timm's own distillation task running on them."""
import json

import pytest
import timm
import torch

import timm_dd  # noqa: F401
from timm_dd.hub import load_teacher, record_input, save_teacher

TINY = {
    'convnet3': dict(width=4), 'resnet18_dd': dict(widths=[4, 4, 8, 8]), 'vgg11_dd': dict(), 'alexnet_dd': dict(),
}


@pytest.mark.parametrize('name', sorted(TINY))
def test_models_describe_their_input_and_give_intermediates(name):
    size = 32 if name.startswith(('vgg', 'alexnet')) else 16  # their smallest input
    model = timm.create_model(name, num_classes=7, in_chans=1, img_size=size, **TINY[name]).eval()
    assert model.in_chans == 1
    assert tuple(model.pretrained_cfg['input_size']) == (1, size, size) and model.pretrained_cfg['num_classes'] == 7
    assert len(model.pretrained_cfg['mean']) == 1 and len(model.pretrained_cfg['std']) == 1
    x = torch.randn(2, 1, size, size)
    final, inter = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x))
    assert len(inter) == len(model.feature_info)
    for t, info in zip(inter, model.feature_info):
        assert t.shape[1] == info['num_chs'] and t.shape[-1] == size // info['reduction']
    last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(last) == 1 and torch.equal(last[0], inter[-1])


def test_teacher_trained_on_one_channel_16px_data_publishes_its_input(tmp_path):
    from accelerate import Accelerator
    from timm_dd.train.config import load_config
    accelerator = Accelerator(cpu=True)
    from timm_dd.train import prepare_data, run_experiment
    data = prepare_data(dataset='digits', real_ipc=1, image_size=16)
    cfg = load_config('dpkd', dict(epochs=1, final_epochs=1, period=1, teacher_epochs=1, eval_every=0))
    run_experiment(cfg, ['convnet3'], [0], data, tmp_path / 'o', accelerator, model_kwargs=dict(width=4))
    config = json.loads((tmp_path / 'o' / 'teachers' / 'seed0' / 'model' / 'config.json').read_text())
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [1, 16, 16] and pcfg['num_classes'] == 10
    from timm_dd.data import load_dataset
    digits = load_dataset('digits', 'train', image_size=16)
    stats = digits.normalization
    assert pcfg['mean'] == pytest.approx(list(stats.mean)) and pcfg['std'] == pytest.approx(list(stats.std))
    assert config['image_space']['image_space'] == 'normalized' and config['image_space']['dataset'] == 'digits'
    reloaded = load_teacher(str(tmp_path / 'o' / 'teachers' / 'seed0' / 'model'))
    assert tuple(reloaded.pretrained_cfg['input_size']) == (1, 16, 16)


def test_zca_space_is_recorded(tmp_path):
    model = timm.create_model('convnet3', num_classes=10, width=4)
    record_input(model, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], {'image_space': 'zca', 'dataset': 'cifar10',
                                                                 'zca_eps': 0.1})
    folder = save_teacher(model, tmp_path / 't', model_args=dict(num_classes=10, width=4))
    config = json.loads((folder / 'config.json').read_text())
    assert config['image_space'] == {'image_space': 'zca', 'dataset': 'cifar10', 'zca_eps': 0.1}
    assert config['pretrained_cfg']['mean'] == [0.49, 0.48, 0.45]


def test_timm_logit_distillation_task_runs_on_our_models():
    from timm.task import LogitDistillationTask
    student = timm.create_model('resnet18_dd', num_classes=10, widths=[4, 4, 8, 8])
    teacher = timm.create_model('convnet3', num_classes=10, width=4)
    task = LogitDistillationTask(student, teacher, distill_loss_weight=0.5, task_loss_weight=0.5, temperature=1.5,
                                 verbose=False)
    out = task(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(out['loss'])
    out['loss'].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
