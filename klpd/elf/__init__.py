"""Kernel module files (ELF relocatable objects): livepatch modules and the modules they patch.

- :mod:`klpd.elf.klpmodule`: a patch module's livepatch sections and symbols; :mod:`klpd.elf.modinfo`,
  :mod:`klpd.elf.relocations` and :mod:`klpd.elf.klp_checks` (what the file alone shows to be wrong) serve it;
- :mod:`klpd.elf.signature` (over :mod:`klpd.elf.der`) and :mod:`klpd.elf.load_info`: what the module loader checks
  before livepatch sees the patch: the appended signature, ``__versions``, the imports, ``.gnu.linkonce.this_module``;
- :mod:`klpd.elf._raw`: the bounds-checked ELF reader under all of them;
- :mod:`klpd.elf.symtab`: a target module's symbol table as klp_find_object_symbol() walks it;
- :mod:`klpd.decompress`: ``.ko.xz`` / ``.ko.gz`` / ``.ko.zst``;
- :mod:`klpd.elf.reloc_types`: relocation type names;
- :mod:`klpd.elf.files`: reading patch and target files for an evaluation, cached, a bad file a Problem.
"""

from klpd.decompress import decompress
from klpd.elf.klpmodule import parse_patch_module, read_patch_module
from klpd.elf.modinfo import parse_modinfo, read_modinfo
from klpd.elf.reloc_types import reloc_type_name
from klpd.elf.symtab import parse_module_symtab, read_module_symtab

__all__ = [
    "decompress",
    "parse_modinfo",
    "parse_module_symtab",
    "parse_patch_module",
    "read_modinfo",
    "read_module_symtab",
    "read_patch_module",
    "reloc_type_name",
]
