""" One clear error for everything that goes wrong talking to the Hugging Face Hub

``huggingface_hub`` raises a family of exceptions (``RepositoryNotFoundError``, ``RevisionNotFoundError``,
``EntryNotFoundError``, ``LocalEntryNotFoundError``, ``HfHubHTTPError``, ``OfflineModeIsEnabled``, raw transport
errors) whose messages name URLs rather than what the user asked for. ``hub_error`` maps them to a single
``HubError`` naming the repo, revision and file and saying what to do; callers raise it ``from None`` so the
traceback stops at the ``timm_dd`` call.
"""
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar
from urllib.parse import unquote

from huggingface_hub import constants
from huggingface_hub.utils import (
    EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
    RepositoryNotFoundError, RevisionNotFoundError,
)

__all__ = ['HubError', 'hub_error', 'hub_errors', 'with_retries', 'retry_policy', 'redact', 'MAX_RETRY_AFTER']

_logger = logging.getLogger(__name__)
T = TypeVar('T')
_RETRY_STATUS = (429, 500, 502, 503, 504)

_TRANSPORT_MODULES = ('httpx', 'httpx2', 'httpcore', 'httpcore2', 'requests', 'urllib3')
_TOKEN_HINT = 'pass `token=...`, set HF_TOKEN or run `hf auth login`'


class HubError(RuntimeError):
    """An error from the Hugging Face Hub (or its local cache), with a message saying what to do.

    Attributes:
        repo_id: the repo the call was about.
        repo_type: ``'model'`` or ``'dataset'``.
        revision: the revision asked for (None = default branch).
        filename: the file asked for, when the error is about one file.
    """

    def __init__(
            self,
            message: str,
            repo_id: Optional[str] = None,
            repo_type: Optional[str] = None,
            revision: Optional[str] = None,
            filename: Optional[str] = None,
    ):
        super().__init__(redact(message))
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.revision = revision
        self.filename = filename


