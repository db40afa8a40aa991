// SPDX-License-Identifier: GPL-2.0
/* Two vmlinux objects (NULL names): both are "vmlinux" in sysfs. */
#include "klpvm_desc.h"

static struct klp_func funcs_a[] = { KLPVM_CMDLINE, {} };
static struct klp_func funcs_b[] = { KLPVM_FUNC(KLPVM_UNIQUE, 0), {} };
static struct klp_object objs[] = { { .funcs = funcs_a }, { .funcs = funcs_b }, {} };
KLPVM_PATCH(objs);
