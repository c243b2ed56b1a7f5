"""A small Hugging Face Hub-compatible HTTP server for end-to-end tests, on 127.0.0.1.

It implements just what `huggingface_hub` 2.x calls to push and pull model and Space repos
({type} is "models" or "spaces"; {prefix} is "" for models, "spaces/" for Spaces):

    GET  /api/whoami-v2                             the token's user and role (401 if invalid)
    POST /api/repos/create                          create a repo (409 if it exists); Spaces need an sdk
    POST /api/validate-yaml                         check a README's YAML front matter
    GET  /api/{type}/{repo}[/revision/{rev}]        repo info: sha of the revision, files (, sdk)
    GET  /api/{type}/{repo}/tree/{rev}[/{path}]     the files of a revision (snapshot_download)
    POST /api/{type}/{repo}/branch/{branch}         create a branch (409 if it exists)
    POST /api/{type}/{repo}/preupload/{rev}         upload mode per file: "lfs" or "regular"
    POST /{prefix}{repo}.git/info/lfs/objects/batch LFS upload instructions (basic transfer)
    PUT  /lfs-upload/{sha256}                       receive an LFS object
    POST /api/{type}/{repo}/commit/{rev}            NDJSON commit: header, file, lfsFile, deletedFile;
                                                    412 if header.parentCommit is not the branch head
    HEAD/GET /{prefix}{repo}/resolve/{rev}/{path}   a file at a revision, with X-Repo-Commit and ETag
    GET/POST/DELETE /api/spaces/{repo}/variables    a Space's variables (read: anyone who can read it)

Errors carry the `X-Error-Code` header the client maps to its exceptions (RepoNotFound,
RevisionNotFound, EntryNotFound). Commits get 40-hex ids and each branch keeps its whole
history, so pulling an old commit by sha works. Files matching the `.gitattributes` the Hub
writes into new repos (`*.safetensors`, `*.png`, ...) are LFS files; the server speaks the
legacy LFS protocol, not Xet, so clients must run with `HF_HUB_DISABLE_XET=1`.

Test hooks: `tokens` (token → user), `read_only` (tokens whose role is "read"),
`fail_next(route, mode)` to inject a server error
("500") or a dropped connection ("drop") into the next request on a route, `gate(route, n)` to
hold the next n requests on a route until all n have arrived (then serve them in arrival
order: a race made certain), `delays` (repo id → seconds every request naming that repo
waits: a slow or hanging Hub), `requests` (a log of (method, path)), and `put_commit` to seed
repos with arbitrary files. Model repos are in `repos`, Spaces in `spaces` (the same id can be
both, as on the Hub).

    python tests/hub_server.py --port 8000 --token hf_test   # HF_ENDPOINT=http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = ("*.safetensors", "*.png", "*.bin", "*.pt")
GITATTRIBUTES = "".join(f"{pat} filter=lfs diff=lfs merge=lfs -text\n" for pat in LFS_PATTERNS).encode()
REPO_TYPES = ("model", "space")
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")


def git_oid(data: bytes) -> str:
    """git's blob id: sha1 of "blob <size>\\0" + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """The Hub's oid: sha256 for LFS files, the git blob id for regular files."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_oid(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    sdk: str | None = None                                       # Spaces only
    variables: dict[str, dict] = field(default_factory=dict)     # Spaces only: key → value, description

    def resolve(self, rev: str) -> str | None:
        """A branch name or a full commit sha → commit sha (None if unknown)."""
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 **body):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.body = status, message, code, commit, body


class Gate:
    """Holds `n` requests until all have arrived, then lets them through one at a time."""

    def __init__(self, n: int):
        self.n, self.claimed, self.arrived, self.turn = n, 0, 0, 0
        self.cond = threading.Condition()

    def enter(self) -> None:
        with self.cond:
            me, self.arrived = self.arrived, self.arrived + 1
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.arrived >= self.n and self.turn == me, timeout=120):
                raise HubError(500, "gate: not all held requests arrived in time")

    def leave(self) -> None:
        with self.cond:
            self.turn += 1
            self.cond.notify_all()


