"""core/model_store.py: resolution order, bundles, listing, deleting, offline errors. No model is loaded."""

from __future__ import annotations

import hashlib
import importlib
import threading
from dataclasses import replace

# Bound at import: eventlet.wsgi (imported by other tests) rebinds http.server to its green copy, whose
# server would never answer from a plain thread.
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from whisper_appliance.core import catalog
from whisper_appliance.core.catalog import BundledModel, BundledPart
from whisper_appliance.core.config import Settings
from whisper_appliance.core.errors import ApplianceError, InvalidInput, ModelUnavailable, NotFound
from whisper_appliance.core.model_store import ModelStore, is_ct2_dir

BOGUS_HUB = "http://127.0.0.1:9"  # nothing listens there: a hub download fails at once


def make_ct2_dir(path: Path, weights: bytes = b"weights") -> Path:
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(weights)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    return path


def store_for(tmp_path: Path, *, downloads: bool = False) -> ModelStore:
    return ModelStore(Settings(models_dir=tmp_path / "models", model_downloads=downloads), hf_endpoint=BOGUS_HUB)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """Model 'tiny' bundled in two fake installed packages, its model.bin split in two parts."""
    root = tmp_path / "site"
    for pkg, part in (("fake_bundle_one", b"first-half|"), ("fake_bundle_two", b"second-half")):
        (root / pkg / "data").mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / "data" / "model.bin.part").write_bytes(part)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (root / "fake_bundle_one" / "data" / name).write_text(f"{name} content")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    files = tuple(BundledPart(n, (("fake_bundle_one", f"data/{n}"),), _sha256(f"{n} content".encode()))
                  for n in ("config.json", "tokenizer.json", "vocabulary.txt"))
    files += (BundledPart("model.bin", (("fake_bundle_one", "data/model.bin.part"),
                                        ("fake_bundle_two", "data/model.bin.part")),
                          _sha256(b"first-half|second-half")),)
    bundle = BundledModel(packages=("fake_bundle_one", "fake_bundle_two"), files=files,
                          size_bytes=len(b"first-half|second-half"))
    monkeypatch.setitem(catalog.MODELS, "tiny", replace(catalog.MODELS["tiny"], bundled=bundle))
    return bundle


def test_list_models_states(tmp_path):
    store = store_for(tmp_path)
    make_ct2_dir(store.models_dir / "small", b"x" * 1000)
    entries = {e.name: e for e in store.list_models()}
    assert set(entries) == set(catalog.MODEL_NAMES)
    assert entries["small"].state == "downloaded"
    assert entries["small"].size_bytes == 1000 + 2 + 2  # files actually on disk
    assert entries["small"].path == store.models_dir / "small"
    # tiny.en and base are bundled in installed packages (requirements.txt)
    assert entries["tiny.en"].state == "bundled" and entries["tiny.en"].english_only
    assert entries["base"].state == "bundled" and entries["base"].size_bytes == 145_217_532
    assert entries["medium"].state == "available" and entries["medium"].size_bytes == 1530 * 1_000_000


def test_models_dir_comes_first(tmp_path):
    store = store_for(tmp_path)
    path = make_ct2_dir(store.models_dir / "tiny.en")
    resolved = store.resolve("tiny.en", "faster-whisper")
    assert (resolved.path, resolved.source, resolved.engine) == (path, "models_dir", "faster-whisper")


def test_openai_checkpoint_in_models_dir(tmp_path):
    store = store_for(tmp_path)
    store.models_dir.mkdir()
    (store.models_dir / "small.pt").write_bytes(b"checkpoint")
    resolved = store.resolve("small", "openai-whisper")
    assert resolved.path == store.models_dir / "small.pt" and resolved.source == "models_dir"
    assert {e.name: e.state for e in store.list_models()}["small"] == "downloaded"


def test_install_bundled_joins_parts_atomically(tmp_path, fake_bundle):
    store = store_for(tmp_path)
    resolved = store.resolve("tiny", "faster-whisper")
    assert resolved.source == "bundled"
    target = store.models_dir / "tiny"
    assert resolved.path == target and is_ct2_dir(target)
    assert (target / "model.bin").read_bytes() == b"first-half|second-half"
    assert (target / "vocabulary.txt").read_text() == "vocabulary.txt content"
    assert [p.name for p in store.models_dir.iterdir()] == ["tiny"]  # no temporary directory left
    # Next time the copy in MODELS_DIR is used.
    assert store.resolve("tiny", "faster-whisper").source == "models_dir"


def test_setup_defaults_copies_once(tmp_path, fake_bundle):
    store = store_for(tmp_path)
    first = store.setup_defaults(("tiny",))
    assert [r.source for r in first] == ["bundled"]
    inode = (store.models_dir / "tiny" / "model.bin").stat().st_ino
    second = store.setup_defaults(("tiny",))
    assert [r.source for r in second] == ["models_dir"]
    assert (store.models_dir / "tiny" / "model.bin").stat().st_ino == inode  # not copied again


