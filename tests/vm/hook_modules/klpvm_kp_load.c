// SPDX-License-Identifier: GPL-2.0
/*
 * Loads: cmdline_proc_show (sympos 0, unique) and the second of the vmlinux name kallsyms lists twice, with a
 * pre-patch callback. The new cmdline_proc_show reads vmlinux's saved_command_line (not exported) through a klp
 * relocation, the way kpatch reaches a non-exported symbol: a .kpatch.relocations record that create-klp-module
 * turns into .klp.rela.vmlinux..text against .klp.sym.vmlinux.saved_command_line,0.
 */
#include "kpatch_output.h"

KPATCH_STRING(kpatch_str_cmdline_proc_show, "cmdline_proc_show");
KPATCH_STRING(kpatch_str_saved_command_line, "saved_command_line");
KPATCH_STRING(kpatch_str_dup, KLPVM_DUP);

static struct kpatch_symbol kpatch_ksym_saved_command_line __section(".kpatch.symbols") __used = {
	.sympos = 0, .bind = 1 /* STB_GLOBAL */, .type = 1 /* STT_OBJECT */,
	.name = kpatch_str_saved_command_line, .objname = kpatch_str_vmlinux,
};

static noinline __used int cmdline_proc_show(struct seq_file *m, void *v)
{
	const char *cmdline;

	/* movq disp32(%rip), reg: the displacement, 3 bytes in, is what the R_X86_64_PC32 klp relocation fills. */
	asm("1: movq 0x0(%%rip), %0\n"
	    ".pushsection .kpatch.relocations, \"aw\"\n"
	    ".balign 8\n"
	    ".quad 1b + 3\n"		/* dest */
	    ".long 2\n"			/* type: R_X86_64_PC32 */
	    ".long 0\n"			/* external */
	    ".quad -4\n"		/* addend */
	    ".quad %c[objname]\n"
	    ".quad %c[ksym]\n"
	    ".popsection"
	    : "=r"(cmdline)
	    : [objname] "i"(kpatch_str_vmlinux), [ksym] "i"(&kpatch_ksym_saved_command_line));
	seq_printf(m, "%s %s\n", KBUILD_MODNAME, cmdline);
	return 0;
}

KPATCH_REPLACEMENT(KLPVM_DUP_FN)

static int klpvm_pre_patch(void *obj)
{
	pr_info("klpvm: kpatch pre-patch callback for vmlinux\n");
	return 0;
}

static struct kpatch_pre_patch_callback kpatch_pre_patch_data __section(".kpatch.callbacks.pre_patch") __used = {
	.callback = klpvm_pre_patch, .objname = kpatch_str_vmlinux,
};

KPATCH_FUNCS(KPATCH_FUNC(cmdline_proc_show, kpatch_str_cmdline_proc_show, 0, KLPVM_CMDLINE_ADDR),
	     KPATCH_FUNC(KLPVM_DUP_FN, kpatch_str_dup, 2, KLPVM_DUP_ADDR2));
