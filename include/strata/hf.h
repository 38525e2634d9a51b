/* hf.h — Hugging Face checkpoint directories (config.json + safetensors),
 * in and out, for the GPT-2 family (model_type gpt2) and the llama family
 * (llama, mistral, qwen2, qwen3).
 *
 * config.json becomes a strata_model_shape, applying each model_type's own
 * defaults from transformers' configuration_*.py when a key is absent (e.g.
 * tie_word_embeddings: true for gpt2, false for llama/mistral/qwen2/qwen3;
 * qwen3's head_dim 128, mistral's sliding_window 4096). Whatever strata's
 * models cannot compute is refused by name, never ignored: an unknown
 * model_type, hidden_act other than silu (activation_function other than
 * gelu_new for gpt2), attention or final logit softcapping, any
 * mixture-of-experts key with a nonzero value, mlp_bias, attention_bias on
 * llama/mistral/qwen3 (it biases o_proj too), rope types other than default,
 * linear and llama3, per-layer sliding windows, partial rotary embeddings.
 * The shape's `variant` keeps the model_type so export writes it back.
 *
 * Weights map by the model's tensor table: every tensor of the table is
 * looked up under its own name (GPT-2: with or without "transformer."), its
 * shape checked (hf_transposed: the file holds the transpose) before any
 * payload is read, then read as fp32 from F32, BF16 or F16. Embeddings have
 * vocab_size rows in files and padded_vocab rows in memory, the padding
 * zero. A tied model's file may omit lm_head.weight or carry one equal to
 * the token embedding; an untied model's must carry it. Other tensors are
 * refused by name, except the buffers transformers saves (GPT-2's
 * attn.bias / attn.masked_bias, rotary_emb.inv_freq).
 *
 * Export writes config.json (transformers' v4 spelling: rope_scaling,
 * rope_theta at the top) and model.safetensors, or, above max_shard_bytes,
 * model-00001-of-0000N.safetensors and model.safetensors.index.json; a tied
 * model's lm head is not written. Every file goes to a temporary name, is
 * fsync'd and renamed; files of an older export that would shadow the new
 * one (model.safetensors vs an index, stale shards) are removed afterwards.
 */
#ifndef STRATA_HF_H
#define STRATA_HF_H

#include <stddef.h>

#include "strata/err.h"
#include "strata/model.h"
#include "strata/safetensors.h"

/* transformers 4.x's save_pretrained default max_shard_size, "5GB". */
#define STRATA_HF_DEFAULT_SHARD_BYTES ((size_t)5000000000ULL)

/* Reads dir/config.json into *shape (zeroed first). */
strata_err strata_hf_read_config(const char *dir, strata_model_shape *shape);

/* The keys of dir/config.json that the shape does not hold but an export
 * should write back (bos_token_id, eos_token_id, pad_token_id), as a JSON
 * object text in *extra_json (malloc'd; "{}" when none). */
strata_err strata_hf_read_config_extra(const char *dir, char **extra_json);

/* Writes dir/config.json for shape: every key transformers' AutoConfig and
 * AutoModelForCausalLM need (architectures, model_type, sizes, rope,
 * torch_dtype from dtype). extra_json (may be NULL) is a JSON object whose
 * keys are added where the shape does not set them (token ids). */
strata_err strata_hf_write_config(const char *dir, const strata_model_shape *shape, int dtype,
                                  const char *extra_json);

/* Reads a checkpoint directory into a new model (*out, free with
 * strata_model_free). */
strata_err strata_hf_import(const char *dir, strata_model **out);

/* Writes m into dir (created if missing) as dtype (STRATA_ST_F32 or
 * STRATA_ST_BF16), sharded above max_shard_bytes (0: the default).
 * extra_json as for strata_hf_write_config. */
strata_err strata_hf_export(const strata_model *m, const char *dir, int dtype,
                            size_t max_shard_bytes, const char *extra_json);

/* The building blocks, shared with convert.h's single-file GPT-2 forms. */

/* Checks every tensor of m's table against st (names, shapes, the lm head,
 * strangers), then reads them. where names the checkpoint in messages. */
strata_err strata_hf_load_tensors(const strata_safetensors *st, const char *where, strata_model *m);

/* Writes all of m's tensors as one safetensors file (hub names and layout). */
strata_err strata_hf_write_weights(const strata_model *m, const char *path, int dtype,
                                   const char *const *metadata);

#endif
