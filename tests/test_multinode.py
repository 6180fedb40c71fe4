"""Several machines through Accelerate's own multi-node launch, as a lab submits it: ``examples/multinode/slurm.sbatch``
with ``accelerate_config.yaml`` starts two "machines" on this host (``--num_machines 2``, machine ranks 0 and 1, one
CPU process each, gloo), with ``srun`` and ``scontrol`` played by small stand-ins that start each node's task as a
local process. Experts, MTT/ATT distillation (and DM, the periodic evaluation) and the cross-architecture table equal
the one-process run within the tolerances of the two-process tests; a node that cannot reach the main process fails
within the stated time with one line naming the address and port."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from test_distill_devices import assert_split_equals_one_process

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / 'examples' / 'multinode' / 'slurm.sbatch'

# srun: run the command once per node (SLURM_NODEID 0..N-1, or the nodes in FAKE_SRUN_NODES), kill the others when
# one fails (--kill-on-bad-exit), exit with the first failure
_SRUN = '''#!{python}
import os, subprocess, sys, time
argv = sys.argv[1:]
while argv and argv[0].startswith('--'):
    argv = argv[1:]
nodes = os.environ.get('FAKE_SRUN_NODES', '').split() or range(int(os.environ['SLURM_NNODES']))
procs = [subprocess.Popen(argv, env=dict(os.environ, SLURM_NODEID=str(n), SLURM_PROCID=str(n))) for n in nodes]
while True:
    codes = [p.poll() for p in procs]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sys.exit(failed[0])
    if all(c == 0 for c in codes):
        sys.exit(0)
    time.sleep(0.2)
'''
_SCONTROL = '#!/bin/sh\necho 127.0.0.1\necho 127.0.0.1\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict:
    bin_dir = tmp_path / 'slurm-bin'
    bin_dir.mkdir(exist_ok=True)
    for name, text in (('srun', _SRUN.format(python=sys.executable)), ('scontrol', _SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get('PATH', '')])
    return dict(os.environ, PATH=path, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1',
                SLURM_NNODES='2', SLURM_JOB_NODELIST='node[0-1]', GPUS_PER_NODE='1', MAIN_PORT=str(_free_port()),
                TIMM_DD_CACHE=str(tmp_path / 'cache'), **extra)


def _sbatch(tmp_path: Path, command: list, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(['bash', str(SBATCH), *map(str, command)], cwd=REPO, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _one_process(tmp_path: Path, command: list) -> None:
    proc = subprocess.run([sys.executable, *map(str, command)], cwd=REPO, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_machines_distill_as_one_process(tmp_path):
    (tmp_path / 'buf').mkdir()
    _sbatch(tmp_path, [REPO / 'tests' / 'scripts' / 'mp_distill.py', tmp_path / 'out.json', tmp_path / 'buf'])
    assert_split_equals_one_process(json.loads((tmp_path / 'out.json').read_text()))


def test_two_machines_train_the_experts_of_one_process(tmp_path):
    common = ['experts', '-c', 'digits-ipc10-att', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}',
              '--set', 'num_experts=2', '--set', 'expert_train_epochs=2']
    _one_process(tmp_path, [REPO / 'distill.py', *common, '--output', tmp_path / 'one'])
    _sbatch(tmp_path, ['distill.py', *common, '--output', tmp_path / 'two'])
    for i in range(2):  # expert i trained on machine i % 2: the same trajectory as in one process
        name = f'expert_{i:05d}.safetensors'
        one, two = load_file(tmp_path / 'one' / name), load_file(tmp_path / 'two' / name)
        assert one.keys() == two.keys() and len(one) >= 3
        for key in one:
            assert torch.allclose(one[key], two[key], rtol=1e-5, atol=1e-6), (name, key)


def test_two_machines_share_the_runs_of_a_table(tmp_path):
    args = ['train.py', '-c', 'dpkd', '--dataset', 'digits', '--real-ipc', '1', '--models', 'convnet3',
            'resnet18_dd', '--model-kwargs', 'widths=[4,4,8,8]', '--seeds', '0', '--epochs', '2', '--final-epochs',
            '1', '--period', '1', '--teacher-epochs', '1', '--eval-every', '0', '--no-plots']
    _one_process(tmp_path, [*args, '--output', tmp_path / 'one'])
    _sbatch(tmp_path, [*args, '--output', tmp_path / 'two'])
    r1, r2 = (json.loads((tmp_path / d / 'results.json').read_text()) for d in ('one', 'two'))
    keys = ('model', 'seed', 'final_acc', 'best_acc', 'best_epoch', 'test_count')
    assert [{k: r[k] for k in keys} for r in r2['runs']] == [{k: r[k] for k in keys} for r in r1['runs']]
    assert [r['process'] for r in r2['runs']] == [0, 1]  # one run on each machine


def test_a_node_that_cannot_reach_the_main_process_fails_in_bounded_time(tmp_path):
    env = _env(tmp_path, FAKE_SRUN_NODES='1', RDZV_TIMEOUT='4')  # node 1 alone: nobody listens at the main port
    start = time.monotonic()
    proc = subprocess.run(['bash', str(SBATCH), 'train.py', '--help'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: node 1 cannot reach the main process at 127.0.0.1:{env['MAIN_PORT']} within 4 s "
                     f"(is node 0 up, is the port open between the nodes?)"]
