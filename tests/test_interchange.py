"""Distilled sets made by other tools, written here with plain torch.save in each layout, read back exactly."""
import pytest
import torch
from PIL import Image

from timm_dd import DistilledSet, export_distilled, import_distilled
from timm_dd.cli import distill as distill_cli
from timm_dd.data import load_dataset
from timm_dd.data.zca import ZCA
from timm_dd.distilled.interchange import ImportFacts, detect_layout


@pytest.fixture(scope='module')
def digits():
    train = load_dataset('digits', 'train', image_size=16)
    idx = torch.cat([(train.labels == c).nonzero().flatten()[:2] for c in range(10)])  # class-major, IPC 2
    return train, idx


def _save(folder, **tensors):
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        torch.save(t, folder / name)
    return folder


def test_mtt_layout_normalized_with_learned_lr(tmp_path, digits):
    train, idx = digits
    images, labels = train.normalized()[idx] * 1.3, train.labels[idx]  # a little off the real data, as learned
    src = _save(tmp_path / 'mtt', **{'images_best.pt': images, 'labels_best.pt': labels,
                                      'lr_best.pt': torch.tensor(0.0123)})
    dset = import_distilled(src, 'mtt', dataset='digits', image_space='normalized')
    assert torch.equal(dset.images, images) and torch.equal(dset.labels, labels)
    assert dset.image_space == 'normalized'
    assert dset.normalization['mean'] == pytest.approx(list(train.normalization.mean))
    assert float(dset.lr) == pytest.approx(0.0123) and dset.ipc == 2 and dset.class_names == list(train.class_names)


def test_mtt_layout_zca_refits_the_transform(tmp_path, digits):
    train, idx = digits
    zca = ZCA.fit(train.images, eps=0.1)
    images = zca.transform(train.images[idx])
    src = _save(tmp_path / 'zca', **{'images_best.pt': images, 'labels_best.pt': train.labels[idx]})
    dset = import_distilled(src, 'mtt', dataset='digits', image_space='zca', lr=0.01)
    assert torch.equal(dset.images, images) and dset.image_space == 'zca' and dset.zca.eps == 0.1
    assert torch.allclose(dset.to_pixel_space(), train.images[idx], atol=1e-3)  # the refitted ZCA inverts them


def test_frepo_logits_and_datm_soft_labels(tmp_path, digits):
    train, idx = digits
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    src = _save(tmp_path / 'frepo', **{'images_best.pt': train.normalized()[idx], 'labels_best.pt': logits})
    dset = import_distilled(src, 'frepo', dataset='digits', image_space='normalized')
    assert torch.equal(dset.soft_labels, logits) and dset.soft_label_kind == 'logits'
    assert dset.soft_label_temperature == 0.3 and torch.equal(dset.labels, logits.argmax(1))
    datm = import_distilled(src, 'mtt', dataset='digits', image_space='normalized', soft_label_temperature=2.0)
    assert torch.equal(datm.soft_labels, logits) and datm.soft_label_temperature == 2.0
    # each layout's own temperature when none is given: DATM (mtt layout) and DD-Ranking train at 1
    assert import_distilled(src, 'mtt', dataset='digits', image_space='normalized').soft_label_temperature == 1.0
    dd = _save(tmp_path / 'dd', **{'images.pt': train.normalized()[idx], 'labels.pt': logits})
    assert import_distilled(dd, 'ddranking', dataset='digits', image_space='normalized').soft_label_temperature == 1.0


def test_ddranking_export_round_trip(tmp_path, digits):
    train, idx = digits
    dset = DistilledSet(images=train.normalized()[idx], labels=train.labels[idx], method='MTT', source_dataset='digits',
                        class_names=list(train.class_names), image_space='normalized',
                        normalization=train.normalization.normalization, lr=0.02)
    folder = export_distilled(dset, tmp_path / 'dd', layout='ddranking')
    assert sorted(p.name for p in folder.iterdir()) == ['images.pt', 'labels.pt', 'lr.pt', 'timm_dd_export.json']
    back = import_distilled(folder, 'ddranking', dataset='digits', image_space='normalized')
    assert torch.equal(back.images, dset.images) and torch.equal(back.labels, dset.labels)
    assert float(back.lr) == pytest.approx(0.02)


