"""core/tls.py: the self-signed certificate generator and the check of the user's own pair."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import ssl
import stat
import threading
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from whisper_appliance.core import tls
from whisper_appliance.core.errors import ConfigError


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _interface_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every usable interface address, computed here independently of tls.py."""
    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(a.address.split("%")[0])
                if not (ip.version == 6 and ip.is_link_local):
                    out.add(ip)
    return out


def test_generates_pair_naming_every_local_address(tmp_path):
    ssl_dir = tmp_path / "ssl"  # does not exist yet
    info = tls.ensure_certificate(ssl_dir)

    assert info.generated and not info.custom
    assert info.reason == "no certificate yet"
    assert info.cert_path == ssl_dir / "cert.pem" and info.key_path == ssl_dir / "key.pem"
    cert = _load(info.cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert {"localhost", socket.gethostname().lower()} <= dns
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= ips
    assert _interface_addresses() <= ips
    assert not any(ip.version == 6 and ip.is_link_local for ip in ips)
    assert set(info.san_dns) == dns and {ipaddress.ip_address(a) for a in info.san_ips} == ips

    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)  # raises if missing
    assert info.not_after == cert.not_valid_after_utc
    assert info.not_after - datetime.now(UTC) > timedelta(days=800)
    assert info.fingerprint_sha256 == tls.fingerprint(cert) and len(info.fingerprint_sha256) == 95

    assert _mode(info.key_path) == 0o600
    assert _mode(info.cert_path) == 0o644
    assert sorted(p.name for p in ssl_dir.iterdir()) == ["cert.pem", "key.pem"]  # no temporary files left


def test_second_call_keeps_the_pair(tmp_path):
    first = tls.ensure_certificate(tmp_path)
    cert_bytes, key_bytes = first.cert_path.read_bytes(), first.key_path.read_bytes()
    second = tls.ensure_certificate(tmp_path)
    assert not second.generated
    assert second.fingerprint_sha256 == first.fingerprint_sha256
    assert first.cert_path.read_bytes() == cert_bytes and first.key_path.read_bytes() == key_bytes


def test_certificate_expiring_within_30_days_is_regenerated(tmp_path):
    now = datetime.now(UTC)
    old = tls.ensure_certificate(tmp_path, now=now - tls.VALIDITY + timedelta(days=10))
    assert old.not_after - now < timedelta(days=11)

    new = tls.ensure_certificate(tmp_path)
    assert new.generated
    assert "expires" in new.reason
    assert new.fingerprint_sha256 != old.fingerprint_sha256
    assert new.not_after - now > timedelta(days=800)


def test_changed_addresses_regenerate(tmp_path, monkeypatch):
    first = tls.ensure_certificate(tmp_path)
    dns, ips = tls.local_names_and_addresses()
    monkeypatch.setattr(tls, "local_names_and_addresses", lambda: (dns, tls.sort_ips(
        [ipaddress.ip_address(a) for a in ips] + [ipaddress.ip_address("10.9.8.7")])))

    second = tls.ensure_certificate(tmp_path)
    assert second.generated
    assert "10.9.8.7" in second.reason
    assert "10.9.8.7" in second.san_ips
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert not tls.ensure_certificate(tmp_path).generated


def test_changed_addresses_keep_the_key(tmp_path, monkeypatch):
    tls.ensure_certificate(tmp_path)
    key_before = (tmp_path / tls.KEY_FILE).read_bytes()
    public_before = _load(tmp_path / tls.CERT_FILE).public_key().public_numbers()
    dns, ips = tls.local_names_and_addresses()
    monkeypatch.setattr(tls, "local_names_and_addresses", lambda: (dns + ("renamed.example",), ips))
    second = tls.ensure_certificate(tmp_path)
    assert second.generated and "renamed.example" in second.san_dns
    assert (tmp_path / tls.KEY_FILE).read_bytes() == key_before
    assert _load(tmp_path / tls.CERT_FILE).public_key().public_numbers() == public_before
    assert _mode(tmp_path / tls.KEY_FILE) == 0o600


