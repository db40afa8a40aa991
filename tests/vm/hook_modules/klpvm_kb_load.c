// SPDX-License-Identifier: GPL-2.0
/* Loads: cmdline_proc_show (sympos 0) and the second of the vmlinux name kallsyms lists twice, with a pre-patch
 * callback (klp diff takes it from KLP_PRE_PATCH_CALLBACK(); here it is set directly). */
#include "klp_build_output.h"

KLP_CMDLINE_REPLACEMENT
KLP_REPLACEMENT(KLPVM_DUP_FN)

static int klpvm_pre_patch(struct klp_object *obj)
{
	pr_info("klpvm: klp-build pre-patch callback for vmlinux\n");
	return 0;
}

KLP_FUNCS(KLP_FUNC(cmdline_proc_show, "cmdline_proc_show", 0), KLP_FUNC(KLPVM_DUP_FN, KLPVM_DUP, 2));
KLP_OBJECT(NULL, .callbacks = { .pre_patch = klpvm_pre_patch });