def test_export_keeps_the_method_space_and_label_kind(tmp_path, digits):
    """Issue "Fidelity II": an ATT set exported to DD-Ranking's layout comes back as ATT (not "DDRANKING"), in its
    space, with its probabilities read as probabilities."""
    train, idx = digits
    probs = torch.softmax(torch.randn(len(idx), 10, generator=torch.Generator().manual_seed(0)), 1)
    dset = DistilledSet(images=train.normalized()[idx], labels=train.labels[idx], method='ATT', source_dataset='digits',
                        class_names=list(train.class_names), image_space='normalized',
                        normalization=train.normalization.normalization, lr=0.02,
                        soft_labels=probs, soft_label_kind='probs')
    back = import_distilled(export_distilled(dset, tmp_path / 'dd'), 'ddranking')  # no facts needed: recorded
    assert back.method == 'ATT' and back.image_space == 'normalized' and back.source_dataset == 'digits'
    assert back.soft_label_kind == 'probs' and torch.equal(back.soft_labels, probs)
    assert import_distilled(tmp_path / 'dd', 'ddranking', method='mine').method == 'mine'  # stated facts win


def test_probabilities_declared_at_import(tmp_path, digits):
    train, idx = digits
    probs = torch.softmax(torch.randn(len(idx), 10, generator=torch.Generator().manual_seed(1)), 1)
    src = _save(tmp_path / 'p', **{'images.pt': train.normalized()[idx], 'labels.pt': probs})
    dset = import_distilled(src, 'ddranking', dataset='digits', image_space='normalized', soft_label_kind='probs')
    assert dset.soft_label_kind == 'probs' and torch.equal(dset.soft_labels, probs)
    src2 = _save(tmp_path / 'q', **{'images.pt': train.normalized()[idx], 'labels.pt': probs * 2})
    with pytest.raises(ValueError, match='sum'):
        import_distilled(src2, 'ddranking', dataset='digits', image_space='normalized', soft_label_kind='probs')


def test_train_imports_zca_sets_with_the_given_eps(tmp_path, digits):
    from timm_dd.train import prepare_data
    train, idx = digits
    zca = ZCA.fit(train.images, eps=0.5)
    src = _save(tmp_path / 'z', **{'images_best.pt': zca.transform(train.images[idx]),
                                   'labels_best.pt': train.labels[idx]})
    assert prepare_data(str(src), dataset='digits', image_space='zca', zca_eps=0.5).train.space.zca.eps == 0.5
    assert prepare_data(str(src), dataset='digits', image_space='zca').train.space.zca.eps == 0.1  # MTT's


def test_numbered_and_ema_snapshots_of_mtt_and_att_runs(tmp_path, digits):
    """Issue "Fidelity II": MTT/ATT keep numbered snapshots and ATT/FTD an EMA copy; pick one, and a folder with
    no ``images_best.pt`` says which snapshots there are."""
    train, idx = digits
    x, y = train.normalized()[idx], train.labels[idx]
    run = _save(tmp_path / 'run', **{'images_1000.pt': x * 1.1, 'labels_1000.pt': y, 'images_2000.pt': x * 1.2,
                                     'labels_2000.pt': y, 'images_zca_2000.pt': x})
    _save(run / 'ema', **{'ema_images_best.pt': x * 1.3, 'ema_labels_best.pt': y, 'ema_lr_best.pt': torch.tensor(.02)})
    facts = dict(dataset='digits', image_space='normalized', lr=0.01)
    assert torch.equal(import_distilled(run, 'mtt', iteration=2000, **facts).images, x * 1.2)
    ema = import_distilled(run, 'mtt', ema=True, dataset='digits', image_space='normalized')
    assert torch.equal(ema.images, x * 1.3) and float(ema.lr) == pytest.approx(0.02) and ema.extra['ema']
    with pytest.raises(FileNotFoundError, match=r'snapshots there: 1000, 2000 .*--iteration'):
        import_distilled(run, 'mtt', **facts)
    from timm_dd.distilled.interchange import detect_layout
    assert detect_layout(run) == 'mtt'


