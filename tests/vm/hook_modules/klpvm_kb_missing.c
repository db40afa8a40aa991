// SPDX-License-Identifier: GPL-2.0
/* Refused: the function it replaces is not in this kernel (a patch built for another build of it). */
#include "klp_build_output.h"

KLP_REPLACEMENT(klpvm_no_such_function)
KLP_FUNCS(KLP_FUNC(klpvm_no_such_function, "klpvm_no_such_function", 0));
KLP_OBJECT(NULL);
