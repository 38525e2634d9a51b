/* tokenizer.c — the byte tokenizer and GPT-2's byte-level BPE (see tokenizer.h).
 *
 * GPT-2 in four steps:
 *   1. PCRE2 (JIT) cuts the text into pieces with GPT-2's pre-tokenizer regex.
 *   2. A piece's bytes start as one token each (GPT-2 names byte b by a
 *      printable character, "bytes_to_unicode"; we keep raw bytes and only
 *      translate when reading the files).
 *   3. BPE merges the adjacent pair of lowest rank, all its occurrences left
 *      to right, then looks again, until no pair has a rank.
 *   4. Pieces repeat a lot (" the", "\n"), so finished pieces go to a cache.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "strata/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "tokenizer_hf.h"

/* ---- growable arrays ------------------------------------------------------------------ */

void strata_tokens_free(strata_tokens *t)
{
    if (!t) return;
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static int tokens_push(strata_tokens *t, const uint32_t *ids, size_t n)
{
    if (strata_bpe_grow((void **)&t->ids, &t->cap, t->n + n, sizeof *t->ids)) return -1;
    memcpy(t->ids + t->n, ids, n * sizeof *ids);
    t->n += n;
    return 0;
}

static strata_err oom(void) { return strata_errorf(STRATA_ENOMEM, "tokenizer: out of memory"); }

/* ---- a hash table keyed by byte strings ----------------------------------------------- */

/* Open addressing with linear probing; keys live in one arena. Used for the
 * vocabulary (bytes -> id) while loading, and for the piece cache
 * (bytes -> a run of ids in a second arena). */
typedef struct strtab_slot {
    uint64_t hash; /* 0 = empty */
    uint32_t key_off, key_len;
    uint32_t v0, v1;
} strtab_slot;

typedef struct strtab {
    strtab_slot *slots;
    size_t cap, n; /* cap is a power of two */
    uint8_t *keys;
    size_t keys_n, keys_cap;
} strtab;

static uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h | 1;
}

static int strtab_init(strtab *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->slots = calloc(cap, sizeof *t->slots);
    t->cap = cap;
    return t->slots ? 0 : -1;
}

static void strtab_free(strtab *t)
{
    free(t->slots);
    free(t->keys);
    memset(t, 0, sizeof *t);
}

static void strtab_clear(strtab *t)
{
    memset(t->slots, 0, t->cap * sizeof *t->slots);
    t->n = 0;
    t->keys_n = 0;
}

static strtab_slot *strtab_find(const strtab *t, const uint8_t *key, size_t len, uint64_t h)
{
    size_t mask = t->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        strtab_slot *s = &t->slots[i];
        if (!s->hash) return NULL;
        if (s->hash == h && s->key_len == len && !memcmp(t->keys + s->key_off, key, len)) return s;
    }
}

static int strtab_rehash(strtab *t, size_t cap)
{
    strtab_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].hash) continue;
        size_t j = (size_t)t->slots[i].hash & (cap - 1);
        while (slots[j].hash) j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* Inserts a key known to be absent; returns its slot or NULL (out of memory). */
static strtab_slot *strtab_add(strtab *t, const uint8_t *key, size_t len, uint64_t h)
{
    if (2 * (t->n + 1) > t->cap && strtab_rehash(t, 2 * t->cap)) return NULL;
    if (strata_bpe_grow((void **)&t->keys, &t->keys_cap, t->keys_n + len + 1, 1)) return NULL;
    size_t mask = t->cap - 1, i = (size_t)h & mask;
    while (t->slots[i].hash) i = (i + 1) & mask;
    strtab_slot *s = &t->slots[i];
    memcpy(t->keys + t->keys_n, key, len);
    s->hash = h;
    s->key_off = (uint32_t)t->keys_n;
    s->key_len = (uint32_t)len;
    t->keys_n += len;
    t->n++;
    return s;
}

/* ---- the tokenizer ------------------------------------------------------------------- */

