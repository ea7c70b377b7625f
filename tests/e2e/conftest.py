"""End-to-end fixtures: the real server started as a subprocess over HTTPS with a generated certificate.

``server`` is one shared appliance (tiny.en, eventlet, HTTP redirect on) for the whole session;
``start_server(**env)`` starts extra ones with their own settings and data folder (degraded mode, REQUIRE_AUTH,
restarts). ``api`` is a ``requests`` session that trusts the generated certificate.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _load_bench_live():
    """scripts/bench_live.py: its Socket.IO clients and chunking helpers are the ones the e2e tests use."""
    spec = importlib.util.spec_from_file_location("bench_live", ROOT / "scripts" / "bench_live.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_live", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


bench = _load_bench_live()
ADMIN_PASSWORD = "e2e-admin-password"
LIVE_RESUME_SECONDS = 5
API_TOKEN = "e2e-test-token-0123456789"

# This machine sets these, and they override `verify=` in requests: tests talk to our self-signed server.
for _var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_var, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    base_url: str
    http_url: str
    cert_path: Path
    data_dir: Path
    ssl_dir: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    admin_password: str = ADMIN_PASSWORD
    token: str = API_TOKEN
    extra: dict = field(default_factory=dict)

    def session(self, *, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.verify = str(self.cert_path)
        s.trust_env = False
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        return s

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *, wait_ready: bool = True, timeout: float = 180) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "main.py"), "serve"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        try:
            self.wait_up(ready=wait_ready, timeout=timeout)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        return self

    def wait_up(self, *, ready: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        s = self.session()
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            try:
                r = s.get(self.url("/health"), timeout=2)
                last = r.status_code
                if r.status_code == 200 or (not ready and r.status_code == 503):
                    return
            except (requests.RequestException, OSError) as exc:  # OSError: the certificate is not written yet
                last = exc
            time.sleep(0.25)
        raise RuntimeError(f"server not up after {timeout} s (last: {last}):\n{self.log()[-5000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def make_server(tmp: Path, **env_overrides: str) -> ServerProcess:
    https_port, http_port = free_port(), free_port()
    data_dir, ssl_dir = tmp / "data", tmp / "ssl"
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update({
        "HOST": "127.0.0.1", "HTTPS_PORT": str(https_port), "HTTP_PORT": str(http_port), "HTTP_REDIRECT": "true",
        "DATA_DIR": str(data_dir), "SSL_DIR": str(ssl_dir), "MODELS_DIR": str(ROOT / "models"),
        "WHISPER_MODEL": "tiny.en", "WHISPER_ENGINE": "faster-whisper", "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "API_KEYS": API_TOKEN, "LOG_LEVEL": "INFO", "MODEL_DOWNLOADS": "false", "CPU_THREADS": "2",
        "PYTHONUNBUFFERED": "1",
        # A dropped live connection waits this long for a resume (30 s by default): tests that drop one see it
        # saved soon after.
        "LIVE_RESUME_SECONDS": str(LIVE_RESUME_SECONDS),
        # Every test talks from 127.0.0.1, and schemathesis' auth checks send hundreds of wrong tokens a minute:
        # at the default (100 per minute) the next test's right token would be refused too. The limit itself is
        # tested on apps of its own (tests/unit/test_auth_plugin.py).
        "AUTH_TOKEN_FAILURE_LIMIT": "100000 per minute",
    })
    env.update(env_overrides)
    return ServerProcess(base_url=f"https://127.0.0.1:{https_port}", http_url=f"http://127.0.0.1:{http_port}",
                         cert_path=ssl_dir / "cert.pem", data_dir=data_dir, ssl_dir=ssl_dir,
                         log_path=tmp / "server.log", env=env)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = make_server(tmp_path_factory.mktemp("server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*, wait_ready: bool = True, tmp: Path | None = None, **env: str) -> ServerProcess:
        srv = make_server(tmp or tmp_path_factory.mktemp("extra-server"), **env)
        started.append(srv)
        return srv.start(wait_ready=wait_ready)

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def api(server: ServerProcess) -> requests.Session:
    return server.session()


def login(server: ServerProcess, username: str = "admin", password: str | None = None) -> requests.Session:
    """A session logged in through POST /api/auth/login, sending the CSRF token on changes."""
    s = server.session()
    r = s.post(server.url("/api/auth/login"), json={"username": username,
                                                   "password": password or server.admin_password}, timeout=30)
    assert r.status_code == 200, r.text
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return s


@pytest.fixture
def admin(server: ServerProcess) -> requests.Session:
    """A session logged in as the admin account, sending the CSRF token on changes."""
    return login(server)


def create_user(server: ServerProcess, admin: requests.Session, prefix: str = "user", role: str = "user",
                password: str = "a long e2e password") -> tuple[str, str]:
    """A new account on the (shared) server with a name no other test uses; returns (username, password)."""
    username = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = admin.post(server.url("/api/admin/users"), json={"username": username, "password": password, "role": role},
                   timeout=30)
    assert r.status_code == 201, r.text
    return username, password
