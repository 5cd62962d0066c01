#!/usr/bin/env bash
# Idempotent setup of mimeifs on a fresh Debian 12 machine, run as root.
#
#   bash tools/install.sh
#
# Installs the system packages mimeifs and its tests need (FUSE 3 and its headers to
# build pyfuse3, a compiler, and the ordinary programs the tests drive through the
# mount: git, rsync, sqlite3, tar, attr, b3sum), then a virtualenv at
# ${MIMEIFS_VENV:-<repo>/.venv} with `pip install -e "<repo>[test]"`.
# Nothing here relies on anything installed by hand; running it twice is harmless.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIMEIFS_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        log "not root and no sudo: cannot install system packages"; exit 1; fi
fi

# --- system packages -----------------------------------------------------------------
PKGS=(fuse3 libfuse3-dev pkg-config gcc git rsync sqlite3 tar attr b3sum ca-certificates
      redis-server redis-tools  # the db tests compare with a real redis-server and redis-cli
      iproute2)                 # ip netns, tc: tools/bench_net.py's shaped link
# the gateway's tests and benchmark: curl, a WebDAV client, a headless browser and its
# driver, and the competitors of tools/bench_http.py (wrk, nginx)
PKGS+=(curl rclone chromium chromium-driver wrk nginx-light)
if ! command -v "$PY" >/dev/null 2>&1; then
    PKGS+=(python3 python3-dev)
    PY=python3
fi
# `python3 -m venv` fails on Debian's python3 without python3-venv; pyenv's works.
venv_ok() {
    local t; t="$(mktemp -d)"
    if "$PY" -m venv "$t/v" >/dev/null 2>&1 && [ -x "$t/v/bin/pip" ]; then rm -rf "$t"; return 0; fi
    rm -rf "$t"; return 1
}
if command -v "$PY" >/dev/null 2>&1 && ! venv_ok; then PKGS+=(python3-venv); fi
# fincore (page-cache residency, for the readahead test): util-linux-extra on Debian 12+,
# part of util-linux on older releases
if ! command -v fincore >/dev/null 2>&1 && apt-cache show util-linux-extra >/dev/null 2>&1; then
    PKGS+=(util-linux-extra)
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install: ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "system packages already installed"
fi

# Debian's redis-server package may start a system redis on 6379; the tests start their own
# servers on free ports and never use it.
# nginx is only a benchmark competitor (tools/bench_http.py starts its own on loopback):
# keep Debian's service from listening on port 80 of every address.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled nginx >/dev/null 2>&1; then
    $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# FUSE needs the device node (containers sometimes lack it until fuse3 is installed).
if [ ! -e /dev/fuse ]; then
    log "warning: /dev/fuse is missing; mounts will fail on this machine"
fi

# --- python environment --------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV with $($PY --version 2>&1)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip || true
fi
log "pip install -e $REPO[test]"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"

if [ -x "$VENV/bin/mimeifs" ]; then
    echo "mimeifs command: $VENV/bin/mimeifs"
else
    log "warning: $VENV/bin/mimeifs was not created"
    echo "mimeifs command: (missing) expected at $VENV/bin/mimeifs"
fi