enum { KIND_BYTE, KIND_GPT2, KIND_HF };

/* Pieces longer than this are not cached: rare, and they would crowd the arena. */
#define CACHE_MAX_PIECE 128
/* The cache starts over when it holds this many pieces (bounds its memory). */
#define CACHE_MAX_ENTRIES (1u << 19)

typedef struct merge_slot {
    uint64_t pair; /* (a << 32) | b, UINT64_MAX = empty */
    int32_t rank;
} merge_slot;

struct strata_tokenizer {
    int kind;
    int vocab_size;
    int eot;
    uint32_t lead; /* byte, gpt2: the EOT put before each document */
    strata_hf *hf; /* KIND_HF: everything else lives there */

    /* id -> bytes */
    uint8_t *tok_bytes;
    uint32_t *tok_off, *tok_len;

    /* GPT-2 */
    uint32_t byte_id[256];
    merge_slot *merges;                      /* hash of pairs -> rank */
    size_t merges_cap;                       /* power of two */
    uint32_t *merge_a, *merge_b, *merge_out; /* by rank */
    int32_t n_merges;
    pcre2_code *re;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;

    strtab cache; /* piece bytes -> (offset, count) in cache_ids */
    uint32_t *cache_ids;
    size_t cache_ids_n, cache_ids_cap;

    /* BPE scratch, grown to the longest piece seen */
    uint32_t *sym;        /* token id of each node */
    int32_t *prev, *next; /* doubly linked list of live nodes */
    uint64_t *heap;       /* (rank << 32) | node */
    size_t heap_n, scratch_cap, heap_cap;
    uint32_t *batch;
    size_t batch_cap;
    uint32_t *word;
    size_t word_cap;
};

const char *strata_tokenizer_name(const strata_tokenizer *t)
{
    return t->kind == KIND_BYTE ? "byte" : t->kind == KIND_GPT2 ? "gpt2" : "hf";
}

int strata_tokenizer_vocab_size(const strata_tokenizer *t) { return t->vocab_size; }

int strata_tokenizer_eot(const strata_tokenizer *t)
{
    return t->kind == KIND_HF ? strata_hf_eos(t->hf) : t->eot;
}

int strata_tokenizer_bos(const strata_tokenizer *t)
{
    return t->kind == KIND_HF ? strata_hf_bos(t->hf) : -1;
}

const char *strata_tokenizer_hash(const strata_tokenizer *t)
{
    return t->kind == KIND_HF ? strata_hf_hash(t->hf) : "";
}

void strata_tokenizer_doc_tokens(const strata_tokenizer *t, const uint32_t **lead, size_t *n_lead,
                                 const uint32_t **tail, size_t *n_tail)
{
    if (t->kind == KIND_HF) {
        strata_hf_doc_tokens(t->hf, lead, n_lead, tail, n_tail);
        return;
    }
    *lead = &t->lead;
    *n_lead = t->eot >= 0;
    *tail = NULL;
    *n_tail = 0;
}

void strata_tokenizer_free(strata_tokenizer *t)
{
    if (!t) return;
    strata_hf_free(t->hf);
    free(t->tok_bytes);
    free(t->tok_off);
    free(t->tok_len);
    free(t->merges);
    free(t->merge_a);
    free(t->merge_b);
    free(t->merge_out);
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mctx);
    pcre2_jit_stack_free(t->jit_stack);
    pcre2_code_free(t->re);
    strtab_free(&t->cache);
    free(t->cache_ids);
    free(t->sym);
    free(t->prev);
    free(t->next);
    free(t->heap);
    free(t->batch);
    free(t->word);
    free(t);
}

