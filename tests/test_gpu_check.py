"""benchmarks/gpu_check.py in its CPU smoke mode, and the adapter around the official MTT code (when a checkout of
GeorgeCazenavette/mtt-distillation is present at carry/mtt-distillation: it is git-ignored and never committed)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_dd.distill.matching import cpu_compiler_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'gpu_check.py'
OFFICIAL = REPO / 'carry' / 'mtt-distillation'
HAS_OFFICIAL = (OFFICIAL / 'reparam_module.py').is_file() and (OFFICIAL / 'utils.py').is_file()


def _run(tmp_path: Path, *extra: str, name: str = 'x.json'):
    out = tmp_path / name
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')  # the smoke mode is the CPU one, also on a GPU machine
    proc = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(out), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_mode_writes_every_section(tmp_path):
    extra = ('--official', str(OFFICIAL)) if HAS_OFFICIAL else ()
    res, stdout = _run(tmp_path, *extra)
    assert res['mode'] == 'smoke' and res['env']['device'] == 'cpu' and not res['errors']
    sec = res['sections']
    assert {'data', 'mtt', 'experts', 'dpkd', 'scale', 'real'} <= set(sec)
    scale = sec['scale']  # the published-scale rows (ImageNet-1K-shaped iteration, Tiny-ImageNet-shaped epoch)
    assert [r['ipc'] for r in scale['distill_rows']] == [1, 2] and _pos(scale['expert_seconds_per_epoch'])
    for r in scale['distill_rows']:
        assert _pos(r['seconds']) and _pos(r['step_graph_mb']) and 0 <= r['graph_steps_kept'] <= 2
    rows = {r['row']: r for r in sec['mtt']['rows']}
    assert {'timm_dd unrolled', 'timm_dd recompute', 'timm_dd recompute+speed'} <= set(rows)
    for r in rows.values():
        assert _pos(r['seconds']) and _pos(r['peak_mb']) and r['growth_mb'] >= 0
    assert rows['timm_dd recompute+speed']['grad_ok']
    if cpu_compiler_available():  # the compiled step (--set compile=true) ran and agreed
        compiled = rows.get('timm_dd recompute compile')
        assert compiled is not None, sec['mtt']['speed_variants']
        assert compiled['grad_ok'] and compiled['compiled']
    checks = sec['mtt']['grad_checks']['unrolled_vs_recompute_fp32']
    assert checks['images'] < 1e-3 and checks['lr'] < 1e-3
    for name in ('experts', 'dpkd'):
        assert _pos(sec[name]['seconds_per_epoch']) and _pos(sec[name]['peak_mb'])
    real = sec['real']
    assert real['settings']['iterations'] >= 1 and _pos(real['learned_lr'])
    assert 0.0 <= real['distilled_acc_mean'] <= 1.0 and 0.0 <= real['real_acc_mean'] <= 1.0
    assert '| timm_dd recompute |' in stdout and (tmp_path / 'x.md').is_file()
    if HAS_OFFICIAL:
        off = sec['mtt']['official']
        assert {r['row'] for r in off['rows']} == {'official fp32', 'official torch-defaults'}
        assert all(_pos(r['seconds']) for r in off['rows'])
        assert off['exact_vs_timm_dd_unrolled']['images'] < 1e-9
        assert _pos(sec['mtt']['ratios_vs_official_fp32']['timm_dd recompute']['time'])


@pytest.mark.parametrize('official', [None, 'no/such/checkout'])
def test_official_rows_skipped_cleanly(tmp_path, official):
    extra = ('--official', official) if official else ()
    res, stdout = _run(tmp_path, '--sections', 'mtt', *extra)
    off = res['sections']['mtt']['official']
    assert 'skipped' in off and 'rows' not in off
    assert ('no --official' if official is None else 'no such folder') in off['skipped']
    assert 'ratios_vs_official_fp32' not in res['sections']['mtt']
    assert not res['errors'] and set(res['sections']) == {'data', 'mtt'}
    assert 'Official rows skipped' in stdout


def _official_module():
    spec = importlib.util.spec_from_file_location('official_mtt', REPO / 'benchmarks' / 'official_mtt.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not HAS_OFFICIAL, reason='no official MTT checkout at carry/mtt-distillation')
@pytest.mark.parametrize('batch_syn', [None, 4])
def test_official_gradient_equals_timm_dd_unrolled(batch_syn):
    import timm
    import timm_dd  # noqa: F401
    from timm_dd.distill import FlatModel, plan_steps, trajectory_match

    before = {m: sys.modules.get(m) for m in ('utils', 'networks', 'reparam_module', 'kornia')}
    off = _official_module().OfficialMTT(OFFICIAL, channel=3, num_classes=3, im_size=8, net_width=4,
                                         dtype=torch.float64)
    # the official modules do not leak their generic names (or a kornia stand-in) into sys.modules
    assert {m: sys.modules.get(m) for m in before} == before
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=3, in_chans=3, img_size=8, width=4).double()
    fm = FlatModel(model)
    assert off.num_params == fm.num_params
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(6) % 3
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=torch.float64)
    lr = torch.tensor(0.05, dtype=torch.float64)
    plan = plan_steps(6, 4, batch_syn, 8, None, torch.Generator().manual_seed(1))
    ours = trajectory_match('unrolled', fm, x, y, lr, start, target, plan, None, 'mtt')
    loss, gx, glr = off.iteration(x, y, lr, start, target, len(plan), dsa=False, indices=plan.indices)
    assert float(loss) == pytest.approx(float(ours.loss), rel=1e-5)
    assert float((gx - ours.grad_images).norm() / ours.grad_images.norm()) < 1e-5
    assert float(glr) == pytest.approx(float(ours.grad_lr), rel=1e-5)
