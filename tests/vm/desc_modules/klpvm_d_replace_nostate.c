// SPDX-License-Identifier: GPL-2.0
/* A replace patch without state 1. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .funcs = funcs }, {} };

KLPVM_PATCH(objs, .replace = true);
