"""What a researcher shows: the results table (one renderer for one run and for merged runs), the result figures
and the distilled-image grid."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from timm_dd.distilled import DistilledSet, save_grid
from timm_dd.distilled.grid import class_grid_image, make_class_grid
from timm_dd.train import experiment, report
from timm_dd.train.plots import write_report
from timm_dd.train.report import data_label, format_table, merge_results

REAL = dict(kind='real', dataset='digits', ipc=10, seed=0, image_space='normalized',
            description='10 real images per class of digits (seed 0, normalized space)')
ATT = dict(kind='distilled', method='ATT', ipc=10, source_dataset='digits', image_space='normalized',
           path='output/demo/att/distilled', description='ATT digits ipc 10 (output/demo/att/distilled)')


def _result(recipe, data, accs, teacher=None):
    """A results.json as train.py writes it: ``accs`` maps network -> final accuracy per seed."""
    import statistics
    runs, table = [], []
    tmean = statistics.fmean(teacher) if teacher else None
    for model, values in accs.items():
        for seed, acc in enumerate(values):
            runs.append(dict(model=model, seed=seed, final_acc=acc, best_acc=acc + 0.01))
        mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
        table.append(dict(model=model, runs=len(values), final_mean=mean, final_std=std, best_mean=mean + 0.01,
                          best_std=std, gap_to_teacher=mean - tmean if teacher else None, images_per_second=900.0))
    teacher_runs = [dict(model='convnet3', seed=s, final_acc=a) for s, a in enumerate(teacher or [])]
    config = dict(recipe=recipe, epochs=40, opt='lion' if recipe == 'dpkd' else 'momentum', lr_schedule='periodic',
                  drop_path=recipe == 'dpkd', kd=recipe == 'dpkd', dsa=True, dsa_k=2, elf=False)
    return dict(runs=runs, teacher_runs=teacher_runs, table=table, config=config, data=data)


def _demo_folders(tmp_path, seeds=1):
    def accs(*values):
        return [v + 0.01 * s for v in values for s in range(seeds)]
    results = {
        'real-baseline': _result('baseline', REAL, {'convnet3': accs(0.70), 'resnet18_dd': accs(0.55)}),
        'real-dpkd': _result('dpkd', REAL, {'resnet18_dd': accs(0.61)}, teacher=accs(0.705)),
        'att-baseline': _result('baseline', ATT, {'convnet3': accs(0.74), 'resnet18_dd': accs(0.58)}),
        'att-dpkd': _result('dpkd', ATT, {'resnet18_dd': accs(0.66)}, teacher=accs(0.73)),
    }
    dirs = []
    for name, result in results.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / 'results.json').write_text(json.dumps(result))
        dirs.append(tmp_path / name)
    return dirs


def _table_rows(text):
    return [[c.strip() for c in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('|') and not line.startswith('|---')]


def test_one_renderer_for_a_run_and_for_merged_runs():
    assert experiment.format_table is report.format_table  # train.py's results.md and the merge share it
    one = format_table(_result('dpkd', REAL, {'resnet18_dd': [0.61]}, teacher=[0.705]))
    header, *rows = _table_rows(one)
    assert header[:3] == ['recipe', 'data', 'network'] and header[-1] == 'train img/s'
    assert rows == [['dpkd', '10 real/class digits', 'teacher convnet3', '1', '70.50', '-', '-', '-', '-'],
                    ['dpkd', '10 real/class digits', 'resnet18_dd', '1', '61.00', '-', '62.00', '-9.50', '900']]
    assert '±' not in one  # a single seed prints its value, not "± 0.00"
    assert one.startswith('Recipe `dpkd` on 10 real images per class of digits')
    several = format_table(_result('dpkd', REAL, {'resnet18_dd': [0.60, 0.62, 0.64]}, teacher=[0.70, 0.72, 0.74]))
    rows = _table_rows(several)[1:]
    assert rows[0][3:5] == ['3', '72.00 ± 2.00'] and rows[1][3:7] == ['3', '62.00 ± 2.00', '-', '63.00 ± 2.00']


def test_merged_table_has_a_data_column(tmp_path):
    text = merge_results(_demo_folders(tmp_path))
    header, *rows = _table_rows(text)
    assert header[1] == 'data'
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ('baseline', '10 real/class digits', 'convnet3'), ('baseline', '10 real/class digits', 'resnet18_dd'),
        ('dpkd', '10 real/class digits', 'teacher convnet3'), ('dpkd', '10 real/class digits', 'resnet18_dd'),
        ('baseline', 'att distilled ipc 10', 'convnet3'), ('baseline', 'att distilled ipc 10', 'resnet18_dd'),
        ('dpkd', 'att distilled ipc 10', 'teacher convnet3'), ('dpkd', 'att distilled ipc 10', 'resnet18_dd')]
    assert len({tuple(r[:3]) for r in rows}) == len(rows)  # no row looks like another any more
    assert '±' not in text and text.count('- Recipe `') == 4
    three = tmp_path / 'three'
    three.mkdir()
    assert '±' in merge_results(_demo_folders(three, seeds=3))  # several seeds: mean ± std
    with pytest.raises(FileNotFoundError, match='no results.json'):
        merge_results([tmp_path])


def test_data_labels():
    assert data_label(REAL) == '10 real/class digits' and data_label(ATT) == 'att distilled ipc 10'
    assert data_label(dict(REAL, ipc=-1, dataset='/data/cifar10-jpeg/train.zip')) == 'all real cifar10-jpeg'
    assert data_label(dict(REAL, dataset='cifar10', image_space='zca')) == '10 real/class cifar10 (zca)'
    assert data_label({'description': 'something older'}) == 'something older'


def _png(path):
    img = Image.open(path)
    assert img.format == 'PNG'
    return np.asarray(img.convert('RGB'))


def _has_colour(arr, hex_colour, min_pixels=200):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(arr.astype(int) - rgb).sum(-1) < 12).sum()) >= min_pixels


def _long_dark_rows(arr, fraction=0.1):
    return int(((arr < 80).all(-1).sum(1) > fraction * arr.shape[1]).sum())


def test_results_and_comparison_figures(tmp_path):
    pytest.importorskip('matplotlib')
    from timm_dd.train.plots import _COLORS, plot_comparison, plot_results
    dirs = _demo_folders(tmp_path)
    single = _png(plot_results(report.load_results(dirs[1]), tmp_path / 'results.png'))
    h, w, _ = single.shape
    assert 250 <= h <= 600 and 300 <= w <= 1200
    assert _has_colour(single, _COLORS[0]) and not _has_colour(single, _COLORS[1])  # one recipe: one colour
    side = _png(plot_results([report.load_results(d) for d in dirs[:2]], tmp_path / 'side.png'))
    assert _has_colour(side, _COLORS[0]) and _has_colour(side, _COLORS[1])  # baseline and dpkd side by side
    both = _png(plot_comparison(dirs, tmp_path / 'comparison.png'))
    assert both.shape[1] > side.shape[1] and 250 <= both.shape[0] <= 600 and both.shape[1] <= 2000  # two panels
    assert _has_colour(both, _COLORS[0]) and _has_colour(both, _COLORS[1])
    # the teachers' lines: more long dark pixel rows than the same figure without teachers (axes only)
    no_teacher = _png(plot_comparison([dirs[0], dirs[2]], tmp_path / 'baseline-only.png'))
    assert _long_dark_rows(both) >= _long_dark_rows(no_teacher) + 2
    text = write_report(dirs, tmp_path / 'out' / 'summary.md', tmp_path / 'out' / 'comparison.png')
    assert (tmp_path / 'out' / 'summary.md').read_text() == text and '![recipes per network](comparison.png)' in text
    assert _png(tmp_path / 'out' / 'comparison.png').shape == both.shape


# ---------------------------------------------------------------------------------------------------------------
# the distilled-image grid

K, IPC, C, H, W = 3, 4, 3, 8, 8


def _set(images=None, names=('cat', 'dog', 'ship')):
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(K * IPC, C, H, W, generator=gen)
    images = (pixels - 0.5) / 0.25 if images is None else images
    return DistilledSet(images=images, labels=torch.arange(K).repeat_interleave(IPC), method='ATT',
                        source_dataset='toy', class_names=list(names), ipc=IPC, image_space='normalized',
                        normalization={'mean': [0.5] * 3, 'std': [0.25] * 3}), pixels


def _upscaled(pixels, scale):
    x = pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_grid_upscales_labels_rows_and_shows_the_real_images_beside(tmp_path):
    dset, pixels = _set()
    real_pixels = torch.rand(K * IPC, C, H, W, generator=torch.Generator().manual_seed(1))
    real = (real_pixels - 0.5) / 0.25  # in the set's image space, as the distillation's starting images
    image, layout = class_grid_image(dset, real=real)
    assert layout.scale == 8 and layout.cell == (64, 64)  # 8 px images drawn at 64 px (nearest)
    assert layout.panels == ['real images it started from', 'ATT distilled']
    assert layout.rows == ['cat', 'dog', 'ship'] and layout.cols == IPC
    arr = np.array(image)
    for panel, source in ((0, real_pixels), (1, pixels)):
        for row in range(K):
            for col in range(IPC):
                left, top = layout.origins[(panel, row, col)]
                cell = arr[top:top + 64, left:left + 64]
                assert np.abs(cell.astype(int) - _upscaled(source[row * IPC + col], 8)).max() <= 1
    # the class names are drawn left of the rows (dark ink there), the panels side by side, distilled on the right
    first_left = layout.origins[(0, 0, 0)][0]
    for row in range(K):
        top = layout.origins[(0, row, 0)][1]
        assert (arr[top:top + 64, :first_left - 2] < 100).any()
    assert layout.origins[(1, 0, 0)][0] > layout.origins[(0, 0, IPC - 1)][0] + 64
    path = save_grid(dset, tmp_path / 'grid.png', real=real, max_per_class=2, classes=[2, 0])
    img = Image.open(path)
    _, small = class_grid_image(dset, real=real, max_per_class=2, classes=[2, 0])
    assert small.rows == ['ship', 'cat'] and small.cols == 2
    right = max(x for x, _ in small.origins.values()) + 64
    bottom = max(y for _, y in small.origins.values()) + 64
    assert right < img.size[0] <= right + 10 and bottom < img.size[1] <= bottom + 10
    # a real panel from another set with the same classes; shapes that do not fit are refused
    other, _ = _set()
    assert class_grid_image(dset, real=other)[1].panels[0] == 'real images it started from'
    with pytest.raises(ValueError, match='shape'):
        class_grid_image(dset, real=real[:5])


def test_grid_without_labels_is_the_bare_tensor_grid(tmp_path):
    dset, _ = _set()
    image, layout = class_grid_image(dset, labels=False, scale=2)
    bare = make_class_grid(dset, scale=2)
    assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1),
                       bare.mul(255).add(0.5).clamp(0, 255).to(torch.uint8))
    assert layout.origins[(0, 1, 0)] == (2, 2 + 16 + 2)


def test_short_runs_carry_a_note_into_the_table():
    from timm_dd.train.config import load_config, short_run_note
    full = load_config('baseline')
    assert short_run_note(full) is None and short_run_note(full.replace(epochs=full.epochs // 2 + 1)) is None
    note = short_run_note(full.replace(epochs=30))
    assert f"30 epochs of the {full.epochs} of recipe baseline's published protocol (3%)" in note
    assert 'not comparable' in note and '--recompute-bn' in note
    assert '--recompute-bn' not in short_run_note(full.replace(epochs=30, recompute_bn=True))  # advice already taken
    assert 'trains 1 epoch of the 1001 of recipe' in short_run_note(full.replace(epochs=1))  # one epoch, singular
    assert '(0.2%)' in short_run_note(full.replace(epochs=2))
    assert short_run_note(full.replace(recipe='my-own', epochs=3)) is None  # no shipped protocol to compare with
    result = dict(_result('baseline', REAL, {'resnet18_dd': [0.3]}), notes=[note])
    result['runs'][0]['train_acc'] = 0.55
    text = format_table(result)
    assert f'> **Note:** {note}' in text
    assert _table_rows(text)[1][5] == '55.00'  # the training set in eval mode, beside the test accuracy
