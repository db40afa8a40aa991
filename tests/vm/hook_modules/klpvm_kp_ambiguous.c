// SPDX-License-Identifier: GPL-2.0
/* Refused: sympos 0 for a name kallsyms lists twice (built where the name was unique). */
#include "kpatch_output.h"

KPATCH_STRING(kpatch_str_dup, KLPVM_DUP);
KPATCH_REPLACEMENT(KLPVM_DUP_FN)
KPATCH_NO_RELOCATIONS;
KPATCH_FUNCS(KPATCH_FUNC(KLPVM_DUP_FN, kpatch_str_dup, 0, KLPVM_DUP_ADDR1));
