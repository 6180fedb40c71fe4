""" A loopback, in-memory Hugging Face Hub for hermetic tests

Serves the subset of the Hub HTTP API that ``huggingface_hub`` (1.x/2.x) and ``timm.models`` use to create repos,
upload folders, list trees and download files, for model and dataset repos. See ``ecosystem.md`` §4.

Design choices (why, not what):
* every preupload answers ``uploadMode: "regular"``: commits then carry the bytes inline (base64), so neither the
  Git-LFS batch API nor Xet has to be emulated. The preupload ``oid`` is the git blob sha1 of the file currently in
  the repo, which lets the client drop unchanged files (a second identical upload is a no-op).
* 404s carry ``X-Error-Code`` (``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``): the client classifies
  not-found errors by that header only.
* HTTP/1.0, one request per connection: after ``stop()`` no pooled keep-alive connection can still reach a handler
  thread, so "server gone" really means connection refused.
* bounded: daemon threads, per-connection socket timeout, and a watchdog that stops the server after
  ``max_lifetime`` seconds even if a test forgot to.

Permissions (optional): ``FakeHub(owners={'other-org': 'secret'})`` makes the namespace ``other-org`` writable only
with token ``secret``; a repo created private is only visible to the token that created it. Anonymous writes get 401.
"""
import base64
import collections
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ['FakeHub', 'git_blob_sha1']

_REPO_TYPES = {'models': 'model', 'datasets': 'dataset', 'spaces': 'space'}
_URL_PREFIX = {'model': '', 'dataset': 'datasets/', 'space': 'spaces/'}
_SHA_RE = re.compile(r'^[0-9a-f]{40}$')
_GITATTRIBUTES = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n'


