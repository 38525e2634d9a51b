/* tokenizer_hf.h — internal: Hugging Face tokenizer.json (BPE), behind the
 * strata_tokenizer interface of strata/tokenizer.h. Only io/tokenizer.c
 * calls these; see tokenizer.h for the behaviour. */
#ifndef STRATA_IO_TOKENIZER_HF_H
#define STRATA_IO_TOKENIZER_HF_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/tokenizer.h"

typedef struct strata_hf strata_hf;

strata_err strata_hf_load(strata_hf **out, const char *path);
void strata_hf_free(strata_hf *h);
int strata_hf_vocab_size(const strata_hf *h);
int strata_hf_bos(const strata_hf *h);
int strata_hf_eos(const strata_hf *h);
const char *strata_hf_hash(const strata_hf *h);
void strata_hf_doc_tokens(const strata_hf *h, const uint32_t **lead, size_t *n_lead,
                          const uint32_t **tail, size_t *n_tail);
strata_err strata_hf_encode(strata_hf *h, const uint8_t *s, size_t n, int more, strata_tokens *out);
strata_err strata_hf_decode(const strata_hf *h, const uint32_t *ids, size_t n, uint8_t **out,
                            size_t *out_len);
const uint8_t *strata_hf_token_bytes(const strata_hf *h, uint32_t id, size_t *len);

#endif