strata_err strata_tokenizer_byte(strata_tokenizer **out)
{
    *out = NULL;
    strata_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return oom();
    t->kind = KIND_BYTE;
    t->vocab_size = 256;
    t->eot = 0;
    t->lead = 0;
    t->tok_bytes = malloc(256);
    t->tok_off = malloc(256 * sizeof *t->tok_off);
    t->tok_len = malloc(256 * sizeof *t->tok_len);
    if (!t->tok_bytes || !t->tok_off || !t->tok_len) {
        strata_tokenizer_free(t);
        return oom();
    }
    for (int i = 0; i < 256; i++) {
        t->tok_bytes[i] = (uint8_t)i;
        t->tok_off[i] = (uint32_t)i;
        t->tok_len[i] = 1;
    }
    *out = t;
    return strata_ok();
}

/* ---- GPT-2: reading encoder.json and vocab.bpe ---------------------------------------- */

/* Translates one token of the files (UTF-8 of byte-standing characters) into
 * its bytes; returns the byte count, or -1 if a character is no byte's. */
static long token_to_bytes(const char *s, size_t len, const int u2b[324], uint8_t *out)
{
    long n = 0;
    for (size_t i = 0; i < len;) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp;
        if (c < 0x80) {
            cp = c;
            i += 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < len && ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
            cp = ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)s[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1; /* every byte-standing character is below U+0800 */
        }
        if (cp >= 324 || u2b[cp] < 0) return -1;
        out[n++] = (uint8_t)u2b[cp];
    }
    return n;
}

static uint64_t pair_key(uint32_t a, uint32_t b) { return ((uint64_t)a << 32) | b; }

static int32_t merge_rank(const strata_tokenizer *t, uint32_t a, uint32_t b)
{
    uint64_t k = pair_key(a, b);
    size_t mask = t->merges_cap - 1;
    for (size_t i = strata_bpe_pair_hash(k) & mask;; i = (i + 1) & mask) {
        if (t->merges[i].pair == k) return t->merges[i].rank;
        if (t->merges[i].pair == UINT64_MAX) return -1;
    }
}

/* One entry of encoder.json: its id checked, its bytes appended to
 * tok_bytes and entered in vocab. */
static strata_err add_token(strata_tokenizer *t, const char *path, const char *key,
                            const json_t *val, size_t n, const int u2b[324], strtab *vocab,
                            size_t *bytes_cap, size_t *bytes_n)
{
    strata_err e;
    size_t klen = strlen(key);
    if (!json_is_integer(val) || json_integer_value(val) < 0 ||
        json_integer_value(val) >= (json_int_t)n) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: token \"%.80s\" has id %s; ids must be integers 0..%zu", path, key,
                          json_is_integer(val) ? "out of range" : "not an integer", n - 1);
        return e;
    }
    uint32_t id = (uint32_t)json_integer_value(val);
    if (t->tok_len[id] != UINT32_MAX) {
        e = strata_errorf(STRATA_EINPUT, "%s: id %u is given to two tokens", path, id);
        return e;
    }
    if (strata_bpe_grow((void **)&t->tok_bytes, bytes_cap, *bytes_n + klen + 1, 1)) {
        e = oom();
        return e;
    }
    long blen = token_to_bytes(key, klen, u2b, t->tok_bytes + *bytes_n);
    if (blen <= 0) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: token \"%.80s\" is not in GPT-2's byte-level alphabet", path, key);
        return e;
    }
    uint64_t h = hash_bytes(t->tok_bytes + *bytes_n, (size_t)blen);
    if (strtab_find(vocab, t->tok_bytes + *bytes_n, (size_t)blen, h)) {
        e = strata_errorf(STRATA_EINPUT, "%s: token \"%.80s\" appears twice", path, key);
        return e;
    }
    strtab_slot *s = strtab_add(vocab, t->tok_bytes + *bytes_n, (size_t)blen, h);
    if (!s) {
        e = oom();
        return e;
    }
    s->v0 = id;
    t->tok_off[id] = (uint32_t)*bytes_n;
    t->tok_len[id] = (uint32_t)blen;
    *bytes_n += (size_t)blen;
    return strata_ok();
}

