/* Generation with a KV cache: see include/strata/generate.h. */
#include "strata/generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/family.h"
#include "strata/gemm.h"
#include "strata/kernels.h"
#include "strata/rng.h"
#include "strata/tokenizer.h"

#define SAMPLE_TAG 0x73616d706c65ull /* "sample" */
/* Prompt tokens fed per call: prefill runs its products on this many rows
 * at a time, which bounds the decode state's memory. */
#define PREFILL_CHUNK 64

struct strata_generator {
    strata_model *m;
    const strata_family *family;
    void *dstate;
    strata_kv_cache kv;
    int pos;
    const float *head; /* (Vp, C): the token embedding when tied, else the lm head */
    float *logits;     /* (Vp) */
};

/* ---- the generator -------------------------------------------------------- */

strata_err strata_generator_create(strata_generator **out, strata_model *m, int max_T)
{
    *out = NULL;
    const strata_model_shape *s = strata_model_get_shape(m);
    const strata_family *f = strata_family_find(s->family);
    if (!f || !f->decode)
        return strata_errorf(STRATA_EINPUT, "model family %s has no decoding",
                             strata_model_family_name(m));
    if (max_T < 1 || max_T > s->block_size)
        return strata_errorf(STRATA_EINPUT, "%d positions: the model's context is 1..%d", max_T,
                             s->block_size);
    strata_generator *g = calloc(1, sizeof *g);
    if (!g) return strata_errorf(STRATA_ENOMEM, "out of memory");
    g->m = m, g->family = f;
    g->kv.n_layer = s->n_layer, g->kv.max_T = max_T, g->kv.kv_dim = s->n_kv_head * s->head_dim;
    size_t cache = (size_t)s->n_layer * max_T * g->kv.kv_dim;
    g->kv.k = malloc(cache * sizeof(float));
    g->kv.v = malloc(cache * sizeof(float));
    g->logits = malloc((size_t)s->padded_vocab * sizeof(float));
    const strata_tensor *head = strata_model_find_role(m, STRATA_ROLE_LM_HEAD);
    if (!head) head = strata_model_find_role(m, STRATA_ROLE_TOKEN_EMBED);
    g->head = strata_model_params(m) + head->offset;
    strata_err e = strata_ok();
    if (!g->kv.k || !g->kv.v || !g->logits)
        e = strata_errorf(STRATA_ENOMEM, "out of memory for a KV cache of %d positions (%.1f GiB)",
                          max_T, 2.0 * cache * 4 / (1 << 30));
    else
        e = f->decode_reserve(m, &g->dstate, PREFILL_CHUNK < max_T ? PREFILL_CHUNK : max_T, max_T);
    if (e.code) {
        strata_generator_free(g);
        return e;
    }
    *out = g;
    return strata_ok();
}

void strata_generator_free(strata_generator *g)
{
    if (!g) return;
    if (g->dstate) g->family->decode_free(g->dstate);
    free(g->kv.k), free(g->kv.v), free(g->logits);
    free(g);
}

void strata_generator_reset(strata_generator *g) { g->pos = 0; }
int strata_generator_pos(const strata_generator *g) { return g->pos; }

strata_err strata_generator_feed(strata_generator *g, const uint32_t *tokens, int n,
                                 const float **logits)
{
    const strata_model_shape *s = strata_model_get_shape(g->m);
    if (n < 1 || n > g->kv.max_T - g->pos)
        return strata_errorf(STRATA_EINPUT, "%d more tokens after %d do not fit in %d positions", n,
                             g->pos, g->kv.max_T);
    for (int i = 0; i < n; i++)
        if (tokens[i] >= (uint32_t)s->vocab_size)
            return strata_errorf(STRATA_EINPUT, "token id %u >= vocab_size %d", tokens[i],
                                 s->vocab_size);
    const float *h = NULL;
    int chunk = PREFILL_CHUNK < g->kv.max_T ? PREFILL_CHUNK : g->kv.max_T, last = 0;
    for (int i = 0; i < n; i += chunk) {
        last = n - i < chunk ? n - i : chunk;
        h = g->family->decode(g->m, g->dstate, &g->kv, tokens + i, last, g->pos);
        g->pos += last;
    }
    /* Only the last row's logits: logits (Vp) = head (Vp, C) h. A matrix-vector
     * product: sgemm would pack the whole (Vp, C) head for its one row. */
    strata_gemv_f32(s->padded_vocab, s->n_embd, 1.0f, g->head, s->n_embd,
                    h + (size_t)(last - 1) * s->n_embd, 0.0f, g->logits);
    *logits = g->logits;
    return strata_ok();
}

