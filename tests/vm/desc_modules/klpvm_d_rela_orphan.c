// SPDX-License-Identifier: GPL-2.0
/*
 * A .klp.rela.klpvm_d_orphan.text section (made by klpconvert from the asm label below) for an object the patch
 * does not describe: its only klp_object is vmlinux. The replacement prints the address the relocation wrote.
 */
#include "klpvm_desc.h"

extern char klpvm_orphan_sym[] __asm__("\".klp.sym.klpvm_d_orphan.klpvm_d_fn,0\"");

static __attribute__((noipa)) int livepatch_orphan_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %lx\n", KBUILD_MODNAME, (unsigned long)klpvm_orphan_sym);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_orphan_cmdline_proc_show },
	{}
};
static struct klp_object objs[] = { { .funcs = funcs }, {} };
KLPVM_PATCH(objs);
