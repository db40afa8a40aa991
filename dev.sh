#!/usr/bin/env bash
# klpd developer entry point. Each verb does all the set-up it needs, so it works on a fresh clone of a fresh
# Debian/Ubuntu machine with Python 3.11+ (as root, or with sudo for the system packages).
#   ./dev.sh run [klpd args...]   set up, then run the agent with the shipped default config
#   ./dev.sh test [pytest args...] set up (test tools included), then run the whole test suite
#   ./dev.sh test-debian [pytest args...] the non-QEMU suite on Debian's own python3-* packages (no venv): what a
#                                  host installing the .deb runs klpd with (CI runs it before `test`)
#   ./dev.sh test-vm KERNEL [pytest args...]  set up, then run the real-kernel suite on one kernel series (5.10,
#                                  6.1, 6.12 or 7; the core cases only on 5.10 and 7)
#   ./dev.sh setup                 set up only
set -euo pipefail
cd "$(dirname "$0")"
VENV=${KLPD_VENV:-.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

say() { echo "dev.sh: $*" >&2; }

apt_install() {
    # Install only what is missing, so a set-up machine is not touched (and needs no network). $1 says what for.
    local why=$1 missing=()
    shift
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages for $why: all $# present"
        return 0
    fi
    say "Debian packages for $why: installing system-wide (apt-get, Debian's archive): ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pip_install() {
    # pip's own output is long; its one line naming what it installed (and everything on failure) is not.
    local log="$VENV/pip.log"
    say "Python packages: pip install $* into $VENV/ (from PyPI; the project itself editable)"
    if ! "$VENV/bin/python" -m pip install "$@" >"$log" 2>&1; then
        cat "$log" >&2
        return 1
    fi
    grep -E '^Successfully installed' "$log" | sed 's/^/dev.sh:   /' >&2 || say "  nothing new"
}

# Debian's packages of klpd's runtime dependencies and of the test tools (bookworm's pyelftools is 0.29,
# hypothesis 6.67, pytest 7.2: the floors pyproject.toml declares).
DEBIAN_PYTHON=(python3-pyelftools python3-pyudev python3-prometheus-client python3-systemd python3-zstandard
    python3-pytest python3-hypothesis python3-yaml)

setup() {
    local extra=${1:-}
    # Build deps of systemd-python (libsystemd headers), venv support.
    apt_install "the virtualenv (systemd-python builds from source)" python3-venv python3-dev gcc pkg-config \
        libsystemd-dev
    if [ "$extra" = test ]; then
        # promtool (metrics and alert rules), systemd-analyze (unit checks), openssl (module signatures made as
        # sign-file makes them), and what the QEMU suite needs (udevd and journald run in a guest as on a fleet host;
        # curl and jq ask the daemon there).
        apt_install "the test tools and the QEMU suite" prometheus systemd udev openssl qemu-system-x86 \
            busybox-static cpio kmod xz-utils zstd patchelf make bc curl jq
        # mmdebstrap: the fresh bookworm and trixie roots tests/test_vm_debian_package.py installs the .deb in
        # (tests/vm/rootfs.py; Debian's archive named on its command line, the machine's apt sources untouched).
        apt_install "the fresh Debian roots of the QEMU suite" mmdebstrap
        # klpctl's generated completion and man page are run by the shells and groff that will read them.
        apt_install "the shells and groff for klpctl's completion and man page" bash zsh groff-base
        # The Debian package (tests/test_debian_package.py builds it with dpkg-buildpackage and runs what it
        # installs on Debian's python3 and python3-* packages).
        apt_install "the Debian package and the suite on Debian's Python" dpkg-dev debhelper dh-python python3-all \
            python3-setuptools pybuild-plugin-pyproject "${DEBIAN_PYTHON[@]}"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtualenv $VENV/ ($(python3 --version))"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.klpd-installed-$extra"
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        pip_install --upgrade pip
        if [ "$extra" = test ]; then
            pip_install -e '.[dev]'
        else
            pip_install -e .
        fi
        touch "$stamp"
    else
        say "Python packages: $VENV/ is up to date with pyproject.toml"
    fi
}

test_debian() {
    setup test  # the system tools the suite calls (promtool, systemd-analyze, openssl...) and DEBIAN_PYTHON
    # /usr/bin/klpd and /usr/bin/klpctl as the package installs them, for the tests that run the commands.
    local bin
    bin=$(mktemp -d)
    trap "rm -rf '$bin'" EXIT
    for pair in klpd:klpd.daemon.main klpctl:klpd.cli; do
        printf '#!/usr/bin/python3\nimport sys\nfrom %s import main_entry\nsys.exit(main_entry())\n' \
            "${pair#*:}" >"$bin/${pair%%:*}"
        chmod +x "$bin/${pair%%:*}"
    done
    echo "dev.sh: the suite on /usr/bin/python3 and Debian's packages (${DEBIAN_PYTHON[*]})" >&2
    PYTHONPATH=$PWD KLPD_BIN_DIR=$bin PYTHONNOUSERSITE=1 /usr/bin/python3 -m pytest -m "not vm" -p no:cacheprovider "$@"
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
        if [ "${KLPD_VM_TESTS:-}" != 0 ]; then
            say "the QEMU suite fetches Debian's kernel packages with apt-get (linux-image and linux-source, into" \
                "${KLPD_VM_CACHE:-/var/cache/klpd-vm, or .cache/vm when not root}; linux-headers installed" \
                "system-wide) on first use, and builds its modules there, and fresh bookworm and trixie roots" \
                "(mmdebstrap, ~400 MiB); KLPD_VM_TESTS=0 skips it"
        fi
        "$VENV/bin/ruff" check klpd tests benchmarks
        "$VENV/bin/mypy" klpd
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    test-debian) test_debian "$@" ;;
    test-vm)
        [ $# -ge 1 ] || { echo "usage: ./dev.sh test-vm KERNEL [pytest args...]" >&2; exit 2; }
        kernel=$1
        shift
        setup test
        KLPD_VM_KERNEL=$kernel exec "$VENV/bin/python" -m pytest -m vm "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [klpd args...] | ./dev.sh test [pytest args...] | ./dev.sh test-debian [pytest args...]" \
            "| ./dev.sh test-vm KERNEL [pytest args...] | ./dev.sh setup" >&2
        exit 2
        ;;
esac
