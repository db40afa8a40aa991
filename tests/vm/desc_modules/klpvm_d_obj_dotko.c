// SPDX-License-Identifier: GPL-2.0
/* An object named like a file, "dummy.ko": module names never end in .ko. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .name = "dummy.ko", .funcs = funcs }, {} };
KLPVM_PATCH(objs);
