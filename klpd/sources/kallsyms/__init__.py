"""/proc/kallsyms: every symbol the running kernel knows, in the order klp_find_object_symbol() counts them.

kernel/kallsyms.c s_show() prints one line per symbol (``%pK`` before 4.15, same layout)::

    kallsyms     := vmlinux-line* module-line*
    vmlinux-line := ADDRESS " " TYPE " " NAME "\\n"                    "%px %c %s\\n"
    module-line  := ADDRESS " " TYPE " " NAME "\\t[" MODULE "]\\n"      "%px %c %s\\t[%s]\\n"

- ADDRESS: hex digits of one fixed width (16 on 64-bit kernels, 8 on 32-bit). Readers the kernel does not trust
  with addresses (kallsyms_show_value(): no CAP_SYSLOG, or kptr_restrict) see every address as 0, names and order
  unchanged — and names and order are all that sympos needs.
- TYPE: one letter, nm(1)'s (``?`` for a loaded patch's ``.klp.sym.*`` symbols: SHN_LIVEPATCH).
- NAME, MODULE: no whitespace.

vmlinux lines come first, in kallsyms index order (ascending address); then the module lines: each loaded module
with its core symbol table in ELF order, then pseudo-objects — freed module init functions kept for ftrace (under
their module's name, since 4.15), ``[bpf]`` programs (since 4.11), ``[__builtin__ftrace]`` and
``[__builtin__kprobes]`` trampolines (since 5.9).

The parse follows the grammar: the file splits at its first module line (:mod:`.layout`); the vmlinux part is
proven against its line layout a block at a time and counted (:mod:`.vmlinux`, :mod:`.indexes`); the module part
is kept as columns and indexed per module on demand (:mod:`.modules`). The file is large (100k+ lines) and the
daemon re-reads it on every module event, so a re-read whose vmlinux part is unchanged takes the previous read's
findings over (:mod:`.memo`), and a cold read lets a ``cat`` child format the file while this process parses it
(:mod:`.pipe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from klpd.errors import SourceError
from klpd.model import VMLINUX, Occurrences, Problem
from klpd.names import KLP_SYM_PREFIX
from klpd.regular_file import read_regular
from klpd.root import HostPath, SystemRoot
from klpd.sources.kallsyms.layout import KALLSYMS_LIMIT, decode, encode, module_part_start
from klpd.sources.kallsyms.memo import KallsymsMemo, VmlinuxText
from klpd.sources.kallsyms.modules import ObjectRuns, parse_module_part
from klpd.sources.kallsyms.scan import ScanIndex, scan_vmlinux
from klpd.sources.kallsyms.vmlinux import Vmlinux, parse_vmlinux
from klpd.sources.result import Read, malformed_lines, os_reason

__all__ = ["Kallsyms", "KallsymsMemo", "parse_kallsyms", "read_kallsyms"]

_KLP_SYM_PREFIX = KLP_SYM_PREFIX.encode()
_ANSWERS_MAX = 1 << 16


def read_kallsyms(
    root: SystemRoot,
    previous: Kallsyms | KallsymsMemo | None = None,
    *,
    prefetched: bytes | None = None,
    one_shot: bool = False,
) -> Read[Kallsyms]:
    """Read and parse /proc/kallsyms under ``root``; SourceError when it cannot be read.

    ``prefetched`` is the file as read already (:mod:`klpd.sources.prefetch`). Else, without ``previous``, the
    file is read through ``cat`` so that its formatting by the kernel and the parse overlap (:mod:`.pipe`); with
    it, most of the parse is skipped and a direct read is quicker. ``one_shot``: the caller asks about a few
    names once (``klpctl check``), so the vmlinux part is searched rather than parsed whole (:mod:`.scan`).
    """
    path = root.kallsyms
    if prefetched is not None:
        return parse_kallsyms(prefetched, path.host, previous, one_shot=one_shot)
    if previous is None and not one_shot:
        kallsyms = _read_through_cat(path)
        if kallsyms is not None:
            return kallsyms
    try:
        # Regular files only (a FIFO or /dev/zero planted under --root: an error, not a hang), and bounded.
        data = read_regular(path, KALLSYMS_LIMIT)
    except OSError as error:
        raise SourceError(path.host, os_reason(error)) from error
    return parse_kallsyms(data, path.host, previous, one_shot=one_shot)


def _read_through_cat(path: HostPath) -> Read[Kallsyms] | None:
    """A cold read through :func:`.pipe.read_through_cat`; None when ``cat`` could not be used."""
    from klpd.sources.kallsyms.pipe import read_through_cat  # noqa: PLC0415  (subprocess: only cold reads need it)

    piped = read_through_cat(path)
    if piped is None:
        return None
    if piped.vmlinux is None:
        return parse_kallsyms(piped.data, path.host)
    vmlinux, index = piped.vmlinux
    text = VmlinuxText(piped.data, vmlinux.length, index)
    return _assemble(piped.data, path.host, vmlinux, text, reused=False)


def parse_kallsyms(
    data: bytes, path: str, previous: Kallsyms | KallsymsMemo | None = None, *, one_shot: bool = False
) -> Read[Kallsyms]:
    """Parse the bytes of /proc/kallsyms (``path`` names it in problems). Never raises on odd content: odd lines
    are skipped, counted and reported in one Problem.

    With ``previous`` (an earlier read of the same kernel, or its memo()), an unchanged vmlinux part is taken over
    and only the module part is parsed; the vmlinux part is indexed again only if a name the earlier reads were
    not asked about is asked. ``one_shot``: few names will be asked, so a well-spaced vmlinux part is searched for
    them instead of parsed whole (:mod:`.scan`; the same answers).
    """
    if data and not data.endswith(b"\n"):
        data += b"\n"  # only hand-made files lack it; the layout proof relies on it
    end = module_part_start(data)
    if previous is not None:
        memo = previous.memo() if isinstance(previous, Kallsyms) else previous
        # A previous Kallsyms's index describes the same bytes: take it too.
        text = memo.take_over(data, end, previous._text.index_ if isinstance(previous, Kallsyms) else None)
        if text is not None:
            return _assemble(data, path, memo.vmlinux, text, reused=True)
    scanned = scan_vmlinux(data, end, lambda: parse_vmlinux(data, end)[1]) if one_shot else None
    vmlinux, index = scanned or parse_vmlinux(data, end)
    return _assemble(data, path, vmlinux, VmlinuxText(data, end, index), reused=False)


def _assemble(data: bytes, path: str, vmlinux: Vmlinux, text: VmlinuxText, *, reused: bool) -> Read[Kallsyms]:
    """The Kallsyms of ``data``, whose vmlinux part (``vmlinux.length`` bytes) has been parsed: parse the rest."""
    end = vmlinux.length
    modules = parse_module_part(data[end:])
    malformed = vmlinux.malformed + modules.malformed
    problems: tuple[Problem, ...] = ()
    if vmlinux.first_malformed is not None:
        problems = (malformed_lines(path, malformed, *vmlinux.first_malformed),)
    elif modules.first_malformed is not None:
        number, line = modules.first_malformed
        problems = (malformed_lines(path, malformed, number + data.count(b"\n", 0, end), line),)
    kallsyms = Kallsyms(
        path=path,
        addresses_visible=vmlinux.addresses_visible or modules.addresses_visible,
        malformed_lines=malformed,
        vmlinux_reused=reused,
        _vmlinux=vmlinux,
        _text=text,
        _runs=ObjectRuns(modules),
    )
    return Read(kallsyms, problems)


@dataclass(frozen=True, eq=False)
class Kallsyms:
    """/proc/kallsyms, parsed. Compare answers, not objects: instances compare by identity.

    ``addresses_visible`` is False when every address reads 0 (the reader lacks CAP_SYSLOG); the addresses this
    object returns are then all 0 and mean nothing, while names and order stay exact.
    """

    path: str
    addresses_visible: bool
    malformed_lines: int
    vmlinux_reused: bool  # the vmlinux part was identical to ``previous``'s and was taken over from it
    _vmlinux: Vmlinux = field(repr=False)
    _text: VmlinuxText = field(repr=False)
    _runs: ObjectRuns = field(repr=False)

    @property
    def kallsyms_all(self) -> bool:
        """vmlinux lists data symbols: CONFIG_KALLSYMS_ALL=y (what decides which module symbols stay in kallsyms)."""
        index = self._text.index_
        return index.kallsyms_all() if isinstance(index, ScanIndex) else self._vmlinux.kallsyms_all

    @property
    def vmlinux_symbols(self) -> int:
        return self._vmlinux.count

    @property
    def module_symbols(self) -> int:
        return len(self._runs.part.names)

    def find(self, obj: str, name: str) -> Occurrences:
        """How often ``name`` occurs in object ``obj`` ("vmlinux" or a bracketed name), and where at address 0:
        what klp_find_object_symbol() learns (klpd.predict.lookup.lookup_occurrences() decides from it)."""
        if obj == VMLINUX:
            # The hot path of every evaluation (thousands of calls): kept to a few dict look-ups.
            answers = self._vmlinux.answers
            known = answers.get(name)
            if known is None:
                known = (self._text.index_ or self._text.index()).find(name.encode("utf-8", "surrogateescape"))
                if len(answers) >= _ANSWERS_MAX:  # names come from installed patches; bound them anyway
                    answers.clear()
                answers[name] = known
            return known
        return Occurrences.of(self.occurrences(obj, name))

    def occurrences(self, obj: str, name: str) -> tuple[int, ...]:
        """Addresses of every ``name`` in object ``obj`` ("vmlinux" or a bracketed name), in /proc/kallsyms order."""
        if obj == VMLINUX:
            return self._text.index().addresses(encode(name))
        found = self._runs.index(encode(obj))
        return () if found is None else self._runs.part.addresses.get(found.get(encode(name)))

    def memo(self) -> KallsymsMemo:
        """What a later read needs from this one (pass it as ``previous``); keep it rather than this object."""
        vmlinux = self._vmlinux
        if isinstance(self._text.index_, ScanIndex):  # found lazily: settle it for the reads the memo serves
            vmlinux = replace(vmlinux, kallsyms_all=self.kallsyms_all)
        return KallsymsMemo(vmlinux, self._text.digest())

    def modules(self) -> frozenset[str]:
        """Every bracketed object: loaded modules and pseudo-objects such as bpf or __builtin__ftrace.

        /proc/modules, not this, says which modules are loaded.
        """
        return frozenset(decode(obj) for obj in self._runs.ranges)

    def klp_symbols(self, module: str) -> tuple[tuple[str, int], ...]:
        """The ``.klp.sym.*`` symbols of a loaded patch module with the addresses the kernel resolved them to.

        The kernel lists them with type ``?`` (SHN_LIVEPATCH is above SHN_LORESERVE); address 0 means it never
        resolved the symbol — meaningful only when ``addresses_visible``.
        """
        span = self._runs.ranges.get(encode(module))
        if span is None:
            return ()
        part = self._runs.part
        return tuple(
            (decode(part.names[p]), part.addresses[p])
            for p in range(*span)
            if part.names[p].startswith(_KLP_SYM_PREFIX)
        )