def _known_tokens() -> list:
    tokens = [os.environ.get(k) for k in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN')]
    try:
        from huggingface_hub import get_token
        tokens.append(get_token())
    except Exception:  # noqa: BLE001 - no stored token, or an older client
        pass
    return [t for t in tokens if t and len(t) >= 4]


def redact(text: str) -> str:
    """``text`` with every Hub token this process knows (``HF_TOKEN``, the stored login) replaced by ``***``."""
    for token in _known_tokens():
        text = text.replace(token, '***')
    return text


def _status(err: BaseException) -> Optional[int]:
    """The HTTP status behind ``err`` (or behind the error it wraps), if any."""
    for e in (err, err.__cause__, err.__context__):
        status = getattr(getattr(e, 'response', None), 'status_code', None) if e is not None else None
        if status is not None:
            return int(status)
    return None


def _retryable(err: BaseException) -> bool:
    """Server errors (5xx, 429) and transport failures (refused, reset, timed out) are worth another try; nothing is
    in offline mode (a cache miss stays a miss)."""
    if isinstance(err, OfflineModeIsEnabled) or getattr(constants, 'HF_HUB_OFFLINE', False):
        return False
    status = _status(err)
    if status is not None:
        return status in _RETRY_STATUS
    return any(e is not None and _is_transport_error(e) for e in (err, err.__cause__, err.__context__))


#: the longest wait a server's ``Retry-After`` can impose on one retry (a bound: a bad header never hangs a run)
MAX_RETRY_AFTER = 60.0


def retry_policy() -> Tuple[int, float]:
    """``(attempts, first wait in seconds)`` from ``TIMM_DD_HUB_RETRIES`` / ``TIMM_DD_HUB_BACKOFF``; a value that is
    not a number in range is an error naming the variable."""
    def read(name: str, default: str, kind, low: float) -> Any:
        raw = os.environ.get(name, default)
        try:
            value = kind(raw.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low:
            what = 'a whole number of attempts >= 1' if kind is int else 'a number of seconds >= 0'
            raise ValueError(f'{name}={raw!r} is not {what}; unset it or give one (default {default})')
        return value
    return read('TIMM_DD_HUB_RETRIES', '3', int, 1), read('TIMM_DD_HUB_BACKOFF', '1', float, 0.0)


def _retry_after(err: BaseException, wait: float) -> float:
    """The server's ``Retry-After`` (seconds or an HTTP date) when it sent one, bounded; else ``wait``."""
    response = getattr(err, 'response', None)
    headers = getattr(response, 'headers', None) or {}
    raw = headers.get('Retry-After') if hasattr(headers, 'get') else None
    if not raw:
        return wait
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return wait
    if not math.isfinite(seconds):
        return wait
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def with_retries(fn: Callable[[], T], action: str, repo_id: str, repo_type: str = 'model',
                 revision: Optional[str] = None, write: bool = False) -> T:
    """``fn()`` with retries and exponential back-off on server errors and network failures, then one
    :class:`HubError` saying what happened.

    ``TIMM_DD_HUB_RETRIES`` (default 3 attempts in all) and ``TIMM_DD_HUB_BACKOFF`` (first wait in seconds, default
    1, doubling) set the policy. A 429 or 503 with ``Retry-After`` waits what the server asks, at most
    :data:`MAX_RETRY_AFTER` seconds. Uploads are safe to repeat: an identical commit changes nothing.
    """
    attempts, wait = retry_policy()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except HubError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped below, or re-raised unchanged
            err = hub_error(e, action, repo_id, repo_type, revision, write=write)
            if err is None:
                raise
            if attempt < attempts and _retryable(e):
                pause = _retry_after(e, wait)
                _logger.warning('%s (attempt %d of %d); retrying in %.0f s', err, attempt, attempts, pause)
                time.sleep(pause)
                wait *= 2
                continue
            if attempt > 1:
                err = HubError(f'{err} (gave up after {attempt} attempts)', err.repo_id, err.repo_type, err.revision,
                               err.filename)
            raise err from None
    raise AssertionError('unreachable')


def _filename_from(err: BaseException) -> Optional[str]:
    # resolve urls are <endpoint>/[datasets/]<org>/<name>/resolve/<rev>/<path>
    response = getattr(err, 'response', None)
    url = str(getattr(response, 'url', '') or '') if response is not None else ''
    m = re.search(r'/resolve/[^/]+/([^?#]+)', url)
    return unquote(m.group(1)) if m else None


def _is_transport_error(err: BaseException) -> bool:
    if _status(err) is not None:  # the server answered: an HTTP error, not a transport failure
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(type(e).__module__.split('.')[0] in _TRANSPORT_MODULES for e in (err, err.__cause__) if e is not None)


def hub_error(
        err: BaseException,
        action: str,
        repo_id: str,
        repo_type: str = 'model',
        revision: Optional[str] = None,
        filename: Optional[str] = None,
        write: bool = False,
) -> Optional[HubError]:
    """Translate an exception raised by ``huggingface_hub`` into a ``HubError``.

    Args:
        err: the exception caught.
        action: what was being done, e.g. ``'download'``, ``'push to'``.
        repo_id: the repo.
        repo_type: ``'model'`` or ``'dataset'``.
        revision: the revision asked for.
        filename: the file asked for, if any (else read from the failed request when possible).
        write: whether the call writes (changes the permission hint).

    Returns:
        A ``HubError`` to raise ``from None``, or None if ``err`` does not come from the Hub client.
    """
    ctx = _Context(action, repo_id, repo_type, revision, filename or _filename_from(err), write)
    if write and isinstance(err, OfflineModeIsEnabled):
        return ctx.error('HF_HUB_OFFLINE=1 is set, so nothing can be uploaded. Unset it (or set it to 0) to push.')
    if isinstance(err, GatedRepoError):
        return ctx.error(f'{ctx.repo} on {ctx.endpoint} is gated. Request access on its page, then authenticate '
                         f'({_TOKEN_HINT}).')
    if isinstance(err, RepositoryNotFoundError):
        status = getattr(getattr(err, 'response', None), 'status_code', None)
        hint = 'a token with write access' if write else 'a token with read access'
        return ctx.error(
            f'{ctx.repo} was not found on {ctx.endpoint}{" (HTTP 401: not authenticated)" if status == 401 else ""}. '
            f'Check the repo id and that it is a {repo_type} repo; if it is private, authenticate with {hint} '
            f'({_TOKEN_HINT}).')
    return _revision_or_file_error(err, ctx) or _http_error(err, ctx)


class _Context:
    """What a Hub error message names: the action, the repo, the revision and file, the endpoint."""

    def __init__(self, action: str, repo_id: str, repo_type: str, revision: Optional[str], filename: Optional[str],
                 write: bool):
        self.action, self.repo_id, self.repo_type, self.revision, self.filename, self.write = \
            action, repo_id, repo_type, revision, filename, write
        self.endpoint = constants.ENDPOINT
        self.rev = revision or 'main'
        self.repo = f"{repo_type} repo '{repo_id}'"
        where = f"{self.repo} at revision '{self.rev}'"
        self.what = f"file '{filename}' of {where}" if filename else where
        self.offline = bool(getattr(constants, 'HF_HUB_OFFLINE', False))
        self.cache = Path(constants.HF_HUB_CACHE)

    def error(self, message: str) -> HubError:
        return HubError(f'Cannot {self.action} {self.repo_id!r}: {message}', self.repo_id, self.repo_type,
                        self.revision, self.filename)


def _revision_or_file_error(err: BaseException, ctx: _Context) -> Optional[HubError]:
    """A missing revision, a file neither on the Hub nor in the cache, a missing file."""
    if isinstance(err, RevisionNotFoundError):
        return ctx.error(
            f"revision '{ctx.rev}' does not exist in {ctx.repo} on {ctx.endpoint}. Use an existing branch, tag or full "
            f'commit sha (list them with `HfApi().list_repo_refs({ctx.repo_id!r}, repo_type={ctx.repo_type!r})`).')
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        status = _status(err)
        if status is not None and not ctx.offline:  # the Hub answered, with an error: say which
            return ctx.error(f'the Hub at {ctx.endpoint} answered HTTP {status}'
                             f'{" (a server error: try again later)" if status >= 500 else ""} and {ctx.what} is not '
                             f'in the local cache ({ctx.cache}).')
        if ctx.offline:
            return ctx.error(
                f'{ctx.what} is not in the local cache ({ctx.cache}) and HF_HUB_OFFLINE=1 forbids downloading it. '
                f'Download it once with network access (unset HF_HUB_OFFLINE), or pass a local folder.')
        return ctx.error(
            f'could not reach the Hub at {ctx.endpoint} and {ctx.what} is not in the local cache ({ctx.cache}). '
            f'Check the network connection and HF_ENDPOINT, or pass a local folder.')
    if isinstance(err, EntryNotFoundError):
        return ctx.error(f'{ctx.what} does not exist on {ctx.endpoint}. Check the file name and the revision.')
    return None


def _http_error(err: BaseException, ctx: _Context) -> Optional[HubError]:
    """Any other HTTP answer (permissions, server errors), or a connection that failed."""
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, 'response', None), 'status_code', None)
        server = getattr(err, 'server_message', None) or ''
        detail = f' (server said: {server.strip()})' if server.strip() else ''
        if status in (401, 403):
            verb = 'write to' if ctx.write else 'read'
            return ctx.error(
                f'no permission to {verb} {ctx.repo} on {ctx.endpoint} (HTTP {status}){detail}. '
                f'Use a token with {"write" if ctx.write else "read"} access to that namespace ({_TOKEN_HINT}).')
        server_side = ' (a server error: try again later)' if status is not None and status >= 500 else ''
        return ctx.error(f'the Hub at {ctx.endpoint} answered HTTP {status}{server_side} for {ctx.what}{detail}.')
    if _is_transport_error(err):
        return ctx.error(
            f'could not connect to the Hub at {ctx.endpoint} ({type(err).__name__}: {err}). Check the network '
            f'connection and HF_ENDPOINT; set HF_HUB_OFFLINE=1 to use cached files only.')
    return None


@contextmanager
def hub_errors(action: str, repo_id: str, repo_type: str = 'model', revision: Optional[str] = None,
               write: bool = False) -> Iterator[None]:
    """Re-raise what ``huggingface_hub`` raises inside the block as one clear :class:`HubError` (from None);
    exceptions it does not recognise pass through unchanged."""
    try:
        yield
    except Exception as e:
        err = hub_error(e, action, repo_id, repo_type, revision, write=write)
        if err is None:
            raise
        raise err from None
