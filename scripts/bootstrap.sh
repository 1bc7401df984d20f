#!/usr/bin/env bash
# Shared set-up for scripts/serve and scripts/test: a virtualenv with claude-box
# installed, and a running Docker engine. Safe to run again; it only does what
# is missing. Sourced, not executed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CBOX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_venv() {
    local extras="$1"
    local stamp="$venv/.cbox-installed"
    local want
    want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating virtualenv $venv"
        "$python" -m venv "$venv" || die "could not create a virtualenv with $python"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing claude-box[$extras] into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extras]" \
            || die "pip install failed (see above)"
        echo "$want" > "$stamp"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || die "$* missing and no apt-get to install it; install it by hand"
    [ "$(id -u)" = 0 ] || die "$* missing; install it (as root: apt-get install $*)"
    say "installing $* with apt-get"
    if [ ! -f /var/lib/apt/lists/.cbox-updated ]; then
        apt-get update -qq && touch /var/lib/apt/lists/.cbox-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || die "apt-get install $* failed"
}

ensure_docker() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    if [ -n "${DOCKER_HOST:-}" ]; then
        die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer"
    fi
    command -v docker >/dev/null && command -v dockerd >/dev/null || apt_install docker.io
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "no Docker engine is running and starting one needs root"
        say "starting dockerd (log: /var/log/cbox-dockerd.log)"
        nohup dockerd >/var/log/cbox-dockerd.log 2>&1 &
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 0.5
        done
        docker info >/dev/null 2>&1 || die "dockerd did not come up; see /var/log/cbox-dockerd.log"
    fi
}
