""" Shared pytest fixtures: a loopback fake Hugging Face Hub and a hermetic Hub environment

How the "constants are read at import" problem is solved
--------------------------------------------------------
``huggingface_hub`` copies ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_XET``
into ``huggingface_hub.constants`` once, at import, and builds a module-level ``HfApi``
(``huggingface_hub.hf_api.api``, behind ``huggingface_hub.create_repo``, ``upload_folder``, ...) whose endpoint is
frozen at that moment. Any test module (or timm) may import it before a fixture runs, so setting environment
variables in a fixture is not enough.

Importing ``timm``/``timm_dd`` costs ~10 s on a 2-core CI runner, so running each Hub test in a fresh subprocess is
too slow. ``hub_env`` therefore does both, per test:

1. sets the environment (``HF_ENDPOINT``, ``HF_TOKEN=dummy``, ``HF_HOME``/``HF_HUB_CACHE`` in ``tmp_path``,
   ``HF_HUB_DISABLE_XET=1``, ...) so that subprocesses started by the test inherit it, and
2. monkeypatches the constants that the download/upload paths read *at call time* (checked in huggingface_hub 2.4
   and timm 1.0.31: ``hf_hub_download``/``snapshot_download``/``HfApi()`` read ``constants.ENDPOINT``,
   ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_CACHE``, ``is_offline_mode()`` -> ``HF_HUB_OFFLINE`` and
   ``HF_HUB_DISABLE_XET``; timm's ``_hub.py`` only calls ``HfApi(...)`` and ``hf_hub_download``), plus the frozen
   module-level ``HfApi`` instance and, when a test module has imported ``datasets`` already, its ``config``'s
   endpoint.

Two guards keep this honest if a future ``huggingface_hub`` caches a value elsewhere: the fixture asserts that a
fresh ``HfApi`` and ``hf_hub_url`` point at the fake hub, and it makes ``socket.getaddrinfo`` refuse every host but
the loopback, so a leak fails loudly instead of reaching huggingface.co. ``test_hub.py`` also runs one subprocess
with plain environment variables (the way users set ``HF_HUB_OFFLINE=1``) against the cache filled in-process.
"""
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

try:
    from .fakehub import FakeHub
except ImportError:  # tests/ is not a package: pytest put its folder on sys.path
    from fakehub import FakeHub

FAKE_HUB_OWNERS = {'other-org': 'owner-token'}  # a namespace the default token 'dummy' may not write to
_LOOPBACK = ('127.0.0.1', 'localhost', '::1')


class HubEnv:
    """What ``hub_env`` yields: the fake hub, its endpoint, the per-test cache, and an offline switch."""

    def __init__(self, hub: FakeHub, home: Path, monkeypatch: pytest.MonkeyPatch):
        self.hub = hub
        self.home = home
        self.cache_dir = home / 'hub'
        self._mp = monkeypatch

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    def point_to(self, hub: FakeHub) -> None:
        """Redirect the client to another fake hub (e.g. one the test will stop)."""
        self.hub = hub
        _patch_hub(self._mp, hub.endpoint, self.home)

    def set_offline(self, offline: bool = True) -> None:
        """What ``HF_HUB_OFFLINE=1`` does in a fresh process: every HTTP call raises, the cache answers."""
        import huggingface_hub.constants as hc
        self._mp.setenv('HF_HUB_OFFLINE', '1' if offline else '0')
        self._mp.setattr(hc, 'HF_HUB_OFFLINE', offline)

    def set_token(self, token: str) -> None:
        self._mp.setenv('HF_TOKEN', token)

    def subprocess_env(self) -> dict:
        """A copy of ``os.environ`` for ``subprocess.run(..., env=...)``."""
        return dict(os.environ)


