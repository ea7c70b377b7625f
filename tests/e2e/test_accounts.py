"""Accounts on the real server over HTTPS: two users and an admin, driven by requests, the official openai client
and python-socketio (the asyncio client of scripts/bench_live.py).

Every path by which one user could reach another's records is tried: history reads, edits, deletes, exports,
search and stats; jobs and their results; ``join_job``; live sessions; the result cache. Each answers 404 (ids do
not leak) or returns only the caller's own data. An admin sees everything. Revoking or disabling ends
connections. Users are created with fresh names on the shared server, and their audio is made unique, so no
other test's cached result answers for them.
"""

from __future__ import annotations

import random
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import SPEECH_DIR
from tests.e2e.conftest import ServerProcess, bench, create_user, login
from whisper_appliance.core.audio import decode_audio
from whisper_appliance.core.records import SAMPLE_RATE

TERMINAL = ("completed", "failed", "cancelled")


def unique_audio(tmp: Path, name: str = "goforward.wav") -> Path:
    """Real speech plus a random bit of silence: bytes no earlier upload had, so nothing is cached yet."""
    dst = tmp / f"{Path(name).stem}-{uuid.uuid4().hex[:8]}.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(SPEECH_DIR / name), "-af",
                    f"apad=pad_dur={random.uniform(0.05, 0.5):.3f}", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
                    str(dst)], check=True, capture_output=True, timeout=120)
    return dst


def transcribe(session: requests.Session, server: ServerProcess, path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = session.post(server.url("/transcribe"), files={"audio": (path.name, f)}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(session: requests.Session, server: ServerProcess, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = session.get(server.url(f"/api/jobs/{job_id}"), timeout=10).json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def openai_client(server: ServerProcess, api_key: str) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(server.cert_path)))
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, http_client=http_client, max_retries=0,
                         timeout=300)


def socket(server: ServerProcess, token: str | None = None) -> bench.LiveClient:
    return bench.LiveClient(server.base_url, verify=str(server.cert_path), token=token, timeout=20)


@dataclass
class Person:
    username: str
    password: str
    session: requests.Session  # logged in (cookie + CSRF header)
    token: str  # an access token from the OAuth2 password form

    def bearer(self, server: ServerProcess) -> requests.Session:
        return server.session(token=self.token)


