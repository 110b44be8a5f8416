"""Test infrastructure: a local Hugging Face Hub for the Hub-loop tests.

Reads are served by `olah` (a real Hub-protocol mirror, PyPI) in offline mode from git repos under
its mirrors path. olah has no write routes, so `HubFront` sits in front of it on its own port:
it answers the part of the Hub's HTTP API that `huggingface_hub` uses for a regular (non-LFS)
commit -- whoami (one token), repo create, validate-yaml, preupload, and the NDJSON commit -- by committing into the
same git folders that olah serves, and forwards every other request to olah unchanged. The client
code under test is the real `huggingface_hub`, pointed here with HF_ENDPOINT.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from neopolyp_hf.serving.loopback import free_port

GIT = ["git", "-c", "user.name=hub", "-c", "user.email=hub@localhost", "-c", "commit.gpgsign=false"]
TOKEN = "hf_local_test_token"  # the one token this Hub accepts
REPO_PATH = r"/api/(?P<type>models|datasets|spaces)/(?P<org>[\w.-]+)/(?P<name>[\w.-]+)"


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def create_repo(mirrors: Path, repo_id: str, repo_type: str = "models") -> Path:
    """An empty git repo on branch main, where olah looks for it."""
    path = mirrors / repo_type / repo_id
    if not (path / ".git").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")
        git(path, "commit", "-q", "--allow-empty", "-m", "initial commit")
    return path


def commit_files(repo: Path, files: dict[str, bytes], deleted: list[str], message: str, branch: str = "main") -> str:
    """Commit `files` (path -> bytes) and deletions on `branch`; returns the commit id."""
    git(repo, "checkout", "-q", branch)
    for name, content in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        git(repo, "add", "--", name)
    for name in deleted:
        git(repo, "rm", "-q", "--ignore-unmatch", "--", name)
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class HubFront(BaseHTTPRequestHandler):
    """Write routes here; everything else proxied to olah."""

    mirrors: Path
    olah_port: int
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        if path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            with self.lock:
                create_repo(self.mirrors, repo_id, (request.get("type") or "model") + "s")
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        match = re.fullmatch(REPO_PATH + r"/preupload/(?P<rev>[^/]+)", path)
        if match:
            files = json.loads(body)["files"]
            return self._json(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ],
                    "commitOid": None,
                },
            )
        match = re.fullmatch(REPO_PATH + r"/commit/(?P<rev>[^/]+)", path)
        if match:
            return self._commit(match, body)
        self._json(404, {"error": f"test hub: no write route {path}"})

    def _commit(self, match: re.Match, body: bytes) -> None:
        repo = self.mirrors / match["type"] / match["org"] / match["name"]
        if not repo.is_dir():
            return self._json(404, {"error": "Repository not found"})
        summary, files, deleted = "commit", {}, []
        for line in body.decode().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value.get("summary") or summary
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return self._json(400, {"error": f"test hub: unsupported commit operation {item['key']}"})
        with self.lock:
            oid = commit_files(repo, files, deleted, summary, branch=match["rev"].replace("%2F", "/"))
        repo_id = f"{match['org']}/{match['name']}"
        self._json(
            200,
            {
                "commitOid": oid,
                "commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )

    def _proxy(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.olah_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")}
        connection.request(self.command, self.path, headers=headers)
        response = connection.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header(
            "Content-Length", str(len(data) if self.command != "HEAD" else response.getheader("Content-Length", "0"))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/api/whoami-v2":  # the token check a push makes before any work
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                return self._json(200, {"type": "user", "name": "tester", "auth": {"type": "access_token"}})
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        self._proxy()

    do_HEAD = _proxy


class LocalHub:
    """olah plus the write front, on free loopback ports; `endpoint` is what HF_ENDPOINT takes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors"
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.olah_port, self.port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._olah: subprocess.Popen | None = None
        self._server: ThreadingHTTPServer | None = None

    def start(self, timeout: float = 60) -> LocalHub:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.olah_port}\n'
            f'repos-path = "{self.root / "repos"}"\nmirrors-path = ["{self.mirrors}"]\n'
            'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
            "[accessibility]\noffline = true\n"
        )
        olah_cli = Path(sys.executable).with_name("olah-cli")
        self._log = open(self.root / "olah.log", "wb")  # noqa: SIM115 -- closed in stop()
        self._olah = subprocess.Popen(
            [str(olah_cli), "-c", str(config)],
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        handler = type("Front", (HubFront,), {"mirrors": self.mirrors, "olah_port": self.olah_port})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._olah.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.olah_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError("olah did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._olah is not None:
            self._olah.terminate()
            try:
                self._olah.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._olah.kill()
            self._olah = None
            self._log.close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
