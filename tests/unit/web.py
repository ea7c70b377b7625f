"""The web layer for unit tests: the real app factory over https through Flask's test client, with a fake model."""

from __future__ import annotations

from pathlib import Path

PASSWORD = "unit-admin-password"
TOKEN = "unit-api-token-0123456789"
HTTPS = "https://localhost"


def build_app(tmp_path: Path, built: list, **overrides):
    """The real app over a fake model, with the unit tests' admin password and token; the Appliance goes into
    ``built`` for the caller to stop. Flask-Limiter's counts start empty."""
    from whisper_appliance import app as app_module
    from whisper_appliance.core.config import Settings
    from whisper_appliance.http import limiter
    from whisper_appliance.services.appliance import Appliance
    from whisper_appliance.services.model_manager import ModelManager

    from .fakes import silent_factory

    values = dict(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                  admin_password=PASSWORD, api_keys=(TOKEN,), whisper_model="tiny.en", model_downloads=False)
    settings = Settings(**{**values, **overrides}).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
    built.append(appliance)
    app = app_module.create_app(settings, appliance=appliance, start_services=False)
    limiter.reset()
    return app


def fake_weights(models_dir: Path, name: str) -> None:
    d = models_dir / name
    d.mkdir(parents=True)
    for f in ("model.bin", "config.json", "tokenizer.json"):
        (d / f).write_text("{}")


class Client:
    """The test client over https (the session cookie is Secure), with an optional CSRF header."""

    def __init__(self, app) -> None:
        self.inner = app.test_client()
        self.headers: dict[str, str] = {}

    def __getattr__(self, method):
        def call(path, **kwargs):
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.inner, method)(path, base_url=HTTPS, headers=headers, **kwargs)
        return call

    def login(self, username: str = "admin", password: str = PASSWORD) -> Client:
        r = self.post("/api/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.get_json()
        self.headers["X-CSRF-Token"] = r.get_json()["csrf_token"]
        return self
