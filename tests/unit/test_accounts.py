"""services/accounts.py on a real SQLite file: users, the first admin, logins and their limits, credentials."""

from __future__ import annotations

import base64
import json
import logging
import re
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest

from whisper_appliance.core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from whisper_appliance.core.identity import GUEST, SYSTEM
from whisper_appliance.services import auth
from whisper_appliance.services.accounts import Accounts, LoginThrottle
from whisper_appliance.services.auth import AuthFile
from whisper_appliance.services.database import Database

GENERATED = re.compile(r"Admin password generated: (\S+)")
PASSWORD = "correct horse battery"
ADDRESS = "192.0.2.1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make(tmp_path):
    opened: list[Database] = []

    def make(data_dir=None, **kwargs) -> Accounts:
        data_dir = data_dir or tmp_path / "data"
        db = Database(data_dir / "appliance.db")
        opened.append(db)
        kwargs.setdefault("admin_password", PASSWORD)
        accounts = Accounts(db, AuthFile(data_dir), **kwargs)
        accounts.bootstrap()
        return accounts

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def accounts(make) -> Accounts:
    return make()


def admin_principal(accounts: Accounts):
    return accounts.login("admin", PASSWORD, ADDRESS).principal


# --- the first admin --------------------------------------------------------------------------------------------

def test_admin_password_makes_the_admin_account_and_is_never_stored(accounts, tmp_path):
    user = accounts.authenticate("admin", PASSWORD, ADDRESS)
    assert (user.username, user.role, user.disabled) == ("admin", "admin", False)
    assert user.last_login_at is not None
    for path in (tmp_path / "data").iterdir():
        assert PASSWORD.encode() not in path.read_bytes()


def test_admin_password_puts_the_admin_back_at_every_start(make, tmp_path):
    accounts = make()
    other = accounts.create_user("boss", "another long password", "admin")
    admin = accounts.find_user("admin")
    with accounts.db.write() as conn:  # as if the admin had been disabled and demoted while the variable was unset
        conn.execute("UPDATE users SET disabled = 1, role = 'user', password_hash = ? WHERE id = ?",
                     (auth.hash_password("forgotten"), admin.id))
    again = make()
    user = again.authenticate("admin", PASSWORD, ADDRESS)
    assert (user.role, user.disabled) == ("admin", False)
    assert again.get_user(other.id).role == "admin"


def test_generated_admin_password_is_logged_once_and_stored_as_a_hash(make, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="whisper_appliance.services.accounts")
    first = make(admin_password="")
    make(admin_password="")
    passwords = [m.group(1) for r in caplog.records if (m := GENERATED.search(r.getMessage()))]
    assert len(passwords) == 1 and len(passwords[0]) >= 24
    record = next(r for r in caplog.records if GENERATED.search(r.getMessage()))
    assert record.levelno == logging.WARNING and "shown once" in record.getMessage()
    assert first.authenticate("admin", passwords[0], ADDRESS).role == "admin"
    saved = tmp_path / "data" / "admin-password.txt"  # also in a file only the service user may read
    assert saved.read_text().split() == ["admin", passwords[0]] and stat.S_IMODE(saved.stat().st_mode) == 0o600
    for path in (tmp_path / "data").iterdir():
        if path != saved:
            assert passwords[0].encode() not in path.read_bytes()


def test_an_install_from_before_accounts_keeps_its_admin_password_tokens_and_secret(make, tmp_path, caplog):
    data = tmp_path / "old"
    data.mkdir()
    secret = base64.b64encode(bytes(range(32))).decode()
    (data / "auth.json").write_text(json.dumps({
        "version": 1, "secret_key": secret, "admin_password": auth.hash_password("the old admin password"),
        "tokens": [{"id": "abc123", "label": "laptop", "sha256": auth.token_digest("wa_legacy"),
                    "created_at": "2025-01-01T00:00:00+00:00", "last_used_at": None}]}))
    accounts = make(data, admin_password="", api_keys=["from-env"])
    assert not GENERATED.search(caplog.text)
    assert accounts.authenticate("admin", "the old admin password", ADDRESS).role == "admin"
    legacy = accounts.verify("wa_legacy")
    assert legacy is not None and legacy.username == "admin" and legacy.is_admin and legacy.credential_id == "abc123"
    assert json.loads((data / "auth.json").read_text()) == {"version": 2, "secret_key": secret}
    again = make(data, admin_password="")  # a second start changes nothing
    assert again.verify("wa_legacy") is not None
    assert [t.id for t in again.list_tokens(legacy)] == ["abc123"]


