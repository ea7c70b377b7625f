"""The one certificate generator: a self-signed HTTPS certificate for this machine, or the user's own pair.

``ensure_certificate`` is called once at start-up. With ``SSL_CERT_PATH``/``SSL_KEY_PATH`` it only checks the
user's pair and uses it as is. Otherwise it keeps ``SSL_DIR/cert.pem`` + ``key.pem`` and (re)generates them with
the ``cryptography`` package (no shell, no openssl CLI) when they are missing, unreadable, do not match, expire
within 30 days, or name a different set of host names/addresses than this machine has now.

Choices:

* EC P-256 keys: every browser and client supports them, generation takes milliseconds (RSA 2048 takes up to a
  second on a slow appliance CPU) and the handshake is cheaper.
* The names come only from this machine (hostname, FQDN, every interface address from ``psutil``): no external
  look-up of any kind. IPv6 link-local addresses (``fe80::/10``) are left out: they only work with a zone id
  (``fe80::1%eth0``), which browsers do not accept in URLs and which a certificate cannot carry.
* Files are written to temporary files in the same folder and moved into place with ``os.replace``; the key is
  created with mode 0600 from the start. The key is replaced before the certificate, so a crash between the two
  leaves a pair that does not match, which the next start detects and regenerates.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALIDITY = timedelta(days=825)  # the longest validity Apple platforms accept for a TLS server certificate
RENEW_BEFORE = timedelta(days=30)
# Clients whose clock is a little behind ours must not see a "not yet valid" certificate.
BACKDATE = timedelta(hours=1)
ORGANIZATION = "Whisper Appliance (self-signed)"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CertificateInfo:
    cert_path: Path
    key_path: Path
    generated: bool
    reason: str
    not_after: datetime
    san_dns: tuple[str, ...]
    san_ips: tuple[str, ...]
    fingerprint_sha256: str  # "AB:CD:...", as browsers show it
    custom: bool

    def to_dict(self) -> dict[str, object]:
        """What the admin sees: enough to compare with what a browser shows, no key material."""
        return {"fingerprint_sha256": self.fingerprint_sha256, "not_after": self.not_after.isoformat(),
                "san_dns": list(self.san_dns), "san_ips": list(self.san_ips), "custom": self.custom,
                "cert_path": str(self.cert_path)}


# --- pure helpers ---------------------------------------------------------------------------------------------

def _dns_name(name: str) -> str | None:
    """A host name as it goes into a certificate (lower case, IDNA), or None if it cannot be one."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    try:
        ipaddress.ip_address(name)
        return None  # an address is not a DNS name (getfqdn returns one when nothing resolves)
    except ValueError:
        pass
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        log.warning("Host name %r cannot be written in a certificate; left out", name)
        return None


def _ip(text: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # strip an IPv6 zone id such as %eth0
    except ValueError:
        return None


def sort_ips(ips: set[IpAddress] | list[IpAddress]) -> tuple[str, ...]:
    return tuple(str(ip) for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))))