def person(server: ServerProcess, admin: requests.Session, prefix: str) -> Person:
    username, password = create_user(server, admin, prefix)
    r = server.session().post(server.url("/api/auth/token"), data={"username": username, "password": password},
                              timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    return Person(username, password, login(server, username, password), body["access_token"])


@pytest.fixture(scope="module")
def admin_session(server) -> requests.Session:
    return login(server)


@pytest.fixture(scope="module")
def alice(server, admin_session) -> Person:
    return person(server, admin_session, "alice")


@pytest.fixture(scope="module")
def bob(server, admin_session) -> Person:
    return person(server, admin_session, "bob")


@pytest.fixture(scope="module")
def alices_entry(server, alice, tmp_path_factory) -> dict[str, Any]:
    """An upload of Alice's, transcribed (not from the cache)."""
    result = transcribe(alice.session, server, unique_audio(tmp_path_factory.mktemp("alice")))
    assert result["cached"] is False
    return result


def not_found(r: requests.Response) -> bool:
    return r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- history -----------------------------------------------------------------------------------------------------
def test_another_users_entry_is_404_on_every_path(server, alice, bob, alices_entry, api):
    entry_id = alices_entry["history_id"]
    base = server.url(f"/api/history/{entry_id}")
    for who in (bob.session, bob.bearer(server), api):
        assert not_found(who.get(base, timeout=10))
        for fmt in ("txt", "srt", "json"):
            assert not_found(who.get(base + "/export", params={"format": fmt}, timeout=10))
    for who in (bob.session, api):  # changes: the cookie session (with CSRF) and the guest
        assert not_found(who.patch(base, json={"text": "hijacked"}, timeout=10))
    assert not_found(bob.session.delete(base, timeout=10))
    assert bob.session.post(server.url("/api/history/delete"), json={"ids": [entry_id]}, timeout=10
                            ).json() == {"deleted": 0}
    # The same answer as for an id nobody has: nothing tells Bob the entry exists.
    missing = bob.session.get(server.url("/api/history/999999999"), timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].replace("999999999", "N") == \
        bob.session.get(base, timeout=10).json()["error"]["message"].replace(str(entry_id), "N")
    entry = alice.session.get(base, timeout=10).json()
    assert entry["text"] == alices_entry["text"] and entry["owner_id"] is not None


def test_listings_searches_exports_and_stats_hold_only_the_callers_entries(server, alice, bob, alices_entry, api,
                                                                           admin_session):
    entry_id = alices_entry["history_id"]
    word = alices_entry["text"].split()[0].strip(",.")
    for who in (bob.session, bob.bearer(server), api):
        ids = [e["id"] for e in who.get(server.url("/api/history"), params={"limit": 500}, timeout=30).json()["items"]]
        assert entry_id not in ids
        assert entry_id not in [e["id"] for e in who.get(server.url("/api/history"), params={"q": word},
                                                         timeout=30).json()["items"]]
        exported = who.get(server.url("/api/history/export"), params={"format": "json"}, timeout=60).json()
        assert entry_id not in [e["id"] for e in exported]
        csv_text = who.get(server.url("/api/history/export"), params={"format": "csv"}, timeout=60).text
        assert alices_entry["text"] not in csv_text
    bob_id = bob.session.get(server.url("/api/auth/me"), timeout=10).json()["id"]
    alice_id = alice.session.get(server.url("/api/auth/me"), timeout=10).json()["id"]
    bobs = bob.session.get(server.url("/api/history"), params={"limit": 500}, timeout=30).json()
    assert {e["owner_id"] for e in bobs["items"]} <= {bob_id}
    assert bob.session.get(server.url("/api/history/stats"), timeout=10).json()["entries"] == bobs["total"]

    mine = alice.session.get(server.url("/api/history"), params={"limit": 500}, timeout=30).json()
    assert entry_id in [e["id"] for e in mine["items"]] and {e["owner_id"] for e in mine["items"]} == {alice_id}
    assert alice.bearer(server).get(server.url("/api/history/stats"), timeout=10).json()["entries"] == mine["total"]

    # An admin sees every entry and may narrow to one user; nobody else may name another owner.
    everyone = admin_session.get(server.url("/api/history"), params={"limit": 500}, timeout=30).json()
    assert entry_id in [e["id"] for e in everyone["items"]]
    only_alice = admin_session.get(server.url("/api/history"), params={"user": alice.username, "limit": 500},
                                   timeout=30).json()
    assert entry_id in [e["id"] for e in only_alice["items"]]
    assert {e["owner_id"] for e in only_alice["items"]} == {alice_id} and only_alice["total"] == mine["total"]
    assert admin_session.get(server.url(f"/api/history/{entry_id}"), timeout=10).status_code == 200
    r = bob.session.get(server.url("/api/history"), params={"user": alice.username}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"


def test_an_access_token_of_transcribe_scope_reads_but_does_not_change(server, alice, alices_entry):
    r = server.session().post(server.url("/api/auth/token"), data={"username": alice.username,
                                                                   "password": alice.password, "scope": "transcribe"},
                              timeout=30)
    narrow = server.session(token=r.json()["access_token"])
    base = server.url(f"/api/history/{alices_entry['history_id']}")
    assert narrow.get(base, timeout=10).status_code == 200
    r = narrow.patch(base, json={"text": "a change"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert narrow.delete(base, timeout=10).status_code == 403


# -- jobs --------------------------------------------------------------------------------------------------------
def test_another_users_job_is_404_and_never_listed(server, alice, bob, api, admin_session, tmp_path):
    path = unique_audio(tmp_path)
    with open(path, "rb") as f:
        r = alice.bearer(server).post(server.url("/api/jobs"), files={"audio": (path.name, f)}, timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    done = wait_job(alice.bearer(server), server, job_id)
    assert done["status"] == "completed"
    for who in (bob.session, bob.bearer(server), api):
        assert not_found(who.get(server.url(f"/api/jobs/{job_id}"), timeout=10))
        assert not_found(who.get(server.url(f"/api/jobs/{job_id}/result"), timeout=10))
        listed = who.get(server.url("/api/jobs"), params={"limit": 500}, timeout=10).json()["jobs"]
        assert job_id not in [j["job_id"] for j in listed]
    assert not_found(bob.session.delete(server.url(f"/api/jobs/{job_id}"), timeout=10))
    assert not_found(api.delete(server.url(f"/api/jobs/{job_id}"), timeout=10))
    assert not_found(bob.session.get(server.url(f"/api/history/{done['history_id']}"), timeout=10))

    assert alice.session.get(server.url(f"/api/jobs/{job_id}/result"), params={"format": "txt"},
                             timeout=10).status_code == 200
    assert job_id in [j["job_id"] for j in alice.session.get(server.url("/api/jobs"), timeout=10).json()["jobs"]]
    assert admin_session.get(server.url(f"/api/jobs/{job_id}"), timeout=10).status_code == 200
    by_user = admin_session.get(server.url("/api/jobs"), params={"user": alice.username}, timeout=10).json()
    assert job_id in [j["job_id"] for j in by_user["jobs"]]
    bobs = admin_session.get(server.url("/api/jobs"), params={"user": bob.username}, timeout=10).json()
    assert job_id not in [j["job_id"] for j in bobs["jobs"]]


def test_join_job_on_socketio_is_404_for_another_users_job(server, alice, bob, tmp_path):
    bobs_socket, guest_socket, alices_socket = socket(server, bob.token), socket(server), socket(server, alice.token)
    try:
        path = unique_audio(tmp_path, "jfk.mp3")
        with open(path, "rb") as f:
            r = alice.session.post(server.url("/api/jobs"), files={"audio": (path.name, f)}, timeout=60)
        job_id = r.json()["job_id"]
        for intruder in (bobs_socket, guest_socket):
            ack = intruder.call("join_job", {"job_id": job_id})
            assert ack["error"]["code"] == "not_found", ack
            assert "ok" not in ack
        ack = alices_socket.call("join_job", {"job_id": job_id})
        assert ack["ok"] is True and ack["job_id"] == job_id
        alices_socket.wait_for(lambda e: e.name == "job_progress" and e.payload["job_id"] == job_id
                               and e.payload["status"] in TERMINAL, 300)
        # The room is Alice's: the intruders were told not_found and got none of its progress.
        for intruder in (bobs_socket, guest_socket):
            assert [e for e in intruder.events if e.name == "job_progress"] == []
            assert [e.payload["error"]["code"] for e in intruder.events if e.name == "job_error"] == ["not_found"]
    finally:
        for s in (bobs_socket, guest_socket, alices_socket):
            s.disconnect()


# -- live dictation ----------------------------------------------------------------------------------------------
def test_a_live_session_is_saved_to_the_history_of_whoever_dictated(server, alice, bob, api):
    audio = decode_audio(SPEECH_DIR / "goforward.wav")
    client = socket(server, alice.token)
    try:
        out = client.run_stream(bench.pcm_chunks(audio), audio.size / SAMPLE_RATE, fmt="pcm16")
    finally:
        client.disconnect()
    history_id = out.stopped["history_id"]
    assert history_id is not None and "forward" in out.stopped["text"].lower()
    entry = alice.session.get(server.url(f"/api/history/{history_id}"), timeout=10).json()
    assert entry["source"] == "live" and entry["text"] == out.stopped["text"]
    assert not_found(bob.session.get(server.url(f"/api/history/{history_id}"), timeout=10))
    assert not_found(api.get(server.url(f"/api/history/{history_id}"), timeout=10))


# -- the result cache --------------------------------------------------------------------------------------------
def test_the_cache_gives_each_requester_their_own_entry_and_never_an_edited_one(server, alice, bob, tmp_path):
    path = unique_audio(tmp_path)
    first = transcribe(alice.session, server, path)
    assert first["cached"] is False
    original = first["text"]

    hit = transcribe(bob.bearer(server), server, path)
    assert hit["cached"] is True and hit["text"] == original
    assert hit["history_id"] != first["history_id"]  # Alice's entry id is not handed out
    bobs_copy = bob.session.get(server.url(f"/api/history/{hit['history_id']}"), timeout=10).json()
    assert bobs_copy["text"] == original and bobs_copy["metadata"].get("cached") is True
    assert not_found(bob.session.get(server.url(f"/api/history/{first['history_id']}"), timeout=10))

    # Alice corrects her entry: nobody is ever served the correction as the audio's transcript.
    r = alice.session.patch(server.url(f"/api/history/{first['history_id']}"),
                            json={"text": "Alice's private correction"}, timeout=10)
    assert r.status_code == 200 and r.json()["edited_at"]
    with open(path, "rb") as f:  # the official client, anonymous in open mode (any key)
        guest_text = openai_client(server, "anything").audio.transcriptions.create(model="whisper-1", file=f).text
    assert guest_text == original
    assert "correction" not in guest_text

    # Once every copy is edited there is no cache hit left: the audio is transcribed again.
    bob.session.patch(server.url(f"/api/history/{hit['history_id']}"), json={"text": "Bob's edit"}, timeout=10)
    guests = [e for e in server.session().get(server.url("/api/history"), params={"limit": 50}, timeout=30
                                              ).json()["items"] if e["audio_sha256"] == bobs_copy["audio_sha256"]]
    # The guest's request was a cache hit too: a new entry of the guests', copied from an unedited one.
    assert len(guests) == 1 and guests[0]["text"] == original
    assert guests[0]["source"] == "api" and guests[0]["metadata"].get("cached") is True
    server.session().patch(server.url(f"/api/history/{guests[0]['id']}"), json={"text": "guest edit"}, timeout=10)
    again = transcribe(alice.session, server, path)
    assert again["cached"] is False and again["text"] == original


# -- the OpenAI API ----------------------------------------------------------------------------------------------
def test_openai_clients_record_into_their_own_history(server, alice, bob, tmp_path):
    path = unique_audio(tmp_path)
    with open(path, "rb") as f, openai_client(server, alice.token) as client:
        text = client.audio.transcriptions.create(model="whisper-1", file=f).text
    mine = alice.session.get(server.url("/api/history"), params={"source": "api"}, timeout=30).json()["items"]
    assert [e["text"] for e in mine if e["filename"] == path.name] == [text]
    theirs = bob.session.get(server.url("/api/history"), params={"source": "api"}, timeout=30).json()["items"]
    assert path.name not in [e["filename"] for e in theirs]
    with openai_client(server, "anything") as anonymous:
        assert "whisper-1" in [m.id for m in anonymous.models.list()]


def test_with_require_auth_an_unknown_openai_key_is_refused(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium", REQUIRE_AUTH="true")
    with openai_client(srv, "anything") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert srv.session().get(srv.url("/api/history"), timeout=10).status_code == 401
    assert srv.session().get(srv.url("/"), timeout=10, allow_redirects=False).status_code == 303
    token = srv.session().post(srv.url("/api/auth/token"), data={"username": "admin",
                                                                 "password": srv.admin_password}, timeout=30)
    with openai_client(srv, token.json()["access_token"]) as client:
        assert "whisper-1" in [m.id for m in client.models.list()]


# -- revoking ends connections -----------------------------------------------------------------------------------
def test_revoking_a_token_disconnects_its_socket_and_disabling_a_user_every_one(server, admin_session):
    carol = person(server, admin_session, "carol")
    r = carol.session.post(server.url("/api/auth/tokens"), json={"label": "dictation", "scope": "transcribe"},
                           timeout=10)
    personal = r.json()
    by_token, by_access = socket(server, personal["token"]), socket(server, carol.token)
    try:
        assert carol.session.delete(server.url(f"/api/auth/tokens/{personal['id']}"), timeout=10).status_code == 200
        by_token.wait_for(lambda e: e.name == "disconnect", 30)
        assert by_access.connected
        with pytest.raises(Exception):  # noqa: B017 - a refused connection, whichever python-socketio error it is
            socket(server, personal["token"])

        users = admin_session.get(server.url("/api/admin/users"), timeout=10).json()["users"]
        carol_id = next(u["id"] for u in users if u["username"] == carol.username)
        r = admin_session.patch(server.url(f"/api/admin/users/{carol_id}"), json={"disabled": True}, timeout=10)
        assert r.status_code == 200 and r.json()["disabled"] is True
        by_access.wait_for(lambda e: e.name == "disconnect", 30)
        assert carol.bearer(server).get(server.url("/api/history"), timeout=10).status_code == 401
        assert carol.session.get(server.url("/api/auth/me"), timeout=10).json()["authenticated"] is False
    finally:
        by_token.disconnect()
        by_access.disconnect()


def test_deleting_a_user_hands_their_history_over_and_stats_follow(server, admin_session, tmp_path):
    dave, erin = person(server, admin_session, "dave"), person(server, admin_session, "erin")
    entry = transcribe(dave.session, server, unique_audio(tmp_path))
    users = {u["username"]: u for u in admin_session.get(server.url("/api/admin/stats"), timeout=10).json()["users"]}
    assert users[dave.username]["entries"] == 1 and users[dave.username]["storage_bytes"] > 0
    dave_id, erin_id = users[dave.username]["id"], users[erin.username]["id"]
    r = admin_session.delete(server.url(f"/api/admin/users/{dave_id}"), params={"transfer_to": erin_id}, timeout=30)
    assert r.status_code == 200 and r.json()["entries"] == 1
    assert erin.session.get(server.url(f"/api/history/{entry['history_id']}"), timeout=10).status_code == 200
    assert dave.bearer(server).get(server.url("/api/history"), timeout=10).status_code == 401
    users = {u["username"]: u for u in admin_session.get(server.url("/api/admin/stats"), timeout=10).json()["users"]}
    assert dave.username not in users and users[erin.username]["entries"] == 1


def test_registration_is_closed_on_a_default_server(server):
    r = server.session().post(server.url("/api/auth/register"), json={"username": "walk-in",
                                                                      "password": "a long enough password"},
                              timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "registration_closed"


def test_registration_when_allowed(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium", ALLOW_REGISTRATION="true")
    s = srv.session()
    r = s.post(srv.url("/api/auth/register"), json={"username": "walk-in", "password": "a long enough password"},
               timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["token_type"] == "bearer" and r.json()["user"]["role"] == "user"
    me = srv.session(token=r.json()["access_token"]).get(srv.url("/api/auth/me"), timeout=10).json()
    assert (me["username"], me["role"]) == ("walk-in", "user")
    assert s.post(srv.url("/api/auth/register"), json={"username": "walk-in", "password": "another long one!"},
                  timeout=30).status_code == 409
    r = s.post(srv.url("/api/auth/register"), json={"username": "second", "password": "short"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "weak_password"


# -- upgrading ---------------------------------------------------------------------------------------------------
def test_a_server_from_before_accounts_upgrades_with_its_data(start_server, tmp_path):
    """A data folder written by version 4 (database schema 4, auth.json format 1): the real server starts on it."""
    from tests.unit.test_upgrade import OLD_PASSWORD, OLD_TOKEN, write_version_4_install

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_version_4_install(data_dir)
    srv = start_server(wait_ready=False, tmp=tmp_path, WHISPER_MODEL="medium", ADMIN_PASSWORD="")
    assert "Admin password generated" not in srv.log()
    guest = srv.session()
    assert guest.get(srv.url("/api/history"), params={"q": "payment"}, timeout=10).json()["total"] == 1
    assert guest.get(srv.url("/api/jobs/j1"), timeout=10).json()["history_id"] == 1
    admin = login(srv, "admin", OLD_PASSWORD)
    assert admin.get(srv.url("/api/history"), timeout=10).json()["total"] == 2
    assert srv.session(token=OLD_TOKEN).get(srv.url("/api/admin/settings"), timeout=10).status_code == 200
    assert b"admin_password" not in (data_dir / "auth.json").read_bytes()
    srv.stop()
    srv.start(wait_ready=False)  # and a second start changes nothing
    assert login(srv, "admin", OLD_PASSWORD).get(srv.url("/api/history"), timeout=10).json()["total"] == 2
