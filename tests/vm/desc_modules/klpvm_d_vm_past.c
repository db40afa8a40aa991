// SPDX-License-Identifier: GPL-2.0
/* vmlinux: sympos 3 of a name kallsyms lists twice. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC(KLPVM_DUP, 3), {} };
static struct klp_object objs[] = { { .name = NULL, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
