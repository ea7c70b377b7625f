"""The one settings object, read from environment variables and validated at start-up.

``Settings.from_env()`` is the only place that reads the environment for configuration. Every variable is
listed in ``VARIABLES`` with its default and description; README.md documents the same table.
Invalid values raise ``ConfigError`` naming the variable and what is accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from limits import parse_many

from .catalog import ENGINES, MODEL_NAMES
from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
               "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_size(text: str) -> int:
    """'100MB' -> 104857600. Accepts B, KB, MB, GB (binary multiples), with or without 'B'."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 500KB, 100MB or 2GB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class Variable:
    env: str
    default: str
    help: str


# Ordered: this table is what README.md's configuration section mirrors.
VARIABLES: tuple[Variable, ...] = (
    Variable("WHISPER_ENGINE", "faster-whisper", "Engine: faster-whisper (CTranslate2) or openai-whisper (PyTorch)."),
    Variable("WHISPER_MODEL", "base", "Model loaded at start: " + ", ".join(MODEL_NAMES) + "."),
    Variable("MODELS_DIR", "models", "Where model weights live (relative to the project root)."),
    Variable("DATA_DIR", "data", "History database, jobs, admin secrets (relative to the project root)."),
    Variable("DEVICE", "auto", "auto, cpu or cuda."),
    Variable("COMPUTE_TYPE", "auto", "auto (int8 on CPU, float16 on CUDA for faster-whisper; float32/float16 for "
                                     "openai-whisper), or int8, int8_float16, float16, float32."),
    Variable("CPU_THREADS", "0", "Threads for inference on CPU, shared by the inference workers; 0 = one per core."),
    Variable("INFERENCE_WORKERS", "0", "Model calls run at once (faster-whisper; openai-whisper runs one); 0 = auto: "
                                       "one per core up to 2 on CPU, 1 on CUDA."),
    Variable("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Variable("MODEL_DOWNLOADS", "true", "Allow downloading weights that are not present locally."),
    Variable("HOST", "0.0.0.0", "Address to listen on."),
    Variable("HTTPS_PORT", "5001", "HTTPS port."),
    Variable("HTTP_PORT", "5000", "Plain-HTTP port that redirects to HTTPS."),
    Variable("HTTP_REDIRECT", "true", "Run the HTTP->HTTPS redirect listener."),
    Variable("SOCKET_TIMEOUT", "60", "Seconds a client connection may make no progress in a read or write before "
                                     "it is closed (eventlet)."),
    Variable("KEEPALIVE_TIMEOUT", "30", "Seconds an idle connection (kept alive, or opened and never used) waits for "
                                        "its next request (eventlet)."),
    Variable("MAX_CONNECTIONS", "1000", "Client connections served at once (eventlet); more wait to be accepted."),
    Variable("MAX_CONNECTIONS_PER_IP", "128", "Connections one IP address may hold at once; more are closed "
                                              "(eventlet)."),
    Variable("SSL_DIR", "ssl", "Where the self-signed certificate is generated."),
    Variable("SSL_CERT_PATH", "", "Your own certificate (PEM); used as is."),
    Variable("SSL_KEY_PATH", "", "Your own private key (PEM)."),
    Variable("MAX_UPLOAD_SIZE", "100MB", "Largest upload, e.g. 500KB, 100MB, 2GB."),
    Variable("MAX_AUDIO_SECONDS", "14400", "Longest decoded upload, in seconds (refused with 413 before it is "
                                           "decoded into memory)."),
    Variable("MAX_JSON_BODY", "1MB", "Largest request body of the JSON endpoints (everything but uploads and the "
                                     "history import); larger: 413 before it is parsed."),
    Variable("MAX_IMPORT_SIZE", "100MB", "Largest history import (POST /api/history/import)."),
    Variable("MAX_SPOOLED_UPLOAD_BYTES", "8GB", "Upload bytes being received at once, all clients together (at "
                                                "least MAX_UPLOAD_SIZE); beyond it: 503 upload_capacity."),
    Variable("MAX_CONCURRENT_TRANSCRIPTIONS", "64", "Synchronous transcriptions (/transcribe, /v1/audio/..., "
                                                    "/api/detect-language) at once; beyond it: 503 server_busy."),
    Variable("MAX_CONCURRENT_TRANSCRIPTIONS_PER_CLIENT", "32", "Of those, per user (or per address for anonymous "
                                                               "callers); beyond it: 429."),
    Variable("MAX_QUEUED_JOBS", "1000", "Unfinished async jobs, all users together; beyond it: 503 job_queue_full."),
    Variable("MAX_QUEUED_AUDIO_SECONDS", "360000", "Seconds of audio in unfinished jobs, all users together; beyond "
                                                   "it: 503 job_queue_full."),
    Variable("ADMIN_PASSWORD", "", "Password of the account 'admin' (set, enabled and made an admin at every start; "
                                   "12+ characters, not a common one); if empty, a first admin is created with a "
                                   "generated password, logged once and written to DATA_DIR/admin-password.txt."),
    Variable("API_KEYS", "", "Comma-separated tokens accepted as 'Authorization: Bearer': 'transcribe' tokens of "
                             "the admin account; 16+ characters each."),
    Variable("AUTH_TOKEN_FAILURE_LIMIT", "100 per minute", "Wrong bearer tokens accepted per client address before "
                                                           "429 (e.g. '10 per minute; 100 per hour')."),
    Variable("REQUIRE_AUTH", "false", "Every request needs a login or a token; false: anonymous callers share a "
                                      "guest history."),
    Variable("ALLOW_REGISTRATION", "false", "Anyone who can reach the server may create a user account."),
    Variable("CORS_ORIGINS", "", "Comma-separated extra origins allowed for CORS and Socket.IO (same-origin always)."),
    Variable("ASYNC_MODE", "eventlet", "eventlet or threading."),
    Variable("RESULT_CACHE", "true", "Return the stored result for identical audio, model and options."),
    Variable("HISTORY_RETENTION_DAYS", "0", "Delete history older than this many days; 0 keeps forever."),
    Variable("HISTORY_MAX_TEXT_LENGTH", "1000000", "Longest text (characters) a history entry may hold, on every "
                                                   "path that stores one (upload, live, import, edit)."),
    Variable("SEARCH_TIMEOUT_MS", "10000", "A history search still running after this many milliseconds is "
                                           "stopped (503 search_timeout)."),
    Variable("LIVE_MAX_SESSIONS", "8", "Concurrent live dictation sessions (stopped ones count until they have "
                                       "finished; a whole-recording audio_chunk counts while it runs)."),
    Variable("LIVE_MAX_SESSIONS_PER_CLIENT", "8", "Concurrent live sessions of one client (its account, or its IP "
                                                  "address when anonymous)."),
    Variable("LIVE_IDLE_TIMEOUT", "300", "A live session that receives no audio for this many seconds is stopped; "
                                         "0 never."),
    Variable("LIVE_MAX_CHUNK_SIZE", "1MB", "Largest single live audio chunk."),
    Variable("LIVE_MAX_SESSION_SECONDS", "3600", "Longest live session, in seconds of audio."),
    Variable("LIVE_MAX_CHUNKS_PER_SECOND", "20", "Chunks per second accepted per connection."),
    Variable("LIVE_RESUME_SECONDS", "30", "A live session whose connection drops waits this long for the client to "
                                          "resume it (same text, same history entry); 0 saves it at once."),
)


# Credentials set in the environment are checked at start: a short key or a common password is refused.
MIN_API_KEY_LENGTH = 16
MIN_ADMIN_PASSWORD_LENGTH = 12
COMMON_PASSWORDS = frozenset({
    "123456789012", "1234567890123", "administrator", "adminadmin123", "changeme1234", "letmein12345",
    "password1234", "password12345", "passwordpassword", "qwertyuiop12", "qwerty123456", "whisperadmin",
    "whisper-admin", "whisperappliance", "whisper-appliance", "iloveyou1234", "welcome12345",
})


def credential_problems(admin_password: str, api_keys: tuple[str, ...]) -> list[str]:
    """What is too weak in ADMIN_PASSWORD and API_KEYS (never quoting the secrets themselves)."""
    problems = []
    if admin_password and len(admin_password) < MIN_ADMIN_PASSWORD_LENGTH:
        problems.append(f"ADMIN_PASSWORD must have at least {MIN_ADMIN_PASSWORD_LENGTH} characters")
    elif admin_password and admin_password.lower() in COMMON_PASSWORDS:
        problems.append("ADMIN_PASSWORD is a common password: choose another")
    short = [str(i) for i, key in enumerate(api_keys, start=1) if len(key) < MIN_API_KEY_LENGTH]
    if short:
        problems.append(f"API_KEYS: key(s) #{', #'.join(short)} have fewer than {MIN_API_KEY_LENGTH} characters "
                        "(generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return problems


@dataclass(frozen=True)
class Settings:
    whisper_engine: str = "faster-whisper"
    whisper_model: str = "base"
    models_dir: Path = PROJECT_ROOT / "models"
    data_dir: Path = PROJECT_ROOT / "data"
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    inference_workers: int = 0
    log_level: str = "INFO"
    model_downloads: bool = True
    host: str = "0.0.0.0"
    https_port: int = 5001
    http_port: int = 5000
    http_redirect: bool = True
    socket_timeout: int = 60
    keepalive_timeout: int = 30
    max_connections: int = 1000
    max_connections_per_ip: int = 128
    ssl_dir: Path = PROJECT_ROOT / "ssl"
    ssl_cert_path: Path | None = None
    ssl_key_path: Path | None = None
    max_upload_size: int = 100 * 1024 ** 2
    max_audio_seconds: int = 14400
    max_json_body: int = 1024 ** 2
    max_import_size: int = 100 * 1024 ** 2
    max_spooled_upload_bytes: int = 8 * 1024 ** 3
    max_concurrent_transcriptions: int = 64
    max_concurrent_transcriptions_per_client: int = 32
    max_queued_jobs: int = 1000
    max_queued_audio_seconds: int = 360000
    admin_password: str = field(default="", repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    auth_token_failure_limit: str = "100 per minute"
    require_auth: bool = False
    allow_registration: bool = False
    cors_origins: tuple[str, ...] = ()
    async_mode: str = "eventlet"
    result_cache: bool = True
    history_retention_days: int = 0
    history_max_text_length: int = 1_000_000
    search_timeout_ms: int = 10_000
    live_max_sessions: int = 8
    live_max_sessions_per_client: int = 8
    live_idle_timeout: int = 300
    live_max_chunk_size: int = 1024 ** 2
    live_max_session_seconds: int = 3600
    live_max_chunks_per_second: int = 20
    live_resume_seconds: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        errors: list[str] = []
        for var in VARIABLES:
            raw = env.get(var.env, var.default)
            name = var.env.lower()
            try:
                values[name] = _convert(name, raw)
            except ValueError as exc:
                errors.append(f"{var.env}: {exc}")
        if errors:
            raise ConfigError("Invalid configuration:\n  " + "\n  ".join(errors))
        values.update(overrides)
        return cls(**values).validated()

    def validated(self) -> Settings:
        problems = []
        if self.whisper_engine not in ENGINES:
            problems.append(f"WHISPER_ENGINE={self.whisper_engine!r}: use one of {', '.join(ENGINES)}")
        if self.whisper_model not in MODEL_NAMES:
            problems.append(f"WHISPER_MODEL={self.whisper_model!r}: use one of {', '.join(MODEL_NAMES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"DEVICE={self.device!r}: use auto, cpu or cuda")
        if self.compute_type not in ("auto", "int8", "int8_float16", "int8_float32", "int16", "float16",
                                     "bfloat16", "float32"):
            problems.append(f"COMPUTE_TYPE={self.compute_type!r}: use auto, int8, int8_float16, float16 or float32")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"LOG_LEVEL={self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        if self.async_mode not in ("eventlet", "threading"):
            problems.append(f"ASYNC_MODE={self.async_mode!r}: use eventlet or threading")
        for name in ("https_port", "http_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                problems.append(f"{name.upper()}={port}: not a TCP port")
        for name in ("cpu_threads", "inference_workers", "history_retention_days", "live_resume_seconds",
                     "live_idle_timeout"):
            if getattr(self, name) < 0:
                problems.append(f"{name.upper()} must be 0 or more")
        if self.max_spooled_upload_bytes < self.max_upload_size:
            problems.append("MAX_SPOOLED_UPLOAD_BYTES must be at least MAX_UPLOAD_SIZE")
        for name in ("max_upload_size", "history_max_text_length", "search_timeout_ms", "live_max_sessions",
                     "live_max_sessions_per_client", "live_max_chunk_size", "live_max_session_seconds",
                     "live_max_chunks_per_second", "socket_timeout", "keepalive_timeout", "max_connections",
                     "max_connections_per_ip", "max_audio_seconds", "max_json_body", "max_import_size",
                     "max_spooled_upload_bytes", "max_concurrent_transcriptions",
                     "max_concurrent_transcriptions_per_client", "max_queued_jobs", "max_queued_audio_seconds"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.upper()} must be greater than 0")
        if bool(self.ssl_cert_path) != bool(self.ssl_key_path):
            problems.append("SSL_CERT_PATH and SSL_KEY_PATH must be set together")
        try:
            parse_many(self.auth_token_failure_limit)
        except ValueError:
            problems.append(f"AUTH_TOKEN_FAILURE_LIMIT={self.auth_token_failure_limit!r}: use e.g. '10 per minute'")
        problems.extend(credential_problems(self.admin_password, self.api_keys))
        if problems:
            raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems))
        return self

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes).validated()

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show in the admin panel (no secrets)."""
        hidden = {"admin_password", "api_keys"}
        return {f.name: (_shown_path(v) if isinstance(v := getattr(self, f.name), Path) else v)
                for f in fields(self) if f.name not in hidden}


def _shown_path(path: Path) -> str:
    """A directory as clients may see it: relative to the project root, else only its last part (no absolute
    filesystem paths leave the server)."""
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return f".../{path.name}"


_INTS = {"cpu_threads", "inference_workers", "https_port", "http_port", "history_retention_days",
         "history_max_text_length", "search_timeout_ms", "live_max_sessions", "live_max_sessions_per_client",
         "live_idle_timeout", "live_max_session_seconds", "live_max_chunks_per_second", "live_resume_seconds",
         "socket_timeout", "keepalive_timeout", "max_connections", "max_connections_per_ip", "max_audio_seconds",
         "max_concurrent_transcriptions", "max_concurrent_transcriptions_per_client", "max_queued_jobs",
         "max_queued_audio_seconds"}
_BOOLS = {"model_downloads", "http_redirect", "require_auth", "allow_registration", "result_cache"}
_SIZES = {"max_upload_size", "max_json_body", "max_import_size", "max_spooled_upload_bytes", "live_max_chunk_size"}
_DIRS = {"models_dir", "data_dir", "ssl_dir"}
_OPTIONAL_PATHS = {"ssl_cert_path", "ssl_key_path"}
_LISTS = {"api_keys", "cors_origins"}


def _convert(name: str, raw: str) -> Any:
    raw = raw.strip()
    if name in _INTS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    if name in _BOOLS:
        return parse_bool(raw)
    if name in _SIZES:
        return parse_size(raw)
    if name in _DIRS:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else PROJECT_ROOT / p
    if name in _OPTIONAL_PATHS:
        return Path(raw).expanduser() if raw else None
    if name in _LISTS:
        return _csv(raw)
    if name == "log_level":
        return raw.upper()
    return raw
