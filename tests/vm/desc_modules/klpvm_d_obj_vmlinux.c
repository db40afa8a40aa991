// SPDX-License-Identifier: GPL-2.0
/* An object named "vmlinux" instead of NULL: the core looks for a module named vmlinux. */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .name = "vmlinux", .funcs = funcs }, {} };
KLPVM_PATCH(objs);
