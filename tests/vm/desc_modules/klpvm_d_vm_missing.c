// SPDX-License-Identifier: GPL-2.0
/* vmlinux: a function name kallsyms does not have. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC("klpvm_no_such_function", 0), {} };
static struct klp_object objs[] = { { .name = NULL, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
