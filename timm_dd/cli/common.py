"""The command-line convention shared by ``timm-dd-train`` (``train.py``) and ``timm-dd-distill`` (``distill.py``).

Only this layer parses arguments and prints. Every command understands:

=====================  ==============================================================================================
``-c/--config``        a named config shipped with the package, a YAML file, or the ``args.yaml`` a run wrote;
                       read first, its values become the defaults (timm's two-pass ``-c``); flags win
``--output``           the output folder
``--dataset``          the real dataset: a name (``cifar10``, ``imagewoof``, ``digits``), an ImageFolder folder, a
                       zip, a folder of parquet files or ``hf://datasets/<owner>/<name>``
``--data``             a distilled set: a folder or a Hub dataset id (train only)
``--seed``/``--seeds`` one seed / several seeds
``--set key=value``    any config field, typed by the field (``1e-5`` is a float); repeatable
``--log-level``        DEBUG, INFO, WARNING, ...
``--log-with``         Accelerate trackers: ``tensorboard``, ``wandb``, ``all`` (the JSONL metrics are always written)
``--cpu``              run on the CPU even if a GPU is present
=====================  ==============================================================================================

Old spellings keep working for this release with a deprecation warning (see :data:`DEPRECATED_FLAGS`).
"""
import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from accelerate import Accelerator

from ..configs import parse_yaml, read_config
from ..distill.state import DistillationDiverged
from ..hub import HubError
from ..io import FolderInUseError, FolderLock, atomic_write
from ..launch import exit_with_launcher

__all__ = ['add_common_args', 'parse_set', 'read_cli_config', 'apply_deprecations', 'report_user_error',
           'DEPRECATED_FLAGS', 'setup_logging', 'run_command', 'EXIT_OK', 'EXIT_RUN_FAILED', 'EXIT_USER_ERROR',
           'EXIT_INTERRUPTED', 'TIMM_FLAGS', 'command_run']

#: the exit statuses of both commands (the README's table "Exit statuses" lists them)
EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run started and failed on its own: training or distillation diverged (non-finite loss)
EXIT_USER_ERROR = 2  # something to fix before running again: a flag, a value, a file, the Hub, the disk, a busy folder
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it): what was checkpointed is kept

#: old flag -> (new flag, note); rewritten before parsing, with a FutureWarning
DEPRECATED_FLAGS: Dict[str, Tuple[str, str]] = {
    '--out': ('--output', ''),
    '--drop-path': ('--keep-rate-schedule', '--drop-path is a rate in timm'),
    '--no-drop-path': ('--no-keep-rate-schedule', '--drop-path is a rate in timm'),
    '--verbose': ('--log-level=DEBUG', ''),
    '-v': ('--log-level=DEBUG', ''),
}


#: flags a timm user reaches for: those with the same meaning are rewritten (with a note), the others answered with
#: the timm_dd spelling (one error line) rather than argparse's "unrecognized arguments"
TIMM_FLAGS: Dict[str, Tuple[Optional[str], str]] = {
    '--data-dir': ('--data-root', 'the folder holding the dataset, as in timm'),
    '--amp': ('--mixed-precision=fp16', "timm's default AMP dtype"),
    '--sched': (None, 'the lr schedule is a recipe field here: --set lr_schedule=periodic|periodic_decay|cosine|'
                      'multistep|quarter_cosine|constant (each recipe sets the one its paper used)'),
    '--workers': (None, 'the data are tensors on the device here, with no loader workers; several runs at once: '
                        '--parallel runs (or `accelerate launch --num_processes K`)'),
    '-j': (None, 'the data are tensors on the device here, with no loader workers; several runs at once: '
                 '--parallel runs'),
    '--num-classes': (None, 'the number of classes comes from the data (--data or --dataset)'),
}
#: deprecated flags whose old form took a value that the new one does not: value -> the new flag
_VALUE_FLAGS: Dict[str, Callable[[str], str]] = {
    '--drop-path': lambda rate: '--keep-rate-schedule' if float(rate) > 0 else '--no-keep-rate-schedule',
}


