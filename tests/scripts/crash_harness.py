"""Crash-consistency harness: kill -9 tiny runs at chosen moments, resume them, compare with uninterrupted runs.

For every kind of run (training, expert training, MTT, ATT and DM distillation) the harness

1. runs it once uninterrupted (counting the moments where it can be killed),
2. for each of ``--kills`` seeded draws, runs it again and sends itself SIGKILL at the drawn moment, then runs it
   again with ``--resume`` to the end, and
3. compares the outputs with the uninterrupted run: identical final weights / experts / images and metrics,
   nothing left behind that breaks the resumed run or a later load, and a user's files put in the output folder
   beforehand (names that look temporary, ``.lock``, in subfolders) byte-identical.

Kill moments (counted per run, drawn uniformly): ``step`` = before the N-th optimizer step (anywhere in training),
``write`` = inside the N-th atomic file write, after the data is written and before it is renamed into place
(``os.fsync``), ``replace`` = just before the N-th rename (between the steps of an atomic write).

Runs execute the command-line ``main()`` of ``train.py`` / ``distill.py`` in forked children of this process, so
``torch``/``timm`` are imported once. Usage (the test suite runs ``--kills 5``; the long randomized version is
``--kills 50 --seed <any>``)::

    python tests/scripts/crash_harness.py --output result.json [--kinds train experts mtt att dm] [--kills 5] [--seed 0]
"""
import argparse
import json
import os
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))

import torch  # noqa: E402

torch.set_num_threads(1)  # before any parallel region: forked children must not inherit a thread pool

import timm_dd  # noqa: E402,F401
from user_files import changed_user_files, write_user_files  # noqa: E402

POINTS = ('step', 'write', 'replace')
DIGITS = ['--preset', 'digits-ipc10-att', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}', '--set',
          'ipc=2', '--set', 'num_experts=2', '--set', 'expert_train_epochs=4', '--set', 'syn_steps=2', '--set',
          'max_start_epoch=2', '--set', 'checkpoint_every=2']


def _load_script(name: str) -> Callable[[List[str]], int]:
    import importlib.util
    spec = importlib.util.spec_from_file_location(name.replace('.py', '_cli'), REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _commands(kind: str, work: Path) -> Tuple[str, List[str]]:
    if kind == 'train':
        return 'train.py', ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '2', '--img-size', '8',
                            '--model', 'convnet3', '--model-kwargs', 'width=4', '--epochs', '6', '--eval-every', '2',
                            '--checkpoint-every', '2', '--save-models', '--no-plots', '--cpu', '--output',
                            str(work / 'out'), '--log-level', 'WARNING']
    if kind == 'experts':
        return 'distill.py', ['experts', *DIGITS, '--output', str(work / 'out'), '--cpu']
    method = {'mtt': 'mtt', 'att': 'att', 'dm': 'dm'}[kind]
    experts = work.parent.parent / 'experts' / 'ref' / 'out'  # the reference expert run's buffer
    return 'distill.py', ['distill', *DIGITS, '--iterations', '6', '--no-eval', '--method', method, '--experts',
                          str(experts), '--output', str(work / 'out'), '--cpu']


