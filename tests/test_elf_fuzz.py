"""Fuzz the module parsers with mutated and truncated modules: the only acceptable failure is ElfFormatError.

Seeded and reproducible: the seed is printed (run with ``-s`` to see it, and it is in every failure message);
``KLPD_FUZZ_SEED=<seed>`` replays a run, ``KLPD_FUZZ_CASES=<n>`` changes the number of cases (default 10,000).
"""

from __future__ import annotations

import gzip
import lzma
import os
import random
import struct
import time
from pathlib import Path

import zstandard
from descriptions import ARCHES, PPC32, Obj, build, klp_build_patch, kpatch_patch, static_patch
from elfwriter import (
    EM_PPC,
    EM_S390,
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    STB_LOCAL,
    STT_FUNC,
    KlpModule,
    Section,
    Symbol,
    create_elf_file,
)

from klpd.elf import decompress, parse_modinfo, parse_module_symtab, parse_patch_module
from klpd.elf._raw import ElfFile
from klpd.elf.signature import MAGIC, parse_module_signature
from klpd.errors import ElfFormatError

CASES = int(os.environ.get("KLPD_FUZZ_CASES", "10000"))
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFF20, 0xFFF1, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]  # fmt: skip


DATA = Path(__file__).parent / "data"


def signed(module: bytes, pkcs7_file: str) -> bytes:
    """``module`` with a real PKCS#7 from tests/data appended as sign-file appends it."""
    pkcs7 = (DATA / pkcs7_file).read_bytes()
    return module + pkcs7 + struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, bytes(3), len(pkcs7)) + MAGIC


def loader_sections(m: KlpModule, elf_class: int, endian: str) -> None:
    """What load_module() reads besides the livepatch parts: __versions (and the 6.14+ extended tables),
    .gnu.linkonce.this_module, undefined symbols (strong, weak, repeated)."""
    names = ["module_layout", "_printk", "x" * 60]
    fmt = endian + ("Q56s" if elf_class == 64 else "I60s")
    entries = b"".join(struct.pack(fmt, i, n.encode()) for i, n in enumerate(names))  # the last one unterminated
    m.section("__versions", flags=SHF_ALLOC, data=entries)
    m.section("__version_ext_crcs", flags=SHF_ALLOC, data=struct.pack(f"{endian}3I", 1, 2, 3))
    m.section("__version_ext_names", flags=SHF_ALLOC, data="\0".join(names).encode() + b"\0")
    m.section(".gnu.linkonce.this_module", flags=SHF_ALLOC | SHF_WRITE, data=bytes(64))
    for name, bind in (("_printk", 1), ("maybe", 2), ("_printk", 1)):
        m.symbol(name, bind=bind)


def base_modules() -> list[bytes]:
    m = KlpModule("livepatch_fuzz")
    for i in range(3):
        text = m.function(f"f{i}")
        m.klp_rela(
            "vmlinux", text, [(8 * j, m.klp_sym("vmlinux", f"s{j}", j % 2), R_X86_64_PC32, -4) for j in range(4)]
        )
        m.klp_rela("ext4", text, [(0x40, m.klp_sym("ext4", f"e{i}.isra.0", 1), 4, -4)])
    m.rela(".text.f0", [(0x50, "f1", 4, -4), (0x58, ".klp.sym.vmlinux.s0,0", 2, 0)])
    m.klp_rela("nfsd", ".text.f1", [(0, "f2", 2, 0)], flags=SHF_ALLOC)
    bases = [
        m.build(versions=True),
        m.build(elf_class=32, little_endian=False, machine=EM_PPC),
        m.build(elf_class=64, little_endian=False, machine=EM_S390, extended_numbering=True),
    ]
    loader_sections(m, 64, "<")
    bases.append(signed(m.build(), "pkcs7-sha512-issuer-serial.der"))
    m.sections = [s for s in m.sections if not s.name.startswith(("__version", ".gnu.linkonce"))]
    loader_sections(m, 32, ">")
    bases.append(signed(m.build(elf_class=32, little_endian=False, machine=EM_PPC), "pkcs7-sha256-keyid.der"))
    target = create_elf_file(
        [
            Section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\x90" * 64),
            Section(".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\x90" * 16),
            Section(".data..percpu", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, b"\0" * 16),
            Section(".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, size=128),
            Section(".rel.text", SHT_REL, 0, info=".text", relocs=[(0, "g", 2), (4, "h", 2)]),
            Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, b"name=target\0vermagic=6.1.0 SMP\0"),
        ],
        [Symbol("a.c", bind=STB_LOCAL, shndx=SHN_ABS), Symbol("g", type=STT_FUNC, shndx=".text"),
         Symbol("h", type=STT_FUNC, shndx=".init.text"), Symbol("p", shndx=".data..percpu"), Symbol("u")],
        elf_class=32,
    )  # fmt: skip
    return [*bases, target]


