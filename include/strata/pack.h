/* pack.h — text files to token shards (`strata pack`).
 *
 * Every input file is one document. Each document is the tokenizer's lead
 * tokens, its text, and its tail tokens (strata_tokenizer_doc_tokens):
 * byte and gpt2 lead with their EOT (as GPT-2's training data does: EOT,
 * then the text); a Hugging Face tokenizer leads with its BOS (Llama 2,
 * Llama 3) or, without one, its EOS (Qwen, SmolLM2), and puts the tokens its
 * template has after $A at the end. /doc_offsets records where each
 * document starts (at its first boundary token). Without boundary tokens
 * documents simply follow each other.
 *
 * Outputs, for PREFIX:
 *   PREFIX.h5                          all training tokens, or when cut
 *   PREFIX-00000.h5, PREFIX-00001.h5   shards of exactly shard_tokens tokens
 *                                      (the last one shorter; a document may
 *                                      continue into the next shard), and
 *   PREFIX.manifest                    their names, one per line, relative to
 *                                      the manifest (which sits beside them)
 *   PREFIX.val.h5                      with val_fraction > 0: the last
 *                                      max(1, round(F * n)) of the n documents
 *                                      (at least one stays for training); with
 *                                      a single file, the last F of its tokens
 * Files are written under temporary names and renamed into place, so an
 * interrupted pack never leaves a half-written shard under its final name.
 * Files of an earlier pack with the same PREFIX that this one does not write
 * (say PREFIX-00009.h5 when there are now 5 shards) are left alone; the
 * manifest names only this pack's shards.
 */
#ifndef STRATA_PACK_H
#define STRATA_PACK_H

#include <stdint.h>

#include "strata/err.h"
#include "strata/tokenizer.h"

typedef struct strata_pack_opts {
    const char *out_prefix;
    double val_fraction;  /* in [0, 1); 0 = no validation file */
    int64_t shard_tokens; /* 0 = one PREFIX.h5; else cut into shards of this many tokens */
    int deflate;          /* 0 = off (fastest), 1..9 = gzip level */
} strata_pack_opts;

typedef struct strata_pack_stats {
    int64_t bytes; /* bytes of text read */
    int64_t train_tokens, val_tokens;
    int64_t train_docs, val_docs;
    int n_shards;   /* training files written (1 when not cut) */
    double seconds; /* wall time of the whole pack */
} strata_pack_stats;

/* Packs files[0..n_files) with tok. Input files are checked (they exist and
 * are readable regular files) before anything is written; an error names
 * the file and the problem. */
strata_err strata_pack(strata_tokenizer *tok, const strata_pack_opts *opts,
                       const char *const *files, int n_files, strata_pack_stats *stats);

#endif
