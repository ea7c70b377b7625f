"""Audio variants for tests: the same speech in other containers and codecs, made with ffmpeg.

``convert(src, ".m4a", tmp_path)`` writes ``tmp_path/<stem>.m4a``. Test helpers only; the appliance itself runs
ffmpeg from ``core/audio.py`` alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# Codec arguments per target suffix; ffmpeg picks the container from the suffix.
CODECS: dict[str, list[str]] = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    ".m4a": ["-c:a", "aac", "-b:a", "64k"],
    ".webm": ["-c:a", "libopus", "-b:a", "32k"],
    ".opus": ["-c:a", "libopus", "-b:a", "32k"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "4"],
    ".flac": ["-c:a", "flac"],
    ".mkv": ["-c:a", "libopus", "-b:a", "32k"],
}


def convert(src: Path, dst_suffix: str, tmp_path: Path, *, extra: list[str] | None = None,
            name: str | None = None) -> Path:
    """Encode ``src`` to ``tmp_path/<name or stem><dst_suffix>`` with the codec usual for that container."""
    if dst_suffix not in CODECS:
        raise ValueError(f"no codec chosen for {dst_suffix!r}; known: {', '.join(CODECS)}")
    dst = Path(tmp_path) / f"{name or Path(src).stem}{dst_suffix}"
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vn", *CODECS[dst_suffix],
            *(extra or []), str(dst)]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return dst


def live_webm(src: Path) -> bytes:
    """``src`` as a live WebM/Opus stream (written to a pipe, so sizes are unknown, like MediaRecorder's)."""
    args = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-vn", "-c:a", "libopus", "-b:a", "32k",
            "-f", "webm", "-cluster_time_limit", "250", "pipe:1"]
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout
