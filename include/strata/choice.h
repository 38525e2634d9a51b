/* choice.h — multiple-choice eval sets: a JSON Lines file of items, each a
 * context, candidate continuations and the index of the right one, turned
 * into token rows ready to score (choice_eval.h scores them).
 *
 * One JSON object per line (blank lines skipped), in either form:
 *   HellaSwag's released fields: "endings" (strings), "label" (an integer or
 *     a string of one), and the context as lm-evaluation-harness's hellaswag
 *     task builds it: "ctx_a" + " " + "ctx_b" with its first letter
 *     upper-cased and the rest lower-cased (ASCII letters only; other
 *     characters are kept), or "ctx" when there is no "ctx_a"; prefixed
 *     with "activity_label: " when that field is present. Context and
 *     endings go through the task's preprocess (trim, " [title]" -> ". ",
 *     every "[...]" removed, "  " -> " "), and each continuation is " " +
 *     ending.
 *   Plain: "context" (string), "choices" (strings), "answer" (integer); the
 *     continuations are the choices exactly as written.
 * An item has 2 to 64 non-empty continuations and 0 <= answer < their count.
 *
 * Tokens, as lm-evaluation-harness's loglikelihood requests: trailing
 * spaces of the context move to the front of each continuation; the
 * context's ids are the tokenizer's document lead (strata_tokenizer_doc_tokens:
 * the EOT for byte and gpt2, the BOS for Llama, as `strata pack` starts
 * every document) followed by encode(context); a candidate's full row is the
 * lead + encode(context + continuation), whose ids past the context's count
 * are the continuation's tokens (at least one, else an error). A row longer
 * than max_len + 1 tokens keeps its last max_len + 1 (the model sees at most
 * max_len positions); a continuation longer than max_len tokens is an error.
 *
 * Each candidate also records the continuation's length in characters
 * (Unicode code points of its UTF-8), the divisor of lm-evaluation-harness's
 * acc_norm.
 *
 * Every problem is STRATA_EINPUT with one line "FILE:LINE: problem".
 */
#ifndef STRATA_CHOICE_H
#define STRATA_CHOICE_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/tokenizer.h"

#define STRATA_CHOICE_MAX_CHOICES 64

typedef struct strata_choice_cand {
    size_t off;    /* first token of the row in set->tokens */
    int len;       /* row length in tokens, <= max_len + 1 */
    int n_cont;    /* the row's last n_cont tokens are the continuation */
    double n_char; /* the continuation's length in characters */
} strata_choice_cand;

typedef struct strata_choice_item {
    size_t first_cand; /* index into set->cands */
    int n_cands;
    int answer; /* 0 <= answer < n_cands */
    long line;  /* line of the file, for messages */
} strata_choice_item;

typedef struct strata_choice_set {
    char *path;
    size_t n_items, n_cands, n_tokens;
    strata_choice_item *items;
    strata_choice_cand *cands;
    uint32_t *tokens;
} strata_choice_set;

/* Reads path and tokenizes it with tok. max_items > 0 keeps the first
 * max_items items. Every id must be < vocab_size (the model's), and rows
 * are cut to max_len + 1 tokens as above. */
strata_err strata_choice_load(strata_choice_set **out, const char *path, strata_tokenizer *tok,
                              int vocab_size, int max_len, long max_items);
void strata_choice_free(strata_choice_set *s);

/* Loads the tokenizer an eval set names: "byte", "gpt2" (with vocab =
 * encoder.json and merges = vocab.bpe) or the path of a tokenizer.json.
 * model_hash, when non-empty, is the tokenizer identity recorded with the
 * model (strata_tokenizer_hash); a tokenizer with another identity is an
 * error naming where (e.g. "config.ini: [eval.hs] tokenizer"). */
strata_err strata_choice_tokenizer(strata_tokenizer **out, const char *name, const char *vocab,
                                   const char *merges, const char *model_hash, const char *where);

struct strata_eval_config;
/* Everything an [eval.NAME] kind = choice section names: its tokenizer
 * (checked against model_hash as above) and its file, cut to the model's
 * block_size; max_samples counts items. config_path names the config in
 * messages. */
strata_err strata_choice_open(strata_choice_set **out, const struct strata_eval_config *ec,
                              int vocab_size, int block_size, const char *model_hash,
                              const char *config_path);

#endif
