"""Admission limits on the real server: a request over a cap is refused at once while everyone else is served."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import uuid

from tests.conftest import SPEECH_DIR
from tests.e2e.conftest import ServerProcess

JFK = SPEECH_DIR / "jfk.mp3"


class SlowUpload:
    """A multipart upload to ``path`` whose last bytes are held back until ``finish()``: the request is in the
    route (it has taken its places) for as long as the test wants."""

    def __init__(self, server: ServerProcess, path: str, audio: bytes) -> None:
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"jfk.mp3\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        self.body = head + audio + f"\r\n--{boundary}--\r\n".encode()
        context = ssl.create_default_context(cafile=str(server.cert_path))
        host, port = server.base_url.removeprefix("https://").split(":")
        self.conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=300)
        self.conn.putrequest("POST", path)
        self.conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders()
        self.conn.send(self.body[:1000])

    def finish(self) -> tuple[int, dict]:
        self.conn.send(self.body[1000:])
        resp = self.conn.getresponse()
        out = resp.status, json.loads(resp.read())
        self.conn.close()
        return out


def refused_while(server: ServerProcess, send, status: int, deadline_s: float = 60) -> dict:
    """``send()`` until it is refused with ``status`` (the slow upload must first reach its route)."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = send()
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return r


def test_over_the_caps_is_503_with_retry_after_while_health_answers(start_server):
    audio = JFK.read_bytes()
    server = start_server(MAX_CONCURRENT_TRANSCRIPTIONS="1", MAX_UPLOAD_SIZE=str(len(audio) + 1000),
                          MAX_SPOOLED_UPLOAD_BYTES=str(len(audio) + 1500))
    api = server.session()
    slow = SlowUpload(server, "/transcribe", audio)

    def transcribe():
        return api.post(server.url("/transcribe"), files={"audio": ("jfk.mp3", audio)}, timeout=300)

    busy = refused_while(server, transcribe, 503)
    assert busy.json()["error"]["code"] == "server_busy" and busy.headers["Retry-After"] == "5"
    assert "MAX_CONCURRENT_TRANSCRIPTIONS" in busy.json()["error"]["message"]
    # An async job is no synchronous transcription, but its bytes would pass MAX_SPOOLED_UPLOAD_BYTES.
    job = api.post(server.url("/api/jobs"), files={"audio": ("jfk.mp3", audio)}, timeout=300)
    assert job.status_code == 503 and job.json()["error"]["code"] == "upload_capacity", job.text
    assert job.headers["Retry-After"]
    assert api.get(server.url("/health"), timeout=30).status_code == 200
    assert api.get(server.url("/api/history"), timeout=30).status_code == 200

    status, body = slow.finish()
    assert status == 200 and "country" in body["text"].lower()
    assert transcribe().status_code == 200  # the place is free again


def test_one_client_at_its_share_gets_429_and_others_still_get_in(start_server):
    audio = JFK.read_bytes()
    server = start_server(MAX_CONCURRENT_TRANSCRIPTIONS_PER_CLIENT="1")
    guest = server.session()
    slow = SlowUpload(server, "/transcribe", audio)  # the guest at 127.0.0.1

    def transcribe(session):
        return session.post(server.url("/transcribe"), files={"audio": ("jfk.mp3", audio)}, timeout=300)

    limited = refused_while(server, lambda: transcribe(guest), 429)
    assert limited.json()["error"]["code"] == "too_many_concurrent_transcriptions"
    assert limited.headers["Retry-After"]
    # Another principal (the API_KEYS token's account) has its own share.
    assert transcribe(server.session(token=server.token)).status_code == 200
    assert slow.finish()[0] == 200


def test_the_data_files_the_server_creates_are_its_own_alone(server):
    """The process runs with umask 077: the database is 0600, its directories 0700 (server.PRIVATE_UMASK)."""
    assert server.session().get(server.url("/health"), timeout=30).status_code == 200
    assert oct((server.data_dir / "appliance.db").stat().st_mode & 0o777) == "0o600"
    for directory in (server.data_dir, server.ssl_dir):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    jobs_and_spool = [p for p in (server.data_dir / "jobs", server.data_dir / "tmp") if p.exists()]
    for directory in jobs_and_spool:
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
