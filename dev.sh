#!/usr/bin/env bash
# klpd developer entry point. Each verb does all the set-up it needs, so it works on a fresh clone of a fresh
# Debian/Ubuntu machine with Python 3.11+ (as root, or with sudo for the system packages).
#   ./dev.sh run [klpd args...]   set up, then run the agent with the shipped default config
#   ./dev.sh test [pytest args...] set up (test tools included), then run the whole test suite
#   ./dev.sh test-vm KERNEL [pytest args...]  set up, then run the real-kernel suite on one kernel series (5.10,
#                                  6.1, 6.12 or 7; the core cases only on 5.10 and 7)
#   ./dev.sh setup                 set up only
set -euo pipefail
cd "$(dirname "$0")"
VENV=${KLPD_VENV:-.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Install only what is missing, so a set-up machine is not touched (and needs no network).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "dev.sh: installing system packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup() {
    local extra=${1:-}
    # Build deps of systemd-python (libsystemd headers), venv support.
    apt_install python3-venv python3-dev gcc pkg-config libsystemd-dev
    if [ "$extra" = test ]; then
        # promtool (metrics and alert rules), systemd-analyze (unit checks), openssl (module signatures made as
        # sign-file makes them), and what the QEMU suite needs (udevd and journald run in a guest as on a fleet host;
        # curl and jq ask the daemon there).
        apt_install prometheus systemd udev openssl qemu-system-x86 busybox-static cpio kmod xz-utils zstd patchelf make \
            bc curl jq
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.klpd-installed-$extra"
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        if [ "$extra" = test ]; then
            "$VENV/bin/python" -m pip install -q -e '.[dev]'
        else
            "$VENV/bin/python" -m pip install -q -e .
        fi
        touch "$stamp"
    fi
}

verb=${1:-}
[ $# -gt 0 ] && shift
case "$verb" in
    setup) setup test ;;
    run)
        setup
        exec "$VENV/bin/klpd" --config config/klpd.toml "$@"
        ;;
    test)
        setup test
        "$VENV/bin/ruff" check klpd tests benchmarks
        "$VENV/bin/mypy" klpd
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    test-vm)
        [ $# -ge 1 ] || { echo "usage: ./dev.sh test-vm KERNEL [pytest args...]" >&2; exit 2; }
        kernel=$1
        shift
        setup test
        KLPD_VM_KERNEL=$kernel exec "$VENV/bin/python" -m pytest -m vm "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [klpd args...] | ./dev.sh test [pytest args...] | ./dev.sh test-vm KERNEL | ./dev.sh setup" >&2
        exit 2
        ;;
esac
