/* convert.h — GPT-2 weights in other programs' files: llm.c's model files and
 * Hugging Face safetensors, in and out.
 *
 * Readers check every size in a file (header fields, tensor shapes, data
 * offsets) against the others and against the file's length before they
 * read a byte of payload, and refuse anything inconsistent with
 * STRATA_EINPUT naming the file, the place and the problem. Writers write
 * a temporary name beside the target, fsync it and rename it into place.
 *
 * llm.c (train_gpt2.c, version 3): a header of 256 little-endian int32
 * (magic 20240326, version 3, max_seq_len, vocab_size, num_layers,
 * num_heads, channels, padded_vocab_size, then zeros), then fp32 parameters
 * tensor type by tensor type, all layers of one type together: wte (Vp, C),
 * wpe (maxT, C), ln1w (L, C), ln1b, qkvw (L, 3C, C), qkvb, attprojw
 * (L, C, C), attprojb, ln2w, ln2b, fcw (L, 4C, C), fcb, fcprojw (L, C, 4C),
 * fcprojb, lnfw (C), lnfb (C). Weights are (out, in) as in strata. wte's
 * padding rows are ignored on import and written as zeros on export, so a
 * file whose padding is zero round-trips byte for byte.
 *
 * safetensors: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, the data.
 * Names as on the Hugging Face hub ("wte.weight", "h.0.attn.c_attn.weight")
 * with or without a "transformer." prefix; Conv1D weights (attn.c_attn,
 * attn.c_proj, mlp.c_fc, mlp.c_proj) are stored (in, out) and transposed.
 * attn.bias / attn.masked_bias buffers are ignored; lm_head.weight, if
 * present, must equal wte.weight (strata ties them). The number of heads is
 * not in the weights: it comes from the caller, else __metadata__ "n_head",
 * else a config.json beside the file (as Hugging Face stores models).
 * Export writes hub names (no prefix) and n_layer, n_head, n_embd,
 * n_positions and vocab_size in __metadata__. The file itself is parsed and
 * checked by safetensors.h (F32, BF16 and F16 import) and its tensors mapped
 * by hf.h's table-driven loader; for whole Hugging Face directories
 * (config.json, shards, the llama family) see hf.h.
 */
#ifndef STRATA_CONVERT_H
#define STRATA_CONVERT_H

#include "strata/err.h"
#include "strata/model.h"

#define STRATA_LLMC_MAGIC   20240326
#define STRATA_LLMC_VERSION 3

/* Reads an llm.c GPT-2 model file into a new model (*out, free with
 * strata_model_free). */
strata_err strata_llmc_import(const char *path, strata_model **out);

/* Writes m as an llm.c version-3 file with padded_vocab rows of wte
 * (0: vocab_size rounded up to a multiple of 128, as llm.c does). */
strata_err strata_llmc_export(const char *path, const strata_model *m, int padded_vocab);

/* Reads Hugging Face GPT-2 safetensors into a new model. n_head > 0
 * overrides the file's metadata and config.json. */
strata_err strata_safetensors_import(const char *path, int n_head, strata_model **out);

/* Writes m as Hugging Face GPT-2 safetensors (F32). */
strata_err strata_safetensors_export(const char *path, const strata_model *m);

#endif
