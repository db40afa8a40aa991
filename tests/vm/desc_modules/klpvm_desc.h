// SPDX-License-Identifier: GPL-2.0
/*
 * Shared part of the description cases (tests/test_vm_descriptions.py): each klpvm_d_*.c is one small static
 * struct klp_patch, as samples/livepatch/livepatch-sample.c, that gets one thing of its description wrong (or
 * right). This header gives them the replacement functions and the module boilerplate; KLPVM_DUP and
 * KLPVM_NOTRACE come from klpvm_desc_symbols.h, written by tests/vm/desc_build.py from the guest's kallsyms.
 *
 * The replacements are harmless wherever the kernel might really call them: cmdline_proc_show's prints the patch
 * module's name (so `cat /proc/cmdline` shows whether a patch is live), the others return 0.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#include "klpvm_desc_symbols.h"

#define KLPVM_TARGET "klpvm_d_target"

static __attribute__((noipa)) __used int klpvm_replacement(void *arg)
{
	return 0;
}

static __attribute__((noipa)) __used int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KBUILD_MODNAME);
	return 0;
}

#define KLPVM_FUNC(name, pos) { .old_name = (name), .new_func = klpvm_replacement, .old_sympos = (pos) }
#define KLPVM_CMDLINE { .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show }

/* The patch, its init and exit; extra klp_patch fields (.replace, .states) go in the arguments. */
#define KLPVM_PATCH(objects, ...)						\
	static struct klp_patch patch = { .mod = THIS_MODULE, .objs = (objects), __VA_ARGS__ };	\
	static int __init klpvm_desc_init(void) { return klp_enable_patch(&patch); }		\
	static void __exit klpvm_desc_exit(void) { }						\
	module_init(klpvm_desc_init);								\
	module_exit(klpvm_desc_exit);								\
	MODULE_LICENSE("GPL");									\
	MODULE_INFO(livepatch, "Y")
