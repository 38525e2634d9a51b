/* shard.h — HDF5 token shards (format "strata-tokens-1", see docs/DESIGN.md).
 *
 * A shard is one HDF5 file with a 1-D /tokens dataset (uint16 when
 * vocab_size <= 65536, else uint32) carrying the attributes vocab_size,
 * eot_token (-1 if none), tokenizer ("byte", "gpt2" or "hf") and format, and an
 * optional /doc_offsets (uint64) with the first token of every document.
 * Shards of a Hugging Face tokenizer ("hf") also carry tokenizer_hash (the
 * SHA-256 of its tokenizer.json, 64 hex digits: the trainer refuses a shard
 * whose hash is not its model's) and bos_token (-1 if none); there
 * eot_token is the EOS id. Older shards have neither: bos_token reads as -1
 * and the hash as "".
 * Sample i for sequence length T is tokens[i*T .. i*T+T] (T+1 tokens).
 *
 * The reader accepts every faithful encoding (any integer width for the
 * attributes, fixed or variable-length strings, any chunking or none, uint16
 * or uint32 tokens) and rejects only what is wrong, with the file and the
 * problem in the message. It never trusts a size in the file: every token it
 * hands out has been checked against vocab_size.
 */
#ifndef STRATA_SHARD_H
#define STRATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"

#define STRATA_SHARD_FORMAT "strata-tokens-1"

typedef struct strata_shard_info {
    int64_t n_tokens;
    int64_t n_docs; /* 0 when /doc_offsets is absent */
    int vocab_size;
    int eot_token;           /* -1 if none */
    int token_bits;          /* 16 or 32 */
    char tokenizer[16];      /* "byte", "gpt2" or "hf" */
    int64_t chunk_tokens;    /* 0 when contiguous */
    int bos_token;           /* -1 if none or not recorded */
    char tokenizer_hash[65]; /* "" when not recorded (byte, gpt2, older shards) */
} strata_shard_info;

typedef struct strata_shard strata_shard; /* an open shard, for reading */

/* Opens path and validates its structure and attributes. */
strata_err strata_shard_open(strata_shard **out, const char *path);
const strata_shard_info *strata_shard_get_info(const strata_shard *s);
const char *strata_shard_path(const strata_shard *s);
/* The tokenizer's identity recorded in the shard ("" if none). */
const char *strata_shard_tokenizer_hash(const strata_shard *s);
/* Samples of T+1 tokens this shard holds: floor((n_tokens - 1) / T). */
int64_t strata_shard_n_samples(const strata_shard *s, int T);
/* Reads tokens[start .. start+n) into out and checks every id < vocab_size. */
strata_err strata_shard_read(strata_shard *s, int64_t start, int64_t n, uint32_t *out);
/* Reads the whole shard: every token id < vocab_size, /doc_offsets
 * non-decreasing and within the tokens (`strata inspect --check`). */
strata_err strata_shard_verify(strata_shard *s);
void strata_shard_close(strata_shard *s);

/* Writing (used by `strata pack`): tokens are appended in order; a document
 * starts wherever strata_shard_writer_doc is called. */
typedef struct strata_shard_writer strata_shard_writer;

typedef struct strata_shard_writer_opts {
    int vocab_size;
    int eot_token;         /* -1 if none */
    const char *tokenizer; /* "byte", "gpt2" or "hf" */
    int deflate;           /* 0 = off, 1..9 = gzip level */
    int64_t chunk_tokens;  /* 0 = default (1 Mi tokens) */
    /* With a non-empty tokenizer_hash (64 lowercase hex digits), the
     * attributes tokenizer_hash and bos_token (-1 if none) are written too;
     * bos_token is ignored otherwise. */
    const char *tokenizer_hash;
    int bos_token;
} strata_shard_writer_opts;

strata_err strata_shard_writer_open(strata_shard_writer **out, const char *path,
                                    const strata_shard_writer_opts *opts);
strata_err strata_shard_writer_doc(strata_shard_writer *w);
strata_err strata_shard_writer_append(strata_shard_writer *w, const uint32_t *tokens, size_t n);
int64_t strata_shard_writer_tokens(const strata_shard_writer *w);
/* Flushes, writes /doc_offsets, closes, and frees w (also on error). The file
 * is written under a temporary name and renamed into place on success. */
strata_err strata_shard_writer_close(strata_shard_writer *w);
/* Drops a half-written shard: removes the temporary file, frees w. */
void strata_shard_writer_abort(strata_shard_writer *w);

#endif