/* ---- the sampler ---------------------------------------------------------- */

strata_err strata_sample_check(const strata_sample_opts *o)
{
    if (!(o->temperature >= 0) || !isfinite(o->temperature))
        return strata_errorf(STRATA_EINPUT, "--temperature %g: must be >= 0 (0 = greedy)",
                             (double)o->temperature);
    if (o->top_k < 0) return strata_errorf(STRATA_EINPUT, "--top-k %d: must be >= 0", o->top_k);
    if (!(o->top_p > 0 && o->top_p <= 1))
        return strata_errorf(STRATA_EINPUT, "--top-p %g: must be in (0, 1]", (double)o->top_p);
    return strata_ok();
}

static uint32_t argmax(const float *x, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (x[v] > x[best]) best = v;
    return (uint32_t)best;
}

/* Sorts (prob, id) pairs by descending probability, ids ascending on ties. */
static int by_prob_desc(const void *a, const void *b)
{
    const float *x = a, *y = b;
    if (x[0] != y[0]) return x[0] < y[0] ? 1 : -1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

uint32_t strata_sample_token(const float *logits, int V, const strata_sample_opts *o,
                             uint64_t stream, uint64_t step, float *scratch)
{
    if (o->temperature == 0) return argmax(logits, V);
    float mx = logits[argmax(logits, V)], inv_t = 1.0f / o->temperature;
    for (int v = 0; v < V; v++) {
        scratch[2 * v] = expf((logits[v] - mx) * inv_t);
        scratch[2 * v + 1] = (float)v; /* exact: V < 2^24 */
    }
    qsort(scratch, (size_t)V, 2 * sizeof(float), by_prob_desc);
    /* Keep the top k, then the smallest prefix whose mass reaches top_p. */
    int keep = o->top_k > 0 && o->top_k < V ? o->top_k : V;
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += scratch[2 * i];
    if (o->top_p < 1) {
        double mass = 0;
        for (int i = 0; i < keep; i++) {
            mass += scratch[2 * i];
            if (mass >= o->top_p * kept) {
                keep = i + 1, kept = mass;
                break;
            }
        }
    }
    double u = strata_rng_uniform(strata_rng_u64(o->seed, SAMPLE_TAG, stream, step)) * kept;
    double acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += scratch[2 * i];
        if (u < acc) return (uint32_t)scratch[2 * i + 1];
    }
    return (uint32_t)scratch[2 * (keep - 1) + 1];
}

strata_err strata_generate(strata_generator *g, const uint32_t *prompt, int n_prompt, int n_new,
                           const strata_sample_opts *o, uint64_t stream, uint32_t *out, int *n_out,
                           int (*on_token)(void *ctx, uint32_t id), void *ctx)
{
    const strata_model_shape *s = strata_model_get_shape(g->m);
    *n_out = 0;
    STRATA_TRY(strata_sample_check(o));
    if (n_prompt < 1) return strata_errorf(STRATA_EINPUT, "the prompt holds no token");
    if (n_prompt + n_new - 1 > g->kv.max_T)
        return strata_errorf(STRATA_EINPUT,
                             "prompt of %d tokens + %d new ones exceeds the context of %d",
                             n_prompt, n_new, g->kv.max_T);
    float *scratch = o->temperature > 0 ? malloc(2 * (size_t)s->vocab_size * sizeof(float)) : NULL;
    if (o->temperature > 0 && !scratch) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_generator_reset(g);
    const float *logits = NULL;
    strata_err e = strata_generator_feed(g, prompt, n_prompt, &logits);
    for (int i = 0; !e.code && i < n_new; i++) {
        uint32_t id = strata_sample_token(logits, s->vocab_size, o, stream, (uint64_t)i, scratch);
        out[(*n_out)++] = id;
        if (on_token && on_token(ctx, id)) break;
        if (i + 1 < n_new) e = strata_generator_feed(g, &id, 1, &logits);
    }
    free(scratch);
    return e;
}

