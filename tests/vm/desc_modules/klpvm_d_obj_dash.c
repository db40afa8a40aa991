// SPDX-License-Identifier: GPL-2.0
/* An object named "my-mod": module names never contain a dash (kbuild turns it into "_"). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .name = "my-mod", .funcs = funcs }, {} };
KLPVM_PATCH(objs);
