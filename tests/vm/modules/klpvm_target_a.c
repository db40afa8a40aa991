// SPDX-License-Identifier: GPL-2.0
/* One of the three dup_fn() of klpvm_target (see klpvm_target_main.c): this one in .text. */
#include <linux/compiler.h>

int klpvm_target_a(void);

static noinline __used int dup_fn(void)
{
	barrier();
	return 0;
}

int klpvm_target_a(void)
{
	return dup_fn();
}
