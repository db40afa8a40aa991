// SPDX-License-Identifier: GPL-2.0
/* klpvm_d_target: klpvm_d_notrace_fn, which is notrace. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_FUNC("klpvm_d_notrace_fn", 0), {} };
static struct klp_object objs[] = { { .name = KLPVM_TARGET, .funcs = funcs }, {} };
KLPVM_PATCH(objs);
