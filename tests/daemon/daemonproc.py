"""A real ``swarmhub daemon`` process for tests: started on free loopback ports, driven
through its HTTP API, stopped (or killed) by PID."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from conftest import free_port
from interop.harness import VENV_PYTHON, Proc

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")

SPEC: dict[str, Any] = yaml.safe_load(
    resources.files("swarmhub.daemon").joinpath("openapi.yaml").read_text())
_REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:openapi", DRAFT202012.create_resource(SPEC))


def check_schema(path: str, method: str, status: int, body: Any) -> None:
    """Validate a response body against the daemon's OpenAPI response schema for it."""
    op = SPEC["paths"][path][method]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp["content"]["application/json"]["schema"]
    validator = Draft202012Validator({"$ref": "urn:openapi" + schema["$ref"]},
                                     registry=_REGISTRY)
    errors = sorted(validator.iter_errors(body), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0]}"


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Daemon:
    proc: Proc
    url: str
    state: Path
    token: str
    port: int
    args: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = "",
            raw: bytes | None = None, ctype: str | None = None) -> tuple[int, Any]:
        """One call; ``token=None`` sends none, ``""`` sends the daemon's own."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", ctype or "application/json")
        try:
            with _NO_PROXY.open(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, answer = self.api(method, path, body)
        assert code == status, (code, answer, self.proc.describe())
        return answer

    def add(self, torrent: Path, peers: list[str], **extra: Any) -> dict[str, Any]:
        body = {"torrent": base64.b64encode(torrent.read_bytes()).decode(),
                "filename": torrent.name, "peers": peers, **extra}
        t: dict[str, Any] = self.ok("POST", "/api/torrents", body, 201)
        check_schema("/api/torrents", "post", 201, t)
        return t

    def torrents(self) -> dict[str, dict[str, Any]]:
        answer = self.ok("GET", "/api/torrents")
        check_schema("/api/torrents", "get", 200, answer)
        return {t["id"]: t for t in answer["torrents"]}

    def peer_port(self) -> int:
        return int(self.ok("GET", "/api/session")["peer_port"])

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def start_daemon(state: Path, work: Path, name: str, *extra: str,
                 port: int | None = None, state_from_env: bool = False) -> Daemon:
    """Start a daemon on a free API port (peers on any free port) and wait until it serves;
    ``state_from_env`` gives the state folder as SWARMHUB_DAEMON_STATE, not --state."""
    port = port or free_port()
    env = {**os.environ, "SWARMHUB_CONFIG": str(work / "no-config.toml")}
    where = ["--state", str(state)]
    if state_from_env:
        env["SWARMHUB_DAEMON_STATE"] = str(state)
        where = []
    args = ["daemon", *where, "--listen", f"127.0.0.1:{port}",
            "--peer-listen", "127.0.0.1:0", "--stats-interval", "0.5", *extra]
    proc = Proc([*SWARMHUB, *args], env=env, name=name, log=work / f"{name}.log")
    try:
        proc.wait_for_line(lambda s: "daemon listening" in s, 60)
        token = (state / "api.token").read_text().strip()
    except BaseException:
        proc.stop()
        raise
    return Daemon(proc, f"http://127.0.0.1:{port}", state, token, port, args)


class EventReader:
    """Follows ``/api/events`` in a thread and keeps every (kind, data) it reads."""

    def __init__(self, daemon: Daemon) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        req = urllib.request.Request(daemon.url + "/api/events")
        req.add_header("Authorization", f"Bearer {daemon.token}")
        self._resp = _NO_PROXY.open(req, timeout=60)
        assert self._resp.headers["Content-Type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kind, data = "message", ""
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        self.events.append((kind, json.loads(data)))
                    kind, data = "message", ""
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
        except (OSError, ValueError, AttributeError):
            pass  # closed: by close(), or the daemon stopped (http.client drops its fp)

    def kinds(self, tid: str) -> list[str]:
        return [k for k, d in list(self.events) if d.get("id") == tid]

    def close(self) -> None:
        self._resp.close()
