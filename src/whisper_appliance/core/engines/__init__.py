"""Engine factory: picks the implementation, the device, the compute type and the thread count.

Nothing heavy is imported here: faster-whisper is imported when its engine is created, torch and whisper only
when the openai-whisper engine is (``import whisper_appliance.core.engines`` never imports torch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..catalog import ENGINES
from ..errors import InvalidInput
from .base import Engine, ProgressCallback, iter_with_progress, transcribe_all

__all__ = ["Engine", "ProgressCallback", "create_engine", "iter_with_progress", "resolve_compute_type",
           "resolve_device", "resolve_threads", "resolve_workers", "transcribe_all"]

log = logging.getLogger(__name__)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidInput(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    return engine


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CTranslate2 sees a CUDA device, else ``cpu``."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(engine: str, device: str, compute_type: str) -> str:
    """``auto`` -> int8 (CPU) / float16 (CUDA) for faster-whisper, float32 / float16 for openai-whisper.

    openai-whisper only computes in float32 or float16: a quantised type asked for globally (COMPUTE_TYPE)
    falls back to its float type for the device, with a warning, so switching engines keeps working.
    """
    check_engine(engine)
    if engine == "faster-whisper":
        if compute_type == "auto":
            return "float16" if device == "cuda" else "int8"
        return compute_type
    natural = "float16" if device == "cuda" else "float32"
    if compute_type == "auto":
        return natural
    if compute_type not in ("float32", "float16") or (compute_type == "float16" and device != "cuda"):
        log.warning("openai-whisper cannot compute in %s on %s; using %s", compute_type, device, natural)
        return natural
    return compute_type


def resolve_threads(cpu_threads: int) -> int:
    """0 -> one thread per core."""
    return cpu_threads if cpu_threads > 0 else (os.cpu_count() or 1)


MAX_AUTO_WORKERS = 2


def resolve_workers(workers: int, device: str = "cpu") -> int:
    """Model calls run at once. 0 -> one per core up to ``MAX_AUTO_WORKERS`` on CPU, 1 on CUDA.

    On CPU two calls with one thread each beat one call with two: CTranslate2 splits a Whisper call's small
    matrices poorly over threads (tiny.en on 2 cores, a 9-s live pass: 0.23 s with 2 threads, 0.20 s with 1; two
    concurrent calls 0.13 s each), and a second worker lets a live pass run while a file job holds the first.
    """
    if workers > 0:
        return workers
    if device == "cuda":
        return 1
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def create_engine(engine: str, model_name: str, path: Path, *, device: str = "auto", compute_type: str = "auto",
                  cpu_threads: int = 0, workers: int = 0) -> Engine:
    """Load ``model_name`` from ``path`` (a CTranslate2 directory, or a ``.pt`` file for openai-whisper).

    ``cpu_threads`` (0: one per core) are shared among the ``workers`` (0: ``resolve_workers``) of a
    faster-whisper engine; openai-whisper always runs one call at a time, with all of them.
    """
    check_engine(engine)
    if engine == "openai-whisper":
        from .openai_whisper import OpenAIWhisperEngine, cuda_available

        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        return OpenAIWhisperEngine(model_name, Path(path), device=device,
                                   compute_type=resolve_compute_type(engine, device, compute_type),
                                   cpu_threads=resolve_threads(cpu_threads))
    from .faster import FasterWhisperEngine

    device = resolve_device(device)
    count = resolve_workers(workers, device)
    return FasterWhisperEngine(model_name, Path(path), device=device,
                               compute_type=resolve_compute_type(engine, device, compute_type),
                               cpu_threads=max(1, resolve_threads(cpu_threads) // count), workers=count)
