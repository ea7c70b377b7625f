"""plugins/pages.py, the templates and the static files, through Flask's test client on the real app factory.

No model is loaded (the engine factory is never called), so every page here is served in degraded mode, which
is itself a requirement: the pages must load and say why transcription is unavailable. The browser behaviour
is tested end to end in tests/e2e/test_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core import tls
from whisper_appliance.core.config import Settings
from whisper_appliance.services.appliance import Appliance
from whisper_appliance.services.model_manager import ModelManager

STATIC = Path(app_module.__file__).parent / "static"
HTTPS = "https://localhost"
PAGES = ("/", "/history", "/login")  # open to anyone while REQUIRE_AUTH=false
ACCOUNT_PAGES = ("/account", "/admin")  # only after a login
# Elements a shared script looks for only when the page has them (common.js serves every page).
OPTIONAL_IDS = {"common.js": {"model-badge", "model-badge-text", "degraded-banner", "degraded-reason"}}
PASSWORD = "unit-admin-password"


def no_engine(*args, **kwargs):
    raise AssertionError("the pages must not load a model")


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "pages"))
    built = []

    def make(**overrides):
        values = dict(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                      admin_password=PASSWORD, whisper_model="tiny.en", model_downloads=False)
        settings = Settings(**{**values, **overrides}).validated()
        appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=no_engine))
        built.append(appliance)
        return app_module.create_app(settings, appliance=appliance, start_services=False)

    yield make
    for appliance in built:
        appliance.stop()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def logged_in(app, username="admin", password=PASSWORD):
    client = app.test_client()
    r = client.post("/api/auth/login", json={"username": username, "password": password}, base_url=HTTPS)
    assert r.status_code == 200, r.get_json()
    return client


@pytest.fixture
def admin_client(app):
    return logged_in(app)


def check_page(client, path):
    r = client.get(path, base_url=HTTPS)
    assert r.status_code == 200, (path, r.status_code, r.headers.get("Location"))
    assert r.mimetype == "text/html"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    page = parse(r.get_data(as_text=True))
    # The CSP forbids inline code: every script and style must come from a file.
    assert page.inline_code == []
    assert not any(tag == "style" for tag, _ in page.tags)
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"inline style on <{tag}>"
        assert not any(name.startswith("on") for name in attrs), f"inline handler on <{tag}>"
    scripts = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    assert scripts[0] == "/static/vendor/socket.io.min.js"
    for src in scripts + [attrs["href"] for tag, attrs in page.tags if tag == "link"]:
        assert src.startswith("/static/"), f"{src} is not served by this server (the pages work offline)"
        assert client.get(src, base_url=HTTPS).status_code == 200, src


class Collect(HTMLParser):
    """Tags with their attributes, and the text inside <script>/<style> (there must be none)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in and data.strip():
            self.inline_code.append(data)


def parse(html: str) -> Collect:
    c = Collect()
    c.feed(html)
    return c


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_html_and_csp_clean(client, path):
    check_page(client, path)


@pytest.mark.parametrize("path", ACCOUNT_PAGES + PAGES)
def test_pages_of_a_login_are_html_and_csp_clean(admin_client, path):
    check_page(admin_client, path)


@pytest.mark.parametrize("path", ACCOUNT_PAGES)
def test_account_pages_send_a_guest_to_the_login(client, path):
    r = client.get(path + "?tab=1", base_url=HTTPS)
    assert r.status_code == 303 and r.headers["Location"] == f"/login?next={path}?tab=1"


def test_with_require_auth_every_page_but_the_login_wants_one(make_app):
    client = make_app(require_auth=True).test_client()
    for path in ("/", "/history"):
        r = client.get(path, base_url=HTTPS)
        assert r.status_code == 303 and r.headers["Location"].startswith("/login?next="), path
    check_page(client, "/login")


def test_the_top_bar_says_who_is_logged_in(client, admin_client, app):
    guest = parse(client.get("/", base_url=HTTPS).get_data(as_text=True))
    testids = {attrs.get("data-testid") for _, attrs in guest.tags}
    assert "login-link" in testids and "logout" not in testids
    assert not any(attrs.get("href") == "/admin" for _, attrs in guest.tags)
    html = admin_client.get("/", base_url=HTTPS).get_data(as_text=True)
    admin = parse(html)
    assert {"account-name", "logout"} <= {attrs.get("data-testid") for _, attrs in admin.tags}
    assert any(attrs.get("href") == "/admin" for _, attrs in admin.tags)
    app.extensions["appliance"].accounts.create_user("alice", "a long enough password")
    alice = logged_in(app, "alice", "a long enough password")
    r = alice.get("/admin", base_url=HTTPS)
    assert r.status_code == 403 and "admin-forbidden" in r.get_data(as_text=True)
    assert "admin.js" not in r.get_data(as_text=True)
    assert not any(attrs.get("href") == "/admin"
                   for _, attrs in parse(alice.get("/", base_url=HTTPS).get_data(as_text=True)).tags)