def test_an_expiring_certificate_gets_a_new_key(tmp_path):
    now = datetime.now(UTC)
    tls.ensure_certificate(tmp_path, now=now - tls.VALIDITY)
    key_before = (tmp_path / tls.KEY_FILE).read_bytes()
    assert tls.ensure_certificate(tmp_path, now=now).generated
    assert (tmp_path / tls.KEY_FILE).read_bytes() != key_before


def test_names_changed_is_none_for_the_same_names(tmp_path):
    tls.ensure_certificate(tmp_path)
    cert = _load(tmp_path / tls.CERT_FILE)
    dns, ips = tls.certificate_names(cert)
    assert tls.names_changed(cert, dns, ips) is None
    assert "gone: 127.0.0.1" in tls.names_changed(cert, dns, tuple(a for a in ips if a != "127.0.0.1"))


def test_corrupt_or_mismatched_default_pair_is_regenerated(tmp_path):
    tls.ensure_certificate(tmp_path / "a")
    other = tls.ensure_certificate(tmp_path / "b")
    # What a crash between the two os.replace calls could leave behind: a new key beside the old certificate.
    shutil.copy(other.key_path, tmp_path / "a" / "key.pem")
    again = tls.ensure_certificate(tmp_path / "a")
    assert again.generated and "does not belong" in again.reason

    (tmp_path / "a" / "cert.pem").write_text("not a certificate")
    again = tls.ensure_certificate(tmp_path / "a")
    assert again.generated and "unusable" in again.reason
    _load(again.cert_path)


def test_open_key_mode_is_tightened(tmp_path):
    info = tls.ensure_certificate(tmp_path)
    info.key_path.chmod(0o644)
    assert not tls.ensure_certificate(tmp_path).generated
    assert _mode(info.key_path) == 0o600


# --- the user's own certificate ---------------------------------------------------------------------------------

def _custom_pair(tmp_path: Path, *, now: datetime | None = None) -> tuple[Path, Path]:
    made = tls.ensure_certificate(tmp_path / "made", now=now)
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    shutil.copy(made.cert_path, cert)
    shutil.copy(made.key_path, key)
    return cert, key


def test_custom_pair_is_used_as_is(tmp_path):
    # Expired and naming nothing of the kind we would choose: still used, never replaced.
    cert, key = _custom_pair(tmp_path, now=datetime.now(UTC) - timedelta(days=900))
    cert_bytes, key_bytes = cert.read_bytes(), key.read_bytes()

    info = tls.ensure_certificate(tmp_path / "ssl", cert_path=cert, key_path=key)
    assert info.custom and not info.generated
    assert info.cert_path == cert and info.key_path == key
    assert info.fingerprint_sha256 == tls.fingerprint(_load(cert))
    assert cert.read_bytes() == cert_bytes and key.read_bytes() == key_bytes
    assert not (tmp_path / "ssl").exists()


def test_missing_custom_path_is_a_config_error(tmp_path):
    cert, key = _custom_pair(tmp_path)
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=str(missing)):
        tls.ensure_certificate(tmp_path, cert_path=missing, key_path=key)
    with pytest.raises(ConfigError, match=str(missing)):
        tls.ensure_certificate(tmp_path, cert_path=cert, key_path=missing)
    with pytest.raises(ConfigError, match="together"):
        tls.ensure_certificate(tmp_path, cert_path=cert)


def test_custom_key_not_matching_certificate_is_a_config_error(tmp_path):
    cert, _key = _custom_pair(tmp_path / "one")
    _cert, other_key = _custom_pair(tmp_path / "two")
    with pytest.raises(ConfigError, match="does not belong"):
        tls.ensure_certificate(tmp_path, cert_path=cert, key_path=other_key)


