"""The admin API on the real server: login and its limits, CSRF, tokens, the generated password, model management.

Tests that lock out logins or switch models run on their own servers (``start_server``), so the shared one
keeps its model and accepts the other tests' logins. Nothing here deletes weights: MODELS_DIR is the checkout's.
"""

from __future__ import annotations

import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import SPEECH_DIR
from tests.e2e.conftest import ServerProcess, bench, login
from whisper_appliance.core.catalog import MODEL_NAMES

GENERATED = re.compile(r"Admin password generated: (\S+)")
JFK = SPEECH_DIR / "jfk.mp3"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll until ``check()`` returns something truthy (a wait for an outcome, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def model_status(session: requests.Session, server: ServerProcess) -> dict:
    return session.get(server.url("/api/models"), timeout=10).json()["current"]


def transcribe(session: requests.Session, server: ServerProcess, path: Path) -> requests.Response:
    with open(path, "rb") as f:
        return session.post(server.url("/transcribe"), files={"audio": (path.name, f)}, timeout=300)


# -- login and session ------------------------------------------------------------------------------------------
def test_login_wrong_then_right(api, server):
    r = api.post(server.url("/api/auth/login"), json={"username": "admin", "password": "not-the-password"},
                 timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_credentials"
    assert "failed login for 'admin' from 127.0.0.1" in server.log()

    assert api.get(server.url("/api/auth/me"), timeout=10).json()["authenticated"] is False
    r = api.post(server.url("/api/auth/login"), json={"username": "admin", "password": server.admin_password},
                 timeout=10)
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    assert len(csrf) >= 32
    cookie = next(c for c in api.cookies if c.name == "wa_session")
    assert cookie.secure and cookie.expires is not None  # a permanent session with a lifetime
    me = api.get(server.url("/api/auth/me"), timeout=10).json()
    assert (me["username"], me["role"], me["csrf_token"]) == ("admin", "admin", csrf)

    assert api.post(server.url("/api/auth/logout"), timeout=10).json() == {"logged_out": True, "ended": 1}
    assert api.get(server.url("/api/auth/me"), timeout=10).json()["authenticated"] is False


def test_admin_actions_without_auth_are_401(api, server):
    for method, path, body in (("get", "/api/admin/users", None),
                               ("post", "/api/admin/users", {"username": "x", "password": "long enough!"}),
                               ("get", "/api/admin/settings", None), ("get", "/api/admin/stats", None),
                               ("post", "/api/models/load", {"name": "base"}), ("delete", "/api/models/base", None),
                               ("get", "/api/admin/backup", None), ("get", "/api/auth/tokens", None)):
        r = getattr(api, method)(server.url(path), json=body, timeout=10)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "auth_required"


def test_cookie_changes_need_the_csrf_header(server):
    s = login(server)
    csrf = s.headers.pop("X-CSRF-Token")
    r = s.post(server.url("/api/auth/tokens"), json={"label": "no csrf"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = s.post(server.url("/api/auth/tokens"), json={"label": "with csrf"}, headers={"X-CSRF-Token": "wrong"},
               timeout=10)
    assert r.status_code == 403
    assert s.get(server.url("/api/admin/settings"), timeout=10).status_code == 200  # reads need no header

    r = s.post(server.url("/api/auth/tokens"), json={"label": "with csrf"}, headers={"X-CSRF-Token": csrf},
               timeout=10)
    assert r.status_code == 201
    s.headers["X-CSRF-Token"] = csrf
    assert s.delete(server.url(f"/api/auth/tokens/{r.json()['id']}"), timeout=10).status_code == 200


def test_settings_show_no_secrets(admin, server):
    body = admin.get(server.url("/api/admin/settings"), timeout=10).json()
    assert body["whisper_model"] == "tiny.en" and body["model_downloads"] is False
    text = str(body)
    assert "admin_password" not in body and "api_keys" not in body
    assert server.admin_password not in text and server.token not in text


def test_api_keys_transcribe_but_do_not_administer(server):
    s = server.session(token=server.token)
    assert s.get(server.url("/api/history"), timeout=10).status_code == 200
    r = s.get(server.url("/api/admin/settings"), timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = s.post(server.url("/api/auth/tokens"), json={"label": "made with an API key"}, timeout=10)
    assert r.status_code == 403
    bad = server.session(token="wa_not-a-real-token")
    assert bad.get(server.url("/api/admin/settings"), timeout=10).status_code == 401


def test_personal_token_works_until_revoked(admin, server):
    r = admin.post(server.url("/api/auth/tokens"), json={"label": "e2e laptop", "scope": "admin"}, timeout=10)
    assert r.status_code == 201
    created = r.json()
    assert set(created) >= {"token", "id", "label", "scope", "created_at"} and created["label"] == "e2e laptop"

    listed = admin.get(server.url("/api/auth/tokens"), timeout=10).json()["tokens"]
    mine = [t for t in listed if t["id"] == created["id"]]
    assert len(mine) == 1 and "token" not in mine[0]
    assert created["token"] not in str(listed)
    # Only a digest reaches the disk.
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert created["token"].encode() not in path.read_bytes(), path

    user = server.session(token=created["token"])
    assert user.get(server.url("/api/admin/settings"), timeout=10).status_code == 200  # an admin-scope token

    assert admin.delete(server.url(f"/api/auth/tokens/{created['id']}"), timeout=10).status_code == 200
    r = user.get(server.url("/api/admin/settings"), timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert admin.delete(server.url(f"/api/auth/tokens/{created['id']}"), timeout=10).status_code == 404


def test_failed_logins_are_rate_limited(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium")  # no model needed; "medium" fails at once
    s = srv.session()
    codes = [s.post(srv.url("/api/auth/login"), json={"username": "admin", "password": f"guess-{i}"},
                    timeout=30).status_code for i in range(11)]
    assert codes == [401] * 10 + [429]
    r = s.post(srv.url("/api/auth/login"), json={"username": "admin", "password": srv.admin_password}, timeout=10)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) > 0
    assert srv.log().count("failed login for 'admin' from 127.0.0.1") == 10


def test_the_login_limit_holds_against_parallel_guesses(start_server):
    """60 guesses sent at once, over as many connections: only 10 get their password checked."""
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium")
    start = threading.Barrier(60)

    def guess(i: int) -> int:
        s = srv.session()
        start.wait()
        return s.post(srv.url("/api/auth/login"), json={"username": f"user{i % 3}", "password": f"guess {i}"},
                      timeout=120).status_code

    with ThreadPoolExecutor(60) as pool:
        codes = list(pool.map(guess, range(60)))
    assert sorted(codes) == [401] * 10 + [429] * 50
    assert srv.log().count("failed login for") == 10


def test_generated_admin_password_is_logged_once_and_survives_a_restart(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium", ADMIN_PASSWORD="")
    passwords = GENERATED.findall(srv.log())
    assert len(passwords) == 1
    password = passwords[0]
    saved = srv.data_dir / "admin-password.txt"  # the one plaintext copy, for the service user only
    assert saved.read_text().split() == ["admin", password] and saved.stat().st_mode & 0o777 == 0o600
    for path in srv.data_dir.rglob("*"):
        if path.is_file() and path != saved:
            assert password.encode() not in path.read_bytes(), f"plaintext password found in {path}"
    assert b"scrypt$" not in (srv.data_dir / "auth.json").read_bytes()  # the hash lives in the database now
    with sqlite3.connect(srv.data_dir / "appliance.db") as conn:
        [(stored,)] = conn.execute("SELECT password_hash FROM users WHERE username = 'admin'").fetchall()
    assert stored.startswith("scrypt$")
    login(srv, "admin", password)
    assert srv.session().post(srv.url("/api/auth/login"), json={"username": "admin",
                                                               "password": "e2e-admin-password"},
                              timeout=10).status_code == 401

    srv.stop()
    srv.start(wait_ready=False)
    assert GENERATED.findall(srv.log()) == [password]  # both runs' output: logged by the first only
    login(srv, "admin", password)


# -- models ------------------------------------------------------------------------------------------------------
def test_models_list_every_catalog_name(api, server):
    body = api.get(server.url("/api/models"), timeout=10).json()
    models = {m["name"]: m for m in body["models"]}
    assert list(models) == list(MODEL_NAMES)
    assert models["tiny.en"]["state"] == "loaded" and models["tiny.en"]["english_only"] is True
    assert models["base"]["state"] in ("downloaded", "bundled")
    assert models["large-v3"]["state"] == "available" and models["large-v3"]["size_bytes"] > 10 ** 9
    assert body["current"]["name"] == "tiny.en" and body["current"]["state"] == "ready"


def test_load_of_unknown_model_is_400(admin, server):
    r = admin.post(server.url("/api/models/load"), json={"name": "huge-v9"}, timeout=10)
    assert r.status_code == 400
    assert "tiny.en" in r.json()["error"]["message"]
    assert admin.post(server.url("/api/models/load"), json={}, timeout=10).status_code == 400
    assert model_status(admin, server)["name"] == "tiny.en"


def test_deleting_the_loaded_model_is_409(admin, server):
    r = admin.delete(server.url("/api/models/tiny.en"), timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
    assert admin.delete(server.url("/api/models/not-a-model"), timeout=10).status_code == 404
    assert admin.delete(server.url("/api/models/large-v3"), timeout=10).status_code == 404  # nothing on disk
    assert (Path(server.env["MODELS_DIR"]) / "tiny.en" / "model.bin").is_file()


def test_switch_to_an_unavailable_model_and_back(start_server):
    srv = start_server()
    s = login(srv)
    sio = bench.SocketClient(srv.base_url, verify=str(srv.cert_path), token=srv.token, timeout=20)

    def events() -> list[dict]:
        return [e.payload for e in sio.events if e.name == "model_status"]

    try:
        r = s.post(srv.url("/api/models/load"), json={"name": "medium"}, timeout=10)
        assert r.status_code == 202
        assert r.json()["status"]["name"] == "medium" and r.json()["status"]["state"] == "loading"
        assert r.json()["links"] == {"status": "/api/status"}
        failed = wait_for(lambda: (m := model_status(s, srv))["state"] == "error" and m, "the load to fail")
        assert failed["name"] == "medium"
        assert "not available offline" in failed["error"] and "tiny.en" in failed["error"]
        assert transcribe(s, srv, JFK).status_code == 503  # no model now, and the reply says so
        # Events are coalesced per model: see the error delivered before the next load replaces it.
        wait_for(lambda: any(e["name"] == "medium" and e["state"] == "error" for e in events()),
                 "the model_status event of the failed load", timeout=30)

        r = s.post(srv.url("/api/models/load"), json={"name": "tiny.en"}, timeout=10)
        assert r.status_code == 202
        wait_for(lambda: model_status(s, srv)["state"] == "ready", "tiny.en to load again")
        r = transcribe(s, srv, JFK)
        assert r.status_code == 200 and "country" in r.json()["text"].lower()

        wait_for(lambda: any(e["name"] == "tiny.en" and e["state"] == "ready" for e in events()),
                 "the model_status event of the reload", timeout=30)
    finally:
        sio.disconnect()
    states = [(e["name"], e["state"]) for e in events()]
    assert ("medium", "error") in states
    assert ("tiny.en", "ready") in states
    error_event = next(e for e in events() if e["state"] == "error")
    assert "tiny.en" in error_event["error"]


def test_the_certificate_fingerprint_is_the_one_served(admin, server):
    port = int(server.base_url.rsplit(":", 1)[1])
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port), timeout=10).encode())
    expected = served.fingerprint(hashes.SHA256()).hex(":").upper()
    body = admin.get(server.url("/api/admin/certificate"), timeout=10).json()
    assert body["fingerprint_sha256"] == expected
    assert expected in admin.get(server.url("/admin"), timeout=10).text
