"""app.py's Socket.IO ``connect`` handler through Flask-SocketIO's test client: what a connect's auth may hold."""

from __future__ import annotations

import logging

import pytest

from whisper_appliance import app as app_module
from whisper_appliance.core.config import Settings
from whisper_appliance.services.appliance import Appliance
from whisper_appliance.services.model_manager import ModelManager

from .fakes import silent_factory
from .web import HTTPS, PASSWORD, TOKEN


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "PLUGINS", ("health",))
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                        admin_password=PASSWORD, api_keys=(TOKEN,), whisper_model="tiny.en",
                        model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
    yield app_module.create_app(settings, appliance=appliance, start_services=False)
    appliance.stop()


def connect(app, auth):
    socketio = app_module.socketio_of(app)
    return socketio.test_client(app, auth=auth, headers={"Origin": HTTPS})


@pytest.mark.parametrize("token", [123, 0, ["a"], [], {"a": 1}, {}, True])
def test_a_non_string_token_is_refused_cleanly(app, token, caplog):
    caplog.set_level(logging.DEBUG)
    client = connect(app, {"token": token})
    assert not client.is_connected()
    assert not [r for r in caplog.records if r.exc_info], "a refused connect must not log a traceback"


def test_a_string_token_still_connects(app):
    assert connect(app, {"token": TOKEN}).is_connected()
    assert not connect(app, {"token": "wrong"}).is_connected()
