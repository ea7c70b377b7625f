#!/usr/bin/env bash
# Install Whisper Appliance as a systemd service inside a Debian 12 / Ubuntu 22.04+ machine or Proxmox LXC
# container. Run as root from a checkout of this repository:
#
#   ./install-container.sh            # install or upgrade, then (re)start the service
#   ./install-container.sh --uninstall
#   ./install-container.sh --print-unit   # print the systemd unit it would write (no root needed; used by tests)
#
# What it does (idempotent):
#   - copies the project to /opt/whisper-appliance (rsync, keeping models/, data/ and ssl/ across upgrades); the code
#     is owned by root and not writable by the service user, so a compromised service cannot rewrite itself,
#   - creates the system user 'whisper' that owns only data/, models/ and ssl/,
#   - runs scripts/dev.sh setup there (apt packages, .venv, bundled models),
#   - writes /etc/whisper-appliance.env once (settings; see README.md) and the systemd unit,
#   - enables and starts whisper-appliance.service.
# The admin password is generated on first start, logged once and written to /opt/whisper-appliance/data/admin-password.txt (0600).
set -euo pipefail

PREFIX="${WHISPER_PREFIX:-/opt/whisper-appliance}"   # overridable for tests
SERVICE=whisper-appliance
ENV_FILE=/etc/whisper-appliance.env
UNIT=/etc/systemd/system/$SERVICE.service
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The systemd unit. Limits are generous (large-v3 needs several GiB); override them at install time with
# WHISPER_MEMORY_MAX, WHISPER_TASKS_MAX and WHISPER_NOFILE.
print_unit() {
    cat <<EOF
[Unit]
Description=Whisper Appliance (speech-to-text over HTTPS)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=whisper
Group=whisper
WorkingDirectory=$PREFIX
EnvironmentFile=$ENV_FILE
Environment=PYTHONUNBUFFERED=1
ExecStart=$PREFIX/.venv/bin/python $PREFIX/src/main.py serve
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
# Resources: a runaway request cannot take the whole machine.
MemoryMax=${WHISPER_MEMORY_MAX:-8G}
TasksMax=${WHISPER_TASKS_MAX:-512}
LimitNOFILE=${WHISPER_NOFILE:-8192}
UMask=0077
# Sandboxing. Ports 5000/5001 need no privileges; only data/, models/ and ssl/ are writable.
NoNewPrivileges=true
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths=$PREFIX/data $PREFIX/models $PREFIX/ssl
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# No MemoryDenyWriteExecute: numba (openai-whisper word timings) JIT-compiles code into memory it makes
# executable, which that option forbids.

[Install]
WantedBy=multi-user.target
EOF
}

if [ "${1:-}" = "--print-unit" ]; then
    print_unit
    exit 0
fi

log() { printf '[install] %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (inside the container)" >&2; exit 1; }

if [ "${1:-}" = "--uninstall" ]; then
    systemctl disable --now "$SERVICE" 2>/dev/null || true
    rm -f "$UNIT"
    systemctl daemon-reload
    log "service removed; $PREFIX (with data/ and models/) and $ENV_FILE are kept"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
command -v rsync >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq rsync >/dev/null; }

id whisper >/dev/null 2>&1 || useradd --system --home-dir "$PREFIX" --shell /usr/sbin/nologin whisper

log "copying the project to $PREFIX"
mkdir -p "$PREFIX"
chown root:root "$PREFIX"
chmod 755 "$PREFIX"
# --no-owner/--no-group: files belong to root (who runs this), whoever owns the checkout; go-w: nobody else writes.
rsync -a --delete --no-owner --no-group --chmod=go-w \
    --exclude .git --exclude .venv --exclude models/ --exclude data/ --exclude 'ssl/*.pem' \
    "$SRC/" "$PREFIX/"

log "installing system packages, Python environment and bundled models"
(cd "$PREFIX" && bash scripts/dev.sh setup)
mkdir -p "$PREFIX/data" "$PREFIX/models" "$PREFIX/ssl"
chown -R whisper:whisper "$PREFIX/data" "$PREFIX/models" "$PREFIX/ssl"

if [ ! -f "$ENV_FILE" ]; then
    log "writing $ENV_FILE"
    cat >"$ENV_FILE" <<'EOF'
# Whisper Appliance settings (see README.md for all variables). Restart the service after changes:
#   systemctl restart whisper-appliance
WHISPER_MODEL=base
WHISPER_ENGINE=faster-whisper
HTTPS_PORT=5001
HTTP_PORT=5000
# ADMIN_PASSWORD=choose-one   (12+ characters; otherwise generated on first start, see data/admin-password.txt)
# REQUIRE_AUTH=true
# API_KEYS=token1,token2   (16+ characters each)
EOF
    chmod 600 "$ENV_FILE"
fi

log "writing $UNIT"
print_unit >"$UNIT"

systemctl daemon-reload
systemctl enable "$SERVICE" >/dev/null
systemctl restart "$SERVICE"
log "started: systemctl status $SERVICE; logs: journalctl -u $SERVICE -f"
