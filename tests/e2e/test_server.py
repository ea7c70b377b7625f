"""The real server over HTTPS: TLS, redirect, headers, POST /transcribe, bad input, degraded mode, auth, metrics."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.conftest import SPEECH_DIR, reference_text
from tests.e2e.conftest import ServerProcess, bench, make_server
from whisper_appliance.core.wer import word_error_rate

JFK = SPEECH_DIR / "jfk.mp3"
MEETING = SPEECH_DIR / "synthetic_meeting.wav"


def transcribe(session: requests.Session, server: ServerProcess, path: Path, field: str = "audio", **form):
    with open(path, "rb") as f:
        return session.post(server.url("/transcribe"), files={field: (path.name, f)}, data=form, timeout=300)


def tmp_files(server: ServerProcess) -> list[str]:
    tmp = server.data_dir / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


# -- TLS, redirect, headers -------------------------------------------------------------------------------------
def test_generated_certificate_covers_loopback_and_key_is_private(server):
    cert = x509.load_pem_x509_certificate(server.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= ips
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE((server.ssl_dir / "key.pem").stat().st_mode) == 0o600
    # A strict client (hostname check on, trusting only this certificate) completes the handshake.
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_redirects_with_308_to_the_same_path(server):
    r = requests.get(server.http_url + "/api/history?q=a%20b&limit=5", allow_redirects=False, timeout=5)
    assert r.status_code == 308
    assert r.headers["Location"] == server.base_url + "/api/history?q=a%20b&limit=5"
    r = requests.post(server.http_url + "/transcribe", data=b"x", allow_redirects=False, timeout=5)
    assert r.status_code == 308


def test_security_headers(api, server):
    r = api.get(server.url("/health"), timeout=5)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_health_and_status(api, server):
    body = api.get(server.url("/health"), timeout=5).json()
    assert body["status"] == "ok" and body["model"] == {"name": "tiny.en", "state": "ready",
                                                        "engine": "faster-whisper"}
    status = api.get(server.url("/api/status"), timeout=5).json()
    assert status["model"]["state"] == "ready" and status["model"]["compute_type"] == "int8"
    assert status["system"]["memory"]["total"] > 0 and "queue" in status


# -- POST /transcribe ---------------------------------------------------------------------------------------------
def test_transcribe_json_reply(api, server):
    r = transcribe(api, server, JFK, word_timestamps="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert word_error_rate(reference_text("jfk"), body["text"]) <= 0.05
    assert body["language"] == "en" and body["model"] == "tiny.en" and body["engine"] == "faster-whisper"
    assert 10.5 < body["duration"] < 11.5
    # Another test may have sent the same file and options first: then the stored result comes back at once.
    assert body["processing_seconds"] > 0 or body["cached"] is True
    assert body["timestamp"].endswith("Z")
    seg = body["segments"][0]
    assert {"id", "start", "end", "text", "words"} <= set(seg)
    assert seg["words"][0]["start"] <= seg["words"][-1]["end"]


def test_seed_field_name_file_also_works(api, server):
    r = transcribe(api, server, JFK, field="file", output="txt")
    assert r.status_code == 200
    assert "ask not what your country" in r.text.lower()


@pytest.mark.parametrize("fmt,ctype,marker", [("srt", "application/x-subrip", "00:00:00,000 --> "),
                                              ("vtt", "text/vtt", "WEBVTT"),
                                              ("tsv", "text/tab-separated-values", "start\tend\ttext"),
                                              ("txt", "text/plain", "country")])
def test_transcribe_other_formats(api, server, fmt, ctype, marker):
    r = transcribe(api, server, JFK, output=fmt)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(ctype)
    assert f'filename="jfk.{fmt}"' in r.headers["Content-Disposition"]
    assert marker in r.text


def test_other_model_is_a_409_naming_the_loaded_one(api, server):
    r = transcribe(api, server, JFK, model="large-v3")
    assert r.status_code == 409
    assert "tiny.en" in r.json()["error"]["message"]


# -- bad input: clear error, right status, nothing left behind, server keeps serving --------------------------------
def _bad_inputs(tmp_path: Path) -> list[tuple[str, tuple | None, dict, int]]:
    png = tmp_path / "image.png"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=32x32", "-frames:v", "1",
                    str(png)], check=True)
    half = (SPEECH_DIR / "cards_005.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(half[: len(half) // 2])
    rnd = tmp_path / "random.mp3"
    rnd.write_bytes(os.urandom(50_000))
    return [
        ("no file", None, {}, 400),
        ("empty file", ("empty.wav", b""), {}, 400),
        ("random bytes", ("random.mp3", rnd.read_bytes()), {}, 415),
        ("a PNG", ("image.png", png.read_bytes()), {}, 415),
        ("a WAV cut in half", ("cut.wav", cut.read_bytes()), {}, 415),
        ("unknown output", ("jfk.mp3", JFK.read_bytes()), {"output": "docx"}, 400),
        ("unknown language", ("jfk.mp3", JFK.read_bytes()), {"language": "xx"}, 400),
        ("bad beam size", ("jfk.mp3", JFK.read_bytes()), {"beam_size": "lots"}, 400),
    ]


def test_bad_input_gets_clear_errors_and_server_keeps_serving(api, server, tmp_path):
    for name, file, form, status in _bad_inputs(tmp_path):
        files = {"audio": file} if file else None
        r = api.post(server.url("/transcribe"), files=files, data=form or {"language": "en"}, timeout=60)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] and err["message"], name
        assert tmp_files(server) == [], name
    # ... and the next good request still works
    assert transcribe(api, server, SPEECH_DIR / "goforward.wav").status_code == 200
    assert tmp_files(server) == []


def test_not_multipart_is_a_400(api, server):
    r = api.post(server.url("/transcribe"), data=b"\x00" * 100, headers={"Content-Type": "audio/wav"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"


def test_unknown_route_and_method_are_json_errors(api, server):
    r = api.get(server.url("/no/such/route"), timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.get(server.url("/transcribe"), timeout=5)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_oversized_upload_is_refused_before_the_body_is_read(start_server, tmp_path):
    srv = start_server(MAX_UPLOAD_SIZE="500KB", HTTP_REDIRECT="false")
    s = srv.session()
    big = tmp_path / "big.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anoisesrc=d=30:a=0.1", "-ar", "16000",
                    str(big)], check=True)  # ~960 KB of real audio
    r = s.post(srv.url("/transcribe"), files={"audio": ("big.wav", big.read_bytes())}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # Announce 200 MB, send only the headers and a few bytes: the answer must come without the rest.
    ctx = ssl.create_default_context(cafile=str(srv.cert_path))
    port = int(srv.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST /transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 209715200\r\n\r\n--xyz\r\n")
        tls.settimeout(10)
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    assert tmp_files(srv) == []
    assert transcribe(s, srv, JFK).status_code == 200


def test_idle_connections_are_capped_per_address_and_timed_out(start_server):
    # Before: ~1,024 idle connections (never a byte sent) blocked accept and the server was unreachable.
    cap = 5
    srv = start_server(MAX_CONNECTIONS_PER_IP=str(cap), KEEPALIVE_TIMEOUT="8", SOCKET_TIMEOUT="8",
                       HTTP_REDIRECT="false")
    port = int(srv.base_url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(cap)]
    try:
        # One more connection from the same address is closed at once: its TLS handshake cannot complete.
        ctx = ssl.create_default_context(cafile=str(srv.cert_path))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()
        # The idle ones are closed by the server after KEEPALIVE_TIMEOUT (recv sees the end, not our 60 s).
        for conn in idle:
            assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
    assert srv.session().get(srv.url("/health"), timeout=10).status_code == 200


# -- the event loop never blocks ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_minute_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long") / "three_minutes.wav"
    inputs: list[str] = []
    for _ in range(7):
        inputs += ["-i", str(MEETING)]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex",
                    "".join(f"[{i}:a]" for i in range(7)) + "concat=n=7:v=0:a=1", "-ar", "16000", "-ac", "1",
                    str(out)], check=True)
    return out


def test_health_stays_fast_and_sockets_stay_connected_during_a_long_transcription(server, three_minute_file):
    client = bench.SocketClient(server.base_url, verify=str(server.cert_path), token=server.token)
    result: dict = {}

    def long_upload() -> None:
        result["response"] = transcribe(server.session(), server, three_minute_file)

    worker = threading.Thread(target=long_upload)
    worker.start()
    s = server.session()
    latencies = []
    try:
        time.sleep(1.0)  # let decoding finish and inference start
        while worker.is_alive():
            t0 = time.perf_counter()
            r = s.get(server.url("/health"), timeout=5)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
            time.sleep(0.05)
        worker.join()
        assert client.connected and not [e for e in client.events if e.name == "disconnect"]
    finally:
        client.disconnect()
    assert result["response"].status_code == 200
    assert result["response"].json()["duration"] > 180
    assert len(latencies) >= 20
    print(f"/health during a 3-minute transcription: n={len(latencies)} median="
          f"{statistics.median(latencies) * 1000:.1f} ms max={max(latencies) * 1000:.1f} ms")
    # The event loop is never blocked by inference: a blocked loop would answer nothing until the transcription
    # ended (each request above times out after 5 s); the figures are printed for docs/PERFORMANCE.md.


# -- degraded mode, auth, custom certificates --------------------------------------------------------------------
def test_degraded_mode_still_serves_and_says_why(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium")  # not available offline, downloads off
    s = srv.session()
    deadline = time.monotonic() + 60
    while True:
        body = s.get(srv.url("/health"), timeout=5)
        if body.json()["model"]["state"] == "error" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body.status_code == 503
    assert body.json()["status"] == "degraded" and "medium" in body.json()["reason"]
    r = transcribe(s, srv, JFK)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert r.json()["error"]["code"] == "model_unavailable"
    assert s.get(srv.url("/api/status"), timeout=5).status_code == 200


def test_require_auth_protects_transcription(start_server):
    srv = start_server(REQUIRE_AUTH="true")
    r = transcribe(srv.session(), srv, SPEECH_DIR / "goforward.wav")
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth_required"
    r = transcribe(srv.session(token="wrong"), srv, SPEECH_DIR / "goforward.wav")
    assert r.status_code == 401
    assert transcribe(srv.session(token=srv.token), srv, SPEECH_DIR / "goforward.wav").status_code == 200
    assert srv.session().get(srv.url("/health"), timeout=5).status_code == 200


def test_missing_custom_certificate_is_a_clear_startup_error(tmp_path):
    srv = make_server(tmp_path, SSL_CERT_PATH=str(tmp_path / "nope.pem"), SSL_KEY_PATH=str(tmp_path / "nope.key"))
    with pytest.raises(RuntimeError, match="exited"):
        srv.start(timeout=60)
    assert "nope.pem" in srv.log()


def test_metrics_after_a_transcription(api, server):
    assert transcribe(api, server, SPEECH_DIR / "cards_001.wav").status_code == 200
    text = api.get(server.url("/metrics"), timeout=5).text
    for name in ("whisper_http_requests_total", "whisper_audio_seconds_total", "whisper_real_time_factor_bucket",
                 "whisper_queue_depth", "whisper_live_sessions", 'whisper_model_state{whisper_model_state="ready"} 1.0'):
        assert name in text, name