def test_cifar100_sets_are_normalized_as_their_tool_did(tmp_path, monkeypatch):
    """Issue "Fidelity II": MTT/ATT/DD-Ranking normalize CIFAR-100 with CIFAR-10's mean/std; their sets import with
    those statistics by default, other layouts with CIFAR-100's, and either can be stated."""
    from timm_dd.constants import CIFAR10_MEAN, CIFAR100_MEAN
    g = torch.Generator().manual_seed(0)
    for split in ('train', 'test'):  # a tiny image-folder copy of CIFAR-100: 100 classes, one image each
        for c in range(100):
            (tmp_path / 'cifar100' / split / f'c{c:02d}').mkdir(parents=True)
            pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / 'cifar100' / split / f'c{c:02d}' / 'a.png')
    monkeypatch.setenv('TIMM_DD_DATA', str(tmp_path))
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    train = load_dataset('cifar100', 'train')
    images = (train.pixels(slice(0, 100)) - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / 0.25
    src = _save(tmp_path / 'set', **{'images.pt': images, 'labels.pt': train.labels[:100]})
    facts = dict(dataset='cifar100', image_space='normalized', lr=0.01)
    assert import_distilled(src, 'ddranking', **facts).normalization['mean'] == pytest.approx(list(CIFAR10_MEAN))
    own = import_distilled(src, 'ddranking', normalization_stats='dataset', **facts)
    assert own.normalization['mean'] == pytest.approx(list(CIFAR100_MEAN))
    with pytest.raises(ValueError, match='normalization_stats'):
        import_distilled(src, 'ddranking', normalization_stats='imagenet', **facts)


def test_class_folders_named_by_integers_sort_as_numbers(tmp_path):
    from timm_dd.data.folders import class_order
    assert class_order(['0', '1', '10', '2', '11'], tmp_path) == ['0', '1', '2', '10', '11']
    assert class_order(['cat', 'dog', '10'], tmp_path) == ['10', 'cat', 'dog']  # not all numbers: ImageFolder's order
    with pytest.raises(ValueError, match=r"'01' and '1' are the same number"):
        class_order(['1', '01', '2'], tmp_path)
    for c in range(12):  # a tree read through load_dataset labels folder "10" as class 10
        (tmp_path / 'tree' / str(c)).mkdir(parents=True)
        Image.new('L', (8, 8), color=c * 20).save(tmp_path / 'tree' / str(c) / 'a.png')
    ds = load_dataset(str(tmp_path / 'tree'), 'train', use_cache=False)
    assert list(ds.class_names) == [str(c) for c in range(12)]


def test_image_folder_layout_is_pixel_space(tmp_path, digits):
    train, idx = digits
    for pos, i in enumerate(idx.tolist()):
        cls = tmp_path / 'imgs' / train.class_names[int(train.labels[i])]
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray((train.images[i, 0] * 255).round().byte().numpy(), 'L').save(cls / f'{pos:03d}.png')
    dset = import_distilled(tmp_path / 'imgs', 'folder', dataset='digits')
    assert dset.image_space == 'pixel' and dset.num_images == 20 and 'precise' in dset.extra['note']
    assert torch.allclose(dset.images, train.images[idx], atol=1 / 255)


def test_ambiguous_import_lists_the_missing_facts(tmp_path, digits):
    train, idx = digits
    src = _save(tmp_path / 'x', **{'images.pt': train.normalized()[idx], 'labels.pt': train.labels[idx]})
    with pytest.raises(ImportFacts, match=r'without: dataset .*; image_space'):
        import_distilled(src, 'ddranking')


def test_implausible_image_space_is_an_error(tmp_path, digits):
    train, idx = digits
    src = _save(tmp_path / 'x', **{'images.pt': train.normalized()[idx], 'labels.pt': train.labels[idx]})
    with pytest.raises(ValueError, match='do not look like pixel space'):
        import_distilled(src, 'ddranking', dataset='digits', image_space='pixel')


def test_convert_command(tmp_path, digits, capsys):
    train, idx = digits
    src = _save(tmp_path / 'mtt', **{'images_best.pt': train.normalized()[idx], 'labels_best.pt': train.labels[idx],
                                      'syn_lr.pt': torch.tensor(0.01)})
    assert distill_cli.main(['convert', str(src), '--layout', 'mtt', '--dataset', 'digits', '--image-space',
                             'normalized', '--output', str(tmp_path / 'set')]) == 0
    assert DistilledSet.load(tmp_path / 'set').num_images == 20
    assert distill_cli.main(['convert', str(src), '--layout', 'mtt', '--output', str(tmp_path / 'y')]) == 2
    assert 'without: dataset' in capsys.readouterr().err
    again = ['convert', str(src), '--layout', 'mtt', '--dataset', 'digits', '--image-space', 'normalized', '--output',
             str(tmp_path / 'set')]
    assert distill_cli.main(again) == 0  # a set replaces the set it was saved over
    (tmp_path / 'set' / 'notes.txt').write_text('mine')  # ... but never a user's file beside it
    assert distill_cli.main(again) == 2
    assert 'notes.txt' in capsys.readouterr().err and (tmp_path / 'set' / 'notes.txt').read_text() == 'mine'


def test_train_reads_other_layouts_and_applies_the_soft_label_temperature(tmp_path, digits, capsys):
    import json
    from timm_dd.cli import train as train_cli
    train, idx = digits
    logits = 3 * torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    frepo = _save(tmp_path / 'frepo', **{'images_best.pt': train.normalized()[idx], 'labels_best.pt': logits})
    common = ['-c', 'baseline', '--dataset', 'digits', '--image-space', 'normalized', '--model', 'convnet3',
              '--model-kwargs', 'width=4', '--epochs', '2', '--eval-every', '1', '--no-plots', '--cpu']
    assert train_cli.main(['--data', str(frepo), '--data-layout', 'frepo', '--output', str(tmp_path / 'a'),
                           *common]) == 0, capsys.readouterr().err
    losses = [json.loads(x)['loss'] for x in
              (tmp_path / 'a' / 'runs' / 'convnet3' / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    assert all(0 <= l < 20 for l in losses)  # cross-entropy against a distribution: bounded below by 0
    # the same files read as MTT/DATM: DATM's temperature 1 unless one is given
    assert train_cli.main(['--data', str(frepo), '--soft-label-temperature', '0.3', '--output',
                           str(tmp_path / 'c'), *common]) == 0  # detected layout (mtt), temperature given
    from timm_dd.train import prepare_data
    data = prepare_data(str(frepo), dataset='digits', layout='frepo', image_space='normalized')
    assert torch.allclose(data.train.labels, torch.softmax(logits / 0.3, dim=1))  # the layout's 0.3, once
    data = prepare_data(str(frepo), dataset='digits', layout='mtt', image_space='normalized')
    assert torch.allclose(data.train.labels, torch.softmax(logits, dim=1))  # DATM's 1


def test_probabilities_that_do_not_sum_to_one_are_an_error():
    from timm_dd.data import ImageSet
    with pytest.raises(ValueError, match='rows summing to 1'):
        ImageSet(torch.randn(4, 1, 8, 8), torch.rand(4, 3), num_classes=3)


def test_elf_feature_model_must_live_in_the_sets_space(tmp_path, digits):
    from accelerate import Accelerator
    from timm_dd.train.config import load_config
    from timm_dd.train import prepare_data, run_experiment
    accelerator = Accelerator(cpu=True)
    train, idx = digits
    # the feature model: trained on real data in normalized space, snapshot after epoch 1 (ELF: 100)
    phi_cfg = load_config('baseline', dict(epochs=2, eval_every=0, snapshot_epochs=[1]))
    real = prepare_data(dataset='digits', real_ipc=2, image_size=16)
    run_experiment(phi_cfg, ['convnet3'], [0], real, tmp_path / 'phi', accelerator, model_kwargs=dict(width=4),
                   save_models=True)
    phi = tmp_path / 'phi' / 'runs' / 'convnet3' / 'seed0' / 'model-epoch1'
    assert (phi / 'config.json').is_file()
    elf = load_config('elf', dict(epochs=1, eval_every=0, elf_feature_model=str(phi.parent), elf_feature_epoch=1))
    # a ZCA set: the normalized feature model is refused, naming both spaces
    zca = ZCA.fit(train.images, eps=0.1)
    zsrc = _save(tmp_path / 'zca', **{'images_best.pt': zca.transform(train.images[idx]),
                                       'labels_best.pt': train.labels[idx]})
    zset = prepare_data(str(zsrc), dataset='digits', image_space='zca')
    with pytest.raises(ValueError, match='another image space than the training set: normalized space, not zca'):
        run_experiment(elf, ['convnet3'], [0], zset, tmp_path / 'z', accelerator, model_kwargs=dict(width=4))
    # a normalized set: the same feature model trains
    nsrc = _save(tmp_path / 'n', **{'images_best.pt': train.normalized()[idx], 'labels_best.pt': train.labels[idx]})
    nset = prepare_data(str(nsrc), dataset='digits', image_space='normalized')
    result = run_experiment(elf, ['convnet3'], [0], nset, tmp_path / 'ok', accelerator, model_kwargs=dict(width=4))
    assert result.runs[0]['test_count'] == 364


def test_real_data_in_zca_space_records_it():
    from timm_dd.train import prepare_data
    data = prepare_data(dataset='digits', real_ipc=1, image_size=16, image_space='zca')
    assert data.record['image_space'] == 'zca' and data.record['zca_eps'] == 0.1
    zca = ZCA.fit(load_dataset('digits', 'train', image_size=16).images, eps=0.1)
    assert torch.allclose(data.test.images[:5], zca.transform(load_dataset('digits', 'test', image_size=16)
                                                                .images[:5]), atol=1e-5)


@pytest.mark.parametrize('layout', ['mtt', 'frepo', 'ddranking', 'folder'])
def test_the_digits_set_round_trips_through_every_layout_with_its_provenance(tmp_path, digits, layout):
    """Issue "Fidelity II": export to each layout, import with no facts given: the images (8-bit for image folders),
    labels, lr and provenance (method, source dataset, ipc, space) come back."""
    train, idx = digits
    dset = DistilledSet(images=train.normalized()[idx], labels=train.labels[idx], method='ATT', source_dataset='digits',
                        class_names=list(train.class_names), image_space='normalized',
                        normalization=train.normalization.normalization, lr=0.02)
    folder = export_distilled(dset, tmp_path / layout, layout=layout)
    assert detect_layout(folder) == ('mtt' if layout == 'frepo' else layout)
    back = import_distilled(folder, layout)
    assert (back.method, back.source_dataset, back.ipc) == ('ATT', 'digits', dset.ipc)
    assert torch.equal(back.labels, dset.labels)
    if layout == 'folder':
        assert back.image_space == 'pixel' and back.lr is None
        pixels = dset.to_pixel_space().clamp(0, 1)
        assert (back.images - pixels).abs().max() <= 0.5 / 255 + 1e-6
    else:
        assert back.image_space == 'normalized' and torch.equal(back.images, dset.images)
        assert float(back.lr) == pytest.approx(0.02)
