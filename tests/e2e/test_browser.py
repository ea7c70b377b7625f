"""The pages in a real headless Chromium (Debian's /usr/bin/chromium driven by Python playwright).

Live dictation runs the whole chain the way a person uses it: Chromium's fake microphone plays a speech file in
real time -> getUserMedia -> the AudioWorklet (pcm16) or MediaRecorder (webm) -> Socket.IO over HTTPS -> the
server's streaming sessions -> the text on the page, scored by word error rate against the reference.
Also: file upload (direct and as a job), the history page's XSS safety and highlighting, logging in (the admin
page's users, the account page's tokens), two accounts that each see only their own history, logging out, and
degraded mode. Every page is checked for script errors and CSP violations.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import reference_text
from tests.e2e.conftest import create_user, login
from whisper_appliance.core.wer import word_error_rate

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
FAKE_MIC_RATE = 48_000
TRAILING_SILENCE = 1.5  # seconds: lets the streaming policy finalise the last utterance
MAX_LIVE_WER = 0.25
MAX_UPLOAD_WER = 0.15
STOP_TIMEOUT_MS = 180_000
XSS = "<img src=x onerror=alert(1)>"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)", allow_module_level=True)


# -- helpers -----------------------------------------------------------------------------------------------------
def fake_mic_wav(source: Path, out_dir: Path) -> tuple[Path, float]:
    """Chromium's fake capture wants 16-bit PCM WAV; 48 kHz mono plus trailing silence. Returns (path, seconds)."""
    out = out_dir / f"{source.stem}-fake-mic.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                    "-af", f"apad=pad_dur={TRAILING_SILENCE}", "-ac", "1", "-ar", str(FAKE_MIC_RATE),
                    "-c:a", "pcm_s16le", str(out)], check=True, timeout=60)
    frames = (out.stat().st_size - 44) / 2
    return out, frames / FAKE_MIC_RATE


def speech_file(speech_dir: Path, name: str) -> Path:
    return next(p for p in (speech_dir / f"{name}.wav", speech_dir / f"{name}.mp3") if p.exists())


@contextmanager
def chromium(fake_audio: Path | None = None) -> Iterator:
    args = list(ARGS)
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}%noloop")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
            yield context
        finally:
            browser.close()