def git_blob_sha1(data: bytes) -> str:
    """Git blob id of ``data`` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class _Commit:
    sha: str
    parent: Optional[str]
    message: str
    files: Dict[str, bytes]
    changed: List[str] = field(default_factory=list)  # paths sent (added/updated/deleted) in this commit
    date: float = field(default_factory=time.time)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner_token: Optional[str]
    commits: Dict[str, _Commit] = field(default_factory=dict)
    branches: Dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[_Commit]:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, error_code: Optional[str] = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.extra = extra


class FakeHub:
    """In-memory Hub-compatible server on ``127.0.0.1:<ephemeral port>``.

    Args:
        owners: namespace -> token allowed to write there; namespaces not listed are writable with any token.
        max_lifetime: seconds after which the server stops by itself (a safety net for a leaked server; the
            session fixture's server must outlive the whole test session).
        request_timeout: socket timeout of one client connection.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``, the value for ``HF_ENDPOINT``.
        requests: recent ``(method, path, range header)`` tuples, for assertions.
    """

    def __init__(
            self,
            owners: Optional[Dict[str, str]] = None,
            max_lifetime: float = 3600.,
            request_timeout: float = 30.,
    ):
        self.owners = dict(owners or {})
        self.max_lifetime = max_lifetime
        self.request_timeout = request_timeout
        self.requests: Deque[Tuple[str, str, Optional[str]]] = collections.deque(maxlen=2000)
        self._repos: Dict[Tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._truncate: Dict[str, int] = {}
        self._faults: List[Tuple[str, Any, str]] = []  # (kind, status or seconds, path substring), used in order
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Timer] = None
        self.endpoint = ''

    # lifecycle

    def start(self) -> 'FakeHub':
        hub = self

        class Handler(_Handler):
            fake_hub = hub
            timeout = self.request_timeout

        server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.endpoint = f'http://127.0.0.1:{server.server_address[1]}'
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs=dict(poll_interval=0.05), name='fakehub', daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.max_lifetime, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent); later connections are refused."""
        server, self._server = self._server, None
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> 'FakeHub':
        return self.start()

    def __exit__(self, *args) -> None:
        self.stop()

    # test helpers

    def truncate_next_download(self, repo_id: str, filename: str, nbytes: int, repo_type: str = 'model',
                               count: int = 1) -> None:
        """Make the next ``count`` GETs of that file send ``nbytes`` of the body and then drop the connection."""
        with self._lock:
            self._truncate[f'{repo_type}:{repo_id}:{filename}'] = (nbytes, count)

    def fail_next(self, count: int = 1, status: int = 500, path_contains: str = '', message: str = '',
                  retry_after: Optional[str] = None) -> None:
        """Answer the next ``count`` requests whose path contains ``path_contains`` with HTTP ``status`` (and a
        ``Retry-After`` header when given)."""
        with self._lock:
            self._faults += [('status', (status, message, retry_after), path_contains)] * count

    def hang_next(self, count: int = 1, seconds: float = 30., path_contains: str = '') -> None:
        """Accept the next ``count`` matching requests and send nothing for ``seconds``, then drop them."""
        with self._lock:
            self._faults += [('hang', seconds, path_contains)] * count

    def _take_fault(self, path: str) -> Optional[Tuple[str, Any, str]]:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault[2] in path:
                    return self._faults.pop(i)
        return None

    def repo_exists(self, repo_id: str, repo_type: str = 'model') -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def commits(self, repo_id: str, repo_type: str = 'model') -> List[str]:
        """Commit shas of a repo, oldest first."""
        with self._lock:
            return list(self._repos[(repo_type, repo_id)].commits)

    def changed_paths(self, repo_id: str, repo_type: str = 'model', revision: str = 'main') -> List[str]:
        """Paths the client actually sent in that commit (unchanged files are skipped by the client)."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, revision
            return list(commit.changed)

    def files(self, repo_id: str, repo_type: str = 'model', revision: str = 'main') -> Dict[str, bytes]:
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, revision
            return dict(commit.files)

    # state (called by the handler, under the lock)

    def _new_sha(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1('\0'.join((str(self._counter), *parts)).encode()).hexdigest()

    def _url(self, repo: _Repo) -> str:
        return f'{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}'

    def _get_repo(self, repo_type: str, repo_id: str, token: Optional[str], write: bool = False) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token != repo.owner_token):
            if token is None:
                raise HubHTTPError(401, 'Repository not found', 'RepoNotFound')
            raise HubHTTPError(404, 'Repository not found', 'RepoNotFound')
        if write:
            self._check_write(repo_id, token)
        return repo

    def _check_write(self, repo_id: str, token: Optional[str]) -> None:
        if token is None:
            raise HubHTTPError(401, 'Invalid credentials in Authorization header')
        namespace = repo_id.split('/')[0]
        owner = self.owners.get(namespace)
        if owner is not None and token != owner:
            raise HubHTTPError(403, f'You don\'t have the rights to write to the namespace {namespace}')

    def _commit(
            self, repo: _Repo, branch: str, files: Dict[str, bytes], message: str, changed: List[str],
    ) -> _Commit:
        parent = repo.branches.get(branch)
        commit = _Commit(self._new_sha(repo.repo_id, branch, message), parent, message, files, changed)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, token: Optional[str]) -> _Repo:
        self._check_write(repo_id, token)
        if (repo_type, repo_id) in self._repos:
            # the client reads the url from the 409 body when exist_ok=True
            raise HubHTTPError(409, 'You already created this repo', url=self._url(self._repos[(repo_type, repo_id)]))
        repo = _Repo(repo_type, repo_id, private, token)
        self._repos[(repo_type, repo_id)] = repo
        self._commit(repo, 'main', {'.gitattributes': _GITATTRIBUTES}, 'initial commit', ['.gitattributes'])
        return repo


def _tree_entries(files: Dict[str, bytes], prefix: str, recursive: bool) -> List[Dict[str, Any]]:
    prefix = prefix.strip('/')
    base = prefix + '/' if prefix else ''
    out: Dict[str, Dict[str, Any]] = {}
    for path in sorted(files):
        if path == prefix:
            raise HubHTTPError(400, f'{prefix} is a file, not a directory')
        if not path.startswith(base):
            continue
        parts = path[len(base):].split('/')
        for depth in range(1, len(parts)):
            folder = base + '/'.join(parts[:depth])
            out.setdefault(folder, dict(type='directory', path=folder, oid=hashlib.sha1(folder.encode()).hexdigest()))
            if not recursive:
                break
        if recursive or len(parts) == 1:
            data = files[path]
            out[path] = dict(type='file', path=path, size=len(data), oid=git_blob_sha1(data))
    if prefix and not out:
        raise HubHTTPError(404, f'{prefix} does not exist', 'EntryNotFound')
    return list(out.values())


def _parse_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None if unsatisfiable."""
    m = re.fullmatch(r'bytes=(\d*)-(\d*)', header.strip())
    if not m or m.group(1) == m.group(2) == '':
        return None
    if m.group(1) == '':
        start, end = max(size - int(m.group(2)), 0), size - 1
    else:
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start <= end and start < size else None


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = 'HTTP/1.0'
    server_version = 'FakeHub/1.0'

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; ``FakeHub.requests`` records traffic

    # plumbing

    @property
    def hub(self) -> FakeHub:
        return self.fake_hub

    def _token(self) -> Optional[str]:
        auth = self.headers.get('Authorization', '')
        return (auth[7:].strip() or None) if auth.lower().startswith('bearer ') else None

    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    self.rfile.readline()
                    return b''.join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
              content_type: str = 'application/json') -> bool:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
        return True

    def _json(self, obj: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> bool:
        return self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubHTTPError, retry_after: Optional[str] = None) -> None:
        headers = {'X-Error-Message': err.message}
        if retry_after is not None:
            headers['Retry-After'] = retry_after
        if err.error_code:
            headers['X-Error-Code'] = err.error_code
        self._json({'error': err.message, **err.extra}, err.status, headers)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, url.path, self.headers.get('Range')))
        segs = [unquote(s) for s in url.path.strip('/').split('/')] if url.path.strip('/') else []
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fault = self.hub._take_fault(url.path)
        if fault is not None and fault[0] == 'hang':  # accept, say nothing, drop
            deadline = time.time() + fault[1]
            while time.time() < deadline and self.hub.running:
                time.sleep(0.05)
            self.close_connection = True
            return
        if fault is not None:
            status, message, retry_after = fault[1]
            self._error(HubHTTPError(status, message or f'FakeHub: injected HTTP {status}'), retry_after)
            return
        try:
            with self.hub._lock:
                handled = self._route(segs, query)
            if handled is None:
                self._json({'error': f'unknown route {self.command} {url.path}'}, 404)
        except HubHTTPError as e:
            self._error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:
            # 400, not 500: the client retries 5xx with back-off, which would only slow down a failing test
            self._error(HubHTTPError(400, f'FakeHub cannot handle {self.command} {url.path}: {e!r}'))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # routing

    def _route(self, segs: List[str], query: Dict[str, str]) -> Optional[bool]:
        cmd, token = self.command, self._token()
        if segs[:1] == ['api']:
            rest = segs[1:]
            if cmd == 'POST' and rest == ['repos', 'create']:
                return self._api_create(token)
            if cmd == 'POST' and rest == ['validate-yaml']:
                self._body()
                return self._json({'errors': [], 'warnings': []})
            if cmd == 'GET' and rest == ['whoami-v2']:
                if token is None:
                    raise HubHTTPError(401, 'Invalid credentials in Authorization header')
                return self._json({'type': 'user', 'name': 'user', 'auth': {'type': 'access_token'}})
            if len(rest) >= 3 and rest[0] in _REPO_TYPES:
                repo_type, repo_id, action = _REPO_TYPES[rest[0]], '/'.join(rest[1:3]), rest[3:]
                return self._api_repo(repo_type, repo_id, action, query, token)
            return None
        # file resolution: /<org>/<name>/resolve/<rev>/<path> (models), /datasets/... /spaces/...
        repo_type = 'model'
        if segs[:1] in (['datasets'], ['spaces']):
            repo_type, segs = _REPO_TYPES[segs[0]], segs[1:]
        if cmd in ('GET', 'HEAD') and len(segs) >= 5 and segs[2] == 'resolve':
            return self._resolve(repo_type, '/'.join(segs[:2]), segs[3], '/'.join(segs[4:]), token)
        return None

    def _api_create(self, token: Optional[str]) -> bool:
        payload = json.loads(self._body() or b'{}')
        name, org = payload.get('name'), payload.get('organization')
        if not name or not org:
            raise HubHTTPError(400, 'FakeHub needs an explicit namespace: use repo ids "<org>/<name>"')
        repo_type = payload.get('type') or 'model'
        private = payload.get('visibility') == 'private' or bool(payload.get('private'))
        repo = self.hub._create_repo(repo_type, f'{org}/{name}', private, token)
        return self._json({'url': self.hub._url(repo), 'name': repo.repo_id})

    def _api_repo(
            self, repo_type: str, repo_id: str, action: List[str], query: Dict[str, str], token: Optional[str],
    ) -> Optional[bool]:
        cmd, hub = self.command, self.hub
        if cmd == 'GET' and (not action or action[0] == 'revision'):
            repo = hub._get_repo(repo_type, repo_id, token)
            commit = self._commit_of(repo, action[1] if len(action) > 1 else 'main')
            return self._json(self._info(repo, commit))
        if cmd == 'GET' and action[:1] == ['tree'] and len(action) >= 2:
            repo = hub._get_repo(repo_type, repo_id, token)
            commit = self._commit_of(repo, action[1])
            recursive = query.get('recursive', 'false').lower() in ('1', 'true')
            return self._json(_tree_entries(commit.files, '/'.join(action[2:]), recursive))
        if cmd == 'GET' and action == ['refs']:
            repo = hub._get_repo(repo_type, repo_id, token)
            branches = [
                dict(name=b, ref=f'refs/heads/{b}', targetCommit=sha) for b, sha in sorted(repo.branches.items())]
            return self._json({'branches': branches, 'tags': [], 'converts': []})
        if cmd == 'POST' and action[:1] == ['paths-info'] and len(action) >= 2:
            repo = hub._get_repo(repo_type, repo_id, token)
            commit = self._commit_of(repo, action[1])
            paths = self._form_paths()
            out = []
            for p in paths:
                if p in commit.files:
                    data = commit.files[p]
                    out.append(dict(type='file', path=p, size=len(data), oid=git_blob_sha1(data)))
                elif any(f.startswith(p.rstrip('/') + '/') for f in commit.files):
                    out.append(dict(type='directory', path=p, oid=hashlib.sha1(p.encode()).hexdigest()))
            return self._json(out)
        if cmd == 'POST' and action[:1] == ['preupload'] and len(action) >= 2:
            repo = hub._get_repo(repo_type, repo_id, token, write=True)
            commit = self._commit_of(repo, action[1])
            payload = json.loads(self._body() or b'{}')
            files = [
                dict(path=f['path'], uploadMode='regular', shouldIgnore=False,
                     oid=git_blob_sha1(commit.files[f['path']]) if f['path'] in commit.files else None)
                for f in payload.get('files', [])]
            return self._json({'files': files, 'commitOid': commit.sha})
        if cmd == 'POST' and action[:1] == ['commit'] and len(action) >= 2:
            return self._api_commit(repo_type, repo_id, action[1], query, token)
        if cmd == 'POST' and action[:1] == ['branch'] and len(action) >= 2:
            repo = hub._get_repo(repo_type, repo_id, token, write=True)
            branch = '/'.join(action[1:])
            if branch in repo.branches:
                raise HubHTTPError(409, f'Branch {branch} already exists')
            body = self._body()
            start = (json.loads(body) if body else {}).get('startingPoint') or 'main'
            repo.branches[branch] = self._commit_of(repo, start).sha
            return self._json({})
        if cmd == 'DELETE' and not action:
            repo = hub._get_repo(repo_type, repo_id, token, write=True)
            del hub._repos[(repo.repo_type, repo.repo_id)]
            return self._json({})
        return None

    def _form_paths(self) -> List[str]:
        body = self._body().decode()
        if self.headers.get('Content-Type', '').startswith('application/json'):
            paths = json.loads(body).get('paths', [])
            return [paths] if isinstance(paths, str) else list(paths)
        return parse_qs(body).get('paths', [])

    def _commit_of(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubHTTPError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        return commit

    def _info(self, repo: _Repo, commit: _Commit) -> Dict[str, Any]:
        date = time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(commit.date))
        return {
            'id': repo.repo_id, '_id': hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            'author': repo.repo_id.split('/')[0], 'sha': commit.sha, 'private': repo.private, 'gated': False,
            'disabled': False, 'downloads': 0, 'likes': 0, 'tags': [], 'lastModified': date, 'createdAt': date,
            'siblings': [
                {'rfilename': p, 'size': len(d), 'blobId': git_blob_sha1(d)} for p, d in sorted(commit.files.items())],
        }

    def _api_commit(
            self, repo_type: str, repo_id: str, revision: str, query: Dict[str, str], token: Optional[str],
    ) -> bool:
        hub = self.hub
        repo = hub._get_repo(repo_type, repo_id, token, write=True)
        if query.get('create_pr') in ('1', 'true'):
            raise HubHTTPError(400, 'FakeHub does not support pull requests')
        if revision not in repo.branches:
            if _SHA_RE.match(revision):
                raise HubHTTPError(400, 'Cannot commit to a commit id: pass a branch name as revision')
            raise HubHTTPError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        files = dict(repo.resolve(revision).files)
        message, changed = '', []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get('key'), item.get('value') or {}
            if key == 'header':
                message = value.get('summary') or ''
                parent = value.get('parentCommit')
                if parent and parent != repo.branches[revision]:
                    raise HubHTTPError(412, 'A commit has happened since. Please refresh and try again.')
            elif key == 'file':
                if value.get('encoding', 'base64') != 'base64':
                    raise HubHTTPError(400, f'unsupported encoding {value.get("encoding")}')
                files[value['path']] = base64.b64decode(value['content'])
                changed.append(value['path'])
            elif key == 'deletedFile':
                if value['path'] not in files:
                    raise HubHTTPError(404, "A file with this name doesn't exist", 'EntryNotFound')
                del files[value['path']]
                changed.append(value['path'])
            elif key == 'deletedFolder':
                base = value['path'].rstrip('/') + '/'
                for p in [p for p in files if p.startswith(base)]:
                    del files[p]
                    changed.append(p)
            elif key == 'lfsFile':
                raise HubHTTPError(400, 'FakeHub has no LFS storage: every preupload answers uploadMode "regular"')
            else:
                raise HubHTTPError(400, f'FakeHub does not support commit operation {key!r}')
        commit = hub._commit(repo, revision, files, message, changed)
        return self._json({
            'commitUrl': f'{hub._url(repo)}/commit/{commit.sha}', 'commitOid': commit.sha,
            'pullRequestUrl': None, 'success': True,
        })

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, token: Optional[str]) -> bool:
        hub = self.hub
        repo = hub._get_repo(repo_type, repo_id, token)
        commit = self._commit_of(repo, revision)
        if path not in commit.files:
            raise HubHTTPError(404, 'Entry not found', 'EntryNotFound')
        data = commit.files[path]
        headers = {
            'X-Repo-Commit': commit.sha, 'ETag': f'"{git_blob_sha1(data)}"', 'Accept-Ranges': 'bytes',
            'Last-Modified': formatdate(commit.date, usegmt=True),
            'Content-Disposition': f'inline; filename*=UTF-8\'\'{quote(path.split("/")[-1])};',
        }
        status, body = 200, data
        rng = self.headers.get('Range')
        if rng:
            span = _parse_range(rng, len(data))
            if span is None:
                raise HubHTTPError(416, f'Range not satisfiable: {rng}')
            status, body = 206, data[span[0]:span[1] + 1]
            headers['Content-Range'] = f'bytes {span[0]}-{span[1]}/{len(data)}'
        key = f'{repo_type}:{repo_id}:{path}'
        cut = None
        if self.command == 'GET' and key in hub._truncate:
            cut, left = hub._truncate.pop(key)
            if left > 1:
                hub._truncate[key] = (cut, left - 1)
        if cut is None:
            return self._send(status, body, headers, 'application/octet-stream')
        # simulated network failure: promise the full body, send a prefix, drop the connection
        self.send_response(status)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        return True
