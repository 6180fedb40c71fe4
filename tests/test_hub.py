""" Hub publishing tests against the loopback fake hub (tests/fakehub.py) with the real huggingface_hub client

Hermetic: only 127.0.0.1, every cache under tmp_path (see the ``hub_env`` fixture in conftest.py).
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import timm
import timm_dd  # noqa: F401  registers the models with timm
from timm_dd.hub import (
    HubError, load_distilled, load_teacher, pull_expert_buffers, push_distilled, push_expert_buffers, push_teacher,
    save_teacher,
)

try:
    from timm_dd.distilled import DistilledSet
except ImportError:  # pragma: no cover - developed in parallel
    DistilledSet = None

needs_distilled = pytest.mark.skipif(DistilledSet is None, reason='timm_dd.distilled.DistilledSet is not available')

CLASSES = [f'class_{i}' for i in range(10)]


def _name(prefix: str) -> str:
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def _assert_clean(err: pytest.ExceptionInfo, *fragments: str) -> None:
    """One clear HubError, raised from None: no chained traceback from inside the client."""
    assert err.type is HubError
    assert err.value.__cause__ is None and err.value.__suppress_context__
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def _write_buffers(folder: Path, n: int = 2, numel: int = 5000) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        # NOTE at most one metadata key: safetensors writes several in random order (files not byte-reproducible)
        save_file({'trajectory': torch.randn(4, numel, generator=g)}, str(folder / f'replay_buffer_{i}.safetensors'),
                  metadata={'arch': 'convnet3'})
    (folder / 'buffer_config.json').write_text(json.dumps({'num_experts': n, 'arch': 'convnet3'}))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _tiny_teacher():
    torch.manual_seed(0)
    return timm.create_model('convnet3', num_classes=10, width=8)


def _distilled_set():
    g = torch.Generator().manual_seed(0)
    return DistilledSet(
        images=torch.randn(10, 3, 32, 32, generator=g),
        labels=torch.arange(10, dtype=torch.int64),
        class_names=list(CLASSES),
        method='DM',
        source_dataset='cifar10',
        ipc=1,
        image_space='pixel',
    )


# --- the fake hub itself, driven by the raw client --------------------------------------------------------------


def test_fake_hub_raw_client(hub_env, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api, repo = HfApi(), f'org/{_name("raw")}'
    url = api.create_repo(repo, repo_type='dataset')
    assert url.startswith(hub_env.endpoint)
    assert api.create_repo(repo, repo_type='dataset', exist_ok=True) == url  # 409 swallowed
    with pytest.raises(Exception):
        api.create_repo(repo, repo_type='dataset')

    src = tmp_path / 'src'
    (src / 'sub' / 'deep').mkdir(parents=True)
    (src / 'README.md').write_text('---\nlicense: mit\n---\n# test\n')
    (src / 'sub' / 'deep' / 'a.bin').write_bytes(os.urandom(70_000))
    first = api.upload_folder(repo_id=repo, folder_path=str(src), repo_type='dataset')
    n_commits = len(hub_env.hub.commits(repo, 'dataset'))
    second = api.upload_folder(repo_id=repo, folder_path=str(src), repo_type='dataset')
    assert second.oid == first.oid and len(hub_env.hub.commits(repo, 'dataset')) == n_commits  # no-op

    assert sorted(api.list_repo_files(repo, repo_type='dataset')) == ['.gitattributes', 'README.md', 'sub/deep/a.bin']
    assert api.file_exists(repo, 'sub/deep/a.bin', repo_type='dataset')
    assert not api.file_exists(repo, 'missing.bin', repo_type='dataset')
    assert api.repo_info(repo, repo_type='dataset', revision=first.oid).sha == first.oid

    path = hf_hub_download(repo, 'sub/deep/a.bin', repo_type='dataset')
    assert Path(path).read_bytes() == (src / 'sub' / 'deep' / 'a.bin').read_bytes()
    assert str(hub_env.cache_dir) in path and f'snapshots/{first.oid}' in path
    snap = Path(snapshot_download(repo, repo_type='dataset'))
    assert (snap / 'README.md').read_text() == (src / 'README.md').read_text()


def test_fake_hub_range_requests(hub_env, tmp_path):
    from huggingface_hub import HfApi

    repo = f'org/{_name("range")}'
    data = bytes(range(256)) * 40
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'blob.bin').write_bytes(data)
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=str(src))

    def get(rng: str):
        req = urllib.request.Request(f'{hub_env.endpoint}/{repo}/resolve/main/blob.bin', headers={'Range': rng})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()

    status, headers, body = get('bytes=100-')
    assert (status, body, headers['Content-Range']) == (206, data[100:], f'bytes 100-{len(data) - 1}/{len(data)}')
    assert headers['X-Repo-Commit'] and headers['ETag']
    assert get('bytes=10-19')[2] == data[10:20]
    assert get('bytes=-5')[2] == data[-5:]
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f'bytes={len(data)}-')
    assert e.value.code == 416


# --- expert buffers -----------------------------------------------------------------------------------------------


def test_expert_buffers_push_pull(hub_env, tmp_path):
    repo = f'org/{_name("experts")}'
    expected = _write_buffers(tmp_path / 'buffers')
    commit = push_expert_buffers(tmp_path / 'buffers', repo)
    assert commit.oid in hub_env.hub.commits(repo, 'dataset')

    cached = pull_expert_buffers(repo)
    assert str(cached).startswith(str(hub_env.cache_dir))
    assert {n: (cached / n).read_bytes() for n in expected} == expected
    assert load_file(str(cached / 'replay_buffer_1.safetensors'))['trajectory'].shape == (4, 5000)

    local = pull_expert_buffers(repo, local_dir=tmp_path / 'local', allow_patterns=['*_0.safetensors'])
    assert local == tmp_path / 'local'
    assert sorted(p.name for p in local.iterdir() if p.is_file()) == ['replay_buffer_0.safetensors']

    # unchanged folder: no commit; one new buffer: only that file is sent
    n_commits = len(hub_env.hub.commits(repo, 'dataset'))
    assert push_expert_buffers(tmp_path / 'buffers', repo).oid == commit.oid
    assert len(hub_env.hub.commits(repo, 'dataset')) == n_commits
    _write_buffers(tmp_path / 'buffers', n=3)
    push_expert_buffers(tmp_path / 'buffers', repo)
    assert sorted(hub_env.hub.changed_paths(repo, 'dataset')) == ['buffer_config.json', 'replay_buffer_2.safetensors']
    assert pull_expert_buffers(tmp_path / 'buffers') == tmp_path / 'buffers'  # a local folder is returned as is


def test_an_expert_repo_given_as_a_set_is_named_as_such(hub_env, tmp_path, capsys):
    """Issue "Reliability II": `--data org/experts` says the repo holds expert trajectories, not a set."""
    from timm_dd.cli import train as train_cli
    repo = f'org/{_name("experts")}'
    _write_buffers(tmp_path / 'buffers')
    push_expert_buffers(tmp_path / 'buffers', repo)
    assert train_cli.main(['-c', 'baseline', '--data', repo, '--dataset', 'digits', '--model', 'convnet3',
                           '--output', str(tmp_path / 'o'), '--cpu']) == 2
    err = capsys.readouterr().err
    assert 'holds expert trajectories' in err and '--experts' in err and 'Traceback' not in err


def test_expert_buffers_resume_interrupted_download(hub_env, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    repo = f'org/{_name("resume")}'
    expected = _write_buffers(tmp_path / 'buffers', n=1, numel=20_000)  # 320 kB
    push_expert_buffers(tmp_path / 'buffers', repo)
    # the client only resumes from whole chunks it has written: use small chunks, drop the connection at 200 kB
    monkeypatch.setattr(hc, 'DOWNLOAD_CHUNK_SIZE', 64 * 1024)
    hub_env.hub.truncate_next_download(repo, 'replay_buffer_0.safetensors', 200_000, repo_type='dataset')
    folder = pull_expert_buffers(repo, allow_patterns='*.safetensors')
    assert (folder / 'replay_buffer_0.safetensors').read_bytes() == expected['replay_buffer_0.safetensors']
    ranges = [r for (m, p, r) in hub_env.hub.requests if m == 'GET' and p.startswith(f'/datasets/{repo}/resolve/')]
    assert ranges == [None, 'bytes=196608-']  # 3 chunks of 64 KiB kept, the rest fetched with a Range request


def test_offline_reload_after_server_stopped(hub_env, fake_hub_factory, tmp_path):
    hub = fake_hub_factory()
    hub_env.point_to(hub)
    repo, teacher_repo = f'org/{_name("offline")}', f'org/{_name("convnet3")}'
    expected = _write_buffers(tmp_path / 'buffers')
    push_expert_buffers(tmp_path / 'buffers', repo)
    model = _tiny_teacher()
    push_teacher(model, teacher_repo, class_names=CLASSES, dataset='cifar10')
    pull_expert_buffers(repo)
    load_teacher(teacher_repo)
    hub.stop()

    # connection refused: the client falls back to the cache by itself
    folder = pull_expert_buffers(repo)
    assert {n: (folder / n).read_bytes() for n in expected} == expected
    # HF_HUB_OFFLINE=1: no HTTP at all
    hub_env.set_offline()
    assert pull_expert_buffers(repo) == folder
    reloaded = timm.create_model(f'hf-hub:{teacher_repo}', pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))

    # a fresh process configured only by environment variables (read at import) reads the same cache
    code = (
        'import sys, huggingface_hub.constants as c; from huggingface_hub import snapshot_download; '
        f'assert c.HF_HUB_OFFLINE; p = snapshot_download({repo!r}, repo_type="dataset"); print(p)'
    )
    out = subprocess.run([sys.executable, '-c', code], env=hub_env.subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == folder

    # offline and not cached: one clear error
    with pytest.raises(HubError) as err:
        pull_expert_buffers(f'org/{_name("never-downloaded")}')
    _assert_clean(err, 'never-downloaded', 'HF_HUB_OFFLINE=1', 'not in the local cache')


# --- errors -------------------------------------------------------------------------------------------------------


def test_not_found_errors(hub_env, tmp_path):
    from huggingface_hub import HfApi

    missing = f'org/{_name("missing")}'
    with pytest.raises(HubError) as err:
        pull_expert_buffers(missing)
    _assert_clean(err, missing, 'dataset repo', 'was not found')
    assert err.value.repo_id == missing

    repo = f'org/{_name("exists")}'
    _write_buffers(tmp_path / 'b', n=1)
    push_expert_buffers(tmp_path / 'b', repo)
    with pytest.raises(HubError) as err:
        pull_expert_buffers(repo, revision='v9')
    _assert_clean(err, repo, "revision 'v9' does not exist")

    model_repo = f'org/{_name("not-a-model")}'
    HfApi().create_repo(model_repo)  # only .gitattributes: no config.json
    with pytest.raises(HubError) as err:
        load_teacher(model_repo)
    _assert_clean(err, model_repo, "file 'config.json'", 'does not exist')
    assert err.value.filename == 'config.json'

    with pytest.raises(HubError) as err:
        load_teacher(f'org/{_name("no-teacher")}', revision='main')
    _assert_clean(err, 'model repo', 'was not found')


def test_unknown_architecture(hub_env, tmp_path):
    from huggingface_hub import HfApi

    repo = f'org/{_name("alien")}'
    folder = tmp_path / 'alien'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'architecture': 'alien_net', 'num_classes': 10}))
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=str(folder))
    with pytest.raises(HubError) as err:
        load_teacher(repo)
    _assert_clean(err, "'alien_net'", 'not registered with timm')


def test_permission_errors(hub_env, tmp_path):
    _write_buffers(tmp_path / 'b', n=1)
    foreign = f'other-org/{_name("foreign")}'  # namespace owned by another token (conftest.FAKE_HUB_OWNERS)
    with pytest.raises(HubError) as err:
        push_expert_buffers(tmp_path / 'b', foreign)
    _assert_clean(err, foreign, 'no permission to write', 'HTTP 403', 'token')

    private = f'org/{_name("private")}'
    push_expert_buffers(tmp_path / 'b', private, private=True)
    assert pull_expert_buffers(private).is_dir()  # the owner can read it
    hub_env.set_token('intruder')
    with pytest.raises(HubError) as err:
        pull_expert_buffers(private, cache_dir=tmp_path / 'other_cache')
    _assert_clean(err, private, 'was not found', 'private', 'token')


def test_connection_refused(hub_env, fake_hub_factory, tmp_path, monkeypatch):
    hub = fake_hub_factory()
    hub_env.point_to(hub)
    hub.stop()
    _write_buffers(tmp_path / 'b', n=1)
    with pytest.raises(HubError) as err:
        push_expert_buffers(tmp_path / 'b', 'org/unreachable')
    _assert_clean(err, 'org/unreachable', 'could not connect', hub.endpoint)
    with pytest.raises(HubError) as err:
        pull_expert_buffers('org/unreachable')
    _assert_clean(err, 'org/unreachable', 'could not reach the Hub', 'not in the local cache')
    # hf_hub_download retries a refused connection with back-off (1+2+4+8+8 s): skip the waiting
    monkeypatch.setattr(time, 'sleep', lambda s: None)
    with pytest.raises(HubError) as err:
        load_teacher('org/unreachable')
    _assert_clean(err, 'org/unreachable', 'could not reach the Hub', 'not in the local cache')


# --- teachers -----------------------------------------------------------------------------------------------------


def test_teacher_push_and_create_model(hub_env):
    from huggingface_hub import hf_hub_download

    repo = f'org/convnet3.{_name("test")}'
    model = _tiny_teacher().eval()
    commit = push_teacher(model, repo, class_names=CLASSES, dataset='cifar10')
    files = hub_env.hub.files(repo)
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(files) and 'pytorch_model.bin' not in files
    readme = files['README.md'].decode()
    assert 'import timm, timm_dd' in readme and f"timm.create_model('hf-hub:{repo}', pretrained=True)" in readme
    assert 'Unknown model' in readme and 'library_name: timm' in readme
    config = json.loads(files['config.json'])
    assert config['architecture'] == 'convnet3' and config['model_args']['width'] == 8
    assert config['label_names'] == CLASSES

    reloaded = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
    sd, sd2 = model.state_dict(), reloaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert reloaded.pretrained_cfg['label_names'] == CLASSES
    assert torch.equal(load_teacher(repo).state_dict()['classifier.weight'], sd['classifier.weight'])
    assert Path(hf_hub_download(repo, 'config.json')).is_file()

    # same weights again: nothing changes; a branch holds a second version
    assert push_teacher(model, repo, class_names=CLASSES).oid == commit.oid
    other = _tiny_teacher()
    torch.nn.init.zeros_(other.classifier.weight)
    push_teacher(other, repo, revision='v2')
    assert torch.count_nonzero(load_teacher(repo, revision='v2').classifier.weight) == 0
    assert torch.equal(load_teacher(repo, revision=commit.oid).classifier.weight, sd['classifier.weight'])


def test_teacher_local_dir_roundtrip(tmp_path):
    model = timm.create_model('convnet3', num_classes=5, width=8, norm='batch').eval()
    folder = save_teacher(model, tmp_path / 'teacher', class_names=CLASSES[:5], dataset='cifar10')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert "timm.create_model('local-dir:" in (folder / 'README.md').read_text()
    for reloaded in (load_teacher(folder), timm.create_model(f'local-dir:{folder}', pretrained=True)):
        sd, sd2 = model.state_dict(), reloaded.state_dict()
        assert all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert reloaded.num_classes == 5 and reloaded.pretrained_cfg['label_names'] == CLASSES[:5]
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path)


# --- distilled sets -----------------------------------------------------------------------------------------------


def _assert_same_set(a, b) -> None:
    assert a.images.dtype == b.images.dtype and torch.equal(a.images, b.images)
    assert a.labels.dtype == b.labels.dtype and torch.equal(a.labels, b.labels)
    assert list(a.class_names) == list(b.class_names)
    assert (a.method, a.source_dataset, a.ipc, a.image_space) == (b.method, b.source_dataset, b.ipc, b.image_space)


@needs_distilled
def test_distilled_push_load_roundtrip(hub_env, tmp_path):
    from timm_dd.distilled import CONFIG_FILE, DISTILLED_FILE

    repo = f'org/{_name("cifar10-dm-ipc1")}'
    dset = _distilled_set()
    commit = push_distilled(dset, repo)
    files = hub_env.hub.files(repo, 'dataset')
    assert {DISTILLED_FILE, CONFIG_FILE, 'README.md'} <= set(files)

    loaded = load_distilled(repo)
    _assert_same_set(dset, loaded)
    _assert_same_set(dset, load_distilled(f'hf-hub:{repo}', revision=commit.oid))

    readme = files['README.md'].decode()
    assert repo in readme and 'import timm_dd' in readme

    # local folder, and offline from the cache
    folder = dset.save(tmp_path / 'local')
    _assert_same_set(dset, load_distilled(folder))
    _assert_same_set(dset, load_distilled(str(folder)))
    hub_env.set_offline()
    _assert_same_set(dset, load_distilled(repo))
    with pytest.raises(HubError) as err:
        load_distilled(f'org/{_name("absent")}')
    _assert_clean(err, 'absent', 'HF_HUB_OFFLINE=1')
    hub_env.set_offline(False)

    # an identical set pushed again changes nothing, provided save() is byte-reproducible
    again = dset.save(tmp_path / 'again')
    if any((folder / f).read_bytes() != (again / f).read_bytes() for f in (DISTILLED_FILE, CONFIG_FILE)):
        pytest.xfail('DistilledSet.save is not byte-reproducible (safetensors writes several metadata keys in '
                     'random order), so re-pushing an identical set makes a new commit')
    n_commits = len(hub_env.hub.commits(repo, 'dataset'))
    assert push_distilled(dset, repo).oid == commit.oid
    assert len(hub_env.hub.commits(repo, 'dataset')) == n_commits


@needs_distilled
def test_distilled_errors(hub_env):
    foreign = f'other-org/{_name("set")}'
    with pytest.raises(HubError) as err:
        push_distilled(_distilled_set(), foreign)
    _assert_clean(err, foreign, 'no permission to write')
    with pytest.raises(HubError) as err:
        load_distilled(f'org/{_name("missing-set")}')
    _assert_clean(err, 'missing-set', 'dataset repo', 'was not found')


@needs_distilled
def test_pushed_set_is_read_by_datasets_and_mirrors_the_set(hub_env, tmp_path):
    datasets = pytest.importorskip('datasets')
    from timm_dd.data.zca import ZCA
    repo = f'org/{_name("viewer")}'
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(64, 3, 8, 8, generator=g)
    zca = ZCA.fit(pixels, eps=0.1)
    dset = DistilledSet(images=zca.transform(pixels[:20]), labels=torch.arange(10).repeat_interleave(2),
                        class_names=list(CLASSES), method='MTT', source_dataset='cifar10', ipc=2, image_space='zca',
                        zca=zca, lr=0.01)
    push_distilled(dset, repo)
    files = hub_env.hub.files(repo, 'dataset')
    assert 'zca.safetensors' in files and 'data/train-00000-of-00001.parquet' in files
    card = files['README.md'].decode()
    assert 'configs:' in card and 'ipc-2' in card
    ds = datasets.load_dataset(repo, split='train', cache_dir=str(tmp_path / 'ds'))
    assert ds.num_rows == 20 and ds.features['label'].names == CLASSES
    assert ds['label'] == dset.labels.tolist()
    tensors = ds.with_format('torch')[:]['tensor']
    assert torch.equal(torch.as_tensor(tensors), dset.images)  # the exact float tensor
    assert ds[0]['image'].size == (8, 8)
    # the same set without its ZCA: a re-push removes the file the set no longer has
    plain = DistilledSet(images=pixels[:20], labels=dset.labels, class_names=list(CLASSES), method='MTT',
                         source_dataset='cifar10', ipc=2, image_space='pixel')
    push_distilled(plain, repo)
    assert 'zca.safetensors' not in hub_env.hub.files(repo, 'dataset')
    _assert_same_set(plain, load_distilled(repo))
