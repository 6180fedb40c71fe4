"""timm_dd.hub.import_teacher: another tool's checkpoint (DP+KD's ``{'state_dict', 'epoch'}``) as a timm_dd model."""
import pytest
import torch

import timm
import timm_dd  # noqa: F401  registers the models with timm
from timm_dd.hub import import_teacher, load_teacher, save_teacher


def _checkpoint(tmp_path, norm='instance', prefix=''):
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=10, width=8, norm=norm).eval()
    path = tmp_path / 'checkpoint_best.pth'
    torch.save({'state_dict': {prefix + k: v for k, v in model.state_dict().items()}, 'epoch': 400}, path)
    return model, path


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_imported_teacher_computes_what_the_checkpoint_did(tmp_path, prefix):
    original, path = _checkpoint(tmp_path, prefix=prefix)
    teacher = import_teacher(path, 'convnet3', num_classes=10, width=8).eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(teacher(x), original(x), rtol=0, atol=0)
    # and through the timm folder layout, as a training run loads it
    save_teacher(teacher, tmp_path / 'teacher', model_args=dict(num_classes=10, width=8))
    torch.testing.assert_close(load_teacher(tmp_path / 'teacher').eval()(x), original(x), rtol=0, atol=0)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    _, path = _checkpoint(tmp_path, norm='batch')  # batch norm has running statistics the instance-norm net lacks
    with pytest.raises(ValueError, match=r'does not fit convnet3.*unexpected: features\.1\.num_batches_tracked'):
        import_teacher(path, 'convnet3', num_classes=10, width=8)
    with pytest.raises(ValueError, match=r'shapes \(file vs model\): classifier\.bias \(10,\) vs \(100,\)'):
        import_teacher(_checkpoint(tmp_path)[1], 'convnet3', num_classes=100, width=8)


def test_a_file_without_a_state_dict_is_a_clear_error(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=r'junk.pth: cannot read this torch.save file'):
        import_teacher(tmp_path / 'junk.pth', 'convnet3')
    torch.save({'epoch': 3, 'note': 'no weights'}, tmp_path / 'empty.pth')
    with pytest.raises(ValueError, match='holds no state dict'):
        import_teacher(tmp_path / 'empty.pth', 'convnet3')