def local_names_and_addresses() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) this machine can be reached by, sorted and deduplicated.

    localhost, the host name and FQDN; 127.0.0.1, ::1 and every IPv4/IPv6 address of every interface except
    IPv6 link-local ones (see the module docstring).
    """
    dns: set[str] = set()
    for candidate in ("localhost", socket.gethostname(), socket.getfqdn()):
        name = _dns_name(candidate)
        if name:
            dns.add(name)
    ips: set[IpAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = _ip(addr.address)
            if ip is None:
                log.debug("Interface address %r is not an IP address; left out", addr.address)
                continue
            if ip.version == 6 and ip.is_link_local:
                continue
            ips.add(ip)
    return tuple(sorted(dns)), sort_ips(ips)


def certificate_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) in a certificate's subjectAltName, sorted; empty when it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return tuple(sorted(dns)), sort_ips(san.get_values_for_type(x509.IPAddress))


def needs_renewal(cert: x509.Certificate, expected_dns: tuple[str, ...] | list[str],
                  expected_ips: tuple[str, ...] | list[str], now: datetime) -> str | None:
    """Why ``cert`` must be replaced (expiring, not yet valid, other names/addresses), or None if it is fine."""
    now = _utc(now)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        if cert.not_valid_after_utc <= now:
            return f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        return f"certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}, within {RENEW_BEFORE.days} days"
    if cert.not_valid_before_utc > now:
        return f"certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (clock changed?)"
    return names_changed(cert, expected_dns, expected_ips)


def names_changed(cert: x509.Certificate, expected_dns: tuple[str, ...] | list[str],
                  expected_ips: tuple[str, ...] | list[str]) -> str | None:
    """How the host names/addresses of ``cert`` differ from the expected ones, or None when they are the same."""
    have_dns, have_ips = certificate_names(cert)
    want_dns = {n.lower() for n in expected_dns}
    want_ips = {ipaddress.ip_address(a) for a in expected_ips}
    changes = []
    added = sorted(want_dns - set(have_dns)) + list(sort_ips(want_ips - {ipaddress.ip_address(a) for a in have_ips}))
    removed = sorted(set(have_dns) - want_dns) + list(sort_ips({ipaddress.ip_address(a) for a in have_ips} - want_ips))
    if added:
        changes.append("new: " + ", ".join(added))
    if removed:
        changes.append("gone: " + ", ".join(removed))
    if changes:
        return "host names/addresses changed (" + "; ".join(changes) + ")"
    return None


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def build_certificate(key: ec.EllipticCurvePrivateKey, dns: tuple[str, ...], ips: tuple[str, ...],
                      now: datetime) -> x509.Certificate:
    """A self-signed server certificate for ``dns`` + ``ips``, valid from ``now`` (backdated) for ``VALIDITY``."""
    now = _utc(now)
    common_name = next((n for n in dns if n != "localhost"), "localhost")[:64]  # CN is limited to 64 characters
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])
    public_key = key.public_key()
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


# --- files ----------------------------------------------------------------------------------------------------

def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, object]:
    """Load and cross-check a PEM pair. Raises ValueError with a message naming the offending path."""
    try:
        cert_bytes = cert_path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read certificate {cert_path}: {exc.strerror or exc}") from exc
    try:
        key_bytes = key_path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read private key {key_path}: {exc.strerror or exc}") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError as exc:
        raise ValueError(f"{cert_path} is not a PEM certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError as exc:  # the key is encrypted; a server starting unattended has no passphrase to give
        raise ValueError(f"{key_path} is an encrypted private key; provide it without a passphrase") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{key_path} is not a PEM private key ({exc})") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ValueError(f"private key {key_path} does not belong to certificate {cert_path}")
    return cert, key


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file with mode 0600, so key material is never readable by others, not even briefly.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _info(cert: x509.Certificate, cert_path: Path, key_path: Path, *, generated: bool, reason: str,
          custom: bool) -> CertificateInfo:
    dns, ips = certificate_names(cert)
    return CertificateInfo(cert_path=cert_path, key_path=key_path, generated=generated, reason=reason,
                           not_after=cert.not_valid_after_utc, san_dns=dns, san_ips=ips,
                           fingerprint_sha256=fingerprint(cert), custom=custom)


def _use_custom(cert_path: Path | None, key_path: Path | None, now: datetime) -> CertificateInfo:
    if cert_path is None or key_path is None:
        raise ConfigError("SSL_CERT_PATH and SSL_KEY_PATH must be set together")
    try:
        cert, _key = _load_pair(cert_path, key_path)
    except ValueError as exc:
        raise ConfigError(f"SSL_CERT_PATH/SSL_KEY_PATH: {exc}") from exc
    if cert.not_valid_after_utc <= now:
        log.warning("Your certificate %s expired on %s; clients will refuse it", cert_path,
                    f"{cert.not_valid_after_utc:%Y-%m-%d}")
    elif cert.not_valid_after_utc - now < RENEW_BEFORE:
        log.warning("Your certificate %s expires on %s; renew it soon", cert_path,
                    f"{cert.not_valid_after_utc:%Y-%m-%d}")
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("Private key %s is readable by other users (mode %o); consider chmod 600", key_path,
                    stat.S_IMODE(mode))
    info = _info(cert, cert_path, key_path, generated=False, reason="custom certificate (SSL_CERT_PATH)",
                 custom=True)
    log.info("Using your certificate %s (valid until %s, SHA-256 %s)", cert_path, f"{info.not_after:%Y-%m-%d}",
             info.fingerprint_sha256)
    return info


def ensure_certificate(ssl_dir: Path, *, cert_path: Path | None = None, key_path: Path | None = None,
                       now: datetime | None = None) -> CertificateInfo:
    """Make sure a usable certificate/key pair exists and say which one, and whether and why it was generated.

    ``cert_path``/``key_path`` (SSL_CERT_PATH/SSL_KEY_PATH) are checked and used as is, never regenerated;
    problems raise ``ConfigError``. Otherwise ``ssl_dir/cert.pem`` and ``ssl_dir/key.pem`` are kept current.
    """
    now = _utc(now or datetime.now(UTC))
    if cert_path is not None or key_path is not None:
        return _use_custom(cert_path, key_path, now)

    ssl_dir = Path(ssl_dir)
    cert_path, key_path = ssl_dir / CERT_FILE, ssl_dir / KEY_FILE
    dns, ips = local_names_and_addresses()

    reason: str | None
    reused_key: ec.EllipticCurvePrivateKey | None = None
    if not cert_path.exists() and not key_path.exists():
        reason = "no certificate yet"
    else:
        try:
            cert, _key = _load_pair(cert_path, key_path)
        except ValueError as exc:
            reason = f"existing pair unusable: {exc}"
        else:
            reason = needs_renewal(cert, dns, ips, now)
            only_names = reason is not None and reason == names_changed(cert, dns, ips)
            if only_names and isinstance(_key, ec.EllipticCurvePrivateKey):
                # Only the addresses changed: keep the key, so clients pinning it (and the key file) stay as they are.
                reused_key = _key
            if reason is None:
                _tighten_key_mode(key_path)
                log.info("Using certificate %s (valid until %s, SHA-256 %s)", cert_path,
                         f"{cert.not_valid_after_utc:%Y-%m-%d}", fingerprint(cert))
                return _info(cert, cert_path, key_path, generated=False, reason="existing certificate is current",
                             custom=False)

    key = reused_key or ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate(key, dns, ips, now)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        ssl_dir.mkdir(parents=True, exist_ok=True)
        if reused_key is None:
            _write_atomic(key_path, key_pem, 0o600)
        else:
            _tighten_key_mode(key_path)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise ConfigError(f"SSL_DIR={ssl_dir}: cannot write the certificate there ({exc.strerror or exc})") from exc
    info = _info(cert, cert_path, key_path, generated=True, reason=reason, custom=False)
    log.warning("Generated a self-signed certificate %s (%s%s); valid until %s for %s; SHA-256 %s", cert_path,
                reason, "; same key" if reused_key is not None else "", f"{info.not_after:%Y-%m-%d}",
                ", ".join(dns + ips), info.fingerprint_sha256)
    return info


def _tighten_key_mode(key_path: Path) -> None:
    """A key we generated must stay private; an earlier tool (or a copy) may have left it readable by others."""
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("Private key %s was readable by other users (mode %o); setting mode 600", key_path, mode)
        try:
            key_path.chmod(0o600)
        except OSError as exc:
            # Not fatal: the server still works; the operator has been told twice now.
            log.error("Cannot restrict permissions of %s: %s", key_path, exc.strerror or exc)