def hub_environ(endpoint: str, home: Path) -> dict:
    """Environment variables that point ``huggingface_hub`` at ``endpoint`` with caches under ``home``."""
    return {
        'HF_ENDPOINT': endpoint,
        'HF_TOKEN': 'dummy',
        'HF_HOME': str(home),
        'HF_HUB_CACHE': str(home / 'hub'),
        'HF_ASSETS_CACHE': str(home / 'assets'),
        'HF_XET_CACHE': str(home / 'xet'),
        'XDG_CACHE_HOME': str(home / 'xdg'),
        'HF_HUB_DISABLE_XET': '1',
        'HF_HUB_DISABLE_TELEMETRY': '1',
        'HF_HUB_DISABLE_PROGRESS_BARS': '1',
        'HF_HUB_DISABLE_UPDATE_CHECK': '1',
        'HF_HUB_ETAG_TIMEOUT': '10',
        'HF_HUB_DOWNLOAD_TIMEOUT': '10',
        'TIMM_DD_HUB_BACKOFF': '0.05',  # timm_dd's retries: real attempts, short waits
    }


def _patch_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    import huggingface_hub.constants as hc
    import huggingface_hub.hf_api as hf_api

    for key, value in hub_environ(endpoint, home).items():
        monkeypatch.setenv(key, value)
    for key in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH'):
        monkeypatch.delenv(key, raising=False)
    values = dict(
        ENDPOINT=endpoint,
        HUGGINGFACE_CO_URL_TEMPLATE=endpoint + '/{repo_id}/resolve/{revision}/{filename}',
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / 'hub'),
        HUGGINGFACE_HUB_CACHE=str(home / 'hub'),
        HF_ASSETS_CACHE=str(home / 'assets'),
        HF_TOKEN_PATH=str(home / 'token'),
        HF_STORED_TOKENS_PATH=str(home / 'stored_tokens'),
        HF_HUB_OFFLINE=False,
        HF_HUB_DISABLE_XET=True,
        HF_HUB_DISABLE_TELEMETRY=True,
    )
    for key, value in values.items():
        if hasattr(hc, key):
            monkeypatch.setattr(hc, key, value)
    monkeypatch.setattr(hf_api.api, 'endpoint', endpoint)
    datasets_config = sys.modules.get('datasets.config')  # frozen too when a test module imported datasets early
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, 'HF_ENDPOINT', endpoint)
        monkeypatch.setattr(datasets_config, 'HUB_DATASETS_URL',
                            endpoint + '/datasets/{repo_id}/resolve/{revision}/{path}')
    try:
        import huggingface_hub.utils._cache_manager as cm
        monkeypatch.setattr(cm, 'HF_HUB_CACHE', str(home / 'hub'))
    except (ImportError, AttributeError):
        pass

    # self-check: fail loudly if this huggingface_hub version reads the endpoint from somewhere else
    from huggingface_hub import HfApi, hf_hub_url
    assert HfApi().endpoint == endpoint
    assert hf_hub_url('org/name', 'f.txt').startswith(endpoint + '/')


def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in _LOOPBACK:
            raise OSError(f'hermetic test: network access to {name!r} is blocked (only the loopback fake hub)')
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)


@pytest.fixture(scope='session')
def fake_hub() -> Iterator[FakeHub]:
    """One in-memory fake Hub per test session (use unique repo names per test)."""
    hub = FakeHub(owners=FAKE_HUB_OWNERS).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def fake_hub_factory() -> Iterator[Callable[..., FakeHub]]:
    """Start extra fake hubs (e.g. one a test stops); all are stopped at teardown."""
    hubs: List[FakeHub] = []

    def factory(**kwargs) -> FakeHub:
        hubs.append(FakeHub(**kwargs).start())
        return hubs[-1]

    yield factory
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub_env(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Point ``huggingface_hub`` (and timm) at the session fake hub, with a fresh cache under ``tmp_path``."""
    home = tmp_path / 'hf_home'
    home.mkdir()
    _loopback_only(monkeypatch)
    _patch_hub(monkeypatch, fake_hub.endpoint, home)
    yield HubEnv(fake_hub, home, monkeypatch)
    # pooled connections of the shared client would outlive a stopped test hub
    try:
        from huggingface_hub.utils import close_session
        close_session()
    except ImportError:
        pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--long', action='store_true', default=False,
                     help='longer property tests (tests/test_fuzz_sets.py draws 20x as many examples)')
