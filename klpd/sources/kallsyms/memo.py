"""What one read of /proc/kallsyms hands to the next: the vmlinux part's findings, recognised by size and checksum.

The vmlinux part never changes while the kernel runs, so a re-read whose part is identical to the previous one
takes over what that read found and the answers it gave, and parses only the module part. A daemon keeps only a
:class:`KallsymsMemo` between reads, not the file or an index of it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from klpd.sources.kallsyms.indexes import Index
from klpd.sources.kallsyms.vmlinux import Vmlinux, parse_vmlinux


def checksum(part: memoryview) -> int:
    """A checksum that tells a re-read's vmlinux part from the previous one's.

    Only the running kernel writes the vmlinux part (module, bpf and ftrace lines come after it), so nobody can
    craft a collision; what does change it while the kernel runs, addresses turning visible or hidden
    (kptr_restrict, capabilities), rewrites whole fields, which CRC-32 never misses in practice. It costs a
    millisecond for a 5 MB part, where blake2b costs 6: the daemon pays it on every module event.
    """
    return zlib.crc32(part)


class VmlinuxText:
    """One read's vmlinux part, its digest and index, each made when first needed."""

    __slots__ = ("_digest", "data", "end", "index_")

    def __init__(self, data: bytes, end: int, index: Index | None = None, digest: int | None = None) -> None:
        self.data = data
        self.end = end
        self.index_ = index
        self._digest = digest

    def index(self) -> Index:
        if self.index_ is None:
            self.index_ = parse_vmlinux(self.data, self.end)[1]
        return self.index_

    def digest(self) -> int:
        if self._digest is None:
            self._digest = checksum(memoryview(self.data)[: self.end])
        return self._digest


@dataclass(frozen=True, eq=False)
class KallsymsMemo:
    """What a later read of the same kernel needs from a :class:`~klpd.sources.kallsyms.Kallsyms`: the vmlinux
    part's size and digest, what its parse found and the answers already given. A few hundred kilobytes at most,
    where the Kallsyms it comes from holds the whole file and an index of it: a daemon keeps this between reads.
    """

    vmlinux: Vmlinux  # its length and what its parse found
    digest: int

    def take_over(self, data: bytes, end: int, index: Index | None = None) -> VmlinuxText | None:
        """The vmlinux part ``data[:end]`` with this memo's index (``index``, when the caller still has one), if
        it is exactly the part this memo was made from."""
        if self.vmlinux.length != end or self.digest != checksum(memoryview(data)[:end]):
            return None
        return VmlinuxText(data, end, index, self.digest)