def _child(script: str, argv: List[str], kill: Optional[Tuple[str, int]], counts_file: Optional[Path]) -> None:
    """In a forked child: run ``script``'s main with ``argv``; SIGKILL at ``kill``; write the counts."""
    counts = {p: 0 for p in POINTS}

    def hit(point: str) -> None:
        counts[point] += 1
        if kill is not None and kill == (point, counts[point]):
            os.kill(os.getpid(), signal.SIGKILL)

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        hit('write')

    def replace(src, dst, **kw):
        hit('replace')
        return real_replace(src, dst, **kw)

    os.fsync, os.replace = fsync, replace
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    register_optimizer_step_pre_hook(lambda *a: hit("step"))
    import logging
    logging.disable(logging.WARNING)
    rc = _load_script(script)(argv)
    if counts_file is not None:
        counts_file.write_text(json.dumps(counts))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _fork(script: str, argv: List[str], kill=None, counts_file=None) -> Tuple[int, Optional[int]]:
    """Run in a forked child; returns ``(exit code or None, signal or None)``."""
    pid = os.fork()
    if pid == 0:
        try:
            _child(script, argv, kill, counts_file)
        except BaseException as e:  # noqa: BLE001 - report and leave the child
            print(f'child failed: {e!r}', file=sys.stderr)
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def _outputs(kind: str, out: Path) -> Dict[str, Any]:
    """What must equal between an uninterrupted and a killed-and-resumed run."""
    from safetensors.torch import load_file
    if kind == 'train':
        run = out / 'runs' / 'convnet3' / 'seed0'
        result = json.loads((out / 'results.json').read_text())
        return {'weights': load_file(str(run / 'model' / 'model.safetensors')),
                'metrics': (run / 'metrics.jsonl').read_text(),
                'final_acc': [r['final_acc'] for r in result['runs']]}
    if kind == 'experts':
        return {p.name: load_file(str(p)) for p in sorted(out.glob('expert_*.safetensors'))}
    from timm_dd.distilled import DistilledSet
    dset = DistilledSet.load(out / 'distilled')
    return {'images': dset.images, 'lr': dset.lr}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _leftovers(out: Path) -> List[str]:
    """Temporary files of atomic writes still on disk after the resumed run."""
    from timm_dd.io import OLD_PREFIX, TMP_PREFIX
    return sorted(str(p.relative_to(out)) for p in out.rglob('.*') if p.name.startswith((TMP_PREFIX, OLD_PREFIX)))


def run_kind(kind: str, root: Path, kills: int, rng: random.Random) -> Dict[str, Any]:
    ref_dir = root / kind / 'ref'
    script, argv = _commands(kind, ref_dir)
    counts_file = root / f'{kind}.counts.json'
    rc, sig = _fork(script, argv, counts_file=counts_file)
    if rc != 0:
        return {'kind': kind, 'ok': False, 'error': f'reference run failed: rc={rc} signal={sig}'}
    counts = json.loads(counts_file.read_text())
    reference = _outputs(kind, ref_dir / 'out')
    cases = []
    available = [p for p in POINTS if counts[p] > 0]
    for i in range(kills):
        point = available[i % len(available)] if i < len(available) else rng.choice(available)
        n = rng.randint(1, counts[point])
        work = root / kind / f'kill{i}'
        _, argv = _commands(kind, work)
        write_user_files(work / 'out')
        rc, sig = _fork(script, argv, kill=(point, n))
        killed = sig == signal.SIGKILL
        # experts always keep finished experts: the same command continues; the others take --resume
        rc2, sig2 = _fork(script, argv if kind == 'experts' else argv + ['--resume'])
        case = {'point': point, 'n': n, 'of': counts[point], 'killed': killed, 'resume_rc': rc2}
        if rc2 == 0:
            try:
                case['equal'] = _equal(_outputs(kind, work / 'out'), reference)
            except Exception as e:  # noqa: BLE001 - a file the resumed run left unreadable
                case['equal'], case['error'] = False, repr(e)
            case['leftovers'] = _leftovers(work / 'out')
            case['user_files_changed'] = changed_user_files(work / 'out')
        case['ok'] = (killed and rc2 == 0 and case.get('equal', False) and not case.get('leftovers')
                      and not case.get('user_files_changed'))
        cases.append(case)
    return {'kind': kind, 'counts': counts, 'cases': cases, 'ok': all(c['ok'] for c in cases)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--kinds', nargs='+', default=['train', 'experts', 'mtt', 'att', 'dm'])
    p.add_argument('--kills', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--output', type=Path, required=True)
    p.add_argument('--work', type=Path, default=None, help='keep the run folders here (default: a temporary folder)')
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    os.environ.setdefault('TIMM_DD_CACHE', str(Path(tempfile.gettempdir()) / 'timm_dd_crash_cache'))
    with tempfile.TemporaryDirectory(prefix='crash_') as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        kinds = list(args.kinds)
        if any(k in kinds for k in ('mtt', 'att')) and 'experts' not in kinds:  # they read its reference experts
            kinds.insert(0, 'experts')
        results = []
        for kind in kinds:
            res = run_kind(kind, root, args.kills, rng)
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != 'cases'}),
                  *[json.dumps(c) for c in res.get('cases', []) if not c['ok']], sep='\n', flush=True)
        args.output.write_text(json.dumps({'seed': args.seed, 'kills': args.kills, 'results': results}, indent=2))
    return 0 if all(r['ok'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
