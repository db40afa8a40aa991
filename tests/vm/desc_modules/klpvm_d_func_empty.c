// SPDX-License-Identifier: GPL-2.0
/* A func with an empty old_name "". */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, KLPVM_FUNC("", 0), {} };
static struct klp_object objs[] = { { .funcs = funcs }, {} };
KLPVM_PATCH(objs);
