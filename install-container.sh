#!/usr/bin/env bash
# Install Whisper Appliance as a systemd service inside a Debian 12 / Ubuntu 22.04+ machine or Proxmox LXC
# container. Run as root from a checkout of this repository:
#
#   ./install-container.sh            # install or upgrade, then (re)start the service
#   ./install-container.sh --uninstall
#
# What it does (idempotent):
#   - copies the project to /opt/whisper-appliance (rsync, keeping models/, data/ and ssl/ across upgrades),
#   - creates the system user 'whisper' that owns data/, models/ and ssl/,
#   - runs scripts/dev.sh setup there (apt packages, .venv, bundled models),
#   - writes /etc/whisper-appliance.env once (settings; see README.md) and the systemd unit,
#   - enables and starts whisper-appliance.service.
# The admin password is generated on first start and printed once: journalctl -u whisper-appliance | grep -A2 Admin
set -euo pipefail

PREFIX=/opt/whisper-appliance
SERVICE=whisper-appliance
ENV_FILE=/etc/whisper-appliance.env
UNIT=/etc/systemd/system/$SERVICE.service
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

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
rsync -a --delete --exclude .git --exclude .venv --exclude models/ --exclude data/ --exclude 'ssl/*.pem' \
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
# ADMIN_PASSWORD=choose-one   (otherwise generated on first start and logged once)
# REQUIRE_AUTH=true
# API_KEYS=token1,token2
EOF
    chmod 600 "$ENV_FILE"
fi

log "writing $UNIT"
cat >"$UNIT" <<EOF
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
# Ports below 1024 are not needed (5000/5001); keep the service unprivileged and confined.
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=strict
ProtectHome=true
ReadWritePaths=$PREFIX/data $PREFIX/models $PREFIX/ssl
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF

systemctl daemon-reload
systemctl enable "$SERVICE" >/dev/null
systemctl restart "$SERVICE"
log "started: systemctl status $SERVICE; logs: journalctl -u $SERVICE -f"
