// SPDX-License-Identifier: GPL-2.0
/*
 * What upstream klp-build's `objtool klp diff` would write into a diff object for the tool-hook cases
 * (tests/test_vm_tool_hooks.py), written by hand after tools/objtool/klp-diff.c:create_klp_sections() of the
 * guest's own linux-source: the replacement functions under the names of the functions they replace, one
 * struct klp_object_ext in .init.klp_objects per diff object (name NULL for vmlinux; funcs pointing at its
 * .init.klp_funcs array; nr_funcs) and one struct klp_func_ext per changed function (old_name, new_func, sympos).
 * Both sections are SHF_ALLOC and read-only, as elf_create_section_pair() makes them.
 *
 * klp-build links such objects with scripts/livepatch/init.c (copied from the same linux-source) into a module
 * built with -ffunction-sections -fdata-sections; init.c builds the klp_patch from .init.klp_objects at init.
 * Two differences from a real klp-diff object, neither seen by the kernel: the names are ordinary string literals
 * (.rodata.str1.1, where klp diff writes .rodata.klp.str1.1, both SHF_MERGE|SHF_STRINGS), and new_func is
 * relocated against the function's section rather than its symbol (the compiler's choice for a local function).
 * No klp relocation is needed (the replacements use exported symbols only), so `objtool klp post-link` has
 * nothing to convert: Debian's objtool is built without klp support anyway.
 */
#include <linux/kernel.h>
#include <linux/seq_file.h>
#include <linux/livepatch_external.h>

#include "klpvm_hook_symbols.h"

#define KLP_FUNC(fn, str, pos) { .old_name = (str), .new_func = (fn), .sympos = (pos) }

#define KLP_FUNCS(...) \
	static const struct klp_func_ext klp_funcs[] __section(".init.klp_funcs") __used = { __VA_ARGS__ }

/* The object this diff object patches: objname NULL for vmlinux; the rest are klp_object_ext fields. */
#define KLP_OBJECT(objname, ...) \
	static const struct klp_object_ext klp_object __section(".init.klp_objects") __used = { \
		.name = (objname), .funcs = (struct klp_func_ext *)klp_funcs, .nr_funcs = ARRAY_SIZE(klp_funcs), \
		__VA_ARGS__ }

/* cmdline_proc_show's replacement: `cat /proc/cmdline` then names the patch module whose copy runs. */
#define KLP_CMDLINE_REPLACEMENT \
	static noinline __used int cmdline_proc_show(struct seq_file *m, void *v) \
	{ seq_printf(m, "%s\n", KBUILD_MODNAME); return 0; }

/* A replacement that returns 0, for functions no guest calls while a case runs (as tests/vm/desc_modules). */
#define KLP_REPLACEMENT(fn) static noinline __used int fn(void *arg) { return 0; }
