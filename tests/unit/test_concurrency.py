"""The connection limits given to eventlet's WSGI server."""

from __future__ import annotations

from whisper_appliance.core.concurrency import ConnectionCounter, ConnectionLimits, eventlet_server_options


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