def test_custom_files_that_are_not_pem_are_config_errors(tmp_path):
    cert, key = _custom_pair(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        tls.ensure_certificate(tmp_path, cert_path=junk, key_path=key)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        tls.ensure_certificate(tmp_path, cert_path=cert, key_path=junk)


# --- pure helpers -----------------------------------------------------------------------------------------------

Addr = namedtuple("Addr", "family address netmask broadcast ptp")


def test_local_names_and_addresses_from_interfaces(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "Appliance")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "appliance.lan")
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {
        "lo": [Addr(socket.AF_INET, "127.0.0.1", None, None, None), Addr(socket.AF_INET6, "::1", None, None, None)],
        "eth0": [Addr(socket.AF_INET, "192.168.1.20", None, None, None),
                 Addr(socket.AF_INET6, "2001:db8::20", None, None, None),
                 Addr(socket.AF_INET6, "fe80::1%eth0", None, None, None),
                 Addr(psutil.AF_LINK, "02:00:00:00:00:01", None, None, None)],
        "wlan0": [Addr(socket.AF_INET, "10.0.0.5", None, None, None),
                  Addr(socket.AF_INET6, "fd00::5%wlan0", None, None, None),
                  Addr(socket.AF_INET, "192.168.1.20", None, None, None)],
    })
    dns, ips = tls.local_names_and_addresses()
    assert dns == ("appliance", "appliance.lan", "localhost")
    assert ips == ("10.0.0.5", "127.0.0.1", "192.168.1.20", "::1", "2001:db8::20", "fd00::5")


def test_fqdn_that_is_an_address_is_not_a_dns_name(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "192.168.1.20")
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {})
    assert tls.local_names_and_addresses() == (("box", "localhost"), ("127.0.0.1", "::1"))


def test_needs_renewal_reasons():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = ("box", "localhost"), ("127.0.0.1", "::1", "192.168.1.20")
    cert = tls.build_certificate(key, dns, ips, now)

    assert tls.needs_renewal(cert, dns, ips, now) is None
    assert tls.needs_renewal(cert, ("BOX", "localhost"), ("::1", "127.0.0.1", "192.168.1.20"), now) is None
    assert "new: 10.0.0.1" in tls.needs_renewal(cert, dns, ips + ("10.0.0.1",), now)
    assert "gone: 192.168.1.20" in tls.needs_renewal(cert, dns, ips[:2], now)
    assert "gone: box" in tls.needs_renewal(cert, ("localhost",), ips, now)
    assert "expires" in tls.needs_renewal(cert, dns, ips, now + tls.VALIDITY - timedelta(days=29))
    assert tls.needs_renewal(cert, dns, ips, now + tls.VALIDITY - timedelta(days=31)) is None
    assert "expired" in tls.needs_renewal(cert, dns, ips, now + tls.VALIDITY + timedelta(days=1))
    assert "not valid before" in tls.needs_renewal(cert, dns, ips, now - timedelta(days=1))


# --- a real TLS handshake ---------------------------------------------------------------------------------------

def test_real_tls_handshake_verifies_localhost_and_loopback(tmp_path):
    info = tls.ensure_certificate(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(info.cert_path, info.key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server_errors: list[Exception] = []

    def serve(count: int) -> None:
        for _ in range(count):
            conn, _addr = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello")
            except (ssl.SSLError, OSError) as exc:  # the client refusing our certificate ends up here
                server_errors.append(exc)

    thread = threading.Thread(target=serve, args=(3,), daemon=True)
    thread.start()
    try:
        for hostname in ("localhost", "127.0.0.1"):
            client_ctx = ssl.create_default_context(cafile=str(info.cert_path))
            assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=hostname) as conn:
                assert conn.recv(5) == b"hello"
                assert conn.version() in ("TLSv1.2", "TLSv1.3")

        # The same certificate must not pass for a name it does not carry.
        client_ctx = ssl.create_default_context(cafile=str(info.cert_path))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                client_ctx.wrap_socket(raw, server_hostname="not-this-host.example")
    finally:
        thread.join(timeout=10)
        listener.close()
    assert len(server_errors) == 1


def test_written_files_never_group_readable_even_with_open_umask(tmp_path):
    old = os.umask(0)
    try:
        info = tls.ensure_certificate(tmp_path)
    finally:
        os.umask(old)
    assert _mode(info.key_path) == 0o600
