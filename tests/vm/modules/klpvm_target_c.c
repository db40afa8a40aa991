// SPDX-License-Identifier: GPL-2.0
/* One of the three dup_fn() of klpvm_target (see klpvm_target_main.c): this one in .init.text. */
#include <linux/init.h>

int klpvm_target_c(void);

static noinline __used int __init dup_fn(void)
{
	barrier();
	return 0;
}

int __init klpvm_target_c(void)
{
	return dup_fn();
}
