"""install-container.sh: the systemd unit it writes (verified by systemd itself) and the scripts' shell hygiene."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "install-container.sh"
log = logging.getLogger(__name__)


def _unit(prefix: Path) -> str:
    # Without --print-unit the script would really install (tests may run as root): never run it blind.
    assert '"--print-unit"' in INSTALLER.read_text(), "install-container.sh has no --print-unit"
    env = {**os.environ, "WHISPER_PREFIX": str(prefix)}
    result = subprocess.run(["bash", str(INSTALLER), "--print-unit"], env=env, capture_output=True, text=True,
                            check=True, timeout=60)
    return result.stdout


def _options(unit: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options.setdefault(key, []).append(value)
    return options


@pytest.fixture
def unit_file(tmp_path: Path) -> Path:
    # systemd-analyze verify checks that ExecStart's program exists, so give it one under the fake prefix.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    path = tmp_path / "whisper-appliance.service"
    path.write_text(_unit(tmp_path))
    return path


def test_unit_has_resource_limits_and_sandboxing(unit_file: Path) -> None:
    options = _options(unit_file.read_text())
    for key in ("MemoryMax", "TasksMax", "LimitNOFILE"):
        assert options.get(key), key
    expected = {
        "UMask": "0077", "NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true",
        "PrivateTmp": "true", "PrivateDevices": "true", "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true", "ProtectKernelLogs": "true", "ProtectControlGroups": "true",
        "RestrictNamespaces": "true", "LockPersonality": "true", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert options.get(key) == [value], key
    assert "@system-service" in options["SystemCallFilter"]
    assert options["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    prefix = unit_file.parent
    assert options["ReadWritePaths"] == [f"{prefix}/data {prefix}/models {prefix}/ssl"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(unit_file: Path) -> None:
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_file)],
                              capture_output=True, text=True, timeout=120)
    if security.returncode == 0:
        log.info("systemd-analyze security: %s", security.stdout.strip().splitlines()[-1])


def test_code_is_copied_owned_by_root_and_not_writable_by_others() -> None:
    script = INSTALLER.read_text()
    rsync = script[script.index("rsync -a"):].split("\n\n")[0]
    assert "--no-owner" in rsync and "--no-group" in rsync and "--chmod=go-w" in rsync
    assert 'chown -R whisper:whisper "$PREFIX/data" "$PREFIX/models" "$PREFIX/ssl"' in script


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/dev.sh test installs it)")
def test_scripts_pass_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(INSTALLER), str(ROOT / "scripts" / "dev.sh")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout
