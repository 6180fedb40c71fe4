"""The exact meta-gradient under a memory budget (``graph_budget``): the same result as ``unrolled`` for every
number of kept graphs, the budget's parsing and errors, the measured size of one step's graph, and the setting in a
distillation run."""
import pytest
import timm
import torch

import timm_dd  # noqa: F401
from timm_dd.augment import DSA
from timm_dd.distill import (
    FlatModel, StepGradient, get_preset, graph_step_bytes, graph_steps_for_budget, match_budgeted, match_unrolled,
    parse_budget, plan_steps,
)
from timm_dd.distill.graph_budget import format_bytes

from test_distill import _one_thread  # noqa: F401 - the same one-thread fixture: tiny convolutions


def _problem(n=6, size=8, chans=2, classes=3, width=4, near_start=False):
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=classes, in_chans=chans, img_size=size, width=width).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, chans, size, size, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    fm = FlatModel(model)
    if near_start:  # ATT matches an early step, before the kept graphs
        return fm, x, y, th0, th0 + 1e-4 * torch.randn(th0.shape, generator=g, dtype=torch.float64)
    theta = th0.clone().requires_grad_(True)  # beyond a few descent steps: the last steps match best
    for _ in range(5):
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(fm(theta, x), y), theta)
        theta = (theta - 0.2 * grad).detach().requires_grad_(True)
    return fm, x, y, th0, theta.detach()


@pytest.mark.parametrize('method, near_start', [('mtt', False), ('att', False), ('att', True)])
def test_every_number_of_kept_graphs_gives_the_unrolled_gradient(method, near_start):
    fm, x, y, th0, target = _problem(near_start=near_start)
    dsa = DSA()
    plan = plan_steps(x.shape[0], 5, 4, x.shape[-1], dsa, torch.Generator().manual_seed(1))
    lr = torch.tensor(0.05, dtype=torch.float64)
    ref = match_unrolled(fm, x, y, lr, th0, target, plan, dsa, method)
    # the two ATT cases: the matched step inside the kept graphs, and before them (they do not reach the loss)
    assert ref.n_opt < 3 if near_start else ref.n_opt >= 4
    for keep in range(0, 7):
        res = match_budgeted(fm, x, y, lr, th0, target, plan, dsa, method, graph_steps=keep)
        assert res.n_opt == ref.n_opt
        assert res.distances == (None if ref.distances is None else pytest.approx(ref.distances, rel=1e-12))
        assert float(res.loss) == pytest.approx(float(ref.loss), rel=1e-12)
        torch.testing.assert_close(res.grad_images, ref.grad_images, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(res.grad_lr, ref.grad_lr, rtol=1e-9, atol=1e-13)
    assert float(ref.grad_images.abs().sum()) > 0


def test_budgets_parse_with_units_and_bad_ones_say_the_forms():
    assert parse_budget('2GB') == 2 * 10 ** 9
    assert parse_budget('512 MiB') == 512 * 2 ** 20
    assert parse_budget('1.5gib') == int(1.5 * 2 ** 30)
    assert parse_budget(4096) == 4096
    assert parse_budget('auto') is None and parse_budget(' AUTO ') is None
    for bad in ('lots', '2 GBs', '-1GB', '0', True):
        with pytest.raises(ValueError, match="e.g. '2GB'"):
            parse_budget(bad)
    assert format_bytes(3 * 2 ** 30) == '3 GiB' and format_bytes(512) == '512 B'


def test_steps_for_a_budget_and_a_budget_under_one_step():
    cpu = torch.device('cpu')
    assert graph_steps_for_budget('10MiB', 3 * 2 ** 20, 20, cpu) == 3
    assert graph_steps_for_budget('1GiB', 3 * 2 ** 20, 20, cpu) == 20  # every step fits
    with pytest.raises(ValueError, match=r"smaller than one inner step's graph \(3 MiB\): give at least 3 MiB"):
        graph_steps_for_budget('1MiB', 3 * 2 ** 20, 20, cpu)
    assert 0 <= graph_steps_for_budget('auto', 3 * 2 ** 20, 20, cpu) <= 20


def test_one_steps_graph_grows_with_the_batch():
    fm, x, y, th0, target = _problem(n=8)
    step = StepGradient(fm)
    sizes = []
    for n in (2, 8):
        plan = plan_steps(8, 1, n, x.shape[-1], None, torch.Generator().manual_seed(0))
        sizes.append(graph_step_bytes(step, x, y, th0, plan, None))
    # the saved activations are per image: four times the batch, well over twice the bytes
    assert sizes[0] > 0 and sizes[1] > 2 * sizes[0]
    # what autograd saves for one step is of the order of its activations (8 images, 3 layers, 4 channels, float64)
    activations = 8 * 4 * 8 * 8 * 8
    assert activations < sizes[1] < 200 * activations


def test_the_setting_is_checked_and_runs_in_a_distillation(tmp_path):
    with pytest.raises(ValueError, match='graph_budget'):
        get_preset(None, dict(method='mtt', graph_budget='lots'))
    with pytest.raises(ValueError, match='unrolled keeps every'):
        get_preset(None, dict(method='mtt', grad_mode='unrolled', graph_budget='1GB'))
    from test_distill import _tm  # the tiny trajectory-matching run of the outer-loop tests
    runs = {}
    for name, extra in (('recompute', {}), ('budget', {'graph_budget': '1MiB'})):
        torch.manual_seed(0)  # the same network for both
        tm = _tm(tmp_path / name, 'mtt', **extra)(tmp_path / name / 'out')
        tm.run()
        runs[name] = tm
    torch.testing.assert_close(runs['budget'].images, runs['recompute'].images, rtol=1e-5, atol=1e-6)
    assert runs['budget'].graph_steps == 3  # a 1 MiB budget holds every one of the 3 tiny steps