def test_setup_defaults_repairs_an_incomplete_copy(tmp_path, fake_bundle):
    store = store_for(tmp_path)
    make_ct2_dir(store.models_dir / "tiny", b"truncated")
    assert store.setup_defaults(("tiny",))[0].source == "bundled"
    assert (store.models_dir / "tiny" / "model.bin").read_bytes() == b"first-half|second-half"
    assert [p.name for p in store.models_dir.iterdir()] == ["tiny"]


def test_damaged_bundle_is_rejected_and_leaves_nothing(tmp_path, fake_bundle, monkeypatch):
    monkeypatch.setitem(catalog.MODELS, "tiny",
                        replace(catalog.MODELS["tiny"], bundled=replace(fake_bundle, size_bytes=999)))
    store = store_for(tmp_path)
    with pytest.raises(Exception, match="damaged"):
        store.install_bundled("tiny")
    assert list(store.models_dir.iterdir()) == []


def test_a_bundled_file_with_another_sha256_is_refused_and_leaves_nothing(tmp_path, fake_bundle):
    (tmp_path / "site" / "fake_bundle_two" / "data" / "model.bin.part").write_bytes(b"tampered-ha")  # same size
    store = store_for(tmp_path)
    with pytest.raises(ApplianceError) as err:
        store.install_bundled("tiny")
    assert err.value.code == "bundle_damaged" and "model.bin has SHA-256" in err.value.message
    assert list(store.models_dir.iterdir()) == []


def test_every_bundled_file_is_pinned_to_a_sha256():
    bundles = [m.bundled for m in catalog.MODELS.values() if m.bundled is not None]
    assert bundles
    for bundle in bundles:
        for part in bundle.files:
            assert len(part.sha256) == 64 and int(part.sha256, 16) >= 0, part.target


def test_offline_without_downloads_names_available_models(tmp_path):
    store = store_for(tmp_path, downloads=False)
    with pytest.raises(ModelUnavailable) as err:
        store.resolve("small", "faster-whisper")
    message = err.value.message
    assert "'small' is not available offline" in message
    assert "MODEL_DOWNLOADS is off" in message
    assert message.endswith("available: tiny.en, base")
    assert err.value.status == 503 and "Retry-After" in err.value.headers


def test_hub_download_without_network_fails_fast_with_clear_error(tmp_path):
    store = store_for(tmp_path, downloads=True)
    with pytest.raises(ModelUnavailable) as err:
        store.resolve("small", "faster-whisper")
    assert "download from Hugging Face failed" in err.value.message
    assert err.value.message.endswith("available: tiny.en, base")
    assert list(store.models_dir.iterdir()) == []  # the temporary download directory is gone


class _Checkpoint(BaseHTTPRequestHandler):
    payload = b"openai checkpoint bytes" * 1000

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def test_openai_checkpoint_download_is_verified(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Checkpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(catalog, "_OPENAI_CDN", f"http://127.0.0.1:{server.server_address[1]}")
        good = hashlib.sha256(_Checkpoint.payload).hexdigest()
        monkeypatch.setitem(catalog.MODELS, "small", replace(catalog.MODELS["small"], openai_sha256=good))
        store = store_for(tmp_path, downloads=True)
        seen = []
        resolved = store.resolve("small", "openai-whisper", progress=lambda d, t: seen.append(d))
        assert resolved.source == "download" and resolved.path == store.models_dir / "small.pt"
        assert resolved.path.read_bytes() == _Checkpoint.payload and seen[-1] == len(_Checkpoint.payload)

        monkeypatch.setitem(catalog.MODELS, "medium", replace(catalog.MODELS["medium"], openai_sha256="0" * 64))
        with pytest.raises(ModelUnavailable, match="corrupt"):
            store.resolve("medium", "openai-whisper")
        assert not (store.models_dir / "medium.pt").exists()
        assert not (store.models_dir / "medium.pt.partial").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_delete_removes_directory_and_checkpoint(tmp_path):
    store = store_for(tmp_path)
    make_ct2_dir(store.models_dir / "small")
    (store.models_dir / "small.pt").write_bytes(b"pt")
    removed = store.delete("small")
    assert set(removed) == {store.models_dir / "small", store.models_dir / "small.pt"}
    assert list(store.models_dir.iterdir()) == []
    with pytest.raises(NotFound):
        store.delete("small")


@pytest.mark.parametrize("name", ["../models", "..", "/etc", "small/../../x", ""])
def test_names_never_become_paths(tmp_path, name):
    store = store_for(tmp_path)
    with pytest.raises(NotFound):
        store.delete(name)
    with pytest.raises(InvalidInput):
        store.resolve(name, "faster-whisper")


def test_unknown_engine_is_rejected(tmp_path):
    with pytest.raises(InvalidInput, match="unknown engine"):
        store_for(tmp_path).resolve("tiny.en", "whisper.cpp")
