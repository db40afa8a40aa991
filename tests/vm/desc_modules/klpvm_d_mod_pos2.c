// SPDX-License-Identifier: GPL-2.0
/* klpvm_d_target: the second dup_fn. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC("dup_fn", 2), {} };
static struct klp_object objs[] = { { .name = KLPVM_TARGET, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
