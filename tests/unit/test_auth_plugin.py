"""plugins/auth.py and the identity rules of http.py, through Flask's test client on the real app factory.

Logging in and out, the OAuth2 password form, registration, password changes, personal tokens, scopes, CSRF and
the session cookie. The services are real; no model is loaded.
"""

from __future__ import annotations

import io
import threading

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import ConfigError

from .web import PASSWORD, TOKEN, Client, build_app

ALICE_PASSWORD = "alice's long password"


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "admin", "history", "jobs", "upload"))
    built = []

    yield lambda **overrides: build_app(tmp_path, built, **overrides)
    for appliance in built:
        appliance.stop()


@pytest.fixture
def app(make_app):
    app = make_app()
    app.extensions["appliance"].accounts.create_user("alice", ALICE_PASSWORD)
    return app


def bearer(app, token: str) -> Client:
    c = Client(app)
    c.headers["Authorization"] = f"Bearer {token}"
    return c


# -- logging in and out ------------------------------------------------------------------------------------------
def test_login_sets_a_secure_session_and_me_says_who_it_is(app):
    anon = Client(app)
    assert anon.get("/api/auth/me").get_json() == {"id": None, "username": "guest", "role": "guest",
                                                   "scopes": ["transcribe"], "authenticated": False,
                                                   "require_auth": False, "registration": False}
    r = anon.post("/api/auth/login", json={"username": "alice", "password": ALICE_PASSWORD})
    assert r.status_code == 200
    body = r.get_json()
    assert body["username"] == "alice" and body["role"] == "user" and body["expires_in"] == 12 * 3600
    cookie = r.headers["Set-Cookie"]
    assert "wa_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    me = anon.get("/api/auth/me").get_json()
    assert (me["username"], me["authenticated"], me["csrf_token"]) == ("alice", True, body["csrf_token"])