class PageProblems:
    """Script errors, CSP violations and dialogs (an alert() would mean injected script ran)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, msg) -> None:
        text = msg.text
        if msg.type == "error" and "Failed to load resource" not in text:
            self.errors.append(f"console: {text}")
        elif "Content Security Policy" in text:
            self.errors.append(f"csp: {text}")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


def open_page(context, url: str):
    page = context.new_page()
    problems = PageProblems(page)
    page.goto(url)
    return page, problems


def dictate(page, fmt: str, seconds: float, *, during=None) -> dict:
    """Record with the fake microphone for ``seconds``; returns what the page showed and saw."""
    expect = playwright_sync.expect
    button = page.get_by_test_id("record-button")
    expect(button).to_be_enabled(timeout=60_000)  # the model is ready
    page.locator("#live-settings summary").click()
    page.select_option("#live-format", fmt)
    # Count partial updates: the grey text must appear while speaking, not only at the end.
    page.evaluate("""() => {
        window.__partials = 0;
        new MutationObserver(() => { if (document.getElementById('live-partial').textContent.trim())
            window.__partials++; }).observe(document.getElementById('live-partial'),
            {childList: true, characterData: true, subtree: true});
    }""")
    button.click()
    page.wait_for_function("() => WA.live.state === 'recording'", timeout=60_000)
    if during is not None:
        during(page)
    # The fake microphone plays the file once, in real time, from when capture opened.
    page.wait_for_timeout(int((seconds + 1.0) * 1000))
    committed_before_stop = page.locator("#live-committed").inner_text()
    button.click()
    page.wait_for_function("() => WA.live.state === 'idle'", timeout=STOP_TIMEOUT_MS)
    return {"text": page.get_by_test_id("live-transcript").inner_text(),
            "committed": page.locator("#live-committed").inner_text(),
            "partial": page.locator("#live-partial").inner_text(),
            "status": page.get_by_test_id("live-status").inner_text(),
            "before_stop": committed_before_stop,
            "partials": page.evaluate("window.__partials"),
            "segments": page.evaluate("WA.live.segments")}


# -- live dictation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, name", [("pcm16", "synthetic_meeting"), ("webm", "jfk")])
def test_live_dictation_in_chromium(server, api, speech_dir, tmp_path, fmt, name):
    wav, seconds = fake_mic_wav(speech_file(speech_dir, name), tmp_path)
    with chromium(wav) as context:
        page, problems = open_page(context, server.url("/"))
        shown = dictate(page, fmt, seconds)
        shot = tmp_path / f"main-page-after-{fmt}-dictation.png"
        page.screenshot(path=str(shot), full_page=True)

    wer = word_error_rate(reference_text(name), shown["text"])
    print(f"\n[{fmt}] {name}: WER {wer:.1%}; partial updates {shown['partials']}; committed before stop "
          f"{len(shown['before_stop'].split())} words; status {shown['status']!r}\n  text: {shown['text']!r}\n"
          f"  screenshot: {shot}")
    assert problems.errors == [] and problems.dialogs == []
    assert shown["partial"] == ""  # after the stop everything is committed
    assert shown["text"].strip() == shown["committed"].strip()
    assert wer <= MAX_LIVE_WER, shown["text"]
    # Timestamps for the client-side srt/vtt come from the results: ordered and inside the recording.
    ends = [s["end"] for s in shown["segments"]]
    assert ends == sorted(ends) and 0 < ends[-1] <= seconds + 1.0
    # The server saved the session to history, with the same text the page shows.
    assert "Saved to history" in shown["status"], shown["status"]
    history_id = int(shown["status"].split("#")[1].split(")")[0])
    entry = api.get(server.url(f"/api/history/{history_id}"), timeout=10).json()
    assert entry["source"] == "live"
    assert word_error_rate(entry["text"], shown["text"]) == 0.0


@pytest.mark.parametrize("fmt", ["pcm16", "webm"])
def test_live_dictation_survives_a_dropped_connection(server, speech_dir, tmp_path, fmt):
    """The transport is closed mid-speech: the text so far stays, socket.io reconnects, and the page resumes the
    same server session with its resume token: one session, one history entry.

    WebM cannot go on mid-stream, so a WebM recording continues as PCM from where the server's audio ends (the
    page keeps the worklet's PCM in both formats)."""
    wav, seconds = fake_mic_wav(speech_file(speech_dir, "synthetic_meeting"), tmp_path)
    seen: dict[str, object] = {}

    def drop_connection(page) -> None:
        page.wait_for_timeout(9_000)
        seen["session_before"] = page.evaluate("WA.live.sessionId")
        seen["format_before"] = page.evaluate("WA.live.format")
        seen["committed_before"] = page.locator("#live-committed").inner_text()
        page.evaluate("WA.live.socket.io.engine.close()")
        page.wait_for_function("() => WA.live.state === 'recording' && WA.live.sessionId !== null", timeout=30_000)
        seen["status_after"] = page.get_by_test_id("live-status").inner_text()
        seen["session_after"] = page.evaluate("WA.live.sessionId")
        seen["format_after"] = page.evaluate("WA.live.format")

    with chromium(wav) as context:
        page, problems = open_page(context, server.url("/"))
        shown = dictate(page, fmt, seconds - 9.0, during=drop_connection)

    wer = word_error_rate(reference_text("synthetic_meeting"), shown["text"])
    print(f"\n[reconnect, {fmt}] WER {wer:.1%}; committed before the drop {seen['committed_before']!r}; status "
          f"after reconnect {seen['status_after']!r}\n  text: {shown['text']!r}")
    assert problems.errors == [] and problems.dialogs == []
    assert seen["session_after"] == seen["session_before"]  # resumed, not a second session
    assert (seen["format_before"], seen["format_after"]) == (fmt, "pcm16")
    assert "Reconnected" in str(seen["status_after"])
    assert shown["text"].startswith(str(seen["committed_before"]))  # committed text is never retracted
    # The audio the server did not have, including what was captured during the gap, was sent after the resume.
    assert wer <= MAX_LIVE_WER, shown["text"]
    history_id = int(shown["status"].split("#")[1].split(")")[0])
    # The page dictated anonymously: the session went to the guests' shared history.
    items = server.session().get(server.url("/api/history"), params={"source": "live", "limit": 100},
                                 timeout=10).json()["items"]
    entries = [e for e in items if (e.get("metadata") or {}).get("session_id") == seen["session_before"]]
    assert [e["id"] for e in entries] == [history_id]
    assert word_error_rate(entries[0]["text"], shown["text"]) == 0.0


# -- file upload -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["direct", "job"])
def test_upload_shows_the_transcript(server, speech_dir, mode):
    with chromium() as context:
        page, problems = open_page(context, server.url("/"))
        page.get_by_test_id("upload-file").set_input_files(str(speech_dir / "jfk.mp3"))
        page.select_option("#upload-mode", mode)
        page.get_by_test_id("upload-submit").click()
        result = page.get_by_test_id("upload-result-text")
        playwright_sync.expect(result).to_be_visible(timeout=180_000)
        text = result.inner_text()
        status = page.get_by_test_id("upload-status").inner_text()
        page.select_option("#upload-view", "srt")
        srt = result.inner_text()
    wer = word_error_rate(reference_text("jfk"), text)
    print(f"\n[upload {mode}] WER {wer:.1%}: {text!r}")
    assert problems.errors == []
    assert status == "Done."
    assert wer <= MAX_UPLOAD_WER
    assert srt.startswith("1\n00:00:00,000 --> ")


