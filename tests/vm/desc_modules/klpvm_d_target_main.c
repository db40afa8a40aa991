// SPDX-License-Identifier: GPL-2.0
/*
 * klpvm_d_target: the module whose functions the description cases look up. Two compilation units (dup_a.c,
 * dup_b.c) each define a static dup_fn() in .text, so that the name occurs twice in the module's symtab whether
 * the lookup happens at its load (full symtab) or later (core symtab); klpvm_d_notrace_fn has no ftrace location.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

int klpvm_d_dup_a(void);
int klpvm_d_dup_b(void);

noinline int klpvm_d_fn(void)
{
	return 0;
}

noinline notrace int klpvm_d_notrace_fn(void)
{
	return 0;
}

static int __init klpvm_d_target_init(void)
{
	return klpvm_d_fn() + klpvm_d_notrace_fn() + klpvm_d_dup_a() + klpvm_d_dup_b();
}

static void __exit klpvm_d_target_exit(void)
{
}

module_init(klpvm_d_target_init);
module_exit(klpvm_d_target_exit);
MODULE_LICENSE("GPL");