def test_degraded_mode_shows_the_reason(client):
    html = client.get("/", base_url=HTTPS).get_data(as_text=True)
    page = parse(html)
    banner = next(attrs for tag, attrs in page.tags if attrs.get("id") == "degraded-banner")
    assert "hidden" not in banner
    assert "Transcription is unavailable" in html
    assert "no model is loaded" in html
    assert client.get("/health", base_url=HTTPS).status_code == 503


def test_main_page_has_the_controls_the_scripts_need(client):
    html = client.get("/", base_url=HTTPS).get_data(as_text=True)
    ids = {attrs.get("id") for _, attrs in parse(html).tags}
    js = (STATIC / "js" / "live.js").read_text() + (STATIC / "js" / "app.js").read_text()
    for wanted in set(re.findall(r'\$\("([a-z0-9-]+)"\)', js)):
        assert wanted in ids, f"the scripts look for #{wanted}, which the page lacks"
    testids = {attrs.get("data-testid") for _, attrs in parse(html).tags}
    assert {"record-button", "live-transcript", "upload-file", "upload-submit"} <= testids
    # Browser audio processing is off by default: it distorts clean speech.
    for box in ("live-echo", "live-noise", "live-agc"):
        attrs = next(a for tag, a in parse(html).tags if a.get("id") == box)
        assert "checked" not in attrs
    # The language list comes from core/languages.py.
    assert '<option value="de">German (de)</option>' in html


@pytest.mark.parametrize("path, script", [("/history", "history.js"), ("/admin", "admin.js"),
                                          ("/login", "login.js"), ("/account", "account.js"), ("/", "common.js")])
def test_other_pages_have_the_elements_their_script_uses(make_app, path, script):
    app = make_app(allow_registration=True)  # the login page has its registration form then
    html = logged_in(app).get(path, base_url=HTTPS).get_data(as_text=True)
    ids = {attrs.get("id") for _, attrs in parse(html).tags}
    js = (STATIC / "js" / script).read_text()
    for wanted in set(re.findall(r'\$\("([a-z0-9-]+)"\)', js)) - OPTIONAL_IDS.get(script, set()):
        assert wanted in ids, f"{script} looks for #{wanted}, which {path} lacks"


def test_scripts_never_put_data_into_html():
    for path in (STATIC / "js").glob("*.js"):
        source = path.read_text()
        assert "innerHTML" not in source, path.name
        assert "outerHTML" not in source, path.name
        assert "insertAdjacentHTML" not in source, path.name
        assert "document.write" not in source, path.name


def test_vendored_socketio_client_is_a_4x_build():
    head = (STATIC / "vendor" / "socket.io.min.js").read_text()[:200]
    assert re.search(r"Socket\.IO v4\.\d+\.\d+", head)
    assert (STATIC / "vendor" / "socket.io.LICENSE.txt").exists()


def test_the_admin_page_and_api_show_the_certificate_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "admin", "pages"))
    cert = tls.ensure_certificate(tmp_path / "ssl")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                        admin_password=PASSWORD, whisper_model="tiny.en", model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=no_engine))
    try:
        app = app_module.create_app(settings, appliance=appliance, start_services=False, certificate=cert)
        admin = logged_in(app)
        page = admin.get("/admin", base_url=HTTPS).get_data(as_text=True)
        assert cert.fingerprint_sha256 in page and len(cert.fingerprint_sha256) == 95  # 32 bytes as "AB:CD:..."
        body = admin.get("/api/admin/certificate", base_url=HTTPS).get_json()
        assert body["fingerprint_sha256"] == cert.fingerprint_sha256 and "127.0.0.1" in body["san_ips"]
        assert "PRIVATE" not in str(body)
        guest = app.test_client()
        assert guest.get("/api/admin/certificate", base_url=HTTPS).status_code == 401
        assert cert.fingerprint_sha256 not in guest.get("/admin", base_url=HTTPS).get_data(as_text=True)
    finally:
        appliance.stop()


def test_the_certificate_api_says_when_there_is_none(app, monkeypatch, tmp_path):
    monkeypatch.setattr(app_module, "PLUGINS", ("health", "auth", "admin"))
    settings = Settings(data_dir=tmp_path / "data2", models_dir=tmp_path / "models", async_mode="threading",
                        admin_password=PASSWORD, whisper_model="tiny.en", model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=no_engine))
    try:
        bare = app_module.create_app(settings, appliance=appliance, start_services=False)
        r = logged_in(bare).get("/api/admin/certificate", base_url=HTTPS)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "no_certificate"
    finally:
        appliance.stop()