/* The id of every single byte (BPE starts from them) and of <|endoftext|>. */
static strata_err find_specials(strata_tokenizer *t, const char *path, const strtab *vocab)
{
    strata_err e;
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        strtab_slot *s = strtab_find(vocab, &c, 1, hash_bytes(&c, 1));
        if (!s) {
            e = strata_errorf(STRATA_EINPUT, "%s: no token for byte 0x%02x", path, b);
            return e;
        }
        t->byte_id[b] = s->v0;
    }
    static const char eot[] = "<|endoftext|>";
    strtab_slot *s = strtab_find(vocab, (const uint8_t *)eot, sizeof eot - 1,
                                 hash_bytes((const uint8_t *)eot, sizeof eot - 1));
    t->eot = s ? (int)s->v0 : -1;
    return strata_ok();
}

static strata_err load_encoder(strata_tokenizer *t, const char *path, const int u2b[324],
                               strtab *vocab)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    json_error_t jerr;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (!root) {
        if (jerr.line < 0) return strata_errorf(STRATA_EINPUT, "%s: %s", path, jerr.text);
        return strata_errorf(STRATA_EINPUT, "%s:%d:%d: not valid JSON: %s", path, jerr.line,
                             jerr.column, jerr.text);
    }
    strata_err e = strata_ok();
    if (!json_is_object(root)) {
        e = strata_errorf(STRATA_EINPUT, "%s: expected a JSON object mapping tokens to ids", path);
        goto done;
    }
    size_t n = json_object_size(root);
    if (n < 256 || n > (1u << 24)) {
        e = strata_errorf(STRATA_EINPUT, "%s: %zu tokens; expected 256 to 16777216", path, n);
        goto done;
    }
    t->vocab_size = (int)n;
    t->tok_off = malloc(n * sizeof *t->tok_off);
    t->tok_len = malloc(n * sizeof *t->tok_len);
    size_t bytes_cap = 0, bytes_n = 0;
    if (!t->tok_off || !t->tok_len || strtab_init(vocab, 1u << 17)) {
        e = oom();
        goto done;
    }
    for (size_t i = 0; i < n; i++) t->tok_len[i] = UINT32_MAX; /* not yet seen */

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        e = add_token(t, path, key, val, n, u2b, vocab, &bytes_cap, &bytes_n);
        if (e.code) goto done;
    }
    e = find_specials(t, path, vocab);
done:
    json_decref(root);
    return e;
}