# --- users ------------------------------------------------------------------------------------------------------

def test_create_user_checks_name_role_and_password(accounts):
    user = accounts.create_user("Alice", "a long enough password")
    assert (user.username, user.role, user.disabled) == ("Alice", "user", False)
    with pytest.raises(Conflict) as err:
        accounts.create_user("alice", "another long password")  # names are case-insensitive
    assert err.value.code == "username_taken"
    for name in ("", "a b", "-dash", "x" * 65, "guest", "Guest", "system", None, 3):
        with pytest.raises(InvalidInput) as err:
            accounts.create_user(name, "a long enough password")
        assert err.value.code == "invalid_username", name
    for password in ("short", "123456789", "x" * 1025, None):
        with pytest.raises(InvalidInput) as err:
            accounts.create_user("bob", password)
        assert err.value.code in ("weak_password", "invalid_request")
    with pytest.raises(InvalidInput, match="username"):
        accounts.create_user("bob-the-builder", "Bob-The-Builder")
    with pytest.raises(InvalidInput) as err:
        accounts.create_user("bob", "a long enough password", "root")
    assert err.value.code == "invalid_role"
    assert [u.username for u in accounts.list_users()] == ["admin", "Alice"]


def test_registration_is_closed_unless_allowed(make, tmp_path):
    closed = make()
    with pytest.raises(Forbidden) as err:
        closed.register("newcomer", "a long enough password")
    assert err.value.status == 403 and err.value.code == "registration_closed"
    open_ = make(tmp_path / "open", allow_registration=True)
    issued = open_.register("newcomer", "a long enough password")
    assert issued.user.role == "user" and issued.expires_in == 12 * 3600
    assert open_.verify(issued.token).username == "newcomer"
    with pytest.raises(Conflict):
        open_.register("Newcomer", "a long enough password")
    with pytest.raises(InvalidInput):
        open_.register("another", "short")


def test_admin_changes_keep_an_admin_and_never_lock_out_the_actor(accounts):
    admin = admin_principal(accounts)
    alice = accounts.create_user("alice", "a long enough password")
    with pytest.raises(Conflict) as err:
        accounts.update_user(admin, admin.user_id, disabled=True)
    assert err.value.code in ("cannot_change_yourself", "managed_by_environment")
    promoted, _ = accounts.update_user(admin, alice.id, role="admin")
    assert promoted.role == "admin"
    alice_admin = accounts.login("alice", "a long enough password", ADDRESS).principal
    with pytest.raises(Conflict) as err:  # the account ADMIN_PASSWORD manages stays as it is
        accounts.update_user(alice_admin, admin.user_id, role="user")
    assert err.value.code == "managed_by_environment"
    with pytest.raises(NotFound):
        accounts.update_user(admin, 999, role="user")


def test_the_last_enabled_admin_cannot_go(make, tmp_path):
    accounts = make(tmp_path / "gen", admin_password="")
    boss = accounts.create_user("boss", "a long enough password", "admin")
    actor = accounts.login("boss", "a long enough password", ADDRESS).principal
    admin = accounts.find_user("admin")
    accounts.update_user(actor, admin.id, disabled=True)
    with pytest.raises(Conflict) as err:  # boss is the only enabled admin left, and cannot demote themself
        accounts.update_user(actor, boss.id, role="user")
    assert err.value.code == "cannot_change_yourself"
    with pytest.raises(Conflict) as err:
        accounts.delete_user(accounts.get_user(boss.id))
    assert err.value.code == "last_admin"
    assert accounts.get_user(boss.id).role == "admin"


def test_disabling_ends_logins_and_refuses_every_credential(accounts):
    admin = admin_principal(accounts)
    alice = accounts.create_user("alice", "a long enough password")
    session = accounts.login("alice", "a long enough password", ADDRESS)
    personal, _info = accounts.create_token(session.principal, "phone", "transcribe")
    _user, ended = accounts.update_user(admin, alice.id, disabled=True)
    assert {session.credential_id, personal.credential_id} <= set(ended)
    assert accounts.verify(session.token) is None and accounts.verify(personal.token) is None
    assert not accounts.still_valid(personal.principal)
    with pytest.raises(Forbidden) as err:
        accounts.login("alice", "a long enough password", ADDRESS)
    assert err.value.code == "account_disabled"
    accounts.update_user(admin, alice.id, disabled=False)
    assert accounts.verify(personal.token) is not None  # a personal token comes back with the account
    assert accounts.verify(session.token) is None  # a login does not