# -- history -----------------------------------------------------------------------------------------------------
def test_history_renders_transcripts_as_text(server, admin, tmp_path):
    stamp = dt.datetime.now(dt.UTC).isoformat()
    marker = "zebracrossing"
    entry = {"text": f"{XSS} hello {marker} <b>bold</b>", "filename": f"{XSS}.wav", "source": "upload",
             "created_at": stamp, "language": "en", "duration": 3.0,
             "segments": [{"start": 0.0, "end": 3.0, "text": f"{XSS} hello {marker}"}]}
    # Into the guests' shared history: the page is opened without logging in.
    r = admin.post(server.url("/api/history/import"), params={"owner": "guest"}, json=[entry], timeout=30)
    assert r.status_code == 200, r.text

    with chromium() as context:
        page, problems = open_page(context, server.url("/history"))
        item = page.get_by_test_id("history-entry").filter(has_text=marker).first
        playwright_sync.expect(item).to_be_visible(timeout=30_000)
        assert XSS in item.inner_text()  # shown literally ...
        assert page.locator("#history-list img, #history-list b").count() == 0  # ... and never parsed

        page.get_by_test_id("history-q").fill(marker)
        page.get_by_test_id("history-q").press("Enter")
        mark = page.locator("#history-list mark").first
        playwright_sync.expect(mark).to_have_text(marker, timeout=30_000)
        hit = page.get_by_test_id("history-entry").first
        assert XSS in hit.inner_text()
        assert page.locator("#history-list img").count() == 0
        # The U+0002/U+0003 markers become <mark> and nothing else.
        assert "\u0002" not in hit.inner_text() and "\u0003" not in hit.inner_text()
        exports = hit.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert any(href.endswith("/export?format=srt") for href in exports)
        stats = page.get_by_test_id("history-stats").inner_text()
        page.screenshot(path=str(tmp_path / "history-page.png"), full_page=True)
    assert problems.errors == [] and problems.dialogs == []
    assert "transcripts" in stats


# -- accounts ----------------------------------------------------------------------------------------------------
def log_in(page, username: str, password: str) -> None:
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def test_admin_logs_in_manages_users_and_logs_out(server, tmp_path):
    expect = playwright_sync.expect
    newcomer = f"browser-{uuid.uuid4().hex[:8]}"
    with chromium() as context:
        page, problems = open_page(context, server.url("/admin"))
        expect(page).to_have_url(re.compile(r"/login\?next=/admin$"))  # /admin wants a login first
        log_in(page, "admin", "not-the-password")
        expect(page.get_by_test_id("login-status")).to_have_text("Wrong username or password.")

        log_in(page, "admin", server.admin_password)
        expect(page.get_by_test_id("admin-panel")).to_be_visible()  # back where it was going
        expect(page.get_by_test_id("account-name")).to_have_text("admin")
        tiny = page.get_by_test_id("model-row").filter(has_text="tiny.en")
        expect(tiny).to_contain_text("loaded")
        expect(page.get_by_test_id("model-current")).to_contain_text("tiny.en · ready")
        expect(page.get_by_test_id("model-current")).not_to_contain_text("null")
        expect(page.get_by_test_id("settings-table")).to_contain_text("whisper_model")
        expect(page.get_by_test_id("settings-table")).not_to_contain_text(server.admin_password)
        expect(page.get_by_test_id("users-table")).to_contain_text("admin")

        page.get_by_test_id("user-name").fill(newcomer)
        page.get_by_test_id("user-password").fill("a long browser password")
        page.get_by_test_id("user-create").click()
        row = page.get_by_test_id("user-row").filter(has_text=newcomer)
        expect(row).to_contain_text("active")
        row.get_by_role("button", name="Disable").click()
        expect(page.get_by_test_id("user-row").filter(has_text=newcomer)).to_contain_text("disabled")
        # A reload keeps the session (the CSRF token comes back from /api/auth/me).
        page.reload()
        expect(page.get_by_test_id("admin-panel")).to_be_visible()
        page.screenshot(path=str(tmp_path / "admin-page.png"), full_page=True)

        page.goto(server.url("/account"))
        page.get_by_test_id("token-label").fill("browser-test")
        page.get_by_test_id("token-create").click()
        expect(page.get_by_test_id("token-new")).to_be_visible()
        token = page.get_by_test_id("token-new-value").inner_text()
        expect(page.get_by_test_id("token-row").filter(has_text="browser-test")).to_contain_text("transcribe")

        page.get_by_test_id("logout").click()
        expect(page.get_by_test_id("login-card")).to_be_visible()
        page.goto(server.url("/admin"))
        expect(page.get_by_test_id("login-card")).to_be_visible()  # logged out: /admin sends to /login again
    assert problems.errors == [] and problems.dialogs == []
    assert len(token) >= 20
    assert server.session(token=token).get(server.url("/api/auth/me"), timeout=10).json()["username"] == "admin"