static strata_err read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (strata_bpe_grow((void **)&buf, &cap, n + 65536 + 1, 1)) {
            fclose(f);
            free(buf);
            return oom();
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return strata_errorf(STRATA_EINPUT, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return strata_ok();
}

/* One merge line "a b" of vocab.bpe (a blank line is none): both tokens
 * and their concatenation must be in the vocabulary; ranks follow the file. */
static strata_err merge_line(strata_tokenizer *t, const char *path, int lineno, char *cur,
                             const int u2b[324], const strtab *vocab, uint8_t *buf)
{
    strata_err e;
    char *fields[3] = {0};
    int nf = 0;
    char *save = NULL;
    for (char *tok = strtok_r(cur, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save))
        if (nf < 3) fields[nf++] = tok;
    if (nf == 0) return strata_ok();
    if (nf != 2) {
        e = strata_errorf(STRATA_EINPUT, "%s:%d: expected two tokens separated by a space", path,
                          lineno);
        return e;
    }
    uint32_t ids[3];
    long la = token_to_bytes(fields[0], strlen(fields[0]), u2b, buf);
    long lb = la > 0 ? token_to_bytes(fields[1], strlen(fields[1]), u2b, buf + la) : -1;
    if (la <= 0 || lb <= 0) {
        e = strata_errorf(STRATA_EINPUT, "%s:%d: \"%.80s\" is not in GPT-2's byte-level alphabet",
                          path, lineno, la <= 0 ? fields[0] : fields[1]);
        return e;
    }
    const uint8_t *parts[3] = {buf, buf + la, buf};
    const long plen[3] = {la, lb, la + lb};
    for (int k = 0; k < 3; k++) {
        strtab_slot *s =
            strtab_find(vocab, parts[k], (size_t)plen[k], hash_bytes(parts[k], (size_t)plen[k]));
        if (!s && k < 2) {
            e = strata_errorf(STRATA_EINPUT, "%s:%d: token \"%.80s\" is not in encoder.json", path,
                              lineno, fields[k]);
            return e;
        }
        if (!s) {
            e = strata_errorf(STRATA_EINPUT,
                              "%s:%d: merged token \"%.80s%.80s\" is not in encoder.json", path,
                              lineno, fields[0], fields[1]);
            return e;
        }
        ids[k] = s->v0;
    }
    /* A pair listed twice keeps its last rank, as the reference's dict does. */
    int32_t rank = t->n_merges++;
    t->merge_a[rank] = ids[0];
    t->merge_b[rank] = ids[1];
    t->merge_out[rank] = ids[2];
    uint64_t k = pair_key(ids[0], ids[1]);
    size_t mask = t->merges_cap - 1, i = strata_bpe_pair_hash(k) & mask;
    while (t->merges[i].pair != UINT64_MAX && t->merges[i].pair != k) i = (i + 1) & mask;
    t->merges[i].pair = k;
    t->merges[i].rank = rank;
    return strata_ok();
}

static strata_err load_merges(strata_tokenizer *t, const char *path, const int u2b[324],
                              const strtab *vocab)
{
    char *text = NULL;
    size_t len = 0;
    STRATA_TRY(read_file(path, &text, &len));
    strata_err e = strata_ok();
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    t->merges_cap = 1024;
    while (t->merges_cap < 2 * n_lines) t->merges_cap *= 2;
    t->merges = malloc(t->merges_cap * sizeof *t->merges);
    t->merge_a = malloc(n_lines * sizeof *t->merge_a);
    t->merge_b = malloc(n_lines * sizeof *t->merge_b);
    t->merge_out = malloc(n_lines * sizeof *t->merge_out);
    uint8_t *buf = malloc(len + 1);
    if (!t->merges || !t->merge_a || !t->merge_b || !t->merge_out || !buf) {
        e = oom();
        goto done;
    }
    for (size_t i = 0; i < t->merges_cap; i++) t->merges[i].pair = UINT64_MAX;

    /* Like the reference, the first line ("#version: 0.2") is not a merge;
     * a merge's rank is its place in the file. */
    char *line = text;
    int lineno = 0;
    while (line < text + len) {
        char *eol = memchr(line, '\n', (size_t)(text + len - line));
        if (!eol) eol = text + len;
        *eol = 0;
        lineno++;
        char *cur = line;
        line = eol + 1;
        if (lineno == 1) {
            if (strncmp(cur, "#version", 8)) {
                e = strata_errorf(STRATA_EINPUT,
                                  "%s:1: expected the '#version' line of a GPT-2 vocab.bpe", path);
                goto done;
            }
            continue;
        }
        e = merge_line(t, path, lineno, cur, u2b, vocab, buf);
        if (e.code) goto done;
    }
    if (lineno == 0) e = strata_errorf(STRATA_EINPUT, "%s: empty file", path);
done:
    free(buf);
    free(text);
    return e;
}

/* GPT-2's pre-tokenizer. The reference runs it as a JavaScript regex, whose
 * \s is exactly [\t\n\v\f\r\p{Z}\x{FEFF}]; PCRE2's \s differs (it lacks
 * U+FEFF and has U+180E), so the class is spelled out. */
#define WS "\\t\\n\\x0B\\f\\r\\p{Z}\\x{FEFF}"
static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                                   "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";
#undef WS

static strata_err compile_pattern(strata_tokenizer *t)
{
    int errcode;
    PCRE2_SIZE erroff;
    t->re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &errcode, &erroff, NULL);
    if (!t->re) {
        char msg[256];
        pcre2_get_error_message(errcode, (PCRE2_UCHAR *)msg, sizeof msg);
        return strata_errorf(STRATA_EFAIL, "tokenizer: PCRE2 rejects GPT-2's pattern at %zu: %s",
                             (size_t)erroff, msg);
    }
    /* Without JIT (an unsupported CPU) pcre2_match interprets: slower, same result. */
    if (pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0) {
        t->jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
        t->mctx = pcre2_match_context_create(NULL);
        if (!t->jit_stack || !t->mctx) return oom();
        pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    }
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    return t->md ? strata_ok() : oom();
}

