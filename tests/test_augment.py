"""Differentiable siamese augmentation: op semantics, determinism, replay, gradients."""
import math
import pickle

import pytest
import torch

from timm_dd.augment import DSA, DSA_FAMILIES, DSADraw, DSAParams, dsa, parse_strategy


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b=8, c=3, s=32, seed=0, dtype=torch.float32):
    return torch.rand(b, c, s, s, generator=_gen(seed), dtype=dtype)


def _draw_for(op: str, b: int = 16, s: int = 32, seed: int = 0, **kw) -> DSADraw:
    return DSA(op, **kw).sample(b, s, generator=_gen(seed))


def test_defaults_and_parse():
    p = DSAParams()
    assert (p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout) == (0.5, 1.2, 15.0, 0.125,
                                                                                                0.5)
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)
    assert parse_strategy('color_crop_cutout_flip_scale_rotate') == DSA_FAMILIES
    assert parse_strategy('none') == ()
    with pytest.raises(ValueError, match='color_blur'):
        DSA('color_blur')
    with pytest.raises(ValueError, match='repeated'):
        DSA('flip_flip')
    for k in (0, 7, 1.5):
        with pytest.raises(ValueError):
            DSA(k=k)


def test_flip_mirrors_chosen_samples_only():
    x = _images(32)
    d = _draw_for('flip', 32)
    y = DSA('flip').apply(x, d)
    flip = d.params['flip']
    assert 0 < int(flip.sum()) < 32
    assert torch.equal(y[flip], x[flip].flip(-1))
    assert torch.equal(y[~flip], x[~flip])


def test_crop_shifts_with_zero_fill():
    x = _images(32) + 0.1  # strictly positive so shifted-in zeros are visible
    d = _draw_for('crop', 32)
    shift = d.params['crop']
    assert shift.dtype == torch.int64 and shift.abs().max() <= 4
    y = DSA('crop').apply(x, d)
    for b in range(32):
        ty, tx = shift[b].tolist()
        exp = torch.zeros_like(x[b])
        src = x[b, :, max(ty, 0):32 + min(ty, 0), max(tx, 0):32 + min(tx, 0)]
        exp[:, max(-ty, 0):max(-ty, 0) + src.shape[1], max(-tx, 0):max(-tx, 0) + src.shape[2]] = src
        assert torch.equal(y[b], exp), (b, ty, tx)
    # the full range [-4, 4] is reachable
    many = DSA('crop').sample(4000, 32, generator=_gen(1)).params['crop']
    assert many.min() == -4 and many.max() == 4


def test_cutout_zeroes_clamped_square():
    x = _images(64) + 0.1
    d = _draw_for('cutout', 64)
    y = DSA('cutout').apply(x, d)
    box = d.params['cutout']
    for b in range(64):
        top, left, bottom, right = box[b].tolist()
        assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32
        assert bottom - top == 16 or top == 0 or bottom == 32
        assert right - left == 16 or left == 0 or right == 32
        zero = torch.zeros(32, 32, dtype=torch.bool)
        zero[top:bottom, left:right] = True
        assert (y[b][:, zero] == 0).all()
        assert torch.equal(y[b][:, ~zero], x[b][:, ~zero])
    # centre uniform in [0, 32] for an even side: square starts in [-8, 24] before clamping
    many = DSA('cutout').sample(4000, 32, generator=_gen(1)).params['cutout']
    assert many[:, 0].max() == 24 and many[:, 2].min() == 8 and many[:, 0].min() == 0


def _manual(op: str, **params) -> DSADraw:
    return DSADraw((op,), {k: torch.as_tensor(v) for k, v in params.items()}, image_size=32)


