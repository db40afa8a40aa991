// SPDX-License-Identifier: GPL-2.0
/* Two objects with the same module name (a module that is not loaded). */
#include "klpvm_desc.h"

static struct klp_func funcs_a[] = { KLPVM_FUNC("klpvm_d_fn", 0), {} };
static struct klp_func funcs_b[] = { KLPVM_FUNC("dup_fn", 1), {} };
static struct klp_object objs[] = {
	{ .name = "klpvm_d_absent", .funcs = funcs_a },
	{ .name = "klpvm_d_absent", .funcs = funcs_b },
	{}
};
KLPVM_PATCH(objs);