def test_login_failures_are_clear(app, caplog):
    c = Client(app)
    r = c.post("/api/auth/login", json={"username": "alice", "password": "not her password"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_credentials"
    assert "failed login for 'alice'" in caplog.text
    assert c.post("/api/auth/login", json={"username": "nobody", "password": "whatever it is"}).status_code == 401
    assert c.post("/api/auth/login", data="username=alice").status_code == 400
    assert c.post("/api/auth/login", json={"username": "alice"}).status_code == 400


def test_logout_ends_the_session_so_a_copied_cookie_stops_working(app):
    c = Client(app).login("alice", ALICE_PASSWORD)
    copied = Client(app)
    copied.inner.set_cookie("wa_session", c.inner.get_cookie("wa_session").value, domain="localhost")
    assert copied.get("/api/auth/me").get_json()["username"] == "alice"
    assert c.post("/api/auth/logout").get_json() == {"logged_out": True, "ended": 1}
    assert c.get("/api/auth/me").get_json()["authenticated"] is False
    assert copied.get("/api/auth/me").get_json()["authenticated"] is False
    assert copied.get("/api/auth/tokens").status_code == 401


def test_logout_everywhere_ends_every_login_of_the_account(app):
    phone, laptop = Client(app).login("alice", ALICE_PASSWORD), Client(app).login("alice", ALICE_PASSWORD)
    token = Client(app).post("/api/auth/token", data={"username": "alice", "password": ALICE_PASSWORD}
                             ).get_json()["access_token"]
    personal = phone.post("/api/auth/tokens", json={"label": "kept"}).get_json()["token"]
    assert phone.post("/api/auth/logout", json={"everywhere": True}).get_json() == {"logged_out": True, "ended": 3}
    assert laptop.get("/api/auth/me").get_json()["authenticated"] is False
    assert bearer(app, token).get("/api/history").status_code == 401
    assert bearer(app, personal).get("/api/history").status_code == 200  # personal tokens are revoked one by one
    assert Client(app).post("/api/auth/logout").get_json() == {"logged_out": True, "ended": 0}


def test_failed_logins_are_limited_and_good_ones_never_count(app):
    c = Client(app)
    for _ in range(12):
        c.login("alice", ALICE_PASSWORD)
    codes = [c.post("/api/auth/login", json={"username": "alice", "password": f"guess {i}"}).status_code
             for i in range(11)]
    assert codes == [401] * 10 + [429]
    r = c.post("/api/auth/login", json={"username": "alice", "password": ALICE_PASSWORD})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) > 0
    # The token endpoint shares the limit: it is the same password check.
    assert c.post("/api/auth/token", data={"username": "alice", "password": ALICE_PASSWORD}).status_code == 429


def test_parallel_guesses_cannot_pass_the_limit(app):
    """Many guesses at once: only as many as the limit allows are checked (the rest are 429)."""
    codes: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(30)

    def guess(i: int) -> None:
        c = Client(app)
        start.wait()
        code = c.post("/api/auth/login", json={"username": "admin", "password": f"parallel guess {i}"}).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [401] * 10 + [429] * 20


# -- tokens ------------------------------------------------------------------------------------------------------
def test_the_oauth2_password_form_answers_a_bearer_token(app):
    c = Client(app)
    r = c.post("/api/auth/token", data={"grant_type": "password", "username": "alice", "password": ALICE_PASSWORD})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 12 * 3600 and body["scope"] == "admin"
    assert bearer(app, body["access_token"]).get("/api/auth/me").get_json()["username"] == "alice"
    narrow = c.post("/api/auth/token", data={"username": "alice", "password": ALICE_PASSWORD,
                                             "scope": "transcribe"}).get_json()
    r = bearer(app, narrow["access_token"]).get("/api/auth/tokens")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "insufficient_scope"
    assert c.post("/api/auth/token", data={"username": "alice", "password": "wrong password"}).status_code == 401
    assert c.post("/api/auth/token", data={"grant_type": "client_credentials", "username": "alice",
                                           "password": ALICE_PASSWORD}).status_code == 400
    assert c.post("/api/auth/token", json={"username": "alice", "password": ALICE_PASSWORD}).status_code == 400
    assert c.post("/api/auth/token", data={"username": "alice", "password": ALICE_PASSWORD,
                                           "scope": "root"}).status_code == 400


def test_personal_tokens_through_the_api(app):
    alice = Client(app).login("alice", ALICE_PASSWORD)
    r = alice.post("/api/auth/tokens", json={"label": "dictation", "scope": "transcribe"})
    assert r.status_code == 201
    made = r.get_json()
    assert made["token"].startswith("wa_") and made["scope"] == "transcribe"
    listed = alice.get("/api/auth/tokens").get_json()["tokens"]
    assert [t["label"] for t in listed] == ["dictation"] and made["token"] not in str(listed)
    dictation = bearer(app, made["token"])
    assert dictation.get("/api/history").status_code == 200  # reading one's history
    assert dictation.get("/api/auth/tokens").status_code == 403  # but not managing the account
    assert dictation.post("/api/auth/tokens", json={"label": "more"}).status_code == 403
    admin = Client(app).login()
    assert admin.delete(f"/api/auth/tokens/{made['id']}").status_code == 404  # not the admin's token
    assert [t["id"] for t in admin.get("/api/auth/tokens").get_json()["tokens"]] == ["api-key-1"]
    assert admin.delete("/api/auth/tokens/api-key-1").status_code == 409
    assert alice.delete(f"/api/auth/tokens/{made['id']}").get_json() == {"deleted": made["id"]}
    r = dictation.get("/api/history")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"
    for body in ({"label": ""}, {"label": "x", "scope": "everything"}, {"scope": "admin"}):
        assert alice.post("/api/auth/tokens", json=body).status_code == 400, body
    assert Client(app).get("/api/auth/tokens").status_code == 401


def test_cookie_changes_need_the_csrf_header_and_bearer_ones_do_not(app):
    alice = Client(app).login("alice", ALICE_PASSWORD)
    csrf = alice.headers.pop("X-CSRF-Token")
    r = alice.post("/api/auth/tokens", json={"label": "no header"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "csrf_failed"
    assert alice.post("/api/auth/tokens", json={"label": "wrong"}, headers={"X-CSRF-Token": "x" * 43}
                      ).status_code == 403
    assert alice.get("/api/auth/tokens").status_code == 200
    made = alice.post("/api/auth/tokens", json={"label": "ok", "scope": "admin"},
                      headers={"X-CSRF-Token": csrf}).get_json()
    assert bearer(app, made["token"]).post("/api/auth/tokens", json={"label": "from a script"}).status_code == 201


# -- registration and passwords ----------------------------------------------------------------------------------
def test_registration_is_403_unless_allowed(app, make_app, tmp_path):
    r = Client(app).post("/api/auth/register", json={"username": "newcomer", "password": "a long password"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "registration_closed"
    open_app = make_app(data_dir=tmp_path / "open", allow_registration=True)
    c = Client(open_app)
    r = c.post("/api/auth/register", json={"username": "newcomer", "password": "a long password"})
    assert r.status_code == 201
    body = r.get_json()
    assert body["token_type"] == "bearer" and body["user"]["role"] == "user"
    assert bearer(open_app, body["access_token"]).get("/api/auth/me").get_json()["username"] == "newcomer"
    r = c.post("/api/auth/register", json={"username": "NEWCOMER", "password": "a long password"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "username_taken"
    r = c.post("/api/auth/register", json={"username": "shorty", "password": "123456789"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "weak_password"
    assert c.post("/api/auth/register", json={"username": "guest", "password": "a long password"}).status_code == 400


def test_a_password_change_logs_out_every_other_browser(app):
    here = Client(app).login("alice", ALICE_PASSWORD)
    elsewhere = Client(app).login("alice", ALICE_PASSWORD)
    r = here.post("/api/auth/password", json={"current_password": "wrong", "new_password": "a new long password"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "wrong_password"
    r = here.post("/api/auth/password", json={"current_password": ALICE_PASSWORD, "new_password": "short"})
    assert r.status_code == 400
    r = here.post("/api/auth/password", json={"current_password": ALICE_PASSWORD,
                                              "new_password": "a new long password"})
    assert r.status_code == 200 and r.get_json()["changed"] is True
    here.headers["X-CSRF-Token"] = r.get_json()["csrf_token"]
    assert here.get("/api/auth/me").get_json()["username"] == "alice"  # this browser goes on
    assert elsewhere.get("/api/auth/me").get_json()["authenticated"] is False
    Client(app).login("alice", "a new long password")
    admin = Client(app).login()
    r = admin.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "a new long password"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "password_from_environment"


# -- REQUIRE_AUTH ------------------------------------------------------------------------------------------------
def test_with_require_auth_everything_needs_a_login_or_a_token(make_app):
    app = make_app(require_auth=True)
    anon = Client(app)
    r = anon.get("/api/auth/me")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_required"
    for method, path in (("get", "/api/history"), ("get", "/api/jobs"), ("get", "/api/models"),
                         ("get", "/api/history/stats"), ("get", "/api/history/export")):
        r = getattr(anon, method)(path)
        assert r.status_code == 401, path
    r = anon.post("/transcribe", data={"audio": (io.BytesIO(b"RIFF"), "a.wav")}, content_type="multipart/form-data")
    assert r.status_code == 401
    assert bearer(app, TOKEN).get("/api/history").status_code == 200
    assert Client(app).login().get("/api/history").status_code == 200
    assert anon.get("/health").status_code in (200, 503)  # monitoring stays open


def test_an_invalid_session_cookie_is_just_logged_out(app):
    c = Client(app).login("alice", ALICE_PASSWORD)
    with app.extensions["appliance"].database.write() as conn:  # expired, or ended on another machine
        conn.execute("DELETE FROM credentials")
    assert c.get("/api/auth/me").get_json()["authenticated"] is False
    assert c.get("/api/history").status_code == 200  # a guest now, in open mode


def test_wrong_bearer_tokens_are_rate_limited_per_address(make_app):
    app = make_app(auth_token_failure_limit="3 per hour")
    guesser = bearer(app, "wa_not-a-real-token-at-all")
    for _ in range(3):
        r = guesser.get("/api/history")
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"
    r = guesser.get("/api/history")
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    # Once the limit is used up, even a right token from that address is not checked (no oracle for guesses)...
    assert bearer(app, TOKEN).get("/api/history").status_code == 429
    # ...while another address is unaffected, and right tokens never count.
    other = bearer(app, TOKEN)
    for _ in range(5):
        assert other.get("/api/history", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_the_token_failure_limit_is_validated():
    with pytest.raises(ConfigError) as err:
        Settings(auth_token_failure_limit="lots").validated()
    assert "AUTH_TOKEN_FAILURE_LIMIT" in str(err.value)


def test_wrong_socketio_tokens_count_against_the_same_limit(make_app):
    app = make_app(auth_token_failure_limit="2 per hour")
    socketio = app.extensions["appliance_socketio"]
    for _ in range(2):
        assert bearer(app, "wa_wrong-token-guess").get("/api/history").status_code == 401
    refused = socketio.test_client(app, auth={"token": TOKEN})  # right token, but this address used its limit up
    assert not refused.is_connected()
    assert bearer(app, TOKEN).get("/api/history", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200
