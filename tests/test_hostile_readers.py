"""Hostile files under ``--root`` (issue 15): a FIFO or /dev/zero at a source path, decompression bombs of many
members, a newline-less kallsyms. Each must end, quickly, in a problem or an error naming the file; none may hang.

Every reading runs in a forked child with a generous timeout, so a regression fails here instead of hanging the
suite (a reader blocked in open() on a FIFO cannot be interrupted from inside the process).
"""

from __future__ import annotations

import gzip
import lzma
import multiprocessing
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from fixtures import RELEASE, FixtureRoot, LivepatchObject

from klpd.config import load_config
from klpd.decompress import MAX_MEMBERS, decompress, read_module_bytes
from klpd.errors import ConfigError, ElfFormatError, SourceError
from klpd.sources import prefetch
from klpd.sources.kallsyms import parse_kallsyms, read_kallsyms
from klpd.sources.kernel import read_kernel_info
from klpd.sources.livepatch_sysfs import read_livepatch
from klpd.sources.modules_dep import read_modules_dep
from klpd.sources.proc_modules import read_proc_modules
from klpd.sources.result import Read
from klpd.sources.sys_module import read_sys_module

TIMEOUT = 60.0  # far above the few milliseconds each reading takes; only a hang comes near it


def _outcome(call: Callable[[], object]) -> str:
    """What ``call`` ended in, as text: the exception, or the problems of the Read it returned."""
    try:
        value = call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    if isinstance(value, Read):
        return "problems: " + " | ".join(p.message for p in value.problems)
    return f"value: {value!r}"[:500]


def _child(call: Callable[[], object], conn) -> None:  # type: ignore[no-untyped-def]
    try:
        conn.send(_outcome(call))
    except BaseException:
        conn.send("crashed: " + traceback.format_exc())
    finally:
        conn.close()


