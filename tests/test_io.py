"""The one atomic-write helper, the output-folder lock and the clean-up after interrupted writes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timm_dd.io import (
    FolderInUseError, FolderLock, atomic_folder, atomic_write, atomic_write_json, check_replaceable,
    remove_stale_temporaries,
)

from user_files import changed_user_files, write_user_files

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / 'a.json', {'x': 1})
        with atomic_folder(tmp_path / 'set') as tmp:
            (tmp / 'f.txt').write_text('x')
    finally:
        os.umask(old)
    assert (tmp_path / 'a.json').stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / 'set').stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.json', 'set']


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / 'state.pt'
    torch.save({'v': 1}, target)
    with pytest.raises(KeyError):
        with atomic_write(target) as f:
            f.write(b'partial')
            raise KeyError('crash in the middle')
    assert torch.load(target)['v'] == 1 and os.listdir(tmp_path) == ['state.pt']



class _InterruptedFile:
    """A file that raises KeyboardInterrupt (Ctrl-C) on its ``n``-th write, as a signal arriving mid-save does."""

    def __init__(self, f, n: int):
        self.f, self.n = f, n

    def write(self, data):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_ctrl_c_inside_torch_save_is_an_interruption_and_keeps_the_previous_file(tmp_path):
    """torch's zip writer turns a Ctrl-C in mid-write into a RuntimeError that reads like corruption; the atomic write
    reports it as the interruption it was, naming the file, whose previous version is kept."""
    target = tmp_path / 'checkpoint.pt'
    torch.save({'v': 1}, target)
    with pytest.raises(KeyboardInterrupt, match='interrupted while writing .*checkpoint.pt'):
        with atomic_write(target) as f:
            torch.save({'v': torch.zeros(1000)}, _InterruptedFile(f, 3))
    assert torch.load(target)['v'] == 1 and os.listdir(tmp_path) == ['checkpoint.pt']


def _killed_writes(folder):
    """What this library's writers leave when killed mid-write, named as they name it."""
    (folder / '.timm_dd-tmp-metrics.jsonl.abc123.tmp').write_text('half')
    (folder / 'runs').mkdir()
    (folder / 'runs' / '.timm_dd-tmp-checkpoint.pt.x.tmp').write_bytes(b'half')
    (folder / '.timm_dd-tmp-distilled-1234').mkdir()
    (folder / '.timm_dd-old-distilled-abcd').mkdir()  # killed between the two renames of a folder swap
    (folder / '.timm_dd-old-distilled-abcd' / 'distill_config.json').write_text('{}')


def test_stale_temporaries_are_removed_and_a_swapped_out_folder_is_restored(tmp_path):
    _killed_writes(tmp_path)
    (tmp_path / 'keep.json').write_text('{}')
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ['distilled', 'keep.json', 'runs']
    assert (tmp_path / 'distilled' / 'distill_config.json').is_file()  # the last complete version is back


def test_a_users_files_are_never_touched_by_taking_the_lock(tmp_path):
    """Issue "Reliability II": only names this library gives are removed or renamed, in any subfolder."""
    write_user_files(tmp_path)
    _killed_writes(tmp_path)
    with FolderLock(tmp_path):
        pass
    assert not changed_user_files(tmp_path)
    assert not list(tmp_path.rglob('.timm_dd-tmp-*')) and not list(tmp_path.rglob('.timm_dd-old-*'))
    assert (tmp_path / 'distilled' / 'distill_config.json').is_file() and (tmp_path / '.timm_dd.lock').is_file()


def test_temporaries_of_atomic_writes_carry_the_librarys_prefix(tmp_path):
    seen = []
    with atomic_write(tmp_path / 'a.json', 'w') as f:
        seen += [p.name for p in tmp_path.iterdir()]
        f.write('{}')
    with atomic_folder(tmp_path / 'set') as tmp:
        seen.append(tmp.name)
    assert all(name.startswith('.timm_dd-tmp-') for name in seen) and len(seen) == 2


def test_a_folder_is_replaced_only_when_it_holds_nothing_but_its_own_files(tmp_path):
    """Issue "Reliability II": saving a set over a folder with a user's file in it stops and names the file."""
    own = ('config.json', 'data/view.parquet')
    check_replaceable(tmp_path / 'missing', own, 'set')
    folder = tmp_path / 'set'
    (folder / 'data').mkdir(parents=True)
    check_replaceable(folder, own, 'set')  # empty (but for an own subfolder)
    for name in own:
        (folder / name).write_text('x')
    check_replaceable(folder, own, 'set')
    (folder / 'data' / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=r'not part of a set \(data/notes.txt\).*move those files out'):
        check_replaceable(folder, own, 'set')
    (folder / 'data' / 'notes.txt').unlink()
    (folder / 'config.json').unlink()
    (folder / 'config.json').mkdir()  # an own name, but a folder: not what the set wrote
    with pytest.raises(FileExistsError, match='config.json'):
        check_replaceable(folder, own, 'set')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(FileExistsError, match='is not a folder'):
        check_replaceable(tmp_path / 'file', own, 'set')


def test_lock_is_exclusive_and_released_by_a_killed_process(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderInUseError, match='in use by a running job'):
            FolderLock(tmp_path).__enter__()
    code = ('import sys, time; from timm_dd.io import FolderLock; lock = FolderLock(sys.argv[1]).__enter__(); '
            'print("locked", flush=True); time.sleep(60)')
    proc = subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(FolderInUseError, match=f'pid {proc.pid}'):
        FolderLock(tmp_path).__enter__()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with FolderLock(tmp_path):  # the kernel released the dead process's lock
        pass


def test_killing_accelerate_launch_stops_its_workers(tmp_path):
    psutil = pytest.importorskip('psutil')
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1',
               TIMM_DD_CACHE=str(tmp_path / 'cache'))
    cmd = [str(Path(sys.executable).with_name('accelerate')), 'launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(REPO / 'train.py'),
           '-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3', '--model-kwargs',
           'width=4', '--epochs', '100000', '--eval-every', '0', '--output', str(tmp_path / 'o'), '--no-plots']
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                       if 'train.py' in ' '.join(p.cmdline())]
            if len(workers) == 2 and (tmp_path / 'o' / 'run_config.json').is_file():
                break
            time.sleep(0.5)
        assert len(workers) == 2, 'the workers did not start'
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f'workers still running after the launcher was killed: {[p.pid for p in alive]}'
    finally:
        for p in psutil.Process().children(recursive=True) + workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
