"""Async jobs against the real server: progress, ordering, the result cache, durability under SIGKILL, bad input,
cancellation and result formats. Real tiny.en on real speech, real SQLite, HTTPS, python-socketio.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import bench

TERMINAL = ("completed", "failed", "cancelled")


# -- helpers ----------------------------------------------------------------------------------------------------
def unique_copy(src: Path, tmp: Path, *, repeat: int = 1) -> Path:
    """``src`` repeated ``repeat`` times plus a random bit of silence: real speech no earlier test has cached."""
    dst = tmp / f"{src.stem}-x{repeat}-{uuid.uuid4().hex[:8]}.wav"
    pad = random.uniform(0.05, 0.5)
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(repeat - 1), "-i", str(src),
            "-af", f"apad=pad_dur={pad:.3f}", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(dst)]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return dst


def submit(session: requests.Session, srv: Any, path: Path, **fields: Any) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = session.post(srv.url("/api/jobs"), files={"audio": (path.name, f)}, data=fields, timeout=60)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["links"]["self"] == f"/api/jobs/{body['job_id']}"
    assert r.headers["Location"].endswith(body["links"]["self"])
    return body


def job(session: requests.Session, srv: Any, job_id: str) -> dict[str, Any]:
    r = session.get(srv.url(f"/api/jobs/{job_id}"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(session: requests.Session, srv: Any, job_id: str, *, timeout: float = 300,
             statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = job(session, srv, job_id)
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout} s")


def job_files(srv: Any, job_id: str) -> list[Path]:
    jobs_dir = srv.data_dir / "jobs"
    return list(jobs_dir.glob(f"{job_id}*")) if jobs_dir.exists() else []


# -- progress ---------------------------------------------------------------------------------------------------
def test_progress_is_reported_while_a_job_runs(server, api, speech_dir, tmp_path):
    # faster-whisper decodes 30-second windows and hands out a window's segments together, so one window
    # (the 26 s file alone) moves 0 -> 1 in a single jump; three copies give three windows to watch.
    audio = unique_copy(speech_dir / "synthetic_meeting.wav", tmp_path, repeat=3)
    sio = bench.SocketClient(server.base_url, verify=str(server.cert_path))
    try:
        created = submit(api, server, audio)
        ack = sio.call("join_job", {"job_id": created["job_id"]}, timeout=10)
        assert ack["ok"] is True and ack["job_id"] == created["job_id"]

        polled: list[float] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            body = job(api, server, created["job_id"])
            if body["status"] == "processing":
                polled.append(body["progress"])
                if body["progress"] > 0:
                    assert body["eta_seconds"] is not None and body["eta_seconds"] >= 0
            if body["status"] in TERMINAL:
                break
            time.sleep(0.1)
        assert body["status"] == "completed", body
        assert body["progress"] == 1.0 and body["eta_seconds"] == 0
        assert "quarterly planning" in body["result"]["text"].lower()
        assert body["history_id"] == body["result"]["history_id"]

        distinct = sorted(set(polled + [body["progress"]]))
        assert len(distinct) >= 3, polled
        assert polled == sorted(polled), "progress went backwards"

        sio.wait_for(lambda e: e.name == "job_progress" and e.payload["status"] == "completed", 5)
        events = [e.payload for e in sio.events if e.name == "job_progress"]
        values = [e["progress"] for e in events]
        assert values == sorted(values), events
        assert events[-1]["status"] == "completed" and events[-1]["progress"] == 1.0
        assert any(e["status"] == "processing" for e in events)
    finally:
        sio.disconnect()


def test_join_job_with_an_unknown_id_is_an_error(server):
    sio = bench.SocketClient(server.base_url, verify=str(server.cert_path))
    try:
        ack = sio.call("join_job", {"job_id": "no-such-job"}, timeout=10)
        assert ack["error"]["code"] == "not_found"
        error = sio.wait_for(lambda e: e.name == "job_error", 5)
        assert error.payload["job_id"] == "no-such-job"
    finally:
        sio.disconnect()


# -- ordering ---------------------------------------------------------------------------------------------------
def test_a_short_job_submitted_after_a_long_one_finishes_first(server, api, speech_dir, tmp_path):
    long_audio = unique_copy(speech_dir / "synthetic_meeting.wav", tmp_path, repeat=7)  # about 3 minutes
    short_audio = unique_copy(speech_dir / "goforward.wav", tmp_path)
    long = submit(api, server, long_audio)
    wait_job(api, server, long["job_id"], statuses=("processing", *TERMINAL))
    deadline = time.monotonic() + 60
    while job(api, server, long["job_id"])["progress"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # well into its transcription (with two inference lanes the short one need not even wait)
    short = submit(api, server, short_audio)
    short_done = wait_job(api, server, short["job_id"])
    long_now = job(api, server, long["job_id"])
    assert short_done["status"] == "completed", short_done
    assert long_now["status"] == "processing", "the long job should still be running when the short one is done"
    assert 0 < long_now["progress"] < 1
    long_done = wait_job(api, server, long["job_id"], timeout=600)
    assert long_done["status"] == "completed"
    assert short_done["finished_at"] < long_done["finished_at"]
    assert long_done["duration"] > 170
    assert "forward" in short_done["result"]["text"].lower()


# -- result cache -----------------------------------------------------------------------------------------------
def test_identical_upload_is_served_from_the_cache_at_least_10x_faster(server, api, speech_dir, tmp_path):
    audio = unique_copy(speech_dir / "synthetic_meeting.wav", tmp_path)

    def transcribe() -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        with open(audio, "rb") as f:
            r = api.post(server.url("/transcribe"), files={"audio": (audio.name, f)}, timeout=300)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        return elapsed, r.json()

    first_s, first = transcribe()
    second_s, second = transcribe()
    print(f"POST /transcribe: first {first_s:.3f} s, cached {second_s:.3f} s, ratio {first_s / second_s:.1f}")
    assert first["cached"] is False and second["cached"] is True
    assert second["text"] == first["text"] and second["history_id"] == first["history_id"]
    assert first_s >= 10 * second_s

    # The job API uses the same cache: the identical upload completes at once.
    started = time.monotonic()
    created = submit(api, server, audio)
    job_s = time.monotonic() - started
    print(f"POST /api/jobs with a cached result: {job_s:.3f} s")
    assert created["status"] == "completed" and created["cached"] is True
    body = job(api, server, created["job_id"])
    assert body["history_id"] == first["history_id"] and body["result"]["cached"] is True
    assert body["result"]["text"] == first["text"]
    assert first_s >= 10 * job_s


# -- bad input --------------------------------------------------------------------------------------------------
def test_bad_uploads_are_refused_before_the_202_and_leave_nothing_behind(start_server, speech_dir, tmp_path):
    srv = start_server(MAX_UPLOAD_SIZE="500KB")
    s = srv.session()

    def post(name: str, data: bytes) -> requests.Response:
        return s.post(srv.url("/api/jobs"), files={"audio": (name, data)}, timeout=60)

    empty = post("empty.wav", b"")
    assert empty.status_code == 400, empty.text
    assert empty.json()["error"]["code"] == "empty_audio"

    not_audio = post("notes.mp3", b"%PDF-1.4 this is a document, not audio\n" * 200)
    assert not_audio.status_code == 415, not_audio.text
    assert not_audio.json()["error"]["code"] == "unsupported_media"

    big = (speech_dir / "synthetic_meeting.wav").read_bytes()  # about 1.1 MB
    assert len(big) > 500 * 1024
    too_large = post("big.wav", big)
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"]["code"] == "payload_too_large"

    # Just over the limit but within the multipart allowance: refused while spooling.
    just_over = post("over.wav", big[: 500 * 1024 + 10])
    assert just_over.status_code == 413, just_over.text
    assert just_over.json()["error"]["code"] == "payload_too_large"

    missing = s.post(srv.url("/api/jobs"), data={"language": "en"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_file"
    bad_option = s.post(srv.url("/api/jobs"), files={"audio": ("a.wav", big[:1000])}, data={"beam_size": "99"},
                        timeout=10)
    assert bad_option.status_code == 400
    other_model = s.post(srv.url("/api/jobs"), files={"audio": ("g.wav", (speech_dir / "goforward.wav").read_bytes())},
                         data={"model": "large-v3"}, timeout=30)
    assert other_model.status_code == 409 and "tiny.en" in other_model.json()["error"]["message"]

    assert s.get(srv.url("/api/jobs"), timeout=10).json()["jobs"] == []
    for folder in ("tmp", "jobs"):
        leftovers = list((srv.data_dir / folder).glob("*")) if (srv.data_dir / folder).exists() else []
        assert leftovers == [], f"{folder}: {leftovers}"


# -- cancel, delete, results ------------------------------------------------------------------------------------
def test_delete_cancels_a_running_job_and_removes_its_file(server, api, speech_dir, tmp_path):
    audio = unique_copy(speech_dir / "synthetic_meeting.wav", tmp_path, repeat=4)
    created = submit(api, server, audio)
    wait_job(api, server, created["job_id"], statuses=("processing", *TERMINAL))
    assert job_files(server, created["job_id"]), "the running job keeps its upload under DATA_DIR/jobs"
    r = api.delete(server.url(f"/api/jobs/{created['job_id']}"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["deleted"] is False
    time.sleep(1.0)
    body = job(api, server, created["job_id"])
    assert body["status"] == "cancelled" and body["progress"] < 1
    assert job_files(server, created["job_id"]) == []
    result = api.get(server.url(f"/api/jobs/{created['job_id']}/result"), timeout=10)
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_cancelled"
    # A second DELETE removes the finished record.
    gone = api.delete(server.url(f"/api/jobs/{created['job_id']}"), timeout=10)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert api.get(server.url(f"/api/jobs/{created['job_id']}"), timeout=10).status_code == 404


def test_finished_job_result_in_every_format(server, api, admin, speech_dir, tmp_path):
    audio = unique_copy(speech_dir / "jfk.mp3", tmp_path)
    created = submit(api, server, audio, output="srt", word_timestamps="true")
    job_id = created["job_id"]
    early = api.get(server.url(f"/api/jobs/{job_id}/result"), timeout=10)
    if job(api, server, job_id)["status"] in ("queued", "processing") and early.status_code != 200:
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
    done = wait_job(api, server, job_id)
    assert done["status"] == "completed", done
    assert done["output"] == "srt"

    default = api.get(server.url(f"/api/jobs/{job_id}/result"), timeout=10)
    assert default.status_code == 200 and "-->" in default.text and default.text.lstrip().startswith("1")
    srt = api.get(server.url(f"/api/jobs/{job_id}/result?format=srt"), timeout=10).text
    assert srt == default.text and "00:00:00,000 -->" in srt
    vtt = api.get(server.url(f"/api/jobs/{job_id}/result?format=vtt"), timeout=10)
    assert vtt.text.startswith("WEBVTT") and vtt.headers["Content-Type"].startswith("text/vtt")
    txt = api.get(server.url(f"/api/jobs/{job_id}/result?format=txt"), timeout=10).text
    assert "country" in txt.lower()
    tsv = api.get(server.url(f"/api/jobs/{job_id}/result?format=tsv"), timeout=10).text
    assert tsv.splitlines()[0].split("\t") == ["start", "end", "text"]
    as_json = api.get(server.url(f"/api/jobs/{job_id}/result?format=json"), timeout=10).json()
    assert as_json["text"] == done["result"]["text"] and as_json["segments"][0]["words"]
    bad = api.get(server.url(f"/api/jobs/{job_id}/result?format=docx"), timeout=10)
    assert bad.status_code == 400

    listed = api.get(server.url("/api/jobs?status=completed&limit=500"), timeout=10).json()["jobs"]
    assert job_id in [j["job_id"] for j in listed]
    assert api.get(server.url("/api/jobs?status=bogus"), timeout=10).status_code == 400
    assert api.get(server.url("/api/jobs?limit=0"), timeout=10).status_code == 400
    assert api.get(server.url("/api/jobs/unknown-id"), timeout=10).status_code == 404

    # The result lives as long as its history entry.
    r = admin.delete(server.url(f"/api/history/{done['history_id']}"), timeout=10)
    assert r.status_code in (200, 204), r.text
    gone = api.get(server.url(f"/api/jobs/{job_id}/result"), timeout=10)
    assert gone.status_code in (404, 410)
    assert "history entry" in gone.json()["error"]["message"]


# -- durability -------------------------------------------------------------------------------------------------
class Client(threading.Thread):
    """Sends POST /transcribe and POST /api/jobs in a loop until the server dies; keeps what was answered."""

    def __init__(self, srv: Any, speech_dir: Path, round_no: int) -> None:
        super().__init__(daemon=True)
        self.srv = srv
        self.session = srv.session()
        self.files = [speech_dir / f"cards_00{i}.wav" for i in range(1, 6)] + [speech_dir / "goforward.wav"]
        self.round_no = round_no
        self.entries: list[int] = []
        self.jobs: list[str] = []
        self.failure: str | None = None

    def run(self) -> None:
        i = 0
        while True:
            path = self.files[i % len(self.files)]
            # A distinct prompt per call: a distinct cache key, so every answer is a new history entry.
            fields = {"initial_prompt": f"Round {self.round_no}, call {i}.", "beam_size": "1"}
            route = "/api/jobs" if i % 3 == 2 else "/transcribe"
            try:
                with open(path, "rb") as f:
                    r = self.session.post(self.srv.url(route), files={"audio": (path.name, f)}, data=fields,
                                          timeout=30)
            except requests.RequestException:
                return  # the server was killed mid-request: nothing was promised for this one
            if r.status_code != (200 if route == "/transcribe" else 202):
                self.failure = f"{route} -> {r.status_code}: {r.text}"
                return
            if route == "/transcribe":
                self.entries.append(r.json()["history_id"])
            else:
                self.jobs.append(r.json()["job_id"])
            i += 1


def test_entries_and_jobs_survive_sigkill(start_server, speech_dir, tmp_path):
    srv = start_server(tmp=tmp_path)
    entries: list[int] = []
    jobs: list[str] = []
    long_audio = unique_copy(speech_dir / "synthetic_meeting.wav", tmp_path, repeat=2)
    for round_no in range(3):
        # A longer job too, so some job is usually mid-run at the kill.
        jobs.append(submit(srv.session(), srv, long_audio, initial_prompt=f"Round {round_no}.")["job_id"])
        client = Client(srv, speech_dir, round_no)
        client.start()
        # Kill mid-stream: once some calls have been answered, at a random moment of the next ones.
        deadline = time.monotonic() + 180
        while (len(client.entries) < 2 or not client.jobs) and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.5))
        srv.kill()
        client.join(30)
        assert not client.is_alive()
        assert client.failure is None, client.failure
        entries += client.entries
        jobs += client.jobs
        assert client.entries, "no request finished before the kill; the round tested nothing"

        with sqlite3.connect(srv.data_dir / "appliance.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        srv.start()
        s = srv.session()
        with sqlite3.connect(srv.data_dir / "appliance.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for entry_id in entries:
            r = s.get(srv.url(f"/api/history/{entry_id}"), timeout=10)
            assert r.status_code == 200, f"entry {entry_id} answered before the kill is gone: {r.text}"
        for job_id in jobs:
            done = wait_job(s, srv, job_id, timeout=300)
            assert done["status"] == "completed", done
            s.get(srv.url(f"/api/history/{done['history_id']}"), timeout=10).raise_for_status()
        assert list((srv.data_dir / "jobs").glob("*")) == []
