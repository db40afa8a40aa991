// SPDX-License-Identifier: GPL-2.0
/* Refused: the function it replaces is not in this kernel (a patch built for another build of it). */
#include "kpatch_output.h"

KPATCH_STRING(kpatch_str_missing, "klpvm_no_such_function");
KPATCH_REPLACEMENT(klpvm_no_such_function)
KPATCH_NO_RELOCATIONS;
KPATCH_FUNCS(KPATCH_FUNC(klpvm_no_such_function, kpatch_str_missing, 0, 0));