strata_err strata_tokenizer_gpt2(strata_tokenizer **out, const char *encoder_json_path,
                                 const char *vocab_bpe_path)
{
    *out = NULL;
    strata_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return oom();
    t->kind = KIND_GPT2;
    uint32_t b2u[256];
    int u2b[324];
    strata_bpe_byte_unicode_tables(b2u, u2b);
    strtab vocab = {0};
    strata_err e = load_encoder(t, encoder_json_path, u2b, &vocab);
    if (!e.code) e = load_merges(t, vocab_bpe_path, u2b, &vocab);
    strtab_free(&vocab);
    if (!e.code) e = compile_pattern(t);
    if (!e.code && strtab_init(&t->cache, 1u << 12)) e = oom();
    if (e.code) {
        strata_tokenizer_free(t);
        return e;
    }
    t->lead = (uint32_t)t->eot;
    *out = t;
    return strata_ok();
}

strata_err strata_tokenizer_hf(strata_tokenizer **out, const char *tokenizer_json_path)
{
    *out = NULL;
    strata_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return oom();
    t->kind = KIND_HF;
    strata_err e = strata_hf_load(&t->hf, tokenizer_json_path);
    if (e.code) {
        free(t);
        return e;
    }
    t->vocab_size = strata_hf_vocab_size(t->hf);
    t->eot = strata_hf_eos(t->hf);
    *out = t;
    return strata_ok();
}

/* ---- GPT-2: BPE on one piece ---------------------------------------------------------- */

/* Merges piece s[0..n) and leaves its ids in t->word; returns their count.
 *
 * The reference repeats: take the pair of lowest rank; merge its
 * occurrences left to right (non-overlapping); until no pair has a rank. A
 * heap of (rank, position) over a linked list of nodes does exactly that in
 * O(n log n): all entries of the lowest rank are popped as one round, in
 * position order, and an entry is skipped when its nodes have changed since
 * it was pushed. A merge cannot recreate the pair being merged (the new
 * token is longer than either part), so a round never grows while it runs. */