strata_err strata_generator_score(strata_generator *g, const uint32_t *tokens, int n, int n_ctx,
                                  double *mean_loss)
{
    const strata_model_shape *s = strata_model_get_shape(g->m);
    if (n_ctx < 1 || n_ctx >= n)
        return strata_errorf(STRATA_EINPUT, "score: context %d of %d tokens", n_ctx, n);
    strata_generator_reset(g);
    const float *logits = NULL;
    STRATA_TRY(strata_generator_feed(g, tokens, n_ctx, &logits));
    double total = 0;
    for (int i = n_ctx; i < n; i++) {
        float loss;
        uint32_t target = tokens[i];
        if (target >= (uint32_t)s->vocab_size)
            return strata_errorf(STRATA_EINPUT, "token id %u >= vocab_size %d", target,
                                 s->vocab_size);
        /* dlogits_scale 0: the kernel leaves the logits as they are. */
        strata_crossentropy_forward_backward(g->logits, &loss, &target, 1, s->vocab_size,
                                             s->padded_vocab, 0.0f);
        total += loss;
        if (i + 1 < n) STRATA_TRY(strata_generator_feed(g, &tokens[i], 1, &logits));
    }
    *mean_loss = total / (n - n_ctx);
    return strata_ok();
}

/* ---- streaming text ------------------------------------------------------- */

/* Length of the character a lead byte starts, 0 for a byte that is not a
 * lead (a continuation byte or an invalid one). */
static int utf8_len(uint8_t b)
{
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b <= 0xdf) return 2;
    if (b >= 0xe0 && b <= 0xef) return 3;
    if (b >= 0xf0 && b <= 0xf4) return 4;
    return 0;
}

size_t strata_utf8_push(strata_utf8_stream *s, const uint8_t *in, size_t n, uint8_t *out)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = in[i];
        if (s->n_held) {
            if ((b & 0xc0) == 0x80) {
                s->held[s->n_held++] = b;
                if (s->n_held == utf8_len(s->held[0])) {
                    memcpy(out + w, s->held, (size_t)s->n_held);
                    w += (size_t)s->n_held, s->n_held = 0;
                }
                continue;
            }
            /* Broken sequence: pass it on as it is. */
            memcpy(out + w, s->held, (size_t)s->n_held);
            w += (size_t)s->n_held, s->n_held = 0;
        }
        int len = utf8_len(b);
        if (len <= 1)
            out[w++] = b;
        else
            s->held[s->n_held++] = b;
    }
    return w;
}

size_t strata_utf8_flush(strata_utf8_stream *s, uint8_t *out)
{
    size_t n = (size_t)s->n_held;
    memcpy(out, s->held, n);
    s->n_held = 0;
    return n;
}

/* ---- the trainer's sample ------------------------------------------------- */

size_t strata_escape_line(const uint8_t *in, size_t n, char *out)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = in[i];
        const char *esc = b == '\n' ? "\\n" : b == '\t' ? "\\t" : b == '\\' ? "\\\\" : NULL;
        if (esc) {
            memcpy(out + w, esc, 2), w += 2;
        } else if (b < 0x20 || b == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out[w++] = '\\', out[w++] = 'x', out[w++] = hex[b >> 4], out[w++] = hex[b & 15];
        } else {
            out[w++] = (char)b;
        }
    }
    out[w] = 0;
    return w;
}

static strata_err load_sample_tokenizer(const char *spec, const strata_model_shape *s,
                                        strata_tokenizer **tok)
{
    size_t n = strlen(spec);
    if (!n || !strcmp(spec, "byte")) {
        if (s->vocab_size != 256)
            return strata_errorf(STRATA_EINPUT,
                                 "[log] sample_every: the model's vocab_size is %d, not the byte "
                                 "tokenizer's 256: set [log] sample_tokenizer",
                                 s->vocab_size);
        return strata_tokenizer_byte(tok);
    }
    if (n >= 5 && !strcmp(spec + n - 5, ".json")) return strata_tokenizer_hf(tok, spec);
    char enc[4200], bpe[4200];
    snprintf(enc, sizeof enc, "%s/encoder.json", spec);
    snprintf(bpe, sizeof bpe, "%s/vocab.bpe", spec);
    return strata_tokenizer_gpt2(tok, enc, bpe);
}

