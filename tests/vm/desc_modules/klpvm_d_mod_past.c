// SPDX-License-Identifier: GPL-2.0
/* klpvm_d_target: sympos 3 of dup_fn, which the module has twice. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC("dup_fn", 3), {} };
static struct klp_object objs[] = { { .name = KLPVM_TARGET, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