static long bpe_piece(strata_tokenizer *t, const uint8_t *s, size_t n)
{
    if (strata_bpe_grow_symbols(&t->sym, &t->prev, &t->next, &t->scratch_cap, n)) return -1;
    if (strata_bpe_grow((void **)&t->word, &t->word_cap, n, sizeof *t->word)) return -1;

    uint32_t *sym = t->sym;
    int32_t *prev = t->prev, *next = t->next;
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[s[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    t->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = merge_rank(t, sym[i], sym[i + 1]);
        if (r < 0) continue;
        if (strata_bpe_grow((void **)&t->heap, &t->heap_cap, t->heap_n + 1, sizeof *t->heap))
            return -1;
        strata_bpe_heap_push(t->heap, &t->heap_n, ((uint64_t)r << 32) | i);
    }
    while (t->heap_n) {
        uint64_t top = strata_bpe_heap_pop(t->heap, &t->heap_n);
        uint32_t r = (uint32_t)(top >> 32);
        size_t nb = 0;
        if (strata_bpe_grow((void **)&t->batch, &t->batch_cap, 1, sizeof *t->batch)) return -1;
        t->batch[nb++] = (uint32_t)top;
        while (t->heap_n && (uint32_t)(t->heap[0] >> 32) == r) {
            if (strata_bpe_grow((void **)&t->batch, &t->batch_cap, nb + 1, sizeof *t->batch))
                return -1;
            t->batch[nb++] = (uint32_t)strata_bpe_heap_pop(t->heap, &t->heap_n);
        }
        uint32_t a = t->merge_a[r], b = t->merge_b[r], ab = t->merge_out[r];
        for (size_t k = 0; k < nb; k++) {
            int32_t i = (int32_t)t->batch[k], j = next[i];
            /* stale: i was absorbed (sym changed or i unlinked) or its right neighbour changed */
            if (j < 0 || sym[i] != a || sym[j] != b || prev[j] != i) continue;
            sym[i] = ab;
            next[i] = next[j];
            if (next[j] >= 0) prev[next[j]] = i;
            prev[j] = -2; /* unlinked */
            sym[j] = UINT32_MAX;
            /* at most two new pairs per merge */
            if (strata_bpe_grow((void **)&t->heap, &t->heap_cap, t->heap_n + 2, sizeof *t->heap))
                return -1;
            if (prev[i] >= 0) {
                int32_t r2 = merge_rank(t, sym[prev[i]], ab);
                if (r2 >= 0)
                    strata_bpe_heap_push(t->heap, &t->heap_n,
                                         ((uint64_t)r2 << 32) | (uint32_t)prev[i]);
            }
            if (next[i] >= 0) {
                int32_t r2 = merge_rank(t, ab, sym[next[i]]);
                if (r2 >= 0)
                    strata_bpe_heap_push(t->heap, &t->heap_n, ((uint64_t)r2 << 32) | (uint32_t)i);
            }
        }
    }
    long m = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) t->word[m++] = sym[i];
    return m;
}

/* Appends the ids of one piece, from the cache when it has been seen.
 * Returns 0, -1 when out of memory, -2 for a piece too long for BPE's
 * 32-bit positions (2 GiB of one kind of character). */
static int encode_piece(strata_tokenizer *t, const uint8_t *s, size_t n, strata_tokens *out)
{
    if (n == 1) return tokens_push(out, &t->byte_id[s[0]], 1);
    if (n >= INT32_MAX) return -2;
    uint64_t h = 0;
    if (n <= CACHE_MAX_PIECE) {
        h = hash_bytes(s, n);
        strtab_slot *hit = strtab_find(&t->cache, s, n, h);
        if (hit) return tokens_push(out, t->cache_ids + hit->v0, hit->v1);
    }
    long m = bpe_piece(t, s, n);
    if (m < 0 || tokens_push(out, t->word, (size_t)m)) return -1;
    if (n > CACHE_MAX_PIECE) return 0;
    if (t->cache.n >= CACHE_MAX_ENTRIES) {
        strtab_clear(&t->cache);
        t->cache_ids_n = 0;
    }
    if (strata_bpe_grow((void **)&t->cache_ids, &t->cache_ids_cap, t->cache_ids_n + (size_t)m,
                        sizeof *t->cache_ids))
        return -1;
    strtab_slot *slot = strtab_add(&t->cache, s, n, h);
    if (!slot) return -1;
    slot->v0 = (uint32_t)t->cache_ids_n;
    slot->v1 = (uint32_t)m;
    memcpy(t->cache_ids + t->cache_ids_n, t->word, (size_t)m * sizeof *t->word);
    t->cache_ids_n += (size_t)m;
    return 0;
}

static strata_err piece_error(int rc, size_t at)
{
    if (rc == -2)
        return strata_errorf(STRATA_EINPUT,
                             "tokenizer: the text near byte %zu has a run of 2 GiB that GPT-2's "
                             "BPE cannot split",
                             at);
    return oom();
}

