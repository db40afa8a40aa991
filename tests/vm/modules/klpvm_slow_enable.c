// SPDX-License-Identifier: GPL-2.0
/*
 * A livepatch whose enable stays in its first phase for pre_patch_ms: __klp_enable_patch() has set up the transition
 * (sysfs "transition" reads 1) and calls the pre-patch callback before it registers the function with ftrace, logs
 * "starting patching transition" and sets "enabled". The callback sleeping holds the kernel in that phase, where
 * "enabled" still reads 0, long enough for klpd to be asked what the transition's target is.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static unsigned int pre_patch_ms;
module_param(pre_patch_ms, uint, 0444);

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KBUILD_MODNAME);
	return 0;
}

static int klpvm_pre_patch(struct klp_object *obj)
{
	pr_info("pre-patch callback: sleeping %u ms\n", pre_patch_ms);
	msleep(pre_patch_ms);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{}
};

static struct klp_object objs[] = {
	{ .funcs = funcs, .callbacks = { .pre_patch = klpvm_pre_patch } }, /* vmlinux */
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init klpvm_slow_enable_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klpvm_slow_enable_exit(void)
{
}

module_init(klpvm_slow_enable_init);
module_exit(klpvm_slow_enable_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
