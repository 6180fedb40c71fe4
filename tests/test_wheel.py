"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment
(torch and the other dependencies reused from the test environment to keep it fast), used from outside the
checkout: the console commands, the shipped recipes and presets, and a tiny training run."""
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    return proc


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('wheel')
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', tmp / 'dist', REPO],
         cwd=tmp)
    wheel = next((tmp / 'dist').glob('timm_dd-*.whl'))
    _run([sys.executable, '-m', 'venv', tmp / 'venv'], cwd=tmp)
    venv_python = tmp / 'venv' / 'bin' / 'python'
    site = _run([venv_python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], cwd=tmp).stdout
    # reuse the test environment's dependencies (torch, timm, ...) without its editable timm_dd
    (Path(site.strip()) / '_reuse_test_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    _run([venv_python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', wheel], cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
    env.update(OMP_NUM_THREADS='1', TIMM_DD_CACHE=str(tmp / 'cache'))
    work = tmp / 'elsewhere'
    work.mkdir()
    return {'wheel': wheel, 'bin': tmp / 'venv' / 'bin', 'env': env, 'work': work}


def test_wheel_ships_the_configs(installed):
    names = zipfile.ZipFile(installed['wheel']).namelist()
    assert 'timm_dd/configs/train/dpkd.yaml' in names and 'timm_dd/configs/distill/cifar10-ipc10-mtt.yaml' in names
    assert not any(n.startswith(('tests/', 'benchmarks/')) for n in names)


def test_installed_commands_and_recipes_work_outside_the_checkout(installed):
    b, env, work = installed['bin'], installed['env'], installed['work']
    where = _run([b / 'python', '-c', 'import timm_dd; print(timm_dd.__file__)'], work, env).stdout
    assert str(REPO) not in where and 'site-packages' in where  # the installed wheel, not this checkout
    assert '--keep-rate-schedule' in _run([b / 'timm-dd-train', '--help'], work, env).stdout
    assert 'cifar10-ipc10-mtt' in _run([b / 'timm-dd-distill', 'presets'], work, env).stdout
    assert '--distill-set' in _run([b / 'timm-dd-demo', '--help'], work, env).stdout  # the demo, without a Makefile
    _run([b / 'python', '-c', 'from timm_dd.train.config import load_config; c = load_config("dpkd-no-kd"); '
                              'assert c.opt == "lion" and not c.kd'], work, env)
    _run([b / 'timm-dd-train', '-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
          '--model-kwargs', 'width=4', '--epochs', '1', '--output', 'out', '--no-plots', '--cpu'], work, env)
    assert (work / 'out' / 'results.json').is_file()
