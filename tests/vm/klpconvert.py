"""Turn an ordinary kbuild module into a livepatch module with ``.klp.rela``/``.klp.sym``, as kpatch-build does.

A test tool, not part of klpd. The module's C code names each non-exported symbol it needs through an asm label
already spelled the livepatch way, ``.klp.sym.<object>.<symbol>,<sympos>``; kbuild leaves those undefined
(``KBUILD_MODPOST_WARN=1``). This tool then, following Documentation/livepatch/module-elf-format.rst:

- sets ``st_shndx = SHN_LIVEPATCH`` on every symbol whose name starts with ``.klp.sym.``;
- moves every relocation that uses one of them out of its ``.rela<section>`` into a new SHT_RELA section
  ``.klp.rela.<object>.<section>``, flagged ``SHF_ALLOC | SHF_RELA_LIVEPATCH``, ``sh_info`` = the same target.

Options make the broken variants the VM cases need: ``--move SYM`` also moves the relocations of an ordinary symbol
(→ "symbol SYM is not marked as a livepatch symbol"), ``--object OBJ`` names every new section after OBJ whatever
the symbols say (a module-specific section that uses a vmlinux symbol), ``--keep-rela`` marks the symbols but leaves
their relocations in the ordinary sections (the loader then silently writes address 0).

Only ELF64 little-endian relocatable files (x86_64 modules) are handled. Usage:
    python tests/vm/klpconvert.py IN.ko OUT.ko [--move SYM]... [--object OBJ] [--keep-rela]
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHT_SYMTAB = 2
SHT_RELA = 4
SHF_ALLOC = 0x2
SHF_INFO_LINK = 0x40
SHF_RELA_LIVEPATCH = 0x00100000
SHN_LIVEPATCH = 0xFF20
KLP_SYM_PREFIX = ".klp.sym."
# How the C sources spell a label's ',' (klpvm_patch.h): a symbol character to every assembler, unlike a comma.
ASM_COMMA = "$"

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


class ConvertError(Exception):
    pass


@dataclass
class _Section:
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    def pack(self) -> bytes:
        return _SHDR.pack(
            self.name, self.type, self.flags, self.addr, self.offset, self.size,
            self.link, self.info, self.addralign, self.entsize,
        )  # fmt: skip


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode(errors="replace")


def _object_of(symbol_name: str) -> str:
    """The object field the kernel's sscanf(".klp.sym.%55[^.]") reads; "vmlinux" for an ordinary symbol."""
    if symbol_name.startswith(KLP_SYM_PREFIX):
        return symbol_name[len(KLP_SYM_PREFIX) :].split(".", 1)[0]
    return "vmlinux"


def convert(data: bytes, *, move: Iterable[str] = (), object_name: str | None = None, keep_rela: bool = False) -> bytes:
    """Return the livepatch-converted image of the relocatable ELF ``data``."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ConvertError("not an ELF64 little-endian file")
    ehdr = list(_EHDR.unpack_from(data))
    shoff, shentsize, shnum, shstrndx = ehdr[6], ehdr[11], ehdr[12], ehdr[13]
    if shentsize != _SHDR.size or shoff + shnum * shentsize > len(data):
        raise ConvertError("bad section header table")
    secs = [_Section(*_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    shstr = data[secs[shstrndx].offset : secs[shstrndx].offset + secs[shstrndx].size]
    symtabs = [i for i, s in enumerate(secs) if s.type == SHT_SYMTAB]
    if len(symtabs) != 1:
        raise ConvertError(f"expected one .symtab, found {len(symtabs)}")
    symndx = symtabs[0]
    symtab = secs[symndx]
    strtab_offset = secs[symtab.link].offset
    strtab = data[strtab_offset : strtab_offset + secs[symtab.link].size]
    out = bytearray(data)

    # Mark the livepatch symbols; note which symbols' relocations move and to which object's section.
    wanted = set(move)
    moved: dict[int, str] = {}
    for i in range(symtab.size // _SYM.size):
        pos = symtab.offset + i * _SYM.size
        st_name, info, other, _shndx, value, size = _SYM.unpack_from(data, pos)
        name = _cstr(strtab, st_name)
        if name.startswith(KLP_SYM_PREFIX):
            _SYM.pack_into(out, pos, st_name, info, other, SHN_LIVEPATCH, value, size)
            comma = name.rfind(ASM_COMMA)
            if comma >= 0:  # same length: the string table is patched in place
                out[strtab_offset + st_name + comma] = ord(",")
                name = name[:comma] + "," + name[comma + 1 :]
            moved[i] = object_name or _object_of(name)
        elif name in wanted:
            moved[i] = object_name or "vmlinux"
            wanted.discard(name)
    if wanted:
        raise ConvertError(f"no such symbol: {', '.join(sorted(wanted))}")
    if not moved:
        raise ConvertError("no .klp.sym.* symbol and nothing to move")

    new_names = bytearray(shstr)
    new_secs: list[_Section] = []
    appended = bytearray()
    tail = (len(out) + 7) & ~7
    for sec in secs if not keep_rela else ():
        # Relocations of non-allocated sections (debug info) are never applied by the loader: leave them.
        if sec.type != SHT_RELA or sec.link != symndx or sec.flags & SHF_RELA_LIVEPATCH:
            continue
        if sec.info >= len(secs) or not secs[sec.info].flags & SHF_ALLOC:
            continue
        keep = bytearray()
        groups: dict[str, bytearray] = {}
        for off in range(sec.offset, sec.offset + sec.size, _RELA.size):
            entry = data[off : off + _RELA.size]
            obj = moved.get(_RELA.unpack(entry)[1] >> 32)
            if obj is None:
                keep += entry
            else:
                groups.setdefault(obj, bytearray()).extend(entry)
        if not groups:
            continue
        out[sec.offset : sec.offset + len(keep)] = keep
        sec.size = len(keep)
        target = _cstr(shstr, secs[sec.info].name)
        for obj, relas in groups.items():
            name_off = len(new_names)
            new_names += f".klp.rela.{obj}.{target}".encode() + b"\0"
            new_secs.append(
                _Section(
                    name_off,
                    SHT_RELA,
                    SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH,
                    0,
                    tail + len(appended),
                    len(relas),
                    symndx,
                    sec.info,
                    8,
                    _RELA.size,
                )
            )
            appended += relas
    out += b"\0" * (tail - len(out)) + appended

    # A grown section-name table and a longer header table go at the end; existing sections keep their offsets.
    secs[shstrndx].offset, secs[shstrndx].size = len(out), len(new_names)
    out += new_names
    out += b"\0" * ((-len(out)) % 8)
    ehdr[6], ehdr[12] = len(out), len(secs) + len(new_secs)
    out += b"".join(s.pack() for s in secs + new_secs)
    _EHDR.pack_into(out, 0, *ehdr)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--move", action="append", default=[], metavar="SYM")
    parser.add_argument("--object", dest="object_name", metavar="OBJ")
    parser.add_argument("--keep-rela", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = convert(
            args.input.read_bytes(), move=args.move, object_name=args.object_name, keep_rela=args.keep_rela
        )
    except (OSError, ConvertError) as e:
        print(f"klpconvert: {args.input}: {e}", file=sys.stderr)
        return 1
    args.output.write_bytes(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