def test_color_formulas():
    x = _images(4)
    aug = DSA('color')
    ones, zeros = torch.ones(4), torch.zeros(4)
    shift = torch.tensor([-0.4, 0.0, 0.1, 0.45])
    y = aug.apply(x, _manual('color', brightness=shift, saturation=ones, contrast=ones))
    torch.testing.assert_close(y - x, shift.view(4, 1, 1, 1).expand_as(x), atol=1e-6, rtol=0)

    s = torch.tensor([0.0, 0.5, 1.0, 1.9])
    y = aug.apply(x, _manual('color', brightness=zeros, saturation=s, contrast=ones))
    m = x.mean(1, keepdim=True)
    torch.testing.assert_close(y, (x - m) * s.view(4, 1, 1, 1) + m)
    assert torch.allclose(y[0], m[0].expand_as(y[0]))  # saturation 0: grey

    c = torch.tensor([0.5, 0.8, 1.0, 1.4])
    y = aug.apply(x, _manual('color', brightness=zeros, saturation=ones, contrast=c))
    m = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(y, (x - m) * c.view(4, 1, 1, 1) + m)

    # brightness -> saturation -> contrast, and sampled ranges
    d = _draw_for('color', 2000)
    p = d.params
    assert p['brightness'].min() >= -0.5 and p['brightness'].max() < 0.5
    assert p['saturation'].min() >= 0 and p['saturation'].max() < 2
    assert p['contrast'].min() >= 0.5 and p['contrast'].max() < 1.5
    xb = _images(2000, s=4)
    x1 = xb + p['brightness'].view(-1, 1, 1, 1)
    m1 = x1.mean(1, keepdim=True)
    x2 = (x1 - m1) * p['saturation'].view(-1, 1, 1, 1) + m1
    m2 = x2.mean((1, 2, 3), keepdim=True)
    exp = (x2 - m2) * p['contrast'].view(-1, 1, 1, 1) + m2
    torch.testing.assert_close(DSA('color').apply(xb, DSADraw(('color',), p, 4)), exp)


