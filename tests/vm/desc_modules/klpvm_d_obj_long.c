// SPDX-License-Identifier: GPL-2.0
/* An object name of 60 characters, longer than MODULE_NAME_LEN - 1 (55). */
#include "klpvm_desc.h"

static struct klp_func funcs[] = { KLPVM_CMDLINE, {} };
static struct klp_object objs[] = { { .name = "klpvm_object_name_of_sixty_characters_xxxxxxxxxxxxxxxxxxxxxx", .funcs = funcs }, {} };
KLPVM_PATCH(objs);
