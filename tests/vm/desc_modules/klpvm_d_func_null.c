// SPDX-License-Identifier: GPL-2.0
/* A func with a NULL old_name (but a new_func, so that it does not end the array). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, KLPVM_FUNC(NULL, 0), {} };
static struct klp_object objs[] = { { .funcs = funcs }, {} };
KLPVM_PATCH(objs);