# --- logging in -------------------------------------------------------------------------------------------------

def test_wrong_passwords_and_unknown_users_are_the_same_401(accounts):
    for name, password in (("admin", "wrong password!"), ("nobody", PASSWORD)):
        with pytest.raises(Unauthorized) as err:
            accounts.authenticate(name, password, ADDRESS)
        assert err.value.code == "invalid_credentials"
    with pytest.raises(InvalidInput):
        accounts.authenticate("admin", None, ADDRESS)


def test_failed_logins_are_limited_per_address_and_good_ones_never_count(make):
    accounts = make(throttle=LoginThrottle(per_ip="3 per minute", per_user="100 per hour"))
    for _ in range(5):
        accounts.authenticate("admin", PASSWORD, ADDRESS)  # correct logins use nothing up
    for _ in range(3):
        with pytest.raises(Unauthorized):
            accounts.authenticate("admin", "wrong password!", ADDRESS)
    with pytest.raises(RateLimited) as err:
        accounts.authenticate("admin", PASSWORD, ADDRESS)  # even the right password waits now
    assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
    assert accounts.authenticate("admin", PASSWORD, "192.0.2.2").username == "admin"  # another address


def test_failed_logins_are_limited_per_user_from_any_address(make):
    accounts = make(throttle=LoginThrottle(per_ip="100 per minute", per_user="3 per hour"))
    for i in range(3):
        with pytest.raises(Unauthorized):
            accounts.authenticate("Admin", "wrong password!", f"198.51.100.{i}")
    with pytest.raises(RateLimited, match="for this user"):
        accounts.authenticate("admin", PASSWORD, "198.51.100.99")
    accounts.create_user("alice", "a long enough password")
    assert accounts.authenticate("alice", "a long enough password", "198.51.100.99").username == "alice"


def test_the_limit_holds_against_parallel_guesses(make):
    """Each attempt is counted before its password is checked: 40 simultaneous guesses, 5 allowed."""
    accounts = make(throttle=LoginThrottle(per_ip="5 per minute", per_user="1000 per hour"))
    start = threading.Barrier(40)
    outcomes: list[str] = []
    lock = threading.Lock()

    def guess(i: int) -> None:
        start.wait()
        try:
            accounts.authenticate("admin", f"guess number {i}", ADDRESS)
            outcome = "in"
        except Unauthorized:
            outcome = "checked"
        except RateLimited:
            outcome = "limited"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("checked") == 5 and outcomes.count("limited") == 35


# --- credentials ------------------------------------------------------------------------------------------------

def test_sessions_and_access_tokens_expire_and_can_be_ended(make):
    clock = Clock()
    accounts = make(clock=clock)
    session = accounts.login("admin", PASSWORD, ADDRESS)
    access = accounts.grant_token("admin", PASSWORD, ADDRESS, "transcribe")
    assert accounts.verify(session.token).is_admin
    narrowed = accounts.verify(access.token)
    assert narrowed.role == "admin" and not narrowed.is_admin and narrowed.can_transcribe
    with pytest.raises(InvalidInput):
        accounts.grant_token("admin", PASSWORD, ADDRESS, "transcribe everything")
    accounts.logout(session.principal)
    assert accounts.verify(session.token) is None and not accounts.still_valid(session.principal)
    clock.now += timedelta(hours=12, seconds=1)
    assert accounts.verify(access.token) is None
    assert accounts.verify("wa_nonsense") is None and accounts.verify("") is None and accounts.verify(None) is None


