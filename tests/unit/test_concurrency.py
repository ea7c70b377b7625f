"""core/concurrency.py: blocking steps of generators run off the event loop's thread under eventlet; the
connection limits given to eventlet's WSGI server."""

from __future__ import annotations

import threading

import pytest

from whisper_appliance.core import concurrency
from whisper_appliance.core.concurrency import ConnectionCounter, ConnectionLimits, eventlet_server_options


@pytest.fixture
def on_eventlet(monkeypatch):
    pytest.importorskip("eventlet")
    monkeypatch.setattr(concurrency, "_eventlet_active", True)


def test_each_step_of_a_generator_runs_off_the_event_loop_and_closing_closes_it(on_eventlet):
    threads: list[bool] = []
    closed: list[bool] = []

    def chunks():
        try:
            for n in range(3):
                threads.append(threading.current_thread() is threading.main_thread())
                yield n
        finally:
            closed.append(True)

    assert list(concurrency.iterate_blocking(chunks())) == [0, 1, 2]
    assert threads == [False, False, False] and closed == [True]
    stream = concurrency.iterate_blocking(chunks())
    assert next(stream) == 0
    stream.close()  # a client that goes away mid-download
    assert closed == [True, True]


def test_the_history_export_is_produced_off_the_event_loop(on_eventlet, tmp_path, monkeypatch):
    from whisper_appliance import app as app_module
    from whisper_appliance.core.config import Settings
    from whisper_appliance.services.appliance import Appliance
    from whisper_appliance.services.history import HistoryStore
    from whisper_appliance.services.model_manager import ModelManager

    from .fakes import silent_factory
    from .web import PASSWORD, TOKEN, Client

    monkeypatch.setattr(app_module, "PLUGINS", ("history",))
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", async_mode="threading",
                        admin_password=PASSWORD, api_keys=(TOKEN,), model_downloads=False).validated()
    appliance = Appliance.build(settings, models=ModelManager(settings, engine_factory=silent_factory))
    try:
        for n in range(3):
            appliance.history.add(source="upload", filename=f"{n}.wav", text=f"entry {n}", owner_id=None)
        on_loop: list[bool] = []
        original = HistoryStore.iter_export

        def recording(self, *args, **kwargs):
            for item in original(self, *args, **kwargs):
                on_loop.append(threading.current_thread() is threading.main_thread())
                yield item

        monkeypatch.setattr(HistoryStore, "iter_export", recording)
        app = app_module.create_app(settings, appliance=appliance, start_services=False)
        r = Client(app).get("/api/history/export?format=csv")
        assert r.status_code == 200 and "entry 2" in r.get_data(as_text=True)
        assert on_loop == [False, False, False]
    finally:
        appliance.stop()


def test_connection_counter_caps_each_address_on_its_own():
    counter = ConnectionCounter(2)
    assert counter.acquire("10.0.0.1") and counter.acquire("10.0.0.1")
    assert not counter.acquire("10.0.0.1")
    assert counter.acquire("10.0.0.2")  # another address has its own allowance
    counter.release("10.0.0.1")
    assert counter.count("10.0.0.1") == 1 and counter.acquire("10.0.0.1")
    for _ in range(3):
        counter.release("10.0.0.2")  # a release more than acquired never goes negative
    assert counter.count("10.0.0.2") == 0


def test_eventlet_server_options_carry_the_limits():
    options = eventlet_server_options(ConnectionLimits(socket_timeout=7, keepalive_timeout=3, max_connections=50,
                                                       max_per_ip=4))
    assert (options["socket_timeout"], options["keepalive"], options["max_size"]) == (7, 3, 50)
    import eventlet.wsgi

    assert issubclass(options["protocol"], eventlet.wsgi.HttpProtocol)
