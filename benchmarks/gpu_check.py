"""One prepared GPU check: MTT iteration cost vs the official loop, expert / dpkd epoch cost, a short real run.

Sections (each under its own time limit; the whole run under ``--budget`` seconds, default 420 on a GPU):

1. ``mtt``: MTT on CIFAR-10 IPC 10 as published -- ConvNet-3 (``convnet3``, width 128), ZCA, ``syn_steps`` 30, all
   100 images every inner step, DSA on. Seconds per iteration and peak memory for ``grad_mode`` ``unrolled`` and
   ``recompute`` in strict fp32 (TF32 off for matmuls and convolutions), and ``recompute`` with speed options
   (the inner step's gradient through ``torch.compile``, i.e. ``--set compile=true``; TF32 = ``allow_tf32`` on for
   matmul and cuDNN, i.e. matmul precision 'high'; channels_last images); each option
   is kept only when its meta-gradient differs from the fp32 one by < 1e-3 (relative L2, images and step size),
   and the fastest kept variant is the ``recompute+speed`` row. With ``--official PATH`` (a checkout of
   GeorgeCazenavette/mtt-distillation, imported at run time by ``benchmarks/official_mtt.py``) the official inner
   loop runs on the same images, start/target parameters and machine (strict fp32, and PyTorch's defaults, which
   is how the official script runs), and ratios timm_dd / official are reported; also the relative difference
   between the official gradient and timm_dd's ``unrolled`` one on the same batches without DSA, in float64.
   The start point is a fresh initialization and the target a 1e-3 perturbation of it (the cost does not depend
   on the expert).
2. ``experts``: seconds per epoch of expert training on the CIFAR-10 training set
   (``timm_dd.distill.experts.train_expert`` with the preset's ``ExpertConfig``: batch 256, DSA, SGD lr 0.01).
3. ``dpkd``: seconds per epoch of the ``dpkd`` recipe (Lion, DropPath schedule, 2-fold DSA, KD from a ConvNet-3
   teacher; the teacher is untrained here since only the cost is measured) on ``resnet18_dd`` and 100 images.
4. ``scale``: the published-scale rows on synthetic data: one ImageNet-1K-shaped MTT iteration (64x64, 1000 classes,
   ConvNet-4, IPC 1 and 10, minibatches of 100 synthetic images as TESLA, the exact gradient under
   ``graph_budget='auto'``) and one Tiny-ImageNet-shaped expert epoch (100,000 images, 200 classes).
5. ``real``: a short real run with the library's end-to-end functions (``get_preset('cifar10-ipc10-mtt')``,
   ``load_distillation_data``, ``run_experts``, ``run_distill``): a few experts with fewer epochs than published,
   then as many MTT iterations at IPC 10 as the remaining time allows (capped by ``--max-iterations``), then
   ConvNet-3 test
   accuracy of the result against 10 random real images per class (same training recipe, ``baseline``). The
   settings actually used are written to the output.

Code: this file (arguments, the report, the run), ``_gpu_common.py`` (sizes, budget, memory probes, timing,
data) and ``_gpu_sections.py`` (the four sections).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``peak_mb``) and that minus
the memory allocated at the reset (``growth_mb``: what one iteration needs); on CPU the process peak RSS (VmHWM after
a ``/proc/self/clear_refs`` reset) instead. Times are the best of the timed repeats after a warm-up iteration,
with ``torch.cuda.synchronize`` around them.

Usage::

    # GPU (one H100/H200, < 8 min; data: the CIFAR-10 JPEG copy, see --data)
    python benchmarks/gpu_check.py --official carry/mtt-distillation [--out FILE]
    # CPU smoke test (< 2 min; tiny sizes, digits and random data; what tests/test_gpu_check.py runs)
    python benchmarks/gpu_check.py --smoke [--out FILE] [--official carry/mtt-distillation]
    # the full run's code path (CIFAR-10 copy, ZCA, real images) at tiny sizes on a CPU (~1.5 min on 2 cores)
    python benchmarks/gpu_check.py --quick --official carry/mtt-distillation --out /tmp/quick.json

On this project's device machine (the repository travels, ``../shared`` does not)::

    mkdir -p carry && cp -r ../shared/data/cifar10-jpeg carry/      # once; carry/ is git-ignored
    run(command='PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --official carry/mtt-distillation '
                '--data carry/cifar10-jpeg --out $OUT/gpu_check.json',
        carry=['carry/mtt-distillation', 'carry/cifar10-jpeg'], timeout_s=570)

(``carry/mtt-distillation``: ``git clone https://github.com/GeorgeCazenavette/mtt-distillation`` there, or an
exported snapshot with a ``COMMIT`` file naming its commit. The official code is imported at run time, never
copied into this repository.) Lower ``--budget`` (seconds, default 420) to leave more room; the real run adapts its
expert epochs, iteration count and evaluation epochs to the time left and states them.

The JSON goes to ``--out`` (default ``benchmarks/results/gpu_check.json``, smoke:
``benchmarks/results/gpu_check_smoke.json``); the markdown table is printed and written next to it (``.md``).
Exit status 0 when every section ran (sections skipped for lack of time or data, or official rows skipped for lack
of a checkout, count as ran), 1 when a section failed (its error is in the JSON), 2 for bad arguments.
"""
import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / 'benchmarks'))  # official_mtt, _memory

