"""The command line, run as a user would: python src/main.py ..."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import MODELS_DIR, ROOT, SPEECH_DIR, reference_text
from whisper_appliance.core.wer import word_error_rate


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, "MODELS_DIR": str(MODELS_DIR), "MODEL_DOWNLOADS": "false", **env}
    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_transcribe_prints_srt_to_stdout():
    proc = run("transcribe", str(SPEECH_DIR / "jfk.mp3"), "--model", "tiny.en", "--format", "srt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1\n00:00:00,000 --> ")
    text = " ".join(line for line in proc.stdout.splitlines() if line and "-->" not in line and not line.isdigit())
    assert word_error_rate(reference_text("jfk"), text) <= 0.05


def test_transcribe_writes_files_into_an_output_dir(tmp_path):
    proc = run("transcribe", str(SPEECH_DIR / "goforward.wav"), str(SPEECH_DIR / "cards_001.wav"),
               "--model", "tiny.en", "--format", "vtt", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cards_001.vtt", "goforward.vtt"]
    assert (tmp_path / "goforward.vtt").read_text().startswith("WEBVTT")


def test_bad_audio_is_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "notes.mp3"
    bad.write_bytes(b"this is not audio at all" * 100)
    proc = run("transcribe", str(bad), "--model", "tiny.en")
    assert proc.returncode == 2
    assert ("not audio" in proc.stderr or "could not be decoded" in proc.stderr) and "Traceback" not in proc.stderr


def test_models_list_shows_state_and_size():
    proc = run("models", "list")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert "downloaded" in lines["tiny.en"] and "downloaded" in lines["base"]
    assert set(lines) >= {"tiny", "small", "large-v3", "turbo"}


def test_pulling_an_unavailable_model_offline_fails_fast_and_names_available_ones():
    proc = run("models", "pull", "small")
    assert proc.returncode != 0
    assert "tiny.en" in proc.stderr and "base" in proc.stderr
