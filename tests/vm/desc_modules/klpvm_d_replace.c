// SPDX-License-Identifier: GPL-2.0
/* A replace patch that keeps state {id 1, version 2}. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .funcs = funcs }, {} };
static struct klp_state states[] = { { .id = 1, .version = 2 }, {} };
KLPVM_PATCH(objs, .states = states, .replace = true);
