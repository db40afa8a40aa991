// SPDX-License-Identifier: GPL-2.0
/*
 * The second diff object of klpvm_kb_two_files: a patch that changes two vmlinux source files gets one diff object
 * per changed object file (klp-build's diff_objects()), and klp diff gives each its own klp_object_ext. Linked
 * into one module, .init.klp_objects holds two entries for vmlinux, and init.c hands both to the kernel.
 */
#include "klp_build_output.h"

KLP_REPLACEMENT(KLPVM_DUP_FN)
KLP_FUNCS(KLP_FUNC(KLPVM_DUP_FN, KLPVM_DUP, 2));
KLP_OBJECT(NULL);