os.environ.setdefault('TQDM_DISABLE', '1')  # the library's progress bars would flood a captured log (before tqdm)
import torch  # noqa: E402

warnings.filterwarnings('ignore', message='torch.meshgrid')  # official DiffAugment


from _gpu_common import (  # noqa: E402
    DATA_CANDIDATES, GRAD_TOL, Clock, PeakMemory, find_data, full_settings, is_finite, json_safe, load_data,
    precision, quick_settings, smoke_settings,
)
from _gpu_sections import section_dpkd, section_experts, section_mtt, section_real, section_scale  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# report


def _fmt(x: Any, spec: str = '.3f') -> str:
    return format(x, spec) if is_finite(x) else '-'


def markdown(result: Dict[str, Any]) -> str:
    sec = result['sections']
    lines = [f"## gpu_check ({result['mode']}): {result['env']['device_name']}, torch {result['env']['torch']}", '']
    mtt = sec.get('mtt', {})
    if 'rows' in mtt:
        st = mtt['setting']
        lines += [f"MTT iteration: {st['model']}; {st['images']}; N = {st['syn_steps']}; DSA {st['dsa']}", '',
                  '| row | s / iteration | peak MB | growth MB | time vs official fp32 | growth vs official fp32 | '
                  'grad rel. diff vs fp32 |', '| --- | --- | --- | --- | --- | --- | --- |']
        ratios = mtt.get('ratios_vs_official_fp32', {})
        for r in mtt['rows'] + mtt.get('official', {}).get('rows', []):
            if 'skipped' in r:
                lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | | | |")
                continue
            rr = ratios.get(r['row'], {})
            diff = r.get('grad_rel_diff')
            lines.append(f"| {r['row']}{' (' + r['chosen'] + ')' if 'chosen' in r else ''} | {_fmt(r['seconds'])} | "
                         f"{_fmt(r['peak_mb'], '.1f')} | {_fmt(r['growth_mb'], '.1f')} | "
                         f"{_fmt(rr.get('time'), '.2f')} | {_fmt(rr.get('growth'), '.2f')} | "
                         f"{_fmt(max(diff.values()), '.1e') if diff else '-'} |")
        for r in mtt.get('speed_variants', []):
            if 'skipped' in r:
                lines.append(f"| ({r['row']}) | skipped: {r['skipped']} | | | | | |")
            else:
                lines.append(f"| ({r['row']}) | {_fmt(r['seconds'])} | {_fmt(r['peak_mb'], '.1f')} | "
                             f"{_fmt(r['growth_mb'], '.1f')} | | | {_fmt(max(r['grad_rel_diff'].values()), '.1e')}"
                             f"{'' if r['grad_ok'] else ' (over ' + str(GRAD_TOL) + ')'} |")
        off = mtt.get('official', {})
        if 'skipped' in off:
            lines += ['', f"Official rows skipped: {off['skipped']}"]
        elif 'error' in off:
            lines += ['', f"Official rows failed: {off['error']}"]
        elif 'exact_vs_timm_dd_unrolled' in off:
            e = off['exact_vs_timm_dd_unrolled']
            lines += ['', f"Official vs timm_dd unrolled, same batches, no DSA, {e['dtype']}, {e['steps']} steps: "
                          f"relative difference images {e['images']:.1e}, lr {e['lr']:.1e}"]
        c = mtt['grad_checks']['unrolled_vs_recompute_fp32']
        lines.append(f"unrolled vs recompute (fp32, same plan): images {c['images']:.1e}, lr {c['lr']:.1e}; "
                     f"speed choice: {mtt.get('speed_choice')}")
        lines.append('')
    lines += ['| section | setting | s / epoch | peak MB |', '| --- | --- | --- | --- |']
    for name in ('experts', 'dpkd'):
        r = sec.get(name, {})
        if 'seconds_per_epoch' in r:
            st = r['setting']
            desc = (f"{st.get('arch', st.get('model'))}, {st['data']}, {st['epochs_timed']} epochs timed")
            lines.append(f"| {name} | {desc} | {_fmt(r['seconds_per_epoch'])} | {_fmt(r['peak_mb'], '.1f')} |")
        else:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error', 'not run')} | | |")
    scale = sec.get('scale', {})
    if 'distill_rows' in scale:
        lines += ['', f"Published scale, {scale['setting']['distill']}:", '',
                  '| IPC | images | graphs kept | step graph MB | s / iteration | peak MB |',
                  '| --- | --- | --- | --- | --- | --- |']
        for r in scale['distill_rows']:
            lines.append(f"| {r['ipc']} | skipped: {r['skipped']} | | | | |" if 'skipped' in r else
                         f"| {r['ipc']} | {r['images']:,} | {r['graph_steps_kept']} | "
                         f"{_fmt(r['step_graph_mb'], '.1f')} | {_fmt(r['seconds'])} | {_fmt(r['peak_mb'], '.1f')} |")
        lines += ['', f"Tiny-ImageNet-shaped expert epoch ({scale['setting']['experts']}): "
                      f"{_fmt(scale['expert_seconds_per_epoch'], '.1f')} s, "
                      f"peak {_fmt(scale['expert_peak_mb'], '.0f')} MB"]
    elif scale:
        lines += ['', f"Published scale: {scale.get('skipped') or scale.get('error')}"]
    real = sec.get('real', {})
    lines.append('')
    if 'distilled_acc_mean' in real:
        st = real['settings']
        lines += [f"Short real run ({st['preset']}, IPC {st['ipc']}, N {st['syn_steps']}, {st['iterations']} "
                  f"iterations, {st['grad_mode']}, distilled on {st['distill_device']}; {'; '.join(real['notes'])}):",
                  '', '| training set | ConvNet-3 test acc (mean) | seeds | eval epochs |', '| --- | --- | --- | --- |',
                  f"| distilled (learned lr {real['learned_lr']:.4g}) | {100 * real['distilled_acc_mean']:.2f}% | "
                  f"{st['eval_seeds']} | {st['eval_epochs']} |",
                  f"| {st['ipc']} random real images per class (lr {st['real_baseline_lr']}) | "
                  f"{100 * real['real_acc_mean']:.2f}% | {st['eval_seeds']} | {st['eval_epochs']} |"]
    else:
        lines.append(f"Short real run: {real.get('skipped') or real.get('error', 'not run')}")
    if result['errors']:
        lines += ['', 'Errors: ' + '; '.join(f'{k}: {v.splitlines()[-1]}' for k, v in result['errors'].items())]
    lines += ['', f"Wall time {result['wall_seconds']:.0f} s (budget {result['budget_seconds']:.0f} s)."]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------------------
