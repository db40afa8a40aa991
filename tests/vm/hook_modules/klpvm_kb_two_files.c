// SPDX-License-Identifier: GPL-2.0
/* The first of two diff objects of one patch (fs/proc/cmdline.o's change): see klpvm_kb_two_files_b.c. */
#include "klp_build_output.h"

KLP_CMDLINE_REPLACEMENT
KLP_FUNCS(KLP_FUNC(cmdline_proc_show, "cmdline_proc_show", 0));
KLP_OBJECT(NULL);
