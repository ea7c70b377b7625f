"""Where model weights come from, and what is on disk.

For a model name and an engine, ``ModelStore.resolve`` finds the weights in this order:

1. ``MODELS_DIR/<name>/`` -- a CTranslate2 directory (faster-whisper); for openai-whisper ``MODELS_DIR/<name>.pt``,
   converted from that directory (and cached) when only the CTranslate2 model is there;
2. a copy bundled in installed Python packages (catalog ``ModelInfo.bundled``), copied -- or for split files,
   joined -- into ``MODELS_DIR/<name>/`` first;
3. a download, when ``MODEL_DOWNLOADS`` allows it: the catalog's Hugging Face repository (faster-whisper) or
   OpenAI's own checkpoint with its SHA-256 checked (openai-whisper).

Every path is built from a catalogue name, never from raw input. Writes are atomic: a hidden temporary file or
directory beside the target, renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .catalog import ENGINES, MODEL_NAMES, BundledModel, ModelInfo, model_info
from .config import Settings
from .download import CancelFlag, DownloadProgress, download
from .errors import ApplianceError, Cancelled, InvalidInput, ModelUnavailable, NotFound

log = logging.getLogger(__name__)

ModelState = Literal["downloaded", "bundled", "available"]
Source = Literal["models_dir", "bundled", "download"]
DEFAULT_MODELS = ("base", "tiny.en")
# What faster-whisper needs from a Hugging Face CTranslate2 repository.
HF_PATTERNS = ["config.json", "model.bin", "tokenizer.json", "vocabulary*", "preprocessor_config.json"]
_COPY_BUFFER = 8 << 20


@dataclass(frozen=True)
class ModelEntry:
    name: str
    state: ModelState
    size_bytes: int  # on disk when downloaded, else the bundle's or the catalogue's estimate
    path: Path | None
    english_only: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "size_bytes": self.size_bytes,
                "path": str(self.path) if self.path else None, "english_only": self.english_only}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    engine: str
    path: Path
    source: Source

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "engine": self.engine, "path": str(self.path), "source": self.source}


def check_name(name: str) -> ModelInfo:
    """The catalogue entry for ``name``; anything else is rejected before it can become a path."""
    try:
        return model_info(name)
    except KeyError as exc:
        raise InvalidInput(str(exc.args[0])) from None


def is_ct2_dir(path: Path) -> bool:
    """A complete CTranslate2 Whisper model: weights, config and a tokenizer or vocabulary."""
    return ((path / "model.bin").is_file() and (path / "model.bin").stat().st_size > 0
            and (path / "config.json").is_file()
            and ((path / "tokenizer.json").is_file() or any(path.glob("vocabulary*"))))


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundle_files(bundle: BundledModel) -> dict[str, list[Path]] | None:
    """Target file name -> the package files to concatenate; None unless every part is installed."""
    roots = {pkg: package_dir(pkg) for pkg in bundle.packages}
    files: dict[str, list[Path]] = {}
    for part in bundle.files:
        sources = []
        for pkg, rel in part.parts:
            root = roots.get(pkg) or package_dir(pkg)
            if root is None or not (root / rel).is_file():
                return None
            sources.append(root / rel)
        files[part.target] = sources
    return files


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class ModelStore:
    """The models directory plus the other places weights can come from (bundles, downloads)."""

    def __init__(self, settings: Settings, *, hf_endpoint: str | None = None) -> None:
        self.models_dir = Path(settings.models_dir)
        self.downloads = settings.model_downloads
        # Hugging Face endpoint override (a mirror); None = huggingface_hub's own default / HF_ENDPOINT.
        self.hf_endpoint = hf_endpoint

    # -- paths (only ever from catalogue names) --------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.models_dir / check_name(name).name

    def checkpoint_path(self, name: str) -> Path:
        return self.models_dir / f"{check_name(name).name}.pt"

    def _installed_ct2(self, name: str) -> Path | None:
        path = self.model_dir(name)
        return path if is_ct2_dir(path) else None

    def _bundle(self, name: str) -> tuple[BundledModel, dict[str, list[Path]]] | None:
        bundle = check_name(name).bundled
        if bundle is None:
            return None
        files = bundle_files(bundle)
        return None if files is None else (bundle, files)

    def offline_names(self) -> list[str]:
        """Models usable without the network: in MODELS_DIR or bundled."""
        return [e.name for e in self.list_models() if e.state != "available"]

    # -- listing and deleting ------------------------------------------------------------------------------------
    def list_models(self) -> list[ModelEntry]:
        entries = []
        for name in MODEL_NAMES:
            info = model_info(name)
            ct2, pt = self.model_dir(name), self.checkpoint_path(name)
            on_disk = [p for p in (ct2 if is_ct2_dir(ct2) else None, pt if pt.is_file() else None) if p]
            if on_disk:
                entries.append(ModelEntry(name, "downloaded", sum(_tree_size(p) for p in on_disk), on_disk[0],
                                          info.english_only))
            elif info.bundled is not None and bundle_files(info.bundled) is not None:
                entries.append(ModelEntry(name, "bundled", info.bundled.size_bytes, None, info.english_only))
            else:
                entries.append(ModelEntry(name, "available", info.size_mb * 1_000_000, None, info.english_only))
        return entries

    def delete(self, name: str) -> list[Path]:
        """Remove ``MODELS_DIR/<name>/`` and ``<name>.pt``. Returns what was removed; NotFound if nothing was."""
        if name not in MODEL_NAMES:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
        removed = []
        for path in (self.model_dir(name), self.checkpoint_path(name)):
            if path.exists():
                _remove(path)
                removed.append(path)
        if not removed:
            raise NotFound(f"model {name!r} is not in {self.models_dir}")
        log.info("deleted model %s: %s", name, ", ".join(map(str, removed)))
        return removed

    # -- bundled models ------------------------------------------------------------------------------------------
    def bundled_installed(self, name: str) -> bool:
        """True when MODELS_DIR holds the bundled model completely (model.bin has the bundle's size)."""
        bundle = check_name(name).bundled
        model_bin = self.model_dir(name) / "model.bin"
        return (bundle is not None and is_ct2_dir(self.model_dir(name))
                and model_bin.stat().st_size == bundle.size_bytes)

    def install_bundled(self, name: str) -> Path:
        """Copy (or join, for split weights) a bundled model into ``MODELS_DIR/<name>/``, atomically."""
        found = self._bundle(name)
        if found is None:
            raise ModelUnavailable(f"model {name!r} is not bundled in any installed package")
        bundle, files = found
        target = self.model_dir(name)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".installing", dir=self.models_dir))
        try:
            expected = {part.target: part.sha256 for part in bundle.files}
            for target_name, sources in files.items():
                digest = hashlib.sha256()
                with open(tmp / target_name, "wb") as out:
                    for source in sources:
                        with open(source, "rb") as src:
                            while chunk := src.read(_COPY_BUFFER):
                                digest.update(chunk)
                                out.write(chunk)
                if digest.hexdigest() != expected[target_name]:
                    raise ApplianceError(f"bundled model {name!r} is damaged: {target_name} has SHA-256 "
                                         f"{digest.hexdigest()}, expected {expected[target_name]}",
                                         code="bundle_damaged")
            size = (tmp / "model.bin").stat().st_size
            if size != bundle.size_bytes:
                raise ApplianceError(f"bundled model {name!r} is damaged: model.bin has {size} bytes, "
                                     f"expected {bundle.size_bytes}", code="bundle_damaged")
            self._move_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("installed bundled model %s into %s", name, target)
        return target

    def _move_into_place(self, tmp: Path, target: Path) -> None:
        """Rename a finished temporary directory onto ``target``, replacing an incomplete one."""
        tmp.chmod(0o755)  # mkdtemp makes it private; models are meant to be readable like any other file
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)

    def setup_defaults(self, names: Iterable[str] = DEFAULT_MODELS) -> list[ResolvedModel]:
        """Put the default bundled models into MODELS_DIR once; a size check makes repeated calls instant."""
        done = []
        for name in names:
            if self.bundled_installed(name):
                done.append(ResolvedModel(name, "faster-whisper", self.model_dir(name), "models_dir"))
            else:
                done.append(ResolvedModel(name, "faster-whisper", self.install_bundled(name), "bundled"))
        return done

    # -- resolution --------------------------------------------------------------------------------------------------
    def unavailable(self, name: str, why: str) -> ModelUnavailable:
        available = ", ".join(self.offline_names()) or "none"
        return ModelUnavailable(f"model {name!r} is not available offline ({why}); available: {available}",
                                retry_after=60)

    def resolve(self, name: str, engine: str = "faster-whisper", *, progress: DownloadProgress | None = None,
                cancel: CancelFlag | None = None) -> ResolvedModel:
        """Find (and if need be install, convert or download) the weights of ``name`` for ``engine``."""
        check_name(name)
        if engine not in ENGINES:
            raise InvalidInput(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        if engine == "openai-whisper":
            return self._resolve_openai(name, progress=progress, cancel=cancel)
        ct2 = self._installed_ct2(name)
        if ct2 is not None:
            return ResolvedModel(name, engine, ct2, "models_dir")
        if self._bundle(name) is not None:
            return ResolvedModel(name, engine, self.install_bundled(name), "bundled")
        return ResolvedModel(name, engine, self.download_ct2(name, cancel=cancel), "download")

    def _resolve_openai(self, name: str, *, progress: DownloadProgress | None,
                        cancel: CancelFlag | None) -> ResolvedModel:
        checkpoint = self.checkpoint_path(name)
        if checkpoint.is_file():
            return ResolvedModel(name, "openai-whisper", checkpoint, "models_dir")
        source: Source = "models_dir"
        ct2 = self._installed_ct2(name)
        if ct2 is None and self._bundle(name) is not None:
            ct2, source = self.install_bundled(name), "bundled"
        if ct2 is not None:
            from .engines.convert import convert_ct2_dir

            return ResolvedModel(name, "openai-whisper", convert_ct2_dir(ct2, checkpoint), source)
        return ResolvedModel(name, "openai-whisper", self.download_checkpoint(name, progress=progress, cancel=cancel),
                             "download")

    # -- downloads ------------------------------------------------------------------------------------------------
    def _check_downloads(self, name: str) -> None:
        if not self.downloads:
            raise self.unavailable(name, f"not in {self.models_dir}, not bundled, and MODEL_DOWNLOADS is off")

    def download_checkpoint(self, name: str, *, progress: DownloadProgress | None = None,
                            cancel: CancelFlag | None = None) -> Path:
        """OpenAI's own checkpoint from its CDN, SHA-256 verified, to ``MODELS_DIR/<name>.pt``."""
        self._check_downloads(name)
        info = check_name(name)
        try:
            return download(info.openai_url, self.checkpoint_path(name), sha256=info.openai_sha256,
                            progress=progress, cancel=cancel)
        except Cancelled:
            raise
        except ApplianceError as exc:
            raise self.unavailable(name, exc.message) from exc

    def download_ct2(self, name: str, *, cancel: CancelFlag | None = None) -> Path:
        """The CTranslate2 conversion from Hugging Face into ``MODELS_DIR/<name>/`` (via a temporary directory).

        huggingface_hub reports no byte progress we can forward and cannot be interrupted inside a file, so
        cancellation is checked before the download and honoured (nothing kept) after it.
        """
        self._check_downloads(name)
        info = check_name(name)
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"download of {name} was cancelled")
        from huggingface_hub import snapshot_download

        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".downloading", dir=self.models_dir))
        try:
            log.info("downloading %s from Hugging Face %s", name, info.hf_repo)
            try:
                snapshot_download(info.hf_repo, local_dir=tmp, allow_patterns=HF_PATTERNS, endpoint=self.hf_endpoint,
                                  etag_timeout=10)
            except Exception as exc:  # huggingface_hub raises many types (HTTP, offline, timeouts, missing repo)
                raise self.unavailable(name, f"download from Hugging Face failed: {type(exc).__name__}: {exc}") \
                    from exc
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"download of {name} was cancelled")
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping for local_dir
            if not is_ct2_dir(tmp):
                raise self.unavailable(name, f"{info.hf_repo} did not hold a complete CTranslate2 model")
            target = self.model_dir(name)
            self._move_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("downloaded %s into %s", name, target)
        return target

    def pull(self, name: str, engine: str = "faster-whisper", *, progress: DownloadProgress | None = None,
             cancel: CancelFlag | None = None) -> ResolvedModel:
        """Make ``name`` available for ``engine`` (``models pull``): same order as ``resolve``."""
        return self.resolve(name, engine, progress=progress, cancel=cancel)
