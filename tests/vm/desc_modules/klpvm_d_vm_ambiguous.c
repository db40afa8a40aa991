// SPDX-License-Identifier: GPL-2.0
/* vmlinux: a name kallsyms lists twice, sympos 0 (must be unique). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC(KLPVM_DUP, 0), {} };
static struct klp_object objs[] = { { .name = NULL, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