# main


SECTIONS = ('mtt', 'experts', 'dpkd', 'scale', 'real')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true', help='tiny CPU-sized run (what the test suite runs)')
    parser.add_argument('--quick', action='store_true',
                        help='the full run\'s code path (CIFAR-10, ZCA) at tiny sizes, to check the script on a CPU')
    parser.add_argument('--official', default=None, help='checkout of GeorgeCazenavette/mtt-distillation')
    parser.add_argument('--data', default=None, help='CIFAR-10 JPEG copy (folder with train.zip / test.zip); '
                        'default: the first of ' + ', '.join(map(str, DATA_CANDIDATES)) + ' that exists')
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--budget', type=float, default=None, help='seconds for the whole run (default 420, smoke 100)')
    parser.add_argument('--max-iterations', type=int, default=None,
                        help='cap on the real run\'s MTT iterations (default 500, smoke 100)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--device', default=None, help='default: cuda when available, else cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: 1 in smoke mode)')
    parser.add_argument('--workdir', type=Path, default=None, help='keep expert buffers / distillation output here')
    args = parser.parse_args(argv)

    clock = Clock(args.budget if args.budget is not None else (100.0 if args.smoke else 420.0 if not args.quick
                                                                   else 600.0))
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    if args.smoke and args.quick:
        parser.error('--smoke and --quick exclude each other')
    s = smoke_settings() if args.smoke else quick_settings() if args.quick else full_settings()
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.threads or args.smoke or args.quick:
        torch.set_num_threads(args.threads or 1)
    max_iterations = args.max_iterations or (100 if args.smoke else 5 if args.quick else 500)
    out = args.out or (REPO / 'benchmarks' / 'results' / f'gpu_check{"" if s.mode == "full" else "_" + s.mode}.json')

    import accelerate
    import timm
    import timm_dd  # noqa: F401
    accelerator = accelerate.Accelerator(cpu=device.type == 'cpu', mixed_precision='no')

    env = dict(device=str(device), device_name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                                               else f'CPU ({platform.machine()}, {os.cpu_count()} cores)'),
               torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == 'cuda' else None,
               threads=torch.get_num_threads(), cudnn_benchmark=torch.backends.cudnn.benchmark,
               memory_method=PeakMemory(device).method)
    result: Dict[str, Any] = dict(benchmark='gpu_check', mode=s.mode, env=env, budget_seconds=clock.budget,
                                  sections={}, errors={}, skipped=[])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='gpu_check_'))
    workdir.mkdir(parents=True, exist_ok=True)

    def run_section(name: str, fn: Callable[[], Dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        print(f'[{clock.elapsed():6.1f} s] {name} ...', flush=True)
        try:
            res = fn()
        except Exception as e:  # one failing section must not lose the others
            res = dict(error=f'{type(e).__name__}: {e}')
            result['errors'][name] = traceback.format_exc()
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        res['section_seconds'] = time.perf_counter() - t0
        result['sections'][name] = res
        if 'skipped' in res:
            result['skipped'].append(f'{name}: {res["skipped"]}')

    # data (ZCA on the CIFAR-10 train split for the full run)
    cfg = data = None
    data_path = find_data(args.data) if not args.smoke else None

    def _data():
        nonlocal cfg, data
        cfg, data, desc = load_data(s, data_path, accelerator, device)
        return dict(description=desc, train=list(data.train.images.shape) if data is not None else None)

    run_section('data', _data)
    if cfg is None:
        from timm_dd.distill import get_preset
        cfg = get_preset(s.preset, s.overrides)

    if 'mtt' in args.sections:
        run_section('mtt', lambda: section_mtt(s, cfg, data if not args.smoke else None, device, args.official,
                                               min(s.budgets['mtt'], clock.remaining())))
    if 'skipped' in result['sections'].get('mtt', {}).get('official', {}):
        result['skipped'].append('mtt.official: ' + result['sections']['mtt']['official']['skipped'])
    if 'error' in result['sections'].get('mtt', {}).get('official', {}):
        result['errors']['mtt.official'] = result['sections']['mtt']['official']['traceback']
    if 'experts' in args.sections:
        run_section('experts', lambda: section_experts(s, cfg, data, device, accelerator,
                                                       min(s.budgets['experts'], clock.remaining())))
    if 'dpkd' in args.sections:
        run_section('dpkd', lambda: section_dpkd(s, cfg, data, device, accelerator,
                                                 min(s.budgets['dpkd'], clock.remaining())))
    if 'scale' in args.sections:
        run_section('scale', lambda: section_scale(s, device, min(s.budgets['scale'], clock.remaining())))
    if 'real' in args.sections:
        mtt_rows = {r['grad_mode']: r['seconds'] for r in result['sections'].get('mtt', {}).get('rows', [])
                    if r['row'] in ('timm_dd unrolled', 'timm_dd recompute')}
        spe = result['sections'].get('experts', {}).get('seconds_per_epoch')
        if clock.remaining() < s.eval_reserve + 10:
            result['sections']['real'] = dict(skipped=f'out of time ({clock.remaining():.0f} s left)')
            result['skipped'].append('real: out of time')
        else:
            # the real run uses TF32 when it passed the gradient check in the mtt section, else strict fp32
            # (and the compiled inner step when it was the fastest variant on a GPU); neither when the fastest
            # variant is slower than plain fp32 recompute
            mtt = result['sections'].get('mtt', {})
            choice = (mtt.get('speed_choice') or '') if mtt.get('speed_beats_fp32') else ''
            with precision('tf32' in choice):
                run_section('real', lambda: section_real(s, cfg, data, device, accelerator, clock, workdir, spe,
                                                         mtt_rows, max_iterations,
                                                         'compile' in choice and device.type == 'cuda'))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    result['wall_seconds'] = clock.elapsed()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=2, default=str, allow_nan=False) + '\n')
    md = markdown(result)
    out.with_suffix('.md').write_text(md + '\n')
    print(md)
    print(f'\nwrote {out} and {out.with_suffix(".md")}')
    return 1 if result['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