def test_scale_rotate_identity_and_geometry():
    x = _images(3, dtype=torch.float64)
    ident_s = DSADraw(('scale',), {'scale': torch.ones(3, 2)}, 32)
    ident_r = DSADraw(('rotate',), {'rotate': torch.zeros(3)}, 32)
    torch.testing.assert_close(DSA('scale').apply(x, ident_s), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(DSA('rotate').apply(x, ident_r), x, atol=1e-10, rtol=0)
    # 90 degrees lands exactly on the pixel grid with align_corners=True
    quarter = DSADraw(('rotate',), {'rotate': torch.full((3,), math.pi / 2, dtype=torch.float64)}, 32)
    y = DSA('rotate').apply(x, quarter)
    assert any(torch.allclose(y, torch.rot90(x, k, dims=(2, 3)), atol=1e-9) for k in (1, -1))
    # zooming out (sx = sy = 2) leaves a zero border
    half = DSA('scale').apply(x, DSADraw(('scale',), {'scale': torch.full((3, 2), 2.0)}, 32))
    assert (half[..., 0, :] == 0).all() and (half[..., :, -1] == 0).all()
    # output index j reads input position 2j - 15.5 (align_corners=True): j = 8 averages input pixels 0 and 1
    exp = (x[..., 0, 0] + x[..., 0, 1] + x[..., 1, 0] + x[..., 1, 1]) / 4
    torch.testing.assert_close(half[..., 8, 8], exp, atol=1e-9, rtol=0)
    d = _draw_for('scale', 2000).params['scale']
    assert d.min() >= 1 / 1.2 and d.max() < 1.2
    r = _draw_for('rotate', 2000).params['rotate']
    assert r.abs().max() <= math.radians(15) and r.abs().max() > math.radians(14)


def test_seed_determinism():
    x = _images(16)
    aug = DSA(k=2)
    a = aug(x, generator=_gen(3))
    b = aug(x, generator=_gen(3))
    assert torch.equal(a, b)
    outs = [aug(x, generator=_gen(s)) for s in range(4, 8)]
    assert all(not torch.equal(a, o) for o in outs)
    assert torch.equal(dsa(x, k=2, generator=_gen(3)), a)


@pytest.mark.parametrize('op', DSA_FAMILIES)
def test_gradients(op):
    x = _images(4).requires_grad_(True)
    y = DSA(op).apply(x, _draw_for(op, 4))
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('op', DSA_FAMILIES)
def test_gradcheck(op):
    x = _images(2, s=6, dtype=torch.float64).requires_grad_(True)
    aug = DSA(op, params=DSAParams(prob_flip=1.0))
    draw = aug.sample(2, 6, generator=_gen(5))
    assert torch.autograd.gradcheck(lambda t: aug.apply(t, draw), (x,))


def test_kfold_distinct_families():
    aug = DSA(k=3)
    seen, orders = set(), set()
    for s in range(60):
        d = aug.sample(4, 32, generator=_gen(s))
        assert len(d.ops) == 3 and len(set(d.ops)) == 3
        seen.update(d.ops)
        orders.add(d.ops)
        assert set(d.params) == {k for op in d.ops for k in (('brightness', 'saturation', 'contrast')
                                                                if op == 'color' else (op,))}
    assert seen == set(DSA_FAMILIES) and len(orders) > 20
    ones = {DSA(k=1).sample(2, 32, generator=_gen(s)).ops for s in range(60)}
    assert ones == {(op,) for op in DSA_FAMILIES}
    d = DSA(k=6).sample(2, 32, generator=_gen(0))
    assert sorted(d.ops) == sorted(DSA_FAMILIES)


def test_siamese_same_transform_across_batches():
    aug = DSA(k=3)
    x1 = _images(4)
    x2 = torch.cat([x1, _images(3, seed=9)])
    for s in range(12):
        d = aug.sample(4, 32, generator=_gen(s), siamese=True)
        assert d.siamese and d.batch_size is None
        assert torch.equal(aug.apply(x1, d), aug.apply(x2, d)[:4])
        same = x1[:1].expand(5, -1, -1, -1)
        y = aug.apply(same, d)
        assert (y == y[:1]).all()
    y1 = aug(x1, generator=_gen(1), siamese=True)
    y2 = aug(x2, generator=_gen(1), siamese=True)
    assert torch.equal(y1, y2[:4])


def test_replay_draw_exactly():
    aug = DSA(k=2)
    x = _images(8)
    for s in range(8):
        d = aug.sample(8, 32, generator=_gen(s))
        y = aug.apply(x, d)
        assert torch.equal(y, aug(x, generator=_gen(s)))
        d2 = pickle.loads(pickle.dumps(d.to('cpu')))
        assert d2.ops == d.ops
        assert torch.equal(aug.apply(x, d2), y)
        # a fresh DSA object replays a stored draw as well
        assert torch.equal(DSA().apply(x, d2), y)


def test_one_channel():
    x = _images(6, c=1)
    for op in DSA_FAMILIES:
        y = DSA(op)(x, generator=_gen(0))
        assert y.shape == x.shape
    # saturation is a no-op on one channel
    d = DSADraw(('color',), {'brightness': torch.zeros(6), 'saturation': torch.zeros(6), 'contrast': torch.ones(6)},
                32)
    torch.testing.assert_close(DSA('color').apply(x, d), x)


def test_bad_input():
    aug = DSA()
    with pytest.raises(ValueError, match='square'):
        aug(torch.rand(2, 3, 32, 28))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        aug(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match='floating'):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    d = aug.sample(4, 32, generator=_gen(0))
    with pytest.raises(ValueError, match='batch size'):
        aug.apply(torch.rand(5, 3, 32, 32), d)
    with pytest.raises(ValueError, match='32 px'):
        aug.apply(torch.rand(4, 3, 16, 16), d)


def test_none_strategy_is_identity():
    x = _images(2)
    assert torch.equal(DSA('none')(x, generator=_gen(0)), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    x = _images(8)
    aug = DSA(k=2)
    for s in range(6):
        d = aug.sample(8, 32, generator=_gen(s))
        y_gpu = aug(x.cuda(), generator=_gen(s))
        assert y_gpu.device.type == 'cuda'
        torch.testing.assert_close(y_gpu.cpu(), aug.apply(x, d), atol=1e-5, rtol=1e-5)
