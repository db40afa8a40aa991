"""The guest's initramfs: static busybox, the few modules that reach the host's files over virtio-9p, and an init.

The init mounts the guest's root read-only (9p tag ``hostroot``: the host's ``/``, or a root made from another suite's
packages, see :mod:`rootfs`) under a tmpfs overlay, gives it the guest's own proc, sys (with securityfs), dev, tmp
and run, binds the test kernel's ``/lib/modules/<release>`` (9p tag ``modules``) over the root's,
mounts the writable results share (9p tag ``results``) at ``/run/klpvm`` and chroots into it to run
``/run/klpvm/script.sh`` with bash, in the directory named by ``vm.conf``. The script's stdout goes to the second
serial port (ttyS1), its stderr, exit status and the guest's dmesg to the results share; then the guest powers off.

With ``KLPVM_INIT=systemd`` in ``vm.conf`` the same root becomes a systemd host instead: the init switches to it
with systemd as PID 1 and the unit ``klpvm.target`` (from the results share, see :data:`SYSTEMD_UNITS`), whose
service runs the script the same way and powers off.
"""

from __future__ import annotations

import lzma
import re
import stat
import subprocess
from pathlib import Path

from .errors import run

# What mounting the host root needs, besides what is built in. Their dependencies come from modules.dep.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

GUEST_OUT = "/run/klpvm"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "klpvm-init: $*" >&2; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r ko; do insmod "/modules/$ko" || fail "insmod $ko"; done < /modules/order
P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$P9" results /out || fail "mount results share"
. /out/vm.conf
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 rw /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay"
R=/newroot
# The repository may live under /tmp or /run (CI clones anywhere), which get fresh tmpfs mounts below: keep a
# handle on it and bind it back afterwards.
mount --bind "$R$KLPVM_CWD" /keep || fail "bind repository $KLPVM_CWD"
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
mkdir -p "$R$KLPVM_CWD" && mount --bind /keep "$R$KLPVM_CWD" || fail "rebind repository $KLPVM_CWD"
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# As systemd mounts it on every host: /sys/kernel/security/lockdown decides whether unsigned modules load.
mount -t securityfs securityfs $R/sys/kernel/security || fail "securityfs"
mkdir -p "$R/lib/modules/$KLPVM_RELEASE" "$R@GUEST_OUT@"
# Its own share, not a path under the root: a root made from another suite's packages has no VM cache in it.
mount -t 9p -o "$P9,ro,cache=loose" modules /kmods || fail "mount the modules share"
mount --bind /kmods "$R/lib/modules/$KLPVM_RELEASE" || fail "bind modules"
mount --bind /out "$R@GUEST_OUT@"
stty -F /dev/ttyS1 raw -echo
if [ "$KLPVM_INIT" = systemd ]; then
    mkdir -p $R/run/systemd/system
    cp /out/units/* $R/run/systemd/system/ || fail "copy units"
    # A boot of this root, not a container: the host's /.dockerenv would make systemd think it is in docker.
    rm -f $R/.dockerenv
    # systemd mounts proc, sys and dev itself, and the guest's cgroup2 along with them.
    umount $R/dev/pts $R/dev $R/sys/kernel/debug $R/sys/kernel/security $R/sys $R/proc 2>/dev/null
    echo klpvm-init: switching to systemd >&2
    exec switch_root $R /lib/systemd/systemd --unit=klpvm.target
fi
echo klpvm-init: running script >&2
chroot $R /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 KLPVM_OUT=@GUEST_OUT@ \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd "$1" && exec /bin/bash @GUEST_OUT@/script.sh' klpvm "$KLPVM_CWD" \
    </dev/null >/dev/ttyS1 2>/out/stderr
echo $? > /out/rc
dmesg > /out/dmesg
sync
poweroff -f
""".replace("@GUEST_OUT@", GUEST_OUT)


# The systemd host's units: the script as a service (as the chroot runs it), powering off when it ends.
SYSTEMD_UNITS = {
    "klpvm.target": """[Unit]
Description=klpvm test script on a systemd host
Requires=klpvm.service
Wants=systemd-journald.service systemd-udevd.service systemd-udev-trigger.service
After=klpvm.service
""",
    "klpvm.service": """[Unit]
Description=klpvm test script
Wants=systemd-journald.service systemd-udevd.service
After=systemd-journald.service systemd-udevd.service systemd-tmpfiles-setup.service
# Immediately: no unit stops, no unmounting the 9p/overlay root (the results are synced by then).
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate

[Service]
Type=oneshot
WorkingDirectory=@CWD@
Environment=HOME=/root TERM=dumb LANG=C.UTF-8
StandardInput=null
StandardOutput=file:/dev/ttyS1
StandardError=file:@GUEST_OUT@/stderr
ExecStart=/bin/bash @GUEST_OUT@/script.sh
ExecStopPost=/bin/sh -c 'echo $$EXIT_STATUS > @GUEST_OUT@/rc; dmesg > @GUEST_OUT@/dmesg; sync'
TimeoutStartSec=infinity
""",
}


def systemd_units(cwd: str) -> dict[str, str]:
    return {name: text.replace("@CWD@", cwd).replace("@GUEST_OUT@", GUEST_OUT) for name, text in SYSTEMD_UNITS.items()}


def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One entry of the "newc" cpio format the kernel unpacks (Documentation/driver-api/early-userspace)."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    pad = (-(len(header) + len(encoded))) % 4
    return header + encoded + b"\0" * pad + data + b"\0" * ((-len(data)) % 4)


def boot_modules(tree: Path, release: str) -> list[Path]:
    """The .ko files to insmod, dependencies first, as ``modprobe --show-depends`` orders them."""
    base = tree.parents[2]  # tree = base/lib/modules/<release>
    out = run(["modprobe", "-d", base, "-S", release, "--show-depends", "-a", *BOOT_MODULES])
    paths = [Path(p) for p in re.findall(r"^insmod (\S+)", out, re.MULTILINE)]
    return list(dict.fromkeys(paths))


def _uncompressed(ko: Path) -> bytes:
    """The module's ELF: busybox's insmod reads no zstd (6.12's and 7.x's modules are compressed)."""
    if ko.suffix == ".xz":
        return lzma.decompress(ko.read_bytes())
    if ko.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(ko)], capture_output=True, check=True).stdout
    return ko.read_bytes()


def build_initramfs(tree: Path, release: str, busybox: Path, dest: Path) -> Path:
    """Write the initramfs for ``release`` (modules taken from ``tree``) to ``dest``."""
    dirs = ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "out", "modules", "keep", "kmods")
    parts = [_newc_entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    parts.append(_newc_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    parts.append(_newc_entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    parts.append(_newc_entry("init", stat.S_IFREG | 0o755, INIT.encode()))
    order = []
    for ko in boot_modules(tree, release):
        name = ko.name.removesuffix(".xz").removesuffix(".zst")
        parts.append(_newc_entry(f"modules/{name}", stat.S_IFREG | 0o644, _uncompressed(ko)))
        order.append(name)
    parts.append(_newc_entry("modules/order", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in order).encode()))
    parts.append(_newc_entry("TRAILER!!!", 0))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.rename(dest)
    return dest
