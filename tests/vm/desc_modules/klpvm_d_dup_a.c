// SPDX-License-Identifier: GPL-2.0
/* One of the two static dup_fn() of klpvm_d_target (see klpvm_d_target_main.c). */
#include <linux/compiler.h>

int klpvm_d_dup_a(void);

static noinline __used int dup_fn(void)
{
	barrier();
	return 0;
}

int klpvm_d_dup_a(void)
{
	return dup_fn();
}
