/* hf_json.h — what io/hf_tensors.c needs of io/hf.c beyond hf.h.
 * Internal to io/. */
#ifndef STRATA_IO_HF_JSON_H
#define STRATA_IO_HF_JSON_H

#include <jansson.h>

#include "strata/hf.h"

#define CONFIG_NAME "config.json"

/* The model_type's name for people ("GPT-2", "Qwen3"), NULL when the shape
 * has no Hugging Face model_type. */
const char *strata_hf_display_name(const strata_model_shape *s);
/* Writes root as indented JSON plus a newline, by file.h's rule. */
strata_err strata_hf_write_json(const char *path, json_t *root);

#endif