class Mutator:
    """Structure-aware mutations: header fields, section headers, symbols, relocations, plus blind byte edits."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data = data
        self.rng = rng
        elf = ElfFile(data, "base")
        self.is64 = elf.elf_class == 64
        self.endian = elf.endian
        self.shdrs = [elf.shoff + i * elf.shentsize for i in range(elf.shnum)]
        self.regions = [(s.offset, s.size) for s in elf.sections if s.type != SHT_NOBITS and s.size]
        elf_len = parse_module_signature(data)[1]
        # The appended signature: the PKCS#7 and struct module_signature (mutated like a section's bytes, and field
        # by field below).
        self.trailer = elf_len if elf_len < len(data) else None
        if self.trailer is not None:
            self.regions.append((elf_len, len(data) - len(MAGIC) - elf_len))

    def value(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return rng.choice(INTERESTING)
        if roll < 0.8:
            return len(self.data) + rng.randrange(-80, 80)
        return rng.getrandbits(64)

    def put(self, buf: bytearray, offset: int, size: int) -> str:
        if offset + size > len(buf) or offset < 0:
            return "skip"
        value = self.value() & ((1 << (8 * size)) - 1)
        buf[offset : offset + size] = value.to_bytes(size, "little" if self.endian == "<" else "big")
        return f"put {value:#x} @ {offset:#x}/{size}"

    def one(self, buf: bytearray) -> tuple[bytearray, str]:
        rng = self.rng
        kind = rng.randrange(9)
        word = 8 if self.is64 else 4
        if kind == 0:  # ELF header field
            offset, size = rng.choice(
                [(4, 1), (5, 1), (16, 2), (18, 2), (0x28 if self.is64 else 0x20, word),
                 (0x3A if self.is64 else 0x2E, 2), (0x3C if self.is64 else 0x30, 2), (0x3E if self.is64 else 0x32, 2)]
            )  # fmt: skip
            return buf, self.put(buf, offset, size)
        if kind in (1, 2):  # section header field
            base = rng.choice(self.shdrs)
            layout = [(0, 4), (4, 4), (8, word)] + [(8 + word * k, word) for k in range(1, 4)]
            layout += [(8 + 4 * word, 4), (12 + 4 * word, 4), (16 + 4 * word, word), (16 + 5 * word, word)]
            offset, size = rng.choice(layout)
            return buf, self.put(buf, base + offset, size)
        if kind == 3 and self.regions:  # a word inside some section (symbols, relocations, strings, modinfo)
            start, size = rng.choice(self.regions)
            offset = start + rng.randrange(size)
            return buf, self.put(buf, offset - offset % 2, rng.choice([1, 2, 4, 8]))
        if kind == 4:  # blind byte flips
            for _ in range(rng.randrange(1, 9)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            return buf, "flip"
        if kind == 5:  # truncation
            cut = rng.randrange(len(buf))
            return buf[:cut], f"truncate {cut:#x}"
        if kind == 6:  # insertion or deletion shifts everything after it
            at = rng.randrange(len(buf))
            if rng.random() < 0.5:
                return buf[:at] + bytearray(rng.randbytes(rng.randrange(1, 33))) + buf[at:], f"insert @ {at:#x}"
            return buf[:at] + buf[at + rng.randrange(1, 33) :], f"delete @ {at:#x}"
        if kind == 8 and self.trailer is not None:  # a struct module_signature field: algo, id_type, pad, sig_len
            offset, size = rng.choice([(0, 1), (2, 1), (5, 1), (8, 4)])
            return buf, self.put(buf, len(buf) - len(MAGIC) - 12 + offset, size)
        # string table damage: remove NULs so names run to the end of their table
        if self.regions:
            start, size = rng.choice(self.regions)
            for i in range(start, min(start + size, len(buf))):
                if buf[i] == 0 and rng.random() < 0.5:
                    buf[i] = 0x2E
        return buf, "strings"

    def mutate(self) -> tuple[bytes, list[str]]:
        buf = bytearray(self.data)
        steps = []
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            if not buf:
                break
            buf, step = self.one(buf)
            steps.append(step)
        return bytes(buf), steps


PARSERS = (parse_patch_module, parse_module_symtab, parse_modinfo)


def run_case(data: bytes, describe) -> int:
    parsed = 0
    for parse in PARSERS:
        try:
            parse(data, "fuzz.ko")
            parsed += 1
        except ElfFormatError as exc:
            assert exc.path == "fuzz.ko" and exc.reason, describe()
        except Exception as exc:  # anything else is a parser bug
            raise AssertionError(f"{parse.__name__} raised {type(exc).__name__}: {exc}\n{describe()}") from exc
    return parsed


def test_fuzz_mutated_modules():
    seed = int(os.environ.get("KLPD_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\nKLPD_FUZZ_SEED={seed} KLPD_FUZZ_CASES={CASES}")
    rng = random.Random(seed)
    bases = base_modules()
    for base in bases:  # the unmutated corpus parses
        assert run_case(base, lambda: "base") == len(PARSERS)
    mutators = [Mutator(b, rng) for b in bases]
    start = time.monotonic()
    parsed = 0
    for case in range(CASES):
        which = rng.randrange(len(mutators))
        data, steps = mutators[which].mutate()
        parsed += run_case(data, lambda: f"KLPD_FUZZ_SEED={seed} case={case} base={which} steps={steps}")  # noqa: B023
    elapsed = time.monotonic() - start
    print(f"{CASES} cases in {elapsed:.1f}s; {parsed} of {CASES * len(PARSERS)} parses succeeded")
    # Structure-aware mutations must leave many files parsable, or the fuzzer only exercises the header checks.
    assert parsed > CASES * len(PARSERS) // 10


def test_fuzz_compressed_modules():
    seed = int(os.environ.get("KLPD_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\nKLPD_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    module = base_modules()[0]
    blobs = [lzma.compress(module), gzip.compress(module), zstandard.ZstdCompressor().compress(module)]
    for case in range(max(CASES // 20, 50)):
        buf = bytearray(rng.choice(blobs))
        if rng.random() < 0.5:
            buf = buf[: rng.randrange(len(buf))]
        for _ in range(rng.randrange(0, 4)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            parse_patch_module(decompress(bytes(buf), "fuzz.ko.xz"), "fuzz.ko.xz")
        except ElfFormatError:
            pass
        except Exception as exc:
            raise AssertionError(f"KLPD_FUZZ_SEED={seed} case={case}: {type(exc).__name__}: {exc}") from exc


def description_modules() -> list[bytes]:
    """Modules carrying each producer's description (tests/descriptions.py), on a little- and a big-endian
    64-bit machine and on ppc32, so mutations reach the pointer-following readers of klpd/elf/description."""
    objects: list[Obj] = [(None, [("cmdline_proc_show", "lp_cmdline", 0), ("dup", "lp_dup", 2)], []),
                          ("ext4", [("ext4_fn", "lp_ext4_fn", 0)], ["pre_patch"]), ("xfs", None, [])]  # fmt: skip
    kpatch_funcs = [("vmlinux", "cmdline_proc_show", "lp_cmdline", 0), ("ext4", "ext4_fn", "lp_ext4_fn", 1)]
    out = []
    for arch in (ARCHES["x86_64"], ARCHES["s390x"], PPC32):
        out += [
            build(static_patch(arch, objects, states=[(1, 2)], replace=True), arch),
            build(static_patch(arch, objects[:2], layout="4.16-5.0", call_site=False), arch),
            build(kpatch_patch(arch, kpatch_funcs, {"post_patch": [("lp_post", "ext4")]}), arch),
            build(klp_build_patch(arch, objects[:2]), arch),
        ]
    return out


def test_fuzz_descriptions():
    """Mutated descriptions: never an exception, never a hang; some still read, some reported corrupt."""
    seed = int(os.environ.get("KLPD_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\nKLPD_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    bases = description_modules()
    for base in bases:
        pm = parse_patch_module(base, "fuzz.ko")
        assert pm.description is not None and not pm.problems, pm.problems
    mutators = [Mutator(b, rng) for b in bases]
    outcomes = {"described": 0, "description_corrupt": 0}
    for case in range(max(CASES // 4, 100)):
        which = rng.randrange(len(mutators))
        data, steps = mutators[which].mutate()
        start = time.monotonic()
        try:
            pm = parse_patch_module(data, "fuzz.ko")
        except ElfFormatError:
            continue
        except Exception as exc:
            raise AssertionError(f"KLPD_FUZZ_SEED={seed} case={case} base={which} steps={steps}: "
                                 f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
        # Generous for a loaded CI machine; a hang or a quadratic walk of a mutated array takes far longer.
        assert time.monotonic() - start < 5, f"KLPD_FUZZ_SEED={seed} case={case}: slow parse"
        outcomes["described"] += pm.description is not None
        outcomes["description_corrupt"] += any(p.code == "description_corrupt" for p in pm.problems)
    print(outcomes)
    assert outcomes["described"] and outcomes["description_corrupt"], outcomes