def test_users_dictate_and_see_only_their_own_history(server, admin, speech_dir, tmp_path):
    """Two accounts: the one who dictates finds the dictation in their history and nobody else's entries; after
    logging out, the guest history does not show it; the other account's history does not either."""
    expect = playwright_sync.expect
    alice, alice_password = create_user(server, admin, "alice")
    bob, bob_password = create_user(server, admin, "bob")
    marker = uuid.uuid4().hex[:10]
    for owner in (bob, "guest"):
        entry = {"text": f"{owner} private note {marker}", "created_at": dt.datetime.now(dt.UTC).isoformat(),
                 "source": "upload"}
        assert admin.post(server.url("/api/history/import"), params={"owner": owner}, json=[entry],
                          timeout=30).json()["imported"] == 1

    wav, seconds = fake_mic_wav(speech_file(speech_dir, "jfk"), tmp_path)
    with chromium(wav) as context:
        page, problems = open_page(context, server.url("/login"))
        log_in(page, alice, alice_password)
        expect(page.get_by_test_id("account-name")).to_have_text(alice)
        shown = dictate(page, "pcm16", seconds)
        assert "Saved to history" in shown["status"], shown["status"]
        history_id = int(shown["status"].split("#")[1].split(")")[0])

        page.goto(server.url("/history"))
        entries = page.get_by_test_id("history-entry")
        expect(entries).to_have_count(1, timeout=30_000)  # a new account: its one dictation and nothing else
        expect(entries.first).to_contain_text("Dictation")
        mine = entries.first.inner_text()
        expect(page.get_by_test_id("history-stats")).to_contain_text("1")
        page.screenshot(path=str(tmp_path / "history-of-one-user.png"), full_page=True)

        page.get_by_test_id("logout").click()
        expect(page.get_by_test_id("login-card")).to_be_visible()
        page.goto(server.url("/history"))
        playwright_sync.expect(page.get_by_test_id("login-link")).to_be_visible()
        page.get_by_test_id("history-q").fill(marker)
        page.get_by_test_id("history-q").press("Enter")
        expect(page.get_by_test_id("history-entry")).to_have_count(1, timeout=30_000)
        guest_view = page.get_by_test_id("history-list").inner_text()

        page.goto(server.url("/login"))
        log_in(page, bob, bob_password)
        expect(page.get_by_test_id("account-name")).to_have_text(bob)
        page.goto(server.url("/history"))
        expect(page.get_by_test_id("history-entry")).to_have_count(1, timeout=30_000)
        bob_view = page.get_by_test_id("history-list").inner_text()
    assert problems.errors == [] and problems.dialogs == []
    assert word_error_rate(reference_text("jfk"), shown["text"]) <= MAX_LIVE_WER
    assert marker not in mine and "country" in mine.lower()
    assert f"guest private note {marker}" in guest_view and "bob" not in guest_view
    assert f"{bob} private note {marker}" in bob_view and "country" not in bob_view.lower()
    # The API agrees: the dictation is Alice's, and 404 for Bob and for guests.
    alice_api = login(server, alice, alice_password)
    assert alice_api.get(server.url(f"/api/history/{history_id}"), timeout=10).json()["source"] == "live"
    assert login(server, bob, bob_password).get(server.url(f"/api/history/{history_id}"), timeout=10
                                                ).status_code == 404
    assert server.session().get(server.url(f"/api/history/{history_id}"), timeout=10).status_code == 404


# -- degraded mode -----------------------------------------------------------------------------------------------
def test_pages_explain_degraded_mode(start_server):
    srv = start_server(wait_ready=False, WHISPER_MODEL="medium")  # not installed, downloads off: never ready
    with chromium() as context:
        page, problems = open_page(context, srv.url("/"))
        banner = page.get_by_test_id("degraded-banner")
        playwright_sync.expect(banner).to_be_visible()
        playwright_sync.expect(page.get_by_test_id("record-button")).to_be_disabled(timeout=15_000)
        reason = page.locator("#degraded-reason").inner_text()
        for path in ("/history", "/admin"):
            assert page.goto(srv.url(path)).status == 200
    print(f"\n[degraded] banner: {reason!r}")
    assert "medium" in reason or "model" in reason
    assert [e for e in problems.errors if "503" not in e] == []