static strata_err encode_gpt2(strata_tokenizer *t, const uint8_t *s, size_t n, int more,
                              size_t *used, strata_tokens *out)
{
    /* Pieces are emitted a few matches behind the regex: with more text to
     * come, the last two matches (and any bytes after them) are held back,
     * since their extent may depend on bytes not yet seen. A gap between
     * matches (bytes that are not valid UTF-8) is a piece of its own. */
    const int lag = more ? 2 : 0;
    size_t held_s[3], held_e[3]; /* matches found but not yet emitted, oldest first */
    int n_held = 0;
    size_t emitted = 0; /* bytes [0, emitted) are tokenized */
    size_t pos = 0;
    for (;;) {
        int rc = pos < n ? pcre2_match(t->re, s, n, pos, 0, t->md, t->mctx) : PCRE2_ERROR_NOMATCH;
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
            char msg[256];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            return strata_errorf(STRATA_EFAIL, "tokenizer: regex match failed at byte %zu: %s", pos,
                                 msg);
        }
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            held_s[n_held] = ov[0];
            held_e[n_held] = ov[1];
            n_held++;
            pos = ov[1];
        }
        while (n_held > lag) {
            int rc_gap =
                held_s[0] > emitted ? encode_piece(t, s + emitted, held_s[0] - emitted, out) : 0;
            int rc_piece =
                rc_gap ? rc_gap : encode_piece(t, s + held_s[0], held_e[0] - held_s[0], out);
            if (rc_piece) return piece_error(rc_piece, held_s[0]);
            emitted = held_e[0];
            n_held--;
            memmove(held_s, held_s + 1, (size_t)n_held * sizeof *held_s);
            memmove(held_e, held_e + 1, (size_t)n_held * sizeof *held_e);
        }
        if (rc < 0) break;
    }
    if (more) {
        if (used) *used = emitted; /* the gap before a held match is held too */
        return strata_ok();
    }
    int rc = emitted < n ? encode_piece(t, s + emitted, n - emitted, out) : 0;
    if (rc) return piece_error(rc, emitted);
    if (used) *used = n;
    return strata_ok();
}

strata_err strata_tokenizer_encode(strata_tokenizer *t, const void *text, size_t n, int more,
                                   size_t *used, strata_tokens *out)
{
    const uint8_t *s = text;
    if (t->kind == KIND_HF) {
        STRATA_TRY(strata_hf_encode(t->hf, s, n, more, out));
        if (used) *used = n;
        return strata_ok();
    }
    if (t->kind == KIND_GPT2) return encode_gpt2(t, s, n, more, used, out);
    if (strata_bpe_grow((void **)&out->ids, &out->cap, out->n + n, sizeof *out->ids)) return oom();
    uint32_t *dst = out->ids + out->n;
    for (size_t i = 0; i < n; i++) dst[i] = s[i];
    out->n += n;
    if (used) *used = n;
    return strata_ok();
}

const uint8_t *strata_tokenizer_token_bytes(const strata_tokenizer *t, uint32_t id, size_t *len)
{
    if (t->kind == KIND_HF) return strata_hf_token_bytes(t->hf, id, len);
    if (id >= (uint32_t)t->vocab_size) return NULL;
    *len = t->tok_len[id];
    return t->tok_bytes + t->tok_off[id];
}

strata_err strata_tokenizer_decode(const strata_tokenizer *t, const uint32_t *ids, size_t n,
                                   uint8_t **out, size_t *out_len)
{
    if (t->kind == KIND_HF) return strata_hf_decode(t->hf, ids, n, out, out_len);
    *out = NULL;
    *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= (uint32_t)t->vocab_size)
            return strata_errorf(STRATA_EINPUT,
                                 "decode: token %zu is id %u, outside the %s vocabulary of %d", i,
                                 ids[i], strata_tokenizer_name(t), t->vocab_size);
        total += t->tok_len[ids[i]];
    }
    uint8_t *buf = malloc(total + 1);
    if (!buf) return oom();
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + k, t->tok_bytes + t->tok_off[ids[i]], t->tok_len[ids[i]]);
        k += t->tok_len[ids[i]];
    }
    buf[k] = 0;
    *out = buf;
    *out_len = k;
    return strata_ok();
}