class HubServer:
    """The Hub's state plus a threaded HTTP server serving it on 127.0.0.1 (random port)."""

    def __init__(self, tokens: dict[str, str] | None = None, port: int = 0):
        self.tokens = dict(tokens or {})
        self.read_only: set[str] = set()  # tokens whose role is "read": whoami says so, writes fail
        self.repos: dict[str, Repo] = {}    # model repos
        self.spaces: dict[str, Repo] = {}   # Space repos
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: dict[str, list[str]] = {}
        self.gates: dict[str, Gate] = {}
        self.delays: dict[str, float] = {}
        self.lock = threading.RLock()
        self._counter = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- test hooks ---------------------------------------------------------------------------
    def fail_next(self, route: str, mode: str = "500") -> None:
        """Make the next request on `route` ("commit", "lfs-upload", "resolve", ...) fail:
        "500" answers an internal server error, "drop" closes the connection unanswered."""
        with self.lock:
            self.failures.setdefault(route, []).append(mode)

    def gate(self, route: str, n: int) -> None:
        """Hold the next `n` requests on `route` until all have arrived, then serve them one
        by one in arrival order (e.g. two pushes that both read the branch head first)."""
        with self.lock:
            self.gates[route] = Gate(n)

    def store(self, repo_type: str | None) -> dict[str, Repo]:
        """The repos of one type: "model" (default) or "space"."""
        return self.spaces if repo_type == "space" else self.repos

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str | None:
        with self.lock:
            repo = self.store(repo_type).get(repo_id)
            return repo.branches.get(branch) if repo else None

    def files(self, repo_id: str, rev: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            repo = self.store(repo_type)[repo_id]
            return {p: f.data for p, f in repo.commits[repo.resolve(rev)].files.items()}

    def history(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits of a branch, newest first."""
        with self.lock:
            repo, out = self.store(repo_type)[repo_id], []
            oid = repo.branches.get(branch)
            while oid is not None:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out

    def put_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main",
                   message: str = "seed", repo_type: str = "model") -> str:
        """Create the (public) repo if needed and commit `files` on top of `branch`: test seeding."""
        with self.lock:
            repo = (self.store(repo_type).get(repo_id)
                    or self._create_repo(repo_id, repo_id.split("/")[0], False, repo_type,
                                         "gradio" if repo_type == "space" else None))
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent].files) if parent else {}
            tree.update({p: StoredFile(d, _is_lfs(p)) for p, d in files.items()})
            return self._commit(repo, branch, parent, message, tree)

    # -- state changes (called with the lock held) ---------------------------------------------
    def _create_repo(self, repo_id: str, owner: str, private: bool, repo_type: str = "model",
                     sdk: str | None = None) -> Repo:
        repo = self.store(repo_type)[repo_id] = Repo(owner=owner, private=private, sdk=sdk)
        tree = {".gitattributes": StoredFile(GITATTRIBUTES, False)}
        if repo_type == "space":  # as the Hub does: a card naming the SDK
            card = f"---\ntitle: {repo_id.split('/')[1]}\nsdk: {sdk}\n---\n"
            tree["README.md"] = StoredFile(card.encode(), False)
        self._commit(repo, "main", None, "initial commit", tree)
        return repo

    def _commit(self, repo: Repo, branch: str, parent: str | None, message: str,
                tree: dict[str, StoredFile]) -> str:
        self._counter += 1
        digest = json.dumps([parent, message, sorted((p, f.oid) for p, f in tree.items()),
                             self._counter]).encode()
        oid = hashlib.sha1(digest).hexdigest()
        repo.commits[oid] = Commit(oid, parent, message, tree)
        repo.branches[branch] = oid
        return oid


def space_card_errors(meta: dict) -> list[str]:
    """What the Hub checks in a Space card's front matter, as far as these tests need."""
    errors = []
    if meta.get("sdk") not in SPACE_SDKS:
        errors.append(f'"sdk" must be one of {SPACE_SDKS}')
    models = meta.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m.count("/") == 1 for m in models):
        errors.append('"models" must be a list of model repo ids "owner/name"')
    return errors


def _is_lfs(path: str) -> bool:
    return any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pat) for pat in LFS_PATTERNS)


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_DELETE(self):
            self._dispatch("DELETE")

        # -- plumbing --------------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            path, self.query = url.path, parse_qs(url.query)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            with hub.lock:
                hub.requests.append((method, path))
                delay = max((t for repo, t in hub.delays.items() if f"/{repo}/" in path + "/"),
                            default=0)
            if delay:
                time.sleep(delay)
            body = self._read_body()
            gate = None
            try:
                route, handler, args = self._route(method, parts)
                with hub.lock:
                    pending = hub.failures.get(route)
                    mode = pending.pop(0) if pending else None
                    gate = hub.gates.get(route)
                    if gate is not None:
                        gate.claimed += 1
                        if gate.claimed == gate.n:  # the last request it holds
                            del hub.gates[route]
                if gate is not None:
                    gate.enter()
                if mode == "drop":
                    self.close_connection = True
                    return
                if mode == "500":
                    raise HubError(500, "injected internal server error")
                handler(body, *args)
            except HubError as e:
                headers = {"X-Error-Message": e.message}
                if e.code:
                    headers["X-Error-Code"] = e.code
                if e.commit:
                    headers["X-Repo-Commit"] = e.commit
                self._json(e.status, {"error": e.message, **e.body}, headers)
            finally:
                if gate is not None:
                    gate.leave()

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline().strip():
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers or {}, "application/json")

        def _route(self, method: str, p: list[str]):
            if method == "POST" and p == ["api", "repos", "create"]:
                return "create", self.create_repo, ()
            if method == "GET" and p == ["api", "whoami-v2"]:
                return "whoami", self.whoami, ()
            if method == "POST" and p == ["api", "validate-yaml"]:
                return "validate-yaml", self.validate_yaml, ()
            if len(p) >= 4 and p[0] == "api" and p[1] in ("models", "spaces"):
                kind_of = p[1][:-1]
                repo, rest = (kind_of, f"{p[2]}/{p[3]}"), p[4:]
                if method == "GET" and not rest:
                    return "info", self.repo_info, (repo, "main")
                if kind_of == "space" and rest == ["variables"]:
                    handlers = {"GET": self.get_variables, "POST": self.add_variable,
                                "DELETE": self.delete_variable}
                    if method in handlers:
                        return "variables", handlers[method], (repo,)
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    return "tree", self.tree, (repo, rest[1], "/".join(rest[2:]))
                if len(rest) == 2:
                    kind, rev = rest
                    if method == "GET" and kind == "revision":
                        return "info", self.repo_info, (repo, rev)
                    posts = {"preupload": self.preupload, "commit": self.commit, "branch": self.create_branch}
                    if method == "POST" and kind in posts:
                        return kind, posts[kind], (repo, rev)
            kind_of, q = ("space", p[1:]) if p[:1] == ["spaces"] else ("model", p)
            if method == "POST" and len(q) == 6 and q[1].endswith(".git") and q[2:] == ["info", "lfs",
                                                                                      "objects", "batch"]:
                return "lfs-batch", self.lfs_batch, ((kind_of, f"{q[0]}/{q[1][:-4]}"),)
            if method == "PUT" and len(p) == 2 and p[0] == "lfs-upload":
                return "lfs-upload", self.lfs_upload, (p[1],)
            if method in ("GET", "HEAD") and len(q) >= 5 and q[2] == "resolve":
                return "resolve", self.resolve, ((kind_of, f"{q[0]}/{q[1]}"), q[3], "/".join(q[4:]))
            raise HubError(404, f"no route for {method} {self.path}")

        # -- auth ------------------------------------------------------------------------------
        def _user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if not auth:
                return None
            user = hub.tokens.get(auth.removeprefix("Bearer ").strip())
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            return user

        def _token(self) -> str:
            return self.headers.get("Authorization", "").removeprefix("Bearer ").strip()

        def _readable(self, repo: tuple[str, str]) -> Repo:
            """`repo` is (repo type, repo id)."""
            user = self._user()
            found = hub.store(repo[0]).get(repo[1])
            if found is None or (found.private and user != found.owner):
                raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
            return found

        def _writable(self, repo_id: tuple[str, str]) -> Repo:
            repo = self._readable(repo_id)
            if self._user() != repo.owner or self._token() in hub.read_only:
                raise HubError(403, "You don't have the rights to write to this repo")
            return repo

        def _revision(self, repo: Repo, rev: str) -> str:
            oid = repo.resolve(rev)
            if oid is None:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return oid

        # -- endpoints -------------------------------------------------------------------------
        def create_repo(self, body: bytes) -> None:
            user = self._user()
            if user is None:
                raise HubError(401, "You must be authenticated to create a repo")
            if self._token() in hub.read_only:
                raise HubError(403, "This token is read-only")
            payload = json.loads(body)
            namespace = payload.get("organization") or user
            if namespace != user:
                raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
            repo_id = f"{namespace}/{payload['name']}"
            repo_type = payload.get("type") or "model"
            if repo_type not in REPO_TYPES:
                raise HubError(400, f"this test server has no {repo_type} repos")
            sdk = payload.get("sdk")
            if repo_type == "space" and sdk not in SPACE_SDKS:
                raise HubError(400, f"a Space needs an sdk, one of {SPACE_SDKS}")
            url = f"{hub.url}/{'spaces/' if repo_type == 'space' else ''}{repo_id}"
            with hub.lock:
                if repo_id in hub.store(repo_type):
                    raise HubError(409, f"You already created this {repo_type} repo", url=url)
                private = payload.get("visibility") == "private" or bool(payload.get("private"))
                hub._create_repo(repo_id, user, private, repo_type, sdk)
            self._json(200, {"url": url, "name": repo_id})

        def whoami(self, body: bytes) -> None:
            user = self._user()
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            role = "read" if self._token() in hub.read_only else "write"
            self._json(200, {"type": "user", "name": user, "orgs": [],
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "test", "role": role}}})

        def validate_yaml(self, body: bytes) -> None:
            payload = json.loads(body)
            content, errors = payload["content"], []
            if content.startswith("---\n") and "\n---" in content[3:]:
                try:
                    meta = yaml.safe_load(content[4:content.index("\n---", 3)])
                    if not isinstance(meta, dict):
                        errors.append("metadata must be a YAML mapping")
                    elif payload.get("repoType") == "space":
                        errors += space_card_errors(meta)
                except yaml.YAMLError as e:
                    errors.append(f"invalid YAML: {e}")
            status = 400 if errors else 200
            self._json(status, {"errors": [{"message": m} for m in errors], "warnings": []})

        def repo_info(self, body: bytes, repo: tuple[str, str], rev: str) -> None:
            with hub.lock:
                found = self._readable(repo)
                oid = self._revision(found, rev)
                files = sorted(found.commits[oid].files)
            info = {"id": repo[1], "author": found.owner, "sha": oid, "private": found.private,
                    "siblings": [{"rfilename": f} for f in files]}
            if repo[0] == "space":
                info["sdk"] = found.sdk
            self._json(200, info)

        def tree(self, body: bytes, repo: tuple[str, str], rev: str, folder: str) -> None:
            """Files of a revision (recursive listing; one page, no pagination needed here)."""
            with hub.lock:
                found = self._readable(repo)
                files = found.commits[self._revision(found, rev)].files
            prefix = f"{folder}/" if folder else ""
            entries = []
            for path, f in sorted(files.items()):
                if not path.startswith(prefix):
                    continue
                entry = {"type": "file", "path": path, "size": len(f.data), "oid": git_oid(f.data)}
                if f.lfs:
                    entry["lfs"] = {"oid": f.oid, "size": len(f.data), "pointerSize": 134}
                entries.append(entry)
            self._json(200, entries)

        def get_variables(self, body: bytes, repo: tuple[str, str]) -> None:
            with hub.lock:
                variables = dict(self._readable(repo).variables)
            self._json(200, variables)

        def add_variable(self, body: bytes, repo: tuple[str, str]) -> None:
            payload = json.loads(body)
            key, value = payload.get("key"), payload.get("value")
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise HubError(400, "a variable needs a key and a string value")
            with hub.lock:
                found = self._writable(repo)
                found.variables[key] = {"value": value, "description": payload.get("description"),
                                        "updatedAt": "2026-01-01T00:00:00.000Z"}
                variables = dict(found.variables)
            self._json(200, variables)

        def delete_variable(self, body: bytes, repo: tuple[str, str]) -> None:
            key = json.loads(body).get("key")
            with hub.lock:
                found = self._writable(repo)
                found.variables.pop(key, None)
                variables = dict(found.variables)
            self._json(200, variables)

        def create_branch(self, body: bytes, repo_id: tuple[str, str], branch: str) -> None:
            payload = json.loads(body or b"{}")
            with hub.lock:
                repo = self._writable(repo_id)
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                repo.branches[branch] = self._revision(repo, payload.get("startingPoint") or "main")
            self._json(200, {})

        def preupload(self, body: bytes, repo_id: tuple[str, str], rev: str) -> None:
            with hub.lock:
                repo = self._writable(repo_id)
                tree = repo.commits[self._revision(repo, rev)].files
            out = []
            for f in json.loads(body)["files"]:
                existing = tree.get(f["path"])
                out.append({"path": f["path"], "uploadMode": "lfs" if _is_lfs(f["path"]) else "regular",
                            "shouldIgnore": False, "oid": existing.oid if existing else None})
            self._json(200, {"files": out})

        def lfs_batch(self, body: bytes, repo_id: tuple[str, str]) -> None:
            with hub.lock:
                self._writable(repo_id)
                stored = set(hub.lfs)
            objects = []
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in stored:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}",
                                                   "header": {}}}
                objects.append(entry)
            self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), {},
                       "application/vnd.git-lfs+json")

        def lfs_upload(self, body: bytes, oid: str) -> None:
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "uploaded content does not match its sha256")
            with hub.lock:
                hub.lfs[oid] = body
            self._send(200, b"", {"ETag": f'"{oid}"'}, "text/plain")

        def commit(self, body: bytes, repo_id: tuple[str, str], rev: str) -> None:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                raise HubError(400, "a commit starts with a header line")
            header = lines[0]["value"]
            with hub.lock:
                repo = self._writable(repo_id)
                if rev not in repo.branches:
                    raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
                parent = repo.branches[rev]
                if header.get("parentCommit") not in (None, parent):
                    raise HubError(412, "parent commit is not the head of the branch")
                tree = dict(repo.commits[parent].files)
                for line in lines[1:]:
                    key, value = line["key"], line["value"]
                    if key == "file":
                        tree[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
                    elif key == "lfsFile":
                        data = hub.lfs.get(value["oid"])
                        if data is None or len(data) != value.get("size", len(data)):
                            raise HubError(400, f"LFS object {value['oid']} was not uploaded")
                        tree[value["path"]] = StoredFile(data, True)
                    elif key == "deletedFile":
                        tree.pop(value["path"], None)
                    else:
                        raise HubError(400, f"unsupported commit operation {key!r}")
                oid = hub._commit(repo, rev, parent, header["summary"], tree)
            where = f"{'spaces/' if repo_id[0] == 'space' else ''}{repo_id[1]}"
            self._json(200, {"commitUrl": f"{hub.url}/{where}/commit/{oid}", "commitOid": oid,
                             "success": True})

        def resolve(self, body: bytes, repo_id: tuple[str, str], rev: str, path: str) -> None:
            with hub.lock:
                repo = self._readable(repo_id)
                oid = self._revision(repo, rev)
                f = repo.commits[oid].files.get(path)
            if f is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=oid)
            self._send(200, f.data, {"X-Repo-Commit": oid, "ETag": f'"{f.oid}"'},
                       "application/octet-stream")

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description="Serve a Hub-compatible test endpoint on 127.0.0.1.")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default="hf_test", help="a token the server accepts")
    p.add_argument("--user", default="user", help="the user that token belongs to")
    args = p.parse_args()
    hub = HubServer({args.token: args.user}, port=args.port)
    print(f"serving at {hub.url} (token {args.token!r} → user {args.user!r}); Ctrl-C stops")
    try:
        hub.httpd.serve_forever()
    except KeyboardInterrupt:
        hub.httpd.server_close()


if __name__ == "__main__":
    main()
