// SPDX-License-Identifier: GPL-2.0
/*
 * What kpatch-build's create-diff-object would write into output.o for the tool-hook cases
 * (tests/test_vm_tool_hooks.py), written by hand: the replacement functions under the names of the functions they
 * replace, made local (kpatch_create_patches_sections), and its special sections:
 *
 * - .kpatch.funcs: one struct kpatch_patch_func (kpatch-patch.h, from Debian's kpatch-build) per function; name and
 *   objname point into .kpatch.strings (a relocation against that section with the string's offset as addend);
 * - .kpatch.callbacks.<kind>: { callback, objname } entries, objname filled the same way;
 * - .kpatch.symbols / .kpatch.relocations: what create-klp-module (Debian's own binary, run on the linked module)
 *   turns into .klp.sym.* symbols and .klp.rela.* sections, then removes. Always present, empty or not.
 *
 * kpatch's own livepatch-patch-hook.c (patch-hook.o) is linked with this object through kpatch's Makefile and
 * kpatch.lds.S, and builds the klp_patch from these sections at init. new_size and old_size stay 0 (the hook reads
 * neither); old_addr is the function's address in the guest's kallsyms (the hook reads it only without sympos).
 */
#include <linux/kernel.h>
#include <linux/seq_file.h>

#include "kpatch-patch.h"
#include "klpvm_hook_symbols.h"

/* kpatch-build/kpatch-intermediate.h (not shipped in Debian's package: it is create-diff-object's own). */
struct kpatch_symbol {
	unsigned long src;
	unsigned long sympos;
	unsigned char bind, type;
	char *name;
	char *objname;
};

#define KPATCH_STRING(var, text) static char var[] __section(".kpatch.strings") __used = text

KPATCH_STRING(kpatch_str_vmlinux, "vmlinux");

/* One .kpatch.funcs record for the local function fn replacing `name` (a .kpatch.strings string) at sympos. */
#define KPATCH_FUNC(fn, str, pos, addr) \
	{ .new_addr = (unsigned long)fn, .old_addr = (addr), .sympos = (pos), .name = (str), .objname = kpatch_str_vmlinux }

#define KPATCH_FUNCS(...) \
	static struct kpatch_patch_func kpatch_funcs[] __section(".kpatch.funcs") __used = { __VA_ARGS__ }

/* create-diff-object creates both intermediate sections even when the patch needs no klp relocation. */
#define KPATCH_NO_RELOCATIONS \
	asm(".pushsection .kpatch.symbols, \"aw\"\n.popsection\n.pushsection .kpatch.relocations, \"aw\"\n.popsection")

/* A replacement that returns 0, for functions no guest calls while a case runs (as tests/vm/desc_modules). */
#define KPATCH_REPLACEMENT(fn) static noinline __used int fn(void *arg) { return 0; }
