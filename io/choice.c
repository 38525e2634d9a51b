/* choice.c — multiple-choice JSON Lines files to token rows (see choice.h). */
#include "strata/choice.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/config.h"

/* One item's texts, before tokenizing. */
typedef struct item_text {
    char *context;
    char *cont[STRATA_CHOICE_MAX_CHOICES];
    int n, answer;
} item_text;

static void item_text_free(item_text *it)
{
    free(it->context);
    for (int i = 0; i < it->n; i++) free(it->cont[i]);
    memset(it, 0, sizeof *it);
}

/* ---- text: lm-evaluation-harness's hellaswag preprocess ---------------- */

/* Replaces every occurrence of from in s by to (to no longer than from). */
static void replace_all(char *s, const char *from, const char *to)
{
    size_t nf = strlen(from), nt = strlen(to);
    char *w = s;
    for (const char *r = s; *r;) {
        if (!strncmp(r, from, nf)) {
            memcpy(w, to, nt);
            w += nt, r += nf;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

/* Python's str.strip(), then " [title]" -> ". ", re.sub("\\[.*?\\]", ""),
 * "  " -> " " (one pass each, as the task does). In place. */
static void preprocess(char *s)
{
    size_t n = strlen(s), b = 0;
    while (b < n && isspace((unsigned char)s[b])) b++;
    while (n > b && isspace((unsigned char)s[n - 1])) n--;
    memmove(s, s + b, n - b);
    s[n - b] = 0;
    replace_all(s, " [title]", ". ");
    char *w = s;
    for (char *r = s; *r;) {
        char *close = *r == '[' ? strchr(r + 1, ']') : NULL;
        if (close) {
            r = close + 1;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
    /* one left-to-right pass: "   " becomes "  ", as Python's replace */
    w = s;
    for (char *r = s; *r;) {
        if (r[0] == ' ' && r[1] == ' ') r++;
        *w++ = *r++;
    }
    *w = 0;
}

static char *concat3(const char *a, const char *b, const char *c)
{
    size_t na = strlen(a), nb = strlen(b), nc = strlen(c);
    char *s = malloc(na + nb + nc + 1);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb);
    memcpy(s + na + nb, c, nc + 1);
    return s;
}

/* ---- JSON fields ------------------------------------------------------- */

static strata_err bad(const char *path, long line, const char *what)
{
    return strata_errorf(STRATA_EINPUT, "%s:%ld: %s", path, line, what);
}

static const char *str_field(const json_t *o, const char *key) /* NULL if absent or not a string */
{
    return json_string_value(json_object_get(o, key));
}

/* "answer"/"label": an integer, or (HellaSwag on the hub) a string of one. */
static int int_field(const json_t *o, const char *key, long *out)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v)) {
        *out = (long)json_integer_value(v);
        return 1;
    }
    const char *s = json_string_value(v);
    char *end;
    if (!s || !*s) return 0;
    errno = 0;
    *out = strtol(s, &end, 10);
    return !*end && !errno;
}

/* The continuations of an array of strings, each prefix + text. */
static strata_err read_conts(const json_t *arr, const char *key, const char *prefix, int hellaswag,
                             item_text *it, const char *path, long line)
{
    char msg[256];
    size_t n = json_array_size(arr);
    if (!json_is_array(arr) || n < 2 || n > STRATA_CHOICE_MAX_CHOICES) {
        snprintf(msg, sizeof msg, "\"%s\" must be an array of 2 to %d strings", key,
                 STRATA_CHOICE_MAX_CHOICES);
        return bad(path, line, msg);
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        if (!s || !*s) {
            snprintf(msg, sizeof msg, "\"%s\"[%zu] is not a non-empty string", key, i);
            return bad(path, line, msg);
        }
        char *c = concat3(prefix, "", s);
        if (!c) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
        if (hellaswag) preprocess(c + strlen(prefix));
        it->cont[it->n++] = c;
    }
    return strata_ok();
}

/* HellaSwag's context: [activity_label ": "] + ctx_a + " " + Capitalized(ctx_b), or ctx. */
static char *hellaswag_context(const json_t *o)
{
    const char *a = str_field(o, "ctx_a"), *b = str_field(o, "ctx_b");
    char *ctx;
    if (a) {
        char *cb = strdup(b ? b : "");
        if (!cb) return NULL;
        for (size_t i = 0; cb[i]; i++)
            cb[i] = (char)(i ? tolower((unsigned char)cb[i]) : toupper((unsigned char)cb[i]));
        ctx = concat3(a, " ", cb);
        free(cb);
    } else {
        ctx = strdup(str_field(o, "ctx"));
    }
    const char *label = str_field(o, "activity_label");
    if (ctx && label) {
        char *l = concat3(label, ": ", ctx);
        free(ctx);
        ctx = l;
    }
    if (ctx) preprocess(ctx);
    return ctx;
}

static strata_err parse_item(const json_t *o, item_text *it, const char *path, long line)
{
    if (!json_is_object(o)) return bad(path, line, "not a JSON object");
    int hs = json_object_get(o, "endings") != NULL;
    if (hs && !str_field(o, "ctx") && !str_field(o, "ctx_a"))
        return bad(path, line,
                   "HellaSwag item (\"endings\") without a string \"ctx\" or \"ctx_a\"");
    if (!hs && !str_field(o, "context"))
        return bad(path, line,
                   "no string \"context\" (expected {\"context\", \"choices\", \"answer\"} or "
                   "HellaSwag's {\"ctx\", \"endings\", \"label\"})");
    const char *akey = hs ? "label" : "answer";
    long answer;
    if (!int_field(o, akey, &answer)) {
        char msg[128];
        snprintf(msg, sizeof msg, "no integer \"%s\"", akey);
        return bad(path, line, msg);
    }
    it->context = hs ? hellaswag_context(o) : strdup(str_field(o, "context"));
    if (!it->context) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    const char *ckey = hs ? "endings" : "choices";
    STRATA_TRY(read_conts(json_object_get(o, ckey), ckey, hs ? " " : "", hs, it, path, line));
    if (answer < 0 || answer >= it->n) {
        char msg[128];
        snprintf(msg, sizeof msg, "\"%s\" is %ld, expected 0 to %d", akey, answer, it->n - 1);
        return bad(path, line, msg);
    }
    it->answer = (int)answer;
    /* lm-evaluation-harness moves the context's trailing spaces to the continuations */
    size_t n = strlen(it->context), k = n;
    while (k > 0 && it->context[k - 1] == ' ') k--;
    if (k < n) {
        for (int i = 0; i < it->n; i++) {
            char *c = concat3(it->context + k, "", it->cont[i]);
            if (!c) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
            free(it->cont[i]);
            it->cont[i] = c;
        }
        it->context[k] = 0;
    }
    return strata_ok();
}

/* ---- tokens ------------------------------------------------------------ */

static double utf8_chars(const char *s)
{
    double n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return 0;
    *p = q, *cap = c;
    return 1;
}

typedef struct builder {
    strata_choice_set *s;
    size_t cap_items, cap_cands, cap_tokens;
    strata_tokenizer *tok;
    int vocab_size, max_len;
    strata_tokens enc; /* scratch */
} builder;

/* lead + encode(text) into b->enc. */
static strata_err encode_row(builder *b, const char *text)
{
    const uint32_t *lead, *tail;
    size_t n_lead, n_tail;
    strata_tokenizer_doc_tokens(b->tok, &lead, &n_lead, &tail, &n_tail);
    b->enc.n = 0;
    for (size_t i = 0; i < n_lead; i++) {
        if (!grow((void **)&b->enc.ids, &b->enc.cap, b->enc.n + 1, sizeof(uint32_t)))
            return strata_errorf(STRATA_ENOMEM, "out of memory");
        b->enc.ids[b->enc.n++] = lead[i];
    }
    return strata_tokenizer_encode(b->tok, text, strlen(text), 0, NULL, &b->enc);
}

static strata_err add_cand(builder *b, const item_text *it, int i, size_t n_ctx, long line)
{
    strata_choice_set *s = b->s;
    char *whole = concat3(it->context, "", it->cont[i]);
    if (!whole) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_err e = encode_row(b, whole);
    free(whole);
    if (e.code) return bad(s->path, line, e.msg);
    char msg[256];
    if (b->enc.n <= n_ctx) {
        snprintf(msg, sizeof msg, "choice %d adds no token to the context", i);
        return bad(s->path, line, msg);
    }
    int n_cont = (int)(b->enc.n - n_ctx);
    if (n_cont > b->max_len) {
        snprintf(msg, sizeof msg, "choice %d is %d tokens, more than the model's %d positions", i,
                 n_cont, b->max_len);
        return bad(s->path, line, msg);
    }
    size_t len = b->enc.n < (size_t)b->max_len + 1 ? b->enc.n : (size_t)b->max_len + 1;
    const uint32_t *row = b->enc.ids + (b->enc.n - len); /* keeps the last max_len + 1 */
    for (size_t k = 0; k < len; k++)
        if (row[k] >= (uint32_t)b->vocab_size) {
            snprintf(msg, sizeof msg, "token id %u is not below the model's vocab_size %d", row[k],
                     b->vocab_size);
            return bad(s->path, line, msg);
        }
    if (!grow((void **)&s->tokens, &b->cap_tokens, s->n_tokens + len, sizeof(uint32_t)) ||
        !grow((void **)&s->cands, &b->cap_cands, s->n_cands + 1, sizeof *s->cands))
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
    memcpy(s->tokens + s->n_tokens, row, len * sizeof(uint32_t));
    s->cands[s->n_cands++] = (strata_choice_cand){
        .off = s->n_tokens, .len = (int)len, .n_cont = n_cont, .n_char = utf8_chars(it->cont[i])};
    s->n_tokens += len;
    return strata_ok();
}

static strata_err add_item(builder *b, const item_text *it, long line)
{
    strata_choice_set *s = b->s;
    strata_err e = encode_row(b, it->context);
    if (e.code) return bad(s->path, line, e.msg);
    size_t n_ctx = b->enc.n;
    if (n_ctx == 0) /* nothing to predict the first continuation token from */
        return bad(s->path, line,
                   "the context gives no token (and the tokenizer puts none "
                   "before a document)");
    if (!grow((void **)&s->items, &b->cap_items, s->n_items + 1, sizeof *s->items))
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
    s->items[s->n_items] = (strata_choice_item){
        .first_cand = s->n_cands, .n_cands = it->n, .answer = it->answer, .line = line};
    for (int i = 0; i < it->n; i++) STRATA_TRY(add_cand(b, it, i, n_ctx, line));
    s->n_items++;
    return strata_ok();
}

/* ---- the file ---------------------------------------------------------- */

static strata_err read_lines(builder *b, FILE *fp, long max_items)
{
    const char *path = b->s->path;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    long line = 0;
    strata_err e = strata_ok();
    errno = 0;
    while (!e.code && (max_items <= 0 || (long)b->s->n_items < max_items) &&
           (len = getline(&buf, &cap, fp)) >= 0) {
        line++;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) len--;
        if (strspn(buf, " \t") >= (size_t)len) continue; /* blank */
        json_error_t jerr;
        json_t *o = json_loadb(buf, (size_t)len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (!o) {
            char msg[300];
            snprintf(msg, sizeof msg, "not valid JSON (column %d: %s)", jerr.column, jerr.text);
            e = bad(path, line, msg);
            break;
        }
        item_text it = {0};
        e = parse_item(o, &it, path, line);
        json_decref(o);
        if (!e.code) e = add_item(b, &it, line);
        item_text_free(&it);
    }
    if (!e.code && ferror(fp))
        e = strata_errorf(STRATA_EINPUT, "%s: cannot read: %s", path, strerror(errno));
    if (!e.code && b->s->n_items == 0)
        e = strata_errorf(STRATA_EINPUT, "%s: no items (expected one JSON object per line)", path);
    free(buf);
    return e;
}

strata_err strata_choice_load(strata_choice_set **out, const char *path, strata_tokenizer *tok,
                              int vocab_size, int max_len, long max_items)
{
    *out = NULL;
    if (max_len < 1) return strata_errorf(STRATA_EFAIL, "%s: max_len %d < 1", path, max_len);
    FILE *fp = fopen(path, "r");
    if (!fp) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    strata_choice_set *s = calloc(1, sizeof *s);
    builder b = {.s = s, .tok = tok, .vocab_size = vocab_size, .max_len = max_len};
    strata_err e = s && (s->path = strdup(path)) ? read_lines(&b, fp, max_items)
                                                 : strata_errorf(STRATA_ENOMEM, "out of memory");
    fclose(fp);
    strata_tokens_free(&b.enc);
    if (e.code) {
        strata_choice_free(s);
        return e;
    }
    *out = s;
    return strata_ok();
}

void strata_choice_free(strata_choice_set *s)
{
    if (!s) return;
    free(s->path);
    free(s->items);
    free(s->cands);
    free(s->tokens);
    free(s);
}

strata_err strata_choice_tokenizer(strata_tokenizer **out, const char *name, const char *vocab,
                                   const char *merges, const char *model_hash, const char *where)
{
    *out = NULL;
    strata_err e;
    if (!name || !*name)
        return strata_errorf(STRATA_EINPUT,
                             "%s: not set (a choice set needs the model's tokenizer: byte, gpt2 "
                             "or the path of its tokenizer.json)",
                             where);
    if (!strcmp(name, "byte")) {
        e = strata_tokenizer_byte(out);
    } else if (!strcmp(name, "gpt2")) {
        if (!vocab || !*vocab || !merges || !*merges)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: gpt2 needs vocab = encoder.json and merges = vocab.bpe in "
                                 "the same section (tests/fetch_gpt2_tokenizer.sh fetches them)",
                                 where);
        e = strata_tokenizer_gpt2(out, vocab, merges);
    } else {
        if (access(name, F_OK))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: '%s' is not byte, gpt2 or a readable tokenizer.json: %s",
                                 where, name, strerror(errno));
        e = strata_tokenizer_hf(out, name);
    }
    if (e.code) return e;
    if (model_hash && *model_hash && strcmp(model_hash, strata_tokenizer_hash(*out))) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %s (identity '%s') is not the model's tokenizer (identity %s)",
                          where, name, strata_tokenizer_hash(*out), model_hash);
        strata_tokenizer_free(*out);
        *out = NULL;
    }
    return e;
}

strata_err strata_choice_open(strata_choice_set **out, const strata_eval_config *ec, int vocab_size,
                              int block_size, const char *model_hash, const char *config_path)
{
    *out = NULL;
    char where[STRATA_PATH_MAX + 96];
    snprintf(where, sizeof where, "%s: [eval.%s] tokenizer", config_path, ec->name);
    strata_tokenizer *tok = NULL;
    STRATA_TRY(
        strata_choice_tokenizer(&tok, ec->tokenizer, ec->vocab, ec->merges, model_hash, where));
    strata_err e = strata_choice_load(out, ec->path, tok, vocab_size, block_size, ec->max_samples);
    strata_tokenizer_free(tok);
    return e;
}
