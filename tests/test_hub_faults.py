"""Hub faults, served by the loopback fake hub: HTTP 500/503, a server that accepts and never answers, a connection
dropped mid-file. Downloads and uploads retry with back-off, then fail with one HubError saying what happened; a
partial download never becomes a valid-looking set; tokens never reach logs or messages."""
import logging
import time
import uuid

import pytest
import torch

from timm_dd.distilled import DISTILLED_FILE, DistilledSet
from timm_dd.hub import HubError, load_distilled, push_distilled, push_expert_buffers

CLASSES = [f'class_{i}' for i in range(10)]


def _repo(prefix: str) -> str:
    return f'org/{prefix}-{uuid.uuid4().hex[:8]}'


def _set() -> DistilledSet:
    g = torch.Generator().manual_seed(0)
    return DistilledSet(images=torch.randn(10, 3, 32, 32, generator=g), labels=torch.arange(10),
                        class_names=list(CLASSES), method='DM', source_dataset='cifar10', ipc=1, image_space='pixel')


def _same(a: DistilledSet, b: DistilledSet) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_server_errors_are_retried_then_succeed(hub_env):
    repo = _repo('retry')
    push_distilled(_set(), repo)
    hub_env.hub.fail_next(2, 500, path_contains=f'/{repo}')
    assert _same(load_distilled(repo), _set())  # third attempt
    hub_env.hub.fail_next(1, 503, path_contains=f'/{repo}')
    push_distilled(_set(), repo)  # an upload is retried too (an identical commit changes nothing)


def test_persistent_server_error_is_named_as_such(hub_env):
    repo = _repo('down')
    push_distilled(_set(), repo)
    hub_env.hub.fail_next(20, 500, path_contains=f'/{repo}')
    with pytest.raises(HubError) as err:
        load_distilled(repo, cache_dir=hub_env.home / 'empty-cache')
    msg = str(err.value)
    assert 'HTTP 500' in msg and 'server error' in msg and 'gave up after 3 attempts' in msg
    assert 'could not reach' not in msg and 'check the network' not in msg.lower()
    hub_env.hub._faults.clear()


def test_retry_after_is_honoured_and_bounded(hub_env, monkeypatch, caplog):
    """Issue "Reliability II": a 429 with Retry-After waits what the server asks (not the back-off), at most
    MAX_RETRY_AFTER seconds: a header asking for an hour waits the bound."""
    from timm_dd.hub import _errors
    repo = _repo('slow-down')
    push_distilled(_set(), repo)
    monkeypatch.setattr(_errors, 'MAX_RETRY_AFTER', 1.5)
    hub_env.hub.fail_next(1, 429, path_contains=f'/{repo}', retry_after='1')
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger='timm_dd.hub'):
        assert _same(load_distilled(repo, cache_dir=hub_env.home / 'c1'), _set())
    assert time.monotonic() - start >= 1.0 and 'retrying in 1 s' in caplog.text  # the back-off here is 0.05 s
    hub_env.hub.fail_next(1, 429, path_contains=f'/{repo}', retry_after='3600')
    start = time.monotonic()
    assert _same(load_distilled(repo, cache_dir=hub_env.home / 'c2'), _set())
    assert 1.4 <= time.monotonic() - start < 30


@pytest.mark.parametrize('name,value', [('TIMM_DD_HUB_RETRIES', 'abc'), ('TIMM_DD_HUB_RETRIES', '0'),
                                        ('TIMM_DD_HUB_BACKOFF', '-1'), ('TIMM_DD_HUB_BACKOFF', 'nan')])
def test_a_bad_retry_setting_is_named(monkeypatch, name, value):
    from timm_dd.hub._errors import retry_policy
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}='{value}' is not a"):
        retry_policy()


