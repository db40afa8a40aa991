// SPDX-License-Identifier: GPL-2.0
/*
 * klpvm_target: the module the suite's module patches target. Three compilation units each define a static
 * dup_fn(): a.c and b.c in .text, c.c in .init.text. Linked in the order a, c, b, the module's full ELF symtab
 * (what klp_module_coming() searches when the target loads after the patch) lists dup_fn three times, core first,
 * init second; the core symtab kept after init (what a patch enabled later searches) lists it twice. So sympos 2 and
 * 3 mean different things depending on which loads first.
 *
 * Reading /sys/module/klpvm_target/parameters/probe calls klpvm_target_fn(): 0 unpatched, the address the
 * patch resolved once patched.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

long klpvm_target_fn(void);
int klpvm_target_a(void);
int klpvm_target_b(void);
int klpvm_target_c(void);

/*
 * noipa, not only noinline: gcc-14 and later (6.12's, 7.x's) propagate the constant return value into probe_get()
 * across the call, so the patched function would run and its answer be ignored.
 */
noinline __attribute__((__noipa__)) long klpvm_target_fn(void)
{
	return 0;
}

static int probe_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lx\n", klpvm_target_fn());
}

static const struct kernel_param_ops probe_ops = { .get = probe_get };
module_param_cb(probe, &probe_ops, NULL, 0444);

static int __init klpvm_target_init(void)
{
	return klpvm_target_a() + klpvm_target_b() + klpvm_target_c();
}

static void __exit klpvm_target_exit(void)
{
}

module_init(klpvm_target_init);
module_exit(klpvm_target_exit);
MODULE_LICENSE("GPL");
