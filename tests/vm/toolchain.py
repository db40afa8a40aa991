"""A private build root for a kernel of another suite: its headers, kbuild and the compiler it was built with.

``linux-headers-<release>`` depends on its ``-common`` headers, ``linux-kbuild-*`` and ``linux-compiler-gcc-N-x86``
(the gcc the kernel was built with: gcc-10 for bullseye's 5.10, gcc-14 for trixie's 6.12, gcc-16 for sid's 7.2).
Installing that closure on the host would upgrade libc6 and dozens of host packages, so it is downloaded against an
empty dpkg status and unpacked into ``<kernel cache>/sysroot`` instead. Two things then make it work from there:

- Debian's headers Makefile includes ``/usr/src/linux-headers-<common>/Makefile`` by absolute path: rewritten to
  the sysroot's.
- The suite's binaries (cc1, as, ld, modpost, sign-file) may need a newer glibc than the host's: every dynamically
  linked executable gets the sysroot's own ld.so as its interpreter and the sysroot's library directories as its
  RPATH (patchelf), so the compiler runs on the libc it was built for, children included.

No pahole: modules are built without BTF (kbuild skips it without a vmlinux anyway).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .apt import PrivateApt
from .errors import HarnessError, run

LIBDIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
_ELF_DIRS = ("usr/bin", "usr/libexec", "usr/lib/gcc", "usr/lib/linux-kbuild-*", "usr/src")


def make_sysroot(apt: PrivateApt, release: str, tmp: Path, final: Path, debs: Path) -> None:
    """Unpack release's headers and build tools into ``tmp``, made to run once renamed to ``final``."""
    tmp.mkdir(parents=True)
    for deb in apt.download_closure([f"linux-headers-{release}"], debs):
        # The headers depend on their image, extracted on its own (kernel.py): 100 MB of modules unneeded here.
        if not deb.name.startswith("linux-image-"):
            run(["dpkg-deb", "-x", deb, tmp])
        deb.unlink()
    _relocate_makefiles(tmp, final)
    _plain_names(tmp)
    _relink(tmp, final)


def _plain_names(tmp: Path) -> None:
    """``gcc-16``, ``ld`` and friends for the triplet-named tools: the closure may carry only
    gcc-16-x86-64-linux-gnu (sid's 7.x), while the headers' Makefile calls ``gcc-16`` and kbuild ``ld``."""
    bindir = tmp / "usr" / "bin"
    for tool in bindir.glob("x86_64-linux-gnu-*"):
        plain = bindir / tool.name.removeprefix("x86_64-linux-gnu-")
        if not plain.exists() and not plain.is_symlink():
            plain.symlink_to(tool.name)


def _relocate_makefiles(tmp: Path, final: Path) -> None:
    for makefile in (tmp / "usr" / "src").glob("linux-headers-*/Makefile"):
        text = makefile.read_text()
        makefile.write_text(re.sub(r"(?<![\w/])/usr/src/", f"{final}/usr/src/", text))


def _interpreter(tmp: Path, final: Path) -> Path:
    for libdir in LIBDIRS:
        if (tmp / libdir / "ld-linux-x86-64.so.2").exists():
            return final / libdir / "ld-linux-x86-64.so.2"
    raise HarnessError(f"the build root {tmp} has no ld-linux-x86-64.so.2 (libc6 not in the closure?)")


def _executables(tmp: Path) -> list[Path]:
    found = []
    for pattern in _ELF_DIRS:
        for top in tmp.glob(pattern):
            for dirpath, _, names in os.walk(top):
                for name in names:
                    path = Path(dirpath, name)
                    if path.is_symlink() or not os.access(path, os.X_OK):
                        continue
                    with open(path, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            found.append(path)
    return found


def _relink(tmp: Path, final: Path) -> None:
    interpreter = _interpreter(tmp, final)
    rpath = ":".join(str(final / d) for d in LIBDIRS)
    for path in _executables(tmp):
        # shared libraries (no PT_INTERP) are found through the executables' RPATH, which applies to them too
        if subprocess_ok(["patchelf", "--print-interpreter", path]):
            run(["patchelf", "--set-interpreter", interpreter, "--force-rpath", "--set-rpath", rpath, path])


def subprocess_ok(cmd: list[str | Path]) -> bool:
    try:
        run(cmd)
    except HarnessError:
        return False
    return True


def tool_path(sysroot: Path) -> str:
    """PATH for a build with the sysroot's compiler and binutils ahead of the host's."""
    return f"{sysroot / 'usr' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