def test_password_change_ends_every_login_of_the_account(accounts):
    accounts.create_user("alice", "a long enough password")
    first = accounts.login("alice", "a long enough password", ADDRESS)
    second = accounts.login("alice", "a long enough password", "192.0.2.9")
    personal, _ = accounts.create_token(first.principal, "script", "admin")
    with pytest.raises(Unauthorized) as err:
        accounts.change_password(first.principal, "not my password", "a brand new password", ADDRESS,
                                 new_session=True)
    assert err.value.code == "wrong_password"
    with pytest.raises(InvalidInput):
        accounts.change_password(first.principal, "a long enough password", "short", ADDRESS, new_session=True)
    fresh, ended = accounts.change_password(first.principal, "a long enough password", "a brand new password",
                                            ADDRESS, new_session=True)
    assert set(ended) == {first.credential_id, second.credential_id}
    assert accounts.verify(first.token) is None and accounts.verify(second.token) is None  # copied cookies too
    assert accounts.verify(fresh.token).username == "alice"
    assert accounts.verify(personal.token) is not None  # personal tokens are revoked one by one
    assert accounts.authenticate("alice", "a brand new password", ADDRESS)
    with pytest.raises(Conflict):  # ADMIN_PASSWORD's account changes its password in the environment
        accounts.change_password(admin_principal(accounts), PASSWORD, "a brand new password", ADDRESS,
                                 new_session=False)


def test_personal_tokens_are_per_account_and_scoped(accounts):
    admin = admin_principal(accounts)
    accounts.create_user("alice", "a long enough password")
    alice = accounts.login("alice", "a long enough password", ADDRESS).principal
    issued, info = accounts.create_token(alice, "  dictation laptop ", "transcribe")
    assert info.label == "dictation laptop" and info.scope == "transcribe" and info.last_used_at is None
    principal = accounts.verify(issued.token)
    assert principal.username == "alice" and principal.can_transcribe and not principal.full_access
    assert [t.id for t in accounts.list_tokens(alice)] == [info.id]
    assert accounts.list_tokens(admin) == []
    assert issued.token not in json.dumps([t.to_dict() for t in accounts.list_tokens(alice)])
    with accounts.db.read() as conn:
        digests = [r[0] for r in conn.execute("SELECT digest FROM credentials")]
    assert auth.token_digest(issued.token) in digests and issued.token not in digests
    with pytest.raises(NotFound):
        accounts.revoke_token(admin, info.id)  # another account's token: as if there were none
    for label, scope in (("", "admin"), ("x" * 101, "admin"), ("ok", "root")):
        with pytest.raises(InvalidInput):
            accounts.create_token(alice, label, scope)
    with pytest.raises(Unauthorized):
        accounts.create_token(GUEST, "guest token", "transcribe")
    accounts.revoke_token(alice, info.id)
    assert accounts.verify(issued.token) is None and not accounts.still_valid(principal)
    with pytest.raises(NotFound):
        accounts.revoke_token(alice, info.id)


def test_api_keys_are_transcribe_tokens_of_the_admin(make):
    accounts = make(api_keys=["key-one", "key-two", "key-one", ""])
    one, two = accounts.verify("key-one"), accounts.verify("key-two")
    assert one.username == two.username == "admin" and one.credential_id != two.credential_id
    assert one.can_transcribe and not one.full_access and not one.is_admin
    assert accounts.verify("key-three") is None
    admin = admin_principal(accounts)
    listed = accounts.list_tokens(admin)
    assert [(t.id, t.configured, t.scope) for t in listed] == [("api-key-1", True, "transcribe"),
                                                               ("api-key-2", True, "transcribe")]
    with pytest.raises(Conflict):
        accounts.revoke_token(admin, "api-key-1")
    assert accounts.still_valid(one)


def test_last_used_is_written_at_most_once_a_minute(make):
    clock = Clock()
    accounts = make(clock=clock)
    issued, info = accounts.create_token(admin_principal(accounts), "ci", "transcribe")

    def last_used() -> str | None:
        return next(t for t in accounts.list_tokens(issued.principal) if t.id == info.id).last_used_at

    accounts.verify(issued.token)
    first = last_used()
    assert first == "2030-01-01T12:00:00.000Z"
    clock.now += timedelta(seconds=30)
    accounts.verify(issued.token)
    assert last_used() == first
    clock.now += timedelta(seconds=31)
    accounts.verify(issued.token)
    assert last_used() == "2030-01-01T12:01:01.000Z"


def test_guests_and_internal_callers_are_principals_too():
    assert GUEST.is_guest and not GUEST.is_admin and GUEST.can_transcribe and GUEST.can_edit_history
    assert not GUEST.can_delete_history and not GUEST.can_manage_account
    assert GUEST.sees(None) and not GUEST.sees(1)
    assert SYSTEM.is_admin and SYSTEM.sees(1) and SYSTEM.sees(None)
