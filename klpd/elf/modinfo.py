"""``.modinfo``: the ``key=value`` strings the module loader and ``modinfo(8)`` read (``livepatch=Y`` since 4.5,
``name=``, ``vermagic=``, ``srcversion=``, ``depends=``)."""

from __future__ import annotations

from klpd.decompress import read_module_bytes
from klpd.elf._raw import ElfFile, parse_guarded
from klpd.model import Modinfo
from klpd.root import HostPath


def modinfo_from(elf: ElfFile) -> Modinfo:
    # The loader reads the first section called .modinfo (find_sec()); its strings are NUL-separated, with NUL
    # padding between them, and get_next_modinfo() matches "<key>=" prefixes.
    sec = elf.section_by_name(".modinfo")
    if sec is None:
        return Modinfo()
    entries = []
    for raw in bytes(elf.section_data(sec)).split(b"\0"):
        key, sep, value = raw.partition(b"=")
        if sep:
            entries.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return Modinfo(tuple(entries))


def parse_modinfo(data: bytes, path: str) -> Modinfo:
    """The ``.modinfo`` strings of a module file's ELF bytes (cheap: reads only the section headers and .modinfo)."""
    return parse_guarded(lambda d, p: modinfo_from(ElfFile(d, p)), data, path)


def read_modinfo(where: HostPath) -> Modinfo:
    """:func:`parse_modinfo` of a (possibly compressed) module file."""
    return parse_modinfo(read_module_bytes(where), where.host)
