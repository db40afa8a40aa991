// SPDX-License-Identifier: GPL-2.0
/* vmlinux: a function kallsyms has but ftrace does not (noinstr). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC(KLPVM_NOTRACE, 0), {} };
static struct klp_object objs[] = { { .name = NULL, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
