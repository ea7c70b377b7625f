"""Download one file over HTTP(S): streamed, with progress, cancellable, verified, written atomically.

Bytes go to ``<dest>.partial`` and are renamed onto ``dest`` only when complete (and, when a SHA-256 is
given, verified); on any failure or cancellation the partial file is removed, so ``dest`` either holds the
whole file or does not exist. A short connect timeout makes an offline machine fail fast instead of hanging.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .errors import ApplianceError, Cancelled

log = logging.getLogger(__name__)

# bytes done, total bytes (None when the server does not say)
DownloadProgress = Callable[[int, "int | None"], None]
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
CHUNK_SIZE = 1 << 20


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


def download_failed(message: str) -> ApplianceError:
    return ApplianceError(message, code="download_failed", status=502)


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def download(url: str, dest: Path, *, sha256: str | None = None, progress: DownloadProgress | None = None,
             cancel: CancelFlag | None = None, connect_timeout: float = CONNECT_TIMEOUT,
             read_timeout: float = READ_TIMEOUT, chunk_size: int = CHUNK_SIZE) -> Path:
    """Fetch ``url`` into ``dest``. Raises ``Cancelled`` when ``cancel`` is set, ``ApplianceError``
    (code ``download_failed`` or ``checksum_mismatch``) otherwise; nothing is left behind on failure."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    digest = hashlib.sha256()
    done = 0
    log.info("downloading %s -> %s", url, dest)
    try:
        with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as response:
            if response.status_code != 200:
                raise download_failed(f"download of {url} failed: HTTP {response.status_code}")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress is not None:
                progress(0, total)
            with open(partial, "wb") as out:
                for chunk in response.iter_content(chunk_size=chunk_size):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"download of {dest.name} was cancelled")
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        if total is not None and done != total:
            raise download_failed(f"download of {url} stopped after {done} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ApplianceError(f"download of {url} is corrupt: SHA-256 {digest.hexdigest()} instead of {sha256}",
                                 code="checksum_mismatch", status=502)
        os.replace(partial, dest)
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise download_failed(f"download of {url} failed: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("downloaded %s (%d bytes)", dest, done)
    return dest
