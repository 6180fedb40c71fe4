"""ZCA whitening: formula, inverse, state round trip, whitening quality, input validation."""
import numpy as np
import pytest
import torch

from timm_dd.data.zca import ZCA


def _data(n=64, c=3, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated features so the covariance has a non-trivial spectrum
    mix = torch.randn(c * h * w, c * h * w, generator=g) * 0.2 + torch.eye(c * h * w)
    x = torch.rand(n, c * h * w, generator=g) @ mix
    return x.reshape(n, c, h, w)


def _reference(x, eps):
    # the kornia/MTT formula, independently in numpy float64 with an SVD
    a = x.reshape(x.shape[0], -1).double().numpy()
    mean = a.mean(0, keepdims=True)
    xc = a - mean
    cov = xc.T @ xc / (a.shape[0] - 1)
    u, s, _ = np.linalg.svd(cov)
    w = (u * (s + eps) ** -0.5) @ u.T
    w_inv = (u * (s + eps) ** 0.5) @ u.T
    return mean, w, w_inv, (a - mean) @ w


@pytest.mark.parametrize('eps', [0.1, 1e-3])
def test_matches_formula(eps):
    x = _data()
    zca = ZCA.fit(x, eps=eps)
    mean, w, w_inv, y_ref = _reference(x, eps)
    assert zca.eps == eps and zca.dim == 48
    state = zca.state_dict()
    assert state['mean_vector'].shape == (1, 48) and state['transform_matrix'].shape == (48, 48)
    assert all(t.dtype == torch.float32 for t in state.values())
    scale = np.abs(w).max()
    np.testing.assert_allclose(state['mean_vector'].double().numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(state['transform_matrix'].double().numpy() / scale, w / scale, atol=1e-5)
    np.testing.assert_allclose(state['transform_inv'].double().numpy(), w_inv, atol=1e-5)
    y = zca.transform(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y_ref = torch.from_numpy(y_ref).reshape(x.shape)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5 * max(1.0, y_ref.abs().max().item()), rtol=1e-5)


def test_float32_eigh_close():
    x = _data()
    threads = torch.get_num_threads()
    a, b = ZCA.fit(x, dtype=torch.float64), ZCA.fit(x, dtype=torch.float32, chunk_size=7, eigh_threads=None)
    assert torch.get_num_threads() == threads  # eigh_threads=1 is undone
    torch.testing.assert_close(a.transform_matrix, b.transform_matrix, atol=1e-4, rtol=1e-4)


def test_inverse():
    x = _data(n=100)
    zca = ZCA.fit(x)
    torch.testing.assert_close(zca.inverse_transform(zca.transform(x)), x, atol=1e-4, rtol=0)
    # flat input, other dtypes, autograd
    flat = x.reshape(100, -1)
    torch.testing.assert_close(zca.transform(flat), zca.transform(x).reshape(100, -1))
    assert zca.transform(x.half()).dtype == torch.float16
    xg = x.clone().requires_grad_()
    zca.transform(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_whitened_covariance_is_identity():
    x = _data(n=2000, c=1, h=4, w=4)
    y = ZCA.fit(x, eps=1e-8).transform(x).reshape(2000, -1).double()
    yc = y - y.mean(0)
    cov = yc.T @ yc / (y.shape[0] - 1)
    torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)
    # eps = 0.1 shrinks the variance of the weak directions below 1
    y = ZCA.fit(x, eps=0.1).transform(x).reshape(2000, -1).double()
    assert torch.var(y, 0).max() < 1


def test_state_round_trip():
    x = _data()
    zca = ZCA.fit(x, eps=0.05)
    state = zca.state_dict()
    back = ZCA.from_state_dict(state, eps=zca.eps)
    for k, v in state.items():
        assert torch.equal(v, back.state_dict()[k])
    assert back.eps == 0.05
    assert ZCA.from_state_dict({**state, 'eps': torch.tensor(0.05)}).eps == pytest.approx(0.05)
    assert torch.equal(back.transform(x), zca.transform(x))
    assert back.to('cpu') is back and back.device.type == 'cpu'
    with pytest.raises(KeyError, match='transform_matrix'):
        ZCA.from_state_dict({'mean_vector': state['mean_vector']})
    no_inv = ZCA.fit(x, compute_inv=False)
    assert 'transform_inv' not in no_inv.state_dict()
    with pytest.raises(RuntimeError, match='compute_inv'):
        no_inv.inverse_transform(x)


def test_bad_input():
    x = _data()
    with pytest.raises(ValueError, match='4-D'):
        ZCA.fit(x.reshape(64, -1))
    with pytest.raises(TypeError, match='floating point'):
        ZCA.fit((x * 255).to(torch.int32))  # uint8 pixels are accepted, other integers not
    bad = x.clone()
    bad[3, 0, 1, 1] = float('nan')
    with pytest.raises(ValueError, match='NaN or Inf'):
        ZCA.fit(bad)
    bad[3, 0, 1, 1] = float('inf')
    with pytest.raises(ValueError, match='NaN or Inf'):
        ZCA.fit(bad)
    with pytest.raises(ValueError, match='at least 2'):
        ZCA.fit(x[:1])
    with pytest.raises(ValueError, match='eps'):
        ZCA.fit(x, eps=-1)
    with pytest.raises(TypeError, match='torch.Tensor'):
        ZCA.fit(x.numpy())
    zca = ZCA.fit(x)
    with pytest.raises(ValueError, match='48 features'):
        zca.transform(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match='shape'):
        ZCA(torch.zeros(1, 4), torch.eye(3))


def test_fit_on_uint8_pixels_equals_the_fit_on_their_floats():
    # a loaded dataset keeps uint8 pixels: the fit reads them chunk by chunk, with no float copy of the set
    u8 = torch.randint(0, 256, (300, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a, b = ZCA.fit(u8, eps=0.1, chunk_size=64), ZCA.fit(u8.float() / 255, eps=0.1, chunk_size=64)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
