"""core/download.py against a real HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import threading

# Bound at import: eventlet.wsgi (imported by other tests) rebinds http.server to its green copy, whose
# server would never answer from a plain thread.
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from whisper_appliance.core.download import download, partial_path
from whisper_appliance.core.errors import ApplianceError, Cancelled

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_writes_file_and_reports_increasing_progress(server_url, tmp_path):
    seen = []
    dest = tmp_path / "model.pt"
    result = download(f"{server_url}/model.pt", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                      progress=lambda done, total: seen.append((done, total)), chunk_size=64 * 1024)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    assert seen[0] == (0, len(PAYLOAD))
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and len(dones) > 2


def test_sha256_mismatch_raises_and_leaves_nothing(server_url, tmp_path):
    dest = tmp_path / "model.pt"
    with pytest.raises(ApplianceError) as err:
        download(f"{server_url}/model.pt", dest, sha256="0" * 64)
    assert err.value.code == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_cancel_between_chunks_leaves_nothing(server_url, tmp_path):
    cancel = threading.Event()
    dest = tmp_path / "model.pt"

    def progress(done, total):
        if done >= 128 * 1024:
            cancel.set()

    with pytest.raises(Cancelled):
        download(f"{server_url}/model.pt", dest, progress=progress, cancel=cancel, chunk_size=64 * 1024)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_reported(server_url, tmp_path):
    with pytest.raises(ApplianceError) as err:
        download(f"{server_url}/missing", tmp_path / "x.pt")
    assert err.value.code == "download_failed" and "404" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_fails_fast_with_clear_error(tmp_path):
    # Port 9 (discard) is closed on test machines: the connection is refused at once.
    with pytest.raises(ApplianceError) as err:
        download("http://127.0.0.1:9/model.pt", tmp_path / "x.pt", connect_timeout=2)
    assert err.value.code == "download_failed"
    assert list(tmp_path.iterdir()) == []