def apply_deprecations(argv: Sequence[str], extra: Optional[Dict[str, Tuple[str, str]]] = None,
                       timm_flags: bool = False) -> List[str]:
    """``argv`` with deprecated flag spellings replaced by the current ones (each warned about once); with
    ``timm_flags`` also timm's spellings (:data:`TIMM_FLAGS`): rewritten where the meaning is the same, else a
    ``ValueError`` giving the timm_dd way."""
    table = dict(DEPRECATED_FLAGS, **(extra or {}))
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition('=')
        if timm_flags and flag in TIMM_FLAGS:
            new, note = TIMM_FLAGS[flag]
            if new is None:
                raise ValueError(f'{flag} is a timm flag with no counterpart here: {note}')
            warnings.warn(f'{flag} is read as {new} ({note})', UserWarning, stacklevel=2)
            out.append(new + (eq + value if eq else ''))
        elif flag in _VALUE_FLAGS and (eq or (args and not args[0].startswith('-'))):
            rate = value if eq else args.pop(0)
            try:
                new = _VALUE_FLAGS[flag](rate)
            except ValueError:
                raise ValueError(f'{flag} {rate}: expected a number (a drop-path rate)') from None
            warnings.warn(f'{flag} {rate} is deprecated ({table[flag][1]}); read as {new}', FutureWarning,
                          stacklevel=2)
            out.append(new)
        elif flag in table:
            new, note = table[flag]
            warnings.warn(f'{flag} is deprecated{" (" + note + ")" if note else ""}; use {new.split("=")[0]}',
                          FutureWarning, stacklevel=2)
            out.append(new + (eq + value if eq else ''))
        else:
            out.append(arg)
    return out


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one line, without the source line of ours under them."""
    return f'{category.__name__}: {message}\n'


def add_common_args(parser: argparse.ArgumentParser, seeds: bool = True) -> None:
    """Flags every command has, with one meaning."""
    parser.add_argument('-c', '--config', default=None, metavar='NAME|YAML',
                        help='a shipped config name, a YAML file, or the args.yaml of an earlier run (repeats it)')
    parser.add_argument('--output', default=None, help='output folder')
    parser.add_argument('--dataset', default=None, help='real dataset: cifar10, cifar100, imagenet64, imagewoof, '
                        '..., digits, a folder / zip / parquet folder, or hf://datasets/<owner>/<name>')
    if seeds:
        group = parser.add_mutually_exclusive_group()
        group.add_argument('--seeds', nargs='+', type=int, default=None, help='seeds (one run per seed)')
        group.add_argument('--seed', type=int, default=None, help='one seed')
    else:
        parser.add_argument('--seed', type=int, default=None, help='seed')
    parser.add_argument('--set', dest='overrides', action='extend', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override any config field, typed by the field (repeatable)')
    parser.add_argument('--log-level', default='INFO', help='logging level (DEBUG, INFO, WARNING)')
    parser.add_argument('--log-with', default=None, choices=['tensorboard', 'wandb', 'all'],
                        help="Accelerate trackers (metrics go to <output>/trackers; JSONL metrics are always kept)")
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is present')


def parse_set(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``['lr=1e-5', 'dsa=false']`` -> ``{'lr': '1e-5', 'dsa': False}``: YAML values; the config types them."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--set expects key=value, got {item!r}')
        key, raw = item.split('=', 1)
        out[key.strip().replace('-', '_')] = parse_yaml(raw, f'--set {item}',
                                                        hint='; quote strings, write lists as [1, 2]')
    return out


def read_cli_config(parser: argparse.ArgumentParser, argv: Sequence[str], kind: str,
                    config_fields: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The first pass of timm's two-pass ``-c``: ``(flag defaults, config values)`` from ``-c``.

    A YAML's keys that are config fields (``config_fields``) are config values; its other keys that are flags of
    ``parser`` (``models``, ``seeds``, ``data``, ...) become the flags' defaults. The ``args.yaml`` of a run holds
    its flags plus the fully resolved config under ``config_resolved``, so passing it back repeats the run.
    """
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument('-c', '--config', '--preset', dest='config', default=None)
    known, _ = first.parse_known_args(argv)
    if known.config is None:
        return {}, {}
    values = read_config(kind, known.config)
    dests = {a.dest for a in parser._actions}
    resolved = values.pop('config_resolved', None)
    fields = set(config_fields)
    if isinstance(resolved, dict):  # an args.yaml: every recorded flag, and the config they resolved to
        flags = {k: v for k, v in values.items() if k in dests and k not in ('config', 'help', 'overrides')}
        return flags, dict(resolved)
    flags = {k: v for k, v in values.items() if k in dests and k not in fields and k not in ('config', 'help')}
    config = {k: v for k, v in values.items() if k not in flags}
    return flags, config


def setup_logging(level: str, main_process: bool = True) -> None:
    logging.basicConfig(level=level.upper() if main_process else 'WARNING',
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    for noisy in ('accelerate', 'matplotlib', 'httpx', 'httpx2', 'httpcore', 'httpcore2', 'PIL'):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def report_user_error(err: Any) -> int:
    """One line on stderr for an error the user can fix; the exit status."""
    print(f'error: {err}', file=sys.stderr)
    return EXIT_USER_ERROR


def run_command(body: Callable[[], int], resume_hint: str = 'run the same command with --resume') -> int:
    """``body()`` with every failure as one ``error:`` line and the exit status of the table above: a
    diverged run (1), an error the user can fix (2), Ctrl-C (130, saying how to continue)."""
    warnings.formatwarning = _one_line_warning
    try:
        return body()
    except KeyboardInterrupt as e:
        detail = f' {e}' if str(e) else ''
        print(f'error: interrupted{detail}; {resume_hint} to continue from the last checkpoint', file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DistillationDiverged, FloatingPointError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_RUN_FAILED
    except (ValueError, FileNotFoundError, FolderInUseError, HubError, OSError) as e:
        return report_user_error(e)


@contextlib.contextmanager
def command_run(args: argparse.Namespace, out_dir: Path, record: Dict[str, Any], config: Dict[str, Any],
                project: str, args_file: str = 'args.yaml', mixed_precision: Optional[str] = None) -> Iterator[Any]:
    """One command's run, the same for both commands: the launcher check, the ``Accelerator`` (device, precision,
    ``--log-with`` trackers under ``<output>/trackers``), logging (warnings only on the other processes), the output
    folder's lock, ``args_file`` (``record`` with the resolved ``config``: ``-c`` it to repeat the run), the
    trackers' config; the trackers are closed at the end. Yields the accelerator."""
    exit_with_launcher()
    tracking = {}
    if args.log_with:
        tracking = dict(log_with='all' if args.log_with == 'all' else [args.log_with],
                        project_dir=str(out_dir / 'trackers'))
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=mixed_precision, **tracking)
    setup_logging(args.log_level, accelerator.is_main_process)
    try:
        with FolderLock(out_dir) if accelerator.is_main_process else contextlib.nullcontext():
            if accelerator.is_main_process:
                with atomic_write(out_dir / args_file, 'w') as f:
                    yaml.safe_dump(dict(record, config_resolved=config), f, sort_keys=False)
            if args.log_with:  # TensorBoard's hparams take scalars and strings only
                accelerator.init_trackers(project, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                           for k, v in config.items()})
            yield accelerator
    finally:
        accelerator.end_training()
