// SPDX-License-Identifier: GPL-2.0
/* A named object with NULL funcs after a valid vmlinux one (a NULL name and NULL funcs would end the array). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .funcs = funcs }, { .name = KLPVM_TARGET }, {} };
KLPVM_PATCH(objs);