def test_hanging_server_is_bounded_by_the_etag_timeout(hub_env, monkeypatch):
    import huggingface_hub.constants as hc
    repo = _repo('hang')
    push_distilled(_set(), repo)
    assert _same(load_distilled(repo), _set())  # now cached
    monkeypatch.setattr(hc, 'HF_HUB_ETAG_TIMEOUT', 1)
    monkeypatch.setenv('TIMM_DD_HUB_RETRIES', '2')
    hub_env.hub.hang_next(10, seconds=20, path_contains=f'/{repo}')
    start = time.monotonic()
    assert _same(load_distilled(repo), _set())  # the cache answers instead of waiting
    with pytest.raises(HubError) as err:
        load_distilled(repo, cache_dir=hub_env.home / 'not-cached-here')
    elapsed = time.monotonic() - start
    hub_env.hub._faults.clear()
    assert elapsed < 15, f'a hanging server blocked for {elapsed:.0f} s despite HF_HUB_ETAG_TIMEOUT=1'
    assert 'not in the local cache' in str(err.value)


def test_one_timed_out_request_is_retried(hub_env, monkeypatch, caplog):
    # a brief network failure (here: one request that times out) costs a retry, not the download
    import huggingface_hub.constants as hc
    repo = _repo('blip')
    push_distilled(_set(), repo)
    monkeypatch.setattr(hc, 'HF_HUB_ETAG_TIMEOUT', 1)
    hub_env.hub.hang_next(1, seconds=3, path_contains=f'/{repo}')
    caplog.set_level(logging.WARNING)
    assert _same(load_distilled(repo, cache_dir=hub_env.home / 'blip-cache'), _set())
    hub_env.hub._faults.clear()


def test_dropped_connection_never_leaves_a_valid_looking_set(hub_env):
    repo = _repo('drop')
    push_distilled(_set(), repo)
    # once: the retry (or the client's resume) completes the file, and the set is the one pushed
    hub_env.hub.truncate_next_download(repo, DISTILLED_FILE, 100, repo_type='dataset')
    assert _same(load_distilled(repo, cache_dir=hub_env.home / 'c1'), _set())
    # on every attempt: one clear error, and nothing in the cache that loads
    hub_env.hub.truncate_next_download(repo, DISTILLED_FILE, 100, repo_type='dataset', count=1000)
    with pytest.raises(HubError):
        load_distilled(repo, cache_dir=hub_env.home / 'c2')
    hub_env.hub._truncate.clear()
    hub_env.set_offline()
    with pytest.raises(HubError) as err:
        load_distilled(repo, cache_dir=hub_env.home / 'c2')
    assert 'not in the local cache' in str(err.value)


def test_tokens_never_appear_in_messages_or_logs(hub_env, tmp_path, caplog):
    secret = 'hf_' + uuid.uuid4().hex
    hub_env.set_token(secret)
    caplog.set_level(logging.DEBUG)  # everything, the HTTP client's request traces included
    repo = _repo('token')
    push_distilled(_set(), repo)
    hub_env.hub.fail_next(20, 500, path_contains=f'/{repo}')
    with pytest.raises(HubError):
        load_distilled(repo, cache_dir=tmp_path / 'cache')
    (tmp_path / 'b').mkdir()
    with pytest.raises(HubError) as err:
        push_expert_buffers(tmp_path / 'b', f'other-org/{uuid.uuid4().hex[:8]}')  # 403
    assert secret not in str(err.value)
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in hub_env.hub.files(repo, 'dataset')['README.md'].decode()
    # a server that echoes the token back: the HubError shows *** instead
    hub_env.hub._faults.clear()
    hub_env.hub.fail_next(20, 500, path_contains=f'/{repo}', message=f'bad request with token {secret}')
    with pytest.raises(HubError) as err:
        load_distilled(repo, cache_dir=tmp_path / 'cache2')
    hub_env.hub._faults.clear()
    assert secret not in str(err.value) and '***' in str(err.value)


def test_offline_cache_miss_fails_at_once(hub_env, caplog):
    # offline, a cache miss can never succeed: one attempt, no back-off, no "gave up after N attempts"
    hub_env.set_offline()
    caplog.set_level(logging.WARNING)
    with pytest.raises(HubError) as err:
        load_distilled(_repo('offline'), cache_dir=hub_env.home / 'offline-cache')
    assert 'HF_HUB_OFFLINE=1' in str(err.value) and 'gave up' not in str(err.value)
    assert not [r for r in caplog.records if 'retrying' in r.getMessage()]
