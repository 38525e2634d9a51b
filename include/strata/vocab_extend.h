/* vocab_extend.h — growing a model's vocabulary for a tokenizer that keeps
 * the old tokens' ids and adds new ones (`strata extend-vocab`).
 *
 * Let K0 be the old tokenizer's vocabulary (1 + its largest id), K1 > K0 the
 * new one's, V0 >= K0 the model's vocab_size (rows of the token embedding
 * and, untied, the lm head). The new tokenizer must give every old id
 * i < K0 the same token bytes as the old one (an id empty in both is fine);
 * the first id that differs is refused by number.
 *
 * The extended model has vocab_size V1 = max(V0, K1) and every other tensor
 * bitwise as before. In the token embedding and the untied lm head, rows
 * [0, K0) are copied bitwise, rows [K0, K1) (the new tokens) start at the
 * mean of rows [0, K0) of the same matrix, computed in double, plus
 * N(0, noise^2) per element drawn from the counter RNG keyed by
 * (seed, role, row, column) (so the result is a pure function of the seed);
 * rows a model had beyond K1 are copied; padding rows are zero. So for
 * inputs made of old ids every old token's logit is what it was (only the
 * lm head's product grows), and a new token's logit without noise is the
 * mean of the old logits: the new rows never start at random scale.
 *
 * The extended checkpoint records, in the "import" member of its
 * extra_json (the model's origin, which training carries into every
 * checkpoint it writes), tokenizer_hash = the new tokenizer's SHA-256 (so
 * packing and training check it) and STRATA_VOCAB_EXTENSION_KEY =
 * {"old_vocab_size": K0, "new_vocab_size": K1, "old_model_vocab_size": V0,
 * "old_tokenizer_hash", "noise", "seed"}. Rows >= old_vocab_size are the
 * "new rows" of [train] new_token_lr_mult.
 */
#ifndef STRATA_VOCAB_EXTEND_H
#define STRATA_VOCAB_EXTEND_H

#include <stdint.h>

#include "strata/err.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/tokenizer.h"

#define STRATA_VOCAB_EXTENSION_KEY "vocab_extension"

/* Checks that new_tok keeps every id of old_tok: STRATA_EINPUT naming
 * new_name, the first id whose bytes differ and both tokens, else OK. Also
 * refuses a new tokenizer that adds no id, or an old one with more ids than
 * the model has rows (model_vocab). */
strata_err strata_vocab_check_tokenizers(const strata_tokenizer *old_tok,
                                         const strata_tokenizer *new_tok, const char *old_name,
                                         const char *new_name, int model_vocab);

/* The extended copy of m (*out, free with strata_model_free) for old_tokens
 * = K0 and new_tokens = K1 as above; noise >= 0. m is only read. */
strata_err strata_vocab_extend(strata_model *m, int old_tokens, int new_tokens, float noise,
                               uint64_t seed, strata_model **out);

/* [train] new_token_lr_mult: splits the token embedding's and the lm head's
 * groups of a per-tensor table groups[0, n) (in buffer order) at row
 * first_new, the rows from there on getting their group's lr_mult times
 * mult. Active while until_step == 0 or step < until_step, and only for
 * 0 < first_new < vocab_size; returns the new count (at most n + 2:
 * groups must have room for two more), n when inactive. */
int strata_vocab_lr_groups(const strata_model *m, long first_new, double mult, long until_step,
                           long step, strata_param_group *groups, int n);

#endif