typedef struct text_sink {
    const strata_tokenizer *tok;
    int eot, oom;
    uint8_t *buf;
    size_t n, cap;
} text_sink;

/* Appends a token's bytes; stops at the end-of-text token. */
static int sink_token(void *ctx, uint32_t id)
{
    text_sink *s = ctx;
    if ((int)id == s->eot) return 1;
    size_t len = 0;
    const uint8_t *b = strata_tokenizer_token_bytes(s->tok, id, &len);
    if (b && s->n + len > s->cap) {
        size_t cap = 2 * (s->n + len);
        uint8_t *p = realloc(s->buf, cap);
        if (!p) return s->oom = 1;
        s->buf = p, s->cap = cap;
    }
    if (b) memcpy(s->buf + s->n, b, len), s->n += len;
    return 0;
}

/* The lead tokens and the prompt's ids, into ids (malloc'd). */
static strata_err sample_prompt_ids(strata_tokenizer *tok, const char *prompt, strata_tokens *ids)
{
    const uint32_t *lead, *tail;
    size_t n_lead, n_tail;
    strata_tokenizer_doc_tokens(tok, &lead, &n_lead, &tail, &n_tail);
    ids->cap = n_lead + 16;
    if (!(ids->ids = malloc(ids->cap * sizeof *ids->ids)))
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    memcpy(ids->ids, lead, n_lead * sizeof *lead);
    ids->n = n_lead;
    if (*prompt) STRATA_TRY(strata_tokenizer_encode(tok, prompt, strlen(prompt), 0, NULL, ids));
    if (!ids->n)
        return strata_errorf(STRATA_EINPUT, "[log] sample_prompt is empty and the tokenizer "
                                            "starts documents with no token");
    return strata_ok();
}

static strata_err train_sample_with(strata_model *m, strata_tokenizer *tok, const char *prompt,
                                    uint64_t seed, char **line)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    strata_tokens ids = {0};
    strata_err e = sample_prompt_ids(tok, prompt, &ids);
    int n_new = STRATA_TRAIN_SAMPLE_TOKENS;
    if (!e.code && (long)ids.n > s->block_size)
        e = strata_errorf(STRATA_EINPUT,
                          "[log] sample_prompt is %zu tokens, more than block_size %d", ids.n,
                          s->block_size);
    if (!e.code && (long)ids.n + n_new - 1 > s->block_size) n_new = s->block_size - (int)ids.n + 1;
    strata_generator *g = NULL;
    if (!e.code) e = strata_generator_create(&g, m, (int)ids.n + n_new - 1);
    size_t plen = strlen(prompt);
    text_sink sink = {tok, strata_tokenizer_eot(tok), 0, malloc(plen + 1), plen, plen + 1};
    uint32_t *out = malloc((size_t)n_new * sizeof *out);
    if (!e.code && (!out || !sink.buf)) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    if (!e.code) {
        memcpy(sink.buf, prompt, plen);
        strata_sample_opts o = {STRATA_TRAIN_SAMPLE_TEMPERATURE, 0, STRATA_TRAIN_SAMPLE_TOP_P,
                                seed};
        int got;
        e = strata_generate(g, ids.ids, (int)ids.n, n_new, &o, 0, out, &got, sink_token, &sink);
    }
    char *text = !e.code ? malloc(4 * sink.n + 1) : NULL;
    if (!e.code && (sink.oom || !text)) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    if (!e.code) strata_escape_line(sink.buf, sink.n, text), *line = text, text = NULL;
    free(text), free(sink.buf), free(out);
    strata_generator_free(g);
    strata_tokens_free(&ids);
    return e;
}

strata_err strata_train_sample(strata_model *m, const char *prompt, const char *tokenizer,
                               uint64_t seed, char **line)
{
    *line = NULL;
    strata_tokenizer *tok = NULL;
    STRATA_TRY(load_sample_tokenizer(tokenizer, strata_model_get_shape(m), &tok));
    strata_err e = train_sample_with(m, tok, prompt, seed, line);
    strata_tokenizer_free(tok);
    return e;
}
