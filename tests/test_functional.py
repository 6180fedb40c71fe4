"""Models under ``torch.func.functional_call`` and double backward (what trajectory matching needs)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call

import timm_dd  # noqa: F401

TINY = {
    'convnet3': dict(width=4, img_size=16),
    'convnet3_frepo': dict(widths=(4, 6, 8), img_size=16),
    'resnet18_dd': dict(widths=(4, 4, 8, 8), img_size=16),
    'resnet50_dd': dict(widths=(2, 2, 4, 4), img_size=16),
    'resnet18_mtt': dict(widths=(4, 4, 8, 8), img_size=16),
    'vgg11_dd': dict(img_size=32),
    'vgg11_mtt': dict(img_size=32),
    'alexnet_dd': dict(img_size=16),
    'alexnet_mtt': dict(img_size=16),
}


def _unrolled_step_loss(model, params, x_syn, y_syn, lr, x_real, y_real):
    """One SGD step on the synthetic batch, then the loss of the updated weights on real data."""
    inner = F.cross_entropy(functional_call(model, params, (x_syn,)), y_syn)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    updated = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return F.cross_entropy(functional_call(model, updated, (x_real,)), y_real)


@pytest.mark.parametrize('name', sorted(TINY))
def test_functional_call_and_double_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **TINY[name]).train()
    size = TINY[name]['img_size']
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}
    x = torch.randn(4, 3, size, size)
    torch.manual_seed(1)
    ref = model(x)
    torch.manual_seed(1)
    out = functional_call(model, params, (x,))
    torch.testing.assert_close(out, ref)

    x_syn = torch.randn(4, 3, size, size, requires_grad=True)
    lr = torch.tensor(0.01, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = _unrolled_step_loss(model, params, x_syn, y, lr, x, y)
    g_x, g_lr = torch.autograd.grad(loss, (x_syn, lr))
    assert torch.isfinite(g_x).all() and g_x.abs().sum() > 0
    assert torch.isfinite(g_lr) and g_lr != 0


def test_convnet3_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=3, width=4, img_size=16, in_chans=1).double().train()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    x_syn = torch.randn(3, 1, 16, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    y_syn = torch.tensor([0, 1, 2])
    x_real = torch.randn(6, 1, 16, 16, dtype=torch.float64, generator=gen)
    y_real = torch.tensor([0, 1, 2, 2, 1, 0])
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)

    def objective(xs, step):
        ps = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        return _unrolled_step_loss(model, ps, xs, y_syn, step, x_real, y_real)

    g_x, g_lr = torch.autograd.grad(objective(x_syn, lr), (x_syn, lr))
    eps = 1e-6
    coords = torch.randperm(x_syn.numel(), generator=gen)[:12]
    for c in coords.tolist():
        delta = torch.zeros_like(x_syn).view(-1)
        delta[c] = eps
        delta = delta.view_as(x_syn)
        fd = (objective(x_syn.detach() + delta, lr.detach()) - objective(x_syn.detach() - delta, lr.detach())) / (2 * eps)
        assert fd.item() == pytest.approx(g_x.view(-1)[c].item(), rel=1e-4, abs=1e-9)
    fd_lr = (objective(x_syn.detach(), lr.detach() + eps) - objective(x_syn.detach(), lr.detach() - eps)) / (2 * eps)
    assert fd_lr.item() == pytest.approx(g_lr.item(), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize('name', ['resnet18_dd', 'vgg11_dd', 'alexnet_dd'])
def test_double_backward_with_dropped_paths(name):
    # dropped paths must still allow double backward (masks are constants of the graph)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, drop_path_rate=0.5, **TINY[name]).train()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}
    size = TINY[name]['img_size']
    x_syn = torch.randn(4, 3, size, size, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = _unrolled_step_loss(model, params, x_syn, y, 0.01, torch.randn(4, 3, size, size), y)
    (g_x,) = torch.autograd.grad(loss, (x_syn,))
    assert torch.isfinite(g_x).all()