def bounded(call: Callable[[], object]) -> str:
    """The outcome of ``call``, run in a forked child that is killed after TIMEOUT (the test then fails)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(call, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(TIMEOUT):
            pytest.fail(f"still reading after {TIMEOUT:g} s: a hang")
        return str(receive.recv())
    finally:
        child.kill()
        child.join()
        receive.close()


def full_root(tmp_path: Path) -> FixtureRoot:
    """A root in which every source exists and is well formed."""
    fx = FixtureRoot(tmp_path / "root")
    fx.kernel()
    fx.kallsyms([(0xFFFFFFFF81000000, "T", "_stext"), (0xFFFFFFFF81000100, "T", "cmdline_proc_show")])
    fx.proc_modules(["livepatch_x 16384 1 - Live 0xffffffffc0000000 (K)"])
    fx.livepatch(
        "livepatch_x", objects=[LivepatchObject("vmlinux", patched=True, functions=(("cmdline_proc_show", 0),))]
    )
    fx.sys_module("livepatch_x", srcversion="0123456789ABCDEF0123456")
    fx.modules_dep(entries={"kernel/fs/ext4/ext4.ko": []})
    return fx


PATCH = "/sys/kernel/livepatch/livepatch_x"
# (host path, the reading, whether it must be an error rather than a problem next to a value)
SOURCES: dict[str, tuple[Callable[[FixtureRoot], object], type[Exception] | None]] = {
    "/proc/kallsyms": (lambda fx: read_kallsyms(fx.root), SourceError),
    "/proc/sys/kernel/osrelease": (lambda fx: read_kernel_info(fx.root), SourceError),
    "/proc/sys/kernel/tainted": (lambda fx: read_kernel_info(fx.root), None),
    "/proc/modules": (lambda fx: read_proc_modules(fx.root), SourceError),
    f"{PATCH}/enabled": (lambda fx: read_livepatch(fx.root), None),
    f"{PATCH}/transition": (lambda fx: read_livepatch(fx.root), None),
    f"{PATCH}/vmlinux/patched": (lambda fx: read_livepatch(fx.root), None),
    "/sys/module/livepatch_x/srcversion": (lambda fx: read_sys_module(fx.root, "livepatch_x"), None),
    f"/lib/modules/{RELEASE}/modules.dep": (lambda fx: read_modules_dep(fx.root, RELEASE), None),
}


def plant(fx: FixtureRoot, host_path: str, kind: str) -> None:
    target = fx.root.path(host_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
@pytest.mark.parametrize("host_path", list(SOURCES))
def test_a_special_file_at_a_source_path_is_reported_not_waited_for(tmp_path, host_path, kind) -> None:
    fx = full_root(tmp_path)
    assert _outcome(lambda: SOURCES[host_path][0](fx)).startswith(("problems: ", "value: "))  # well formed first
    plant(fx, host_path, kind)
    read, error = SOURCES[host_path]
    outcome = bounded(lambda: read(fx))
    if error is not None:
        assert outcome.startswith(f"{error.__name__}: {host_path}: "), outcome
    else:
        assert outcome.startswith("problems: ") and host_path in outcome, outcome
    assert "not a regular file" in outcome, outcome


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_kallsyms_rereads_and_one_shot_reads_refuse_a_special_file(tmp_path, kind) -> None:
    fx = full_root(tmp_path)
    previous = read_kallsyms(fx.root).value
    plant(fx, "/proc/kallsyms", kind)
    for outcome in (
        bounded(lambda: read_kallsyms(fx.root, previous)),
        bounded(lambda: read_kallsyms(fx.root, one_shot=True)),
    ):
        assert outcome.startswith("SourceError: /proc/kallsyms: not a regular file"), outcome
    assert bounded(lambda: prefetch.start(fx.root.kallsyms)) == "value: None"  # no cat spawned on it


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_special_file_as_the_config_is_a_config_error(tmp_path, kind) -> None:
    config = tmp_path / "klpd.toml"
    if kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to("/dev/zero")
    outcome = bounded(lambda: load_config(config))
    assert outcome.startswith(f"{ConfigError.__name__}: {config}") and "not a regular file" in outcome, outcome


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_special_file_as_a_module_is_a_source_error(tmp_path, kind) -> None:
    fx = full_root(tmp_path)
    host = f"/var/lib/kpatch/{RELEASE}/livepatch_x.ko.xz"
    plant(fx, host, kind)
    outcome = bounded(lambda: read_module_bytes(fx.root.file(host)))
    assert outcome.startswith(f"SourceError: {host}: not a regular file"), outcome


def test_a_stalled_cat_is_killed_and_reaped(tmp_path, monkeypatch) -> None:
    from klpd.sources.kallsyms import pipe

    fx = full_root(tmp_path)
    script = tmp_path / "cat"
    pid_file = tmp_path / "pid"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    script.chmod(0o755)
    monkeypatch.setattr(prefetch, "_CATS", (str(script),))
    monkeypatch.setattr(pipe, "CAT_DEADLINE", 0.5)
    with pytest.raises(SourceError, match=r"within 0\.5 s"):
        read_kallsyms(fx.root)
    pid = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already: no zombie, no survivor
    monkeypatch.setattr(prefetch, "DEADLINE", 0.5)
    early = prefetch.start(fx.root.kallsyms)
    assert early is not None and early.take() is None  # the caller then reads the file itself
    with pytest.raises(ChildProcessError):
        os.waitpid(int(pid_file.read_text()), os.WNOHANG)


EMPTY_MEMBER = {
    "gzip": gzip.compress(b""),
    "xz": lzma.compress(b""),
    "zstd": zstandard.ZstdCompressor().compress(b""),
}


@pytest.mark.parametrize("kind", list(EMPTY_MEMBER))
def test_many_empty_members_are_refused_and_decompressed_in_linear_time(kind) -> None:
    member = EMPTY_MEMBER[kind]
    bomb = member * ((4 << 20) // len(member))  # 4 MB: 19-20 s when each member copied the rest
    outcome = bounded(lambda: decompress(bomb, "/lib/modules/x.ko"))
    assert (
        outcome
        == f"ElfFormatError: /lib/modules/x.ko: more than {MAX_MEMBERS} concatenated {kind} members; refusing it"
    )
    # Without the cap, all of them are decompressed (to nothing), within the timeout.
    assert bounded(lambda: decompress(bomb, "x", max_members=len(bomb))) == "value: b''"
    # Up to the cap, concatenation is still honoured as kmod honours it.
    assert decompress(member * (MAX_MEMBERS - 1) + _compress(kind, b"\x7fELF"), "x") == b"\x7fELF"
    with pytest.raises(ElfFormatError, match="truncated"):
        decompress(_compress(kind, b"\x7fELF" * 1000)[:-8], "x")


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    return zstandard.ZstdCompressor().compress(data)


def test_a_newline_less_kallsyms_parses(tmp_path) -> None:
    # 200 MB took 42 s through cat: the pending line was copied once per pipe chunk. One valid line, no newline.
    data = b"ffffffff81000000 T " + b"a" * (10 << 20)
    outcome = bounded(lambda: parse_kallsyms(data, "/proc/kallsyms").value.vmlinux_symbols)
    assert outcome == "value: 1", outcome
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(raw=data)
    outcome = bounded(lambda: read_kallsyms(fx.root).value.vmlinux_symbols)  # through cat, chunk by chunk
    assert outcome == "value: 1", outcome
    fx.kallsyms(raw=b"x" * (10 << 20))
    outcome = bounded(lambda: read_kallsyms(fx.root))
    assert outcome.startswith("problems: /proc/kallsyms: skipped 1 malformed line"), outcome
