// SPDX-License-Identifier: GPL-2.0
/* vmlinux: the second of a name kallsyms lists twice. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC(KLPVM_DUP, 2), {} };
static struct klp_object objs[] = { { .name = NULL, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
