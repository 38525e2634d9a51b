/* tokenizer_hf_pipeline.c — normalizers, pre-tokenizers and decoders of a
 * tokenizer.json: loading each (regexes translated to PCRE2) and running
 * the normalizers and pre-tokenizers on a stretch of text. See
 * tokenizer_hf.c for the pipeline as a whole. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "bpe.h"
#include "tokenizer_hf_impl.h"

/* HF's patterns are written for Oniguruma; PCRE2 reads the same syntax but
 * a few escapes mean other things. Rewritten here so PCRE2 matches as the
 * Rust crate does: \s and \S are Unicode White_Space (PCRE2's \s also takes
 * U+180E and JavaScript's takes U+FEFF, White_Space has neither), \w and \W
 * are Oniguruma's word class (letters, marks, decimal digits, connector
 * punctuation), \h and \H are hex digits, \d is \p{Nd}. */
#define WS_CLASS                                                                                   \
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"           \
    "\\x{202F}\\x{205F}\\x{3000}"
#define WORD_CLASS "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

static int translate_pattern(const char *p, size_t n, buf *out, char *why, size_t why_len)
{
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            const char *rep = NULL, *neg = NULL;
            if (e == 's') rep = WS_CLASS;
            if (e == 'S') neg = WS_CLASS;
            if (e == 'w') rep = WORD_CLASS;
            if (e == 'W') neg = WORD_CLASS;
            if (e == 'h') rep = "0-9a-fA-F";
            if (e == 'H') neg = "0-9a-fA-F";
            if (e == 'd') rep = "\\p{Nd}";
            if (e == 'D') neg = "\\p{Nd}";
            if (rep || neg) {
                if (in_class && neg) {
                    snprintf(why, why_len, "\\%c inside a character class is not supported", e);
                    return -1;
                }
                int r = 0;
                if (!in_class) r |= strata_hfi_buf_put(out, neg ? "[^" : "[", neg ? 2 : 1);
                const char *body = rep ? rep : neg;
                r |= strata_hfi_buf_put(out, body, strlen(body));
                if (!in_class) r |= strata_hfi_buf_put(out, "]", 1);
                if (r) return -2;
                i++;
                continue;
            }
            if (strata_hfi_buf_put(out, p + i, 2)) return -2;
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            if (strata_hfi_buf_put(out, p + i, 1)) return -2;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^') {
                if (strata_hfi_buf_put(out, "^", 1)) return -2;
                i++;
            }
            if (i + 1 < n && p[i + 1] == ']') {
                if (strata_hfi_buf_put(out, "\\]", 2)) return -2;
                i++;
            }
            continue;
        }
        if (c == '[' && in_class && i + 1 < n && p[i + 1] == ':') {
            /* a POSIX class [:alpha:] inside a class: copy through */
            const char *end = memchr(p + i + 2, ']', n - i - 2);
            if (end) {
                if (strata_hfi_buf_put(out, p + i, (size_t)(end - (p + i)) + 1)) return -2;
                i = (size_t)(end - p);
                continue;
            }
        }
        if (c == '[' && in_class) {
            snprintf(why, why_len, "nested character classes are not supported");
            return -1;
        }
        if (c == ']' && in_class) in_class = 0;
        if (strata_hfi_buf_put(out, p + i, 1)) return -2;
    }
    return 0;
}

static strata_err compile_regex(strata_hf *h, const char *jpath, const char *pat, size_t n,
                                pre_step *st)
{
    buf t = {0};
    char why[200];
    int r = translate_pattern(pat, n, &t, why, sizeof why);
    if (r == -2) {
        free(t.p);
        return strata_hfi_oom();
    }
    if (r == -1) {
        free(t.p);
        return strata_hfi_bad(h, jpath, "regex \"%.100s\": %s", pat, why);
    }
    int errcode;
    PCRE2_SIZE erroff;
    st->re =
        pcre2_compile((PCRE2_SPTR)(t.p ? t.p : (uint8_t *)""), t.n,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &errcode, &erroff, NULL);
    free(t.p);
    if (!st->re) {
        char msg[256];
        pcre2_get_error_message(errcode, (PCRE2_UCHAR *)msg, sizeof msg);
        return strata_hfi_bad(h, jpath, "regex \"%.100s\" does not compile: %s", pat, msg);
    }
    /* Without JIT (an unsupported CPU) pcre2_match interprets: slower, same result. */
    if (pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0 && !h->mctx) {
        h->jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
        h->mctx = pcre2_match_context_create(NULL);
        if (!h->jit_stack || !h->mctx) return strata_hfi_oom();
        pcre2_jit_stack_assign(h->mctx, NULL, h->jit_stack);
    }
    st->md = pcre2_match_data_create_from_pattern(st->re, NULL);
    return st->md ? strata_ok() : strata_hfi_oom();
}

/* The pattern of a Split / Replace: {"String": s} or {"Regex": r}. */
static strata_err get_pattern(const strata_hf *h, const json_t *o, const char *jpath,
                              const char **s, size_t *len, int *is_regex)
{
    *s = "";
    *len = 0;
    *is_regex = 0;
    json_t *p = json_object_get(o, "pattern");
    json_t *str = json_object_get(p, "String"), *re = json_object_get(p, "Regex");
    if (!json_is_object(p) || (!json_is_string(str) && !json_is_string(re)))
        return strata_hfi_bad(h, jpath,
                              "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    json_t *v = json_is_string(str) ? str : re;
    *is_regex = !json_is_string(str);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return strata_ok();
}

/* A Replace stage (normalizer or decoder): a non-empty string pattern and
 * its content, copied into *a and *b. */
static strata_err get_replace(const strata_hf *h, const json_t *n, const char *jpath, char **a,
                              size_t *alen, char **b, size_t *blen)
{
    const char *s, *c;
    size_t len, clen;
    int is_regex;
    STRATA_TRY(get_pattern(h, n, jpath, &s, &len, &is_regex));
    if (is_regex) return strata_hfi_bad(h, jpath, "Replace with a Regex pattern is not supported");
    if (!len) return strata_hfi_bad(h, jpath, "Replace with an empty pattern");
    STRATA_TRY(strata_hfi_get_str(h, n, jpath, "content", &c, &clen));
    *a = strata_hfi_dup_n(s, len);
    *b = strata_hfi_dup_n(c, clen);
    *alen = len;
    *blen = clen;
    if (!*a || !*b) return strata_hfi_oom();
    return strata_ok();
}

strata_err strata_hfi_add_normalizer(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (strata_hfi_is_none(n)) return strata_ok();
    const char *t = NULL;
    STRATA_TRY(strata_hfi_stage_type(h, n, jpath, "a normalizer", &t));
    if (!strcmp(t, "Sequence"))
        return strata_hfi_sequence(h, n, jpath, "normalizers", depth, strata_hfi_add_normalizer);
    if (h->n_norm == MAX_NORM)
        return strata_hfi_bad(h, jpath, "more than %d normalizers", MAX_NORM);
    norm_step *st = &h->norm[h->n_norm];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "NFC")) {
        st->type = NM_NFC;
        h->has_nfc = 1;
    } else if (!strcmp(t, "Prepend")) {
        const char *s;
        size_t len;
        STRATA_TRY(strata_hfi_get_str(h, n, jpath, "prepend", &s, &len));
        st->type = NM_PREPEND;
        st->a = strata_hfi_dup_n(s, len);
        st->alen = len;
        if (!st->a) return strata_hfi_oom();
    } else if (!strcmp(t, "Replace")) {
        st->type = NM_REPLACE;
        STRATA_TRY(get_replace(h, n, jpath, &st->a, &st->alen, &st->b, &st->blen));
    } else {
        return strata_hfi_bad(h, jpath,
                              "normalizer type \"%.60s\" is not supported (NFC, Prepend, Replace, "
                              "Sequence are)",
                              t);
    }
    h->n_norm++;
    return strata_ok();
}

static strata_err get_scheme(const strata_hf *h, const json_t *o, const char *jpath, int *scheme)
{
    json_t *ps = json_object_get(o, "prepend_scheme");
    if (json_is_string(ps)) {
        const char *s = json_string_value(ps);
        if (!strcmp(s, "always"))
            *scheme = PS_ALWAYS;
        else if (!strcmp(s, "first"))
            *scheme = PS_FIRST;
        else if (!strcmp(s, "never"))
            *scheme = PS_NEVER;
        else
            return strata_hfi_bad(h, jpath,
                                  "prepend_scheme \"%.40s\" is not always, first or never", s);
        return strata_ok();
    }
    if (!strata_hfi_is_none(ps)) return strata_hfi_bad(h, jpath, "prepend_scheme must be a string");
    int aps;
    STRATA_TRY(strata_hfi_get_bool(h, o, jpath, "add_prefix_space", 1, &aps)); /* older files */
    *scheme = aps ? PS_ALWAYS : PS_NEVER;
    return strata_ok();
}

static strata_err get_replacement(const strata_hf *h, const json_t *o, const char *jpath,
                                  char rep[8], size_t *rep_len)
{
    const char *s;
    size_t len;
    STRATA_TRY(strata_hfi_get_str(h, o, jpath, "replacement", &s, &len));
    if (!len || len > 4 || strata_hfi_utf8_len((const uint8_t *)s, len, NULL) != len)
        return strata_hfi_bad(h, jpath, "replacement must be one character");
    memcpy(rep, s, len);
    *rep_len = len;
    return strata_ok();
}

static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

strata_err strata_hfi_add_pretokenizer(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (strata_hfi_is_none(n)) return strata_ok();
    const char *t = NULL;
    STRATA_TRY(strata_hfi_stage_type(h, n, jpath, "a pre-tokenizer", &t));
    if (!strcmp(t, "Sequence"))
        return strata_hfi_sequence(h, n, jpath, "pretokenizers", depth,
                                   strata_hfi_add_pretokenizer);
    if (h->n_pre == MAX_PRE)
        return strata_hfi_bad(h, jpath, "more than %d pre-tokenizers", MAX_PRE);
    pre_step *st = &h->pre[h->n_pre];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "Split")) {
        const char *s, *b;
        size_t len, blen;
        int is_regex;
        STRATA_TRY(get_pattern(h, n, jpath, &s, &len, &is_regex));
        STRATA_TRY(strata_hfi_get_str(h, n, jpath, "behavior", &b, &blen));
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        st->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(b, names[i])) st->behavior = i;
        if (st->behavior < 0)
            return strata_hfi_bad(h, jpath, "Split behavior \"%.40s\" is unknown", b);
        STRATA_TRY(strata_hfi_get_bool(h, n, jpath, "invert", 0, &st->invert));
        st->type = PT_SPLIT;
        if (is_regex) {
            STRATA_TRY(compile_regex(h, jpath, s, len, st));
        } else {
            if (!len) return strata_hfi_bad(h, jpath, "Split with an empty pattern");
            st->lit = strata_hfi_dup_n(s, len);
            st->lit_len = len;
            if (!st->lit) return strata_hfi_oom();
        }
    } else if (!strcmp(t, "ByteLevel")) {
        int use_regex;
        STRATA_TRY(strata_hfi_get_bool(h, n, jpath, "add_prefix_space", 1, &st->add_prefix_space));
        STRATA_TRY(strata_hfi_get_bool(h, n, jpath, "use_regex", 1, &use_regex));
        st->type = PT_BYTELEVEL;
        st->behavior = SB_ISOLATED;
        if (use_regex) STRATA_TRY(compile_regex(h, jpath, gpt2_pattern, strlen(gpt2_pattern), st));
        h->byte_level = 1;
    } else if (!strcmp(t, "Digits")) {
        STRATA_TRY(strata_hfi_get_bool(h, n, jpath, "individual_digits", 0, &st->individual));
        st->type = PT_DIGITS;
        st->behavior = st->individual ? SB_ISOLATED : SB_CONTIGUOUS;
    } else if (!strcmp(t, "Metaspace")) {
        st->type = PT_METASPACE;
        STRATA_TRY(get_replacement(h, n, jpath, st->rep, &st->rep_len));
        STRATA_TRY(get_scheme(h, n, jpath, &st->scheme));
        STRATA_TRY(strata_hfi_get_bool(h, n, jpath, "split", 1, &st->split));
        st->behavior = SB_MERGED_NEXT;
    } else {
        return strata_hfi_bad(
            h, jpath,
            "pre-tokenizer type \"%.60s\" is not supported (Split, ByteLevel, Digits, "
            "Metaspace, Sequence are)",
            t);
    }
    h->n_pre++;
    return strata_ok();
}

strata_err strata_hfi_add_decoder(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (strata_hfi_is_none(n)) return strata_ok();
    const char *t = NULL;
    STRATA_TRY(strata_hfi_stage_type(h, n, jpath, "a decoder", &t));
    h->has_decoder = 1;
    if (!strcmp(t, "Sequence"))
        return strata_hfi_sequence(h, n, jpath, "decoders", depth, strata_hfi_add_decoder);
    if (h->n_dec == MAX_DEC) return strata_hfi_bad(h, jpath, "more than %d decoders", MAX_DEC);
    dec_step *st = &h->dec[h->n_dec];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "ByteLevel")) {
        st->type = DC_BYTELEVEL;
    } else if (!strcmp(t, "ByteFallback")) {
        st->type = DC_BYTEFALLBACK;
    } else if (!strcmp(t, "Fuse")) {
        st->type = DC_FUSE;
    } else if (!strcmp(t, "Replace")) {
        st->type = DC_REPLACE;
        STRATA_TRY(get_replace(h, n, jpath, &st->a, &st->alen, &st->b, &st->blen));
    } else if (!strcmp(t, "Strip")) {
        const char *c;
        size_t clen;
        STRATA_TRY(strata_hfi_get_str(h, n, jpath, "content", &c, &clen));
        json_t *a = json_object_get(n, "start"), *b = json_object_get(n, "stop");
        if (!clen || !json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 ||
            json_integer_value(b) < 0 || json_integer_value(a) > 1000 ||
            json_integer_value(b) > 1000)
            return strata_hfi_bad(h, jpath,
                                  "Strip needs \"content\" and counts \"start\", \"stop\" 0..1000");
        st->type = DC_STRIP;
        st->a = strata_hfi_dup_n(c, clen);
        st->alen = clen;
        st->start = (int)json_integer_value(a);
        st->stop = (int)json_integer_value(b);
        if (!st->a) return strata_hfi_oom();
    } else if (!strcmp(t, "Metaspace")) {
        char rep[8];
        size_t rl;
        STRATA_TRY(get_replacement(h, n, jpath, rep, &rl));
        STRATA_TRY(get_scheme(h, n, jpath, &st->scheme));
        st->type = DC_METASPACE;
        st->a = strata_hfi_dup_n(rep, rl);
        st->alen = rl;
        if (!st->a) return strata_hfi_oom();
    } else {
        return strata_hfi_bad(
            h, jpath,
            "decoder type \"%.60s\" is not supported (ByteLevel, ByteFallback, Fuse, "
            "Replace, Strip, Metaspace, Sequence are)",
            t);
    }
    h->n_dec++;
    return strata_ok();
}

/* A token string of a byte-level vocabulary as raw bytes; -1 when some
 * character stands for no byte. out has room for len bytes. */
/* ---- pre-tokenizers ------------------------------------------------------------------------ */

static int is_numeric(int32_t cp)
{
    int c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

static int add_span(span **sp, size_t *cap, size_t *n, size_t off, size_t len, int match)
{
    if (strata_bpe_grow((void **)sp, cap, *n + 1, sizeof **sp)) return -1;
    (*sp)[(*n)++] = (span){off, len, match};
    return 0;
}

/* Splits s[0..n) as one pre-tokenizer does: first into parts that match and
 * parts that don't (covering all of s), then by the split behaviour, as
 * huggingface/tokenizers' NormalizedString::split. Returns 0, -1 (memory)
 * or a PCRE2 error code below -1. */
static int split_spans(strata_hf *h, const pre_step *st, int level, const uint8_t *s, size_t n,
                       size_t *count)
{
    span *parts = h->parts;
    size_t np = 0, pcap = h->parts_cap, prev = 0;
    int rc = 0;
#define PART(a, b, m)                                                                              \
    do {                                                                                           \
        if ((b) > (a) && add_span(&parts, &pcap, &np, (a), (b) - (a), (m))) {                      \
            rc = -1;                                                                               \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)
    if (st->re) {
        size_t pos = 0;
        while (pos < n) {
            int r = pcre2_match(st->re, s, n, pos, 0, st->md, h->mctx);
            if (r == PCRE2_ERROR_NOMATCH) break;
            if (r < 0) {
                rc = r < -1 ? r : -2;
                goto out;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
            size_t a = ov[0], b = ov[1];
            PART(prev, a, 0);
            PART(a, b, 1);
            prev = a > prev ? a : prev;
            if (b > a) {
                prev = b;
                pos = b;
            } else {
                size_t k = a < n ? strata_hfi_utf8_len(s + a, n - a, NULL) : 1;
                pos = a + (k ? k : 1);
            }
        }
        PART(prev, n, 0);
    } else if (st->type == PT_SPLIT || (st->type == PT_METASPACE && st->split)) {
        /* a literal: Split's pattern, or Metaspace's replacement character */
        const uint8_t *lit =
            st->type == PT_SPLIT ? (const uint8_t *)st->lit : (const uint8_t *)st->rep;
        size_t lit_len = st->type == PT_SPLIT ? st->lit_len : st->rep_len;
        for (size_t pos = 0; pos < n;) {
            const uint8_t *hit = memmem(s + pos, n - pos, lit, lit_len);
            if (!hit) break;
            size_t a = (size_t)(hit - s);
            PART(prev, a, 0);
            PART(a, a + lit_len, 1);
            prev = pos = a + lit_len;
        }
        PART(prev, n, 0);
    } else if (st->type == PT_DIGITS) {
        for (size_t i = 0; i < n;) {
            int32_t cp;
            size_t k = strata_hfi_utf8_len(s + i, n - i, &cp);
            if (k && is_numeric(cp)) {
                PART(prev, i, 0);
                PART(i, i + k, 1);
                prev = i + k;
            }
            i += k ? k : 1;
        }
        PART(prev, n, 0);
    } else {
        PART(0, n, 0);
    }
#undef PART
    if (st->invert)
        for (size_t i = 0; i < np; i++) parts[i].match = !parts[i].match;

    /* the behaviour: which parts stay, and which join their neighbours */
    span **sp = &h->spans[level];
    size_t *cap = &h->spans_cap[level], m = 0;
    int pm = 0;
    if (st->behavior == SB_MERGED_NEXT) {
        /* right to left: a match joins the part after it */
        for (size_t j = np; j-- > 0;) {
            span p = parts[j];
            if (p.match && !pm && m) {
                (*sp)[m - 1].len += (*sp)[m - 1].off - p.off;
                (*sp)[m - 1].off = p.off;
            } else if (add_span(sp, cap, &m, p.off, p.len, 0)) {
                rc = -1;
                goto out;
            }
            pm = p.match;
        }
        for (size_t a = 0, b = m ? m - 1 : 0; a < b; a++, b--) {
            span t = (*sp)[a];
            (*sp)[a] = (*sp)[b];
            (*sp)[b] = t;
        }
    } else {
        for (size_t j = 0; j < np; j++) {
            span p = parts[j];
            int join = 0;
            if (st->behavior == SB_REMOVED && p.match) continue;
            if (st->behavior == SB_MERGED_PREV) join = p.match && !pm && m;
            if (st->behavior == SB_CONTIGUOUS) join = p.match == pm && m && j;
            if (join) {
                (*sp)[m - 1].len = p.off + p.len - (*sp)[m - 1].off;
            } else if (add_span(sp, cap, &m, p.off, p.len, 0)) {
                rc = -1;
                goto out;
            }
            pm = p.match;
        }
    }
    *count = m;
out:
    h->parts = parts;
    h->parts_cap = pcap;
    return rc;
}

/* The error value of a failure of the hot path (rc: HF_*; pcre: PCRE2's code). */
static strata_err hf_error(int rc, int pcre)
{
    if (rc == HF_OOM) return strata_hfi_oom();
    if (rc == HF_LONG)
        return strata_errorf(STRATA_EINPUT, "tokenizer: a piece of 2 GiB or more cannot be merged");
    char msg[256];
    pcre2_get_error_message(pcre, (PCRE2_UCHAR *)msg, sizeof msg);
    return strata_errorf(STRATA_EFAIL, "tokenizer: regex match failed: %s", msg);
}

/* Runs pre-tokenizer stage k (k >= 1) and everything after it on one piece. */
static int run_stage(strata_hf *h, int k, const uint8_t *s, size_t n, int at_doc_start,
                     strata_tokens *out)
{
    if (k == h->n_pre) return strata_hfi_model_piece(h, s, n, out);
    const pre_step *st = &h->pre[k];
    buf *l = &h->lvl[k];
    if (st->type == PT_BYTELEVEL && !st->re && !st->add_prefix_space)
        return run_stage(h, k + 1, s, n, at_doc_start, out); /* bytes only: nothing to split */
    if (st->type == PT_BYTELEVEL && st->add_prefix_space && (!n || s[0] != ' ')) {
        l->n = 0;
        if (strata_hfi_buf_put(l, " ", 1) || strata_hfi_buf_put(l, s, n)) return HF_OOM;
        s = l->p;
        n = l->n;
    } else if (st->type == PT_METASPACE) {
        l->n = 0;
        if (strata_hfi_buf_put(l, s, n) || strata_hfi_replace_all(l, " ", 1, st->rep, st->rep_len))
            return HF_OOM;
        int pre = st->scheme == PS_ALWAYS || (st->scheme == PS_FIRST && at_doc_start);
        if (pre && (l->n < st->rep_len || memcmp(l->p, st->rep, st->rep_len))) {
            if (strata_hfi_buf_put(l, st->rep, st->rep_len)) return HF_OOM;
            memmove(l->p + st->rep_len, l->p, l->n - st->rep_len);
            memcpy(l->p, st->rep, st->rep_len);
        }
        s = l->p;
        n = l->n;
    }
    size_t cnt = 0;
    int rc = split_spans(h, st, k, s, n, &cnt);
    if (rc == -1) return HF_OOM;
    if (rc) {
        h->pcre_rc = rc;
        return HF_REGEX;
    }
    for (size_t i = 0; i < cnt; i++) {
        span p = h->spans[k][i];
        rc = run_stage(h, k + 1, s + p.off, p.len, at_doc_start && p.off == 0, out);
        if (rc) return rc;
    }
    return 0;
}

/* Pre-tokenizes the normalised text held in norm_buf. With lag, the last two
 * first-stage pieces (whose extent may still change with text to come)
 * stay held. */
strata_err strata_hfi_flush(strata_hf *h, int lag, strata_tokens *out)
{
    buf *nb = &h->norm_buf;
    int rc;
    if (!nb->n) return strata_ok();
    if (!h->n_pre && h->cut_at_metaspace) {
        /* words: cut before each "▁" that does not follow another; every word
         * but the last is final (the last may still grow) */
        static const char ms[] = "\xE2\x96\x81";
        size_t start = 0;
        for (size_t i = 1; i + 3 <= nb->n; i++) {
            if (memcmp(nb->p + i, ms, 3) || (i >= 3 && !memcmp(nb->p + i - 3, ms, 3))) continue;
            if ((rc = strata_hfi_model_piece(h, nb->p + start, i - start, out)))
                return hf_error(rc, 0);
            start = i;
        }
        if (!lag) {
            if ((rc = strata_hfi_model_piece(h, nb->p + start, nb->n - start, out)))
                return hf_error(rc, 0);
            start = nb->n;
        }
        memmove(nb->p, nb->p + start, nb->n - start);
        nb->n -= start;
        return strata_ok();
    }
    if (!h->n_pre) {
        if (lag) return strata_ok();
        if ((rc = strata_hfi_model_piece(h, nb->p, nb->n, out))) return hf_error(rc, 0);
        nb->n = 0;
        h->norm_at_doc_start = 0;
        return strata_ok();
    }
    size_t cnt = 0;
    rc = split_spans(h, &h->pre[0], MAX_PRE, nb->p, nb->n, &cnt);
    if (rc) return hf_error(rc == -1 ? HF_OOM : HF_REGEX, rc);
    size_t emit = lag ? (cnt > 2 ? cnt - 2 : 0) : cnt;
    /* spans[MAX_PRE] is stage 0's list: later stages have their own */
    for (size_t i = 0; i < emit; i++) {
        span p = h->spans[MAX_PRE][i];
        rc = run_stage(h, 1, nb->p + p.off, p.len, h->norm_at_doc_start && p.off == 0, out);
        if (rc) return hf_error(rc, h->pcre_rc);
    }
    size_t used = !lag   ? nb->n
                  : emit ? h->spans[MAX_PRE][emit - 1].off + h->spans[MAX_PRE][emit - 1].len
                         : 0;
    memmove(nb->p, nb->p + used, nb->n - used);
    nb->n -= used;
    if (used) h->norm_at_doc_start = 0;
    return strata_ok();
}

/* ---- normalisers ----------------------------------------------------------------------------- */

static int nfc_inert(int32_t cp)
{
    if ((cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xAC00 && cp <= 0xD7A3)) return 0; /* Hangul */
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    return p->combining_class == 0 && p->decomp_seqindex == UINT16_MAX &&
           p->comb_index == UINT16_MAX;
}

/* NFC of s[0..n), a stretch that starts and ends where NFC cannot reach
 * across; invalid UTF-8 bytes pass through unchanged. */
static int nfc_region(const uint8_t *s, size_t n, buf *o)
{
    size_t i = 0, run = 0;
    int inert = 1;
    while (i <= n) {
        int32_t cp = 0;
        size_t k = i < n ? strata_hfi_utf8_len(s + i, n - i, &cp) : 0;
        if (i < n && k) {
            inert &= nfc_inert(cp);
            i += k;
            continue;
        }
        /* s[run..i) is valid UTF-8 */
        if (i > run) {
            if (inert) {
                if (strata_hfi_buf_put(o, s + run, i - run)) return -1;
            } else {
                utf8proc_uint8_t *d = NULL;
                utf8proc_ssize_t dn = utf8proc_map(s + run, (utf8proc_ssize_t)(i - run), &d,
                                                   UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (dn < 0) return -1;
                int r = strata_hfi_buf_put(o, d, (size_t)dn);
                free(d);
                if (r) return -1;
            }
        }
        if (i < n && strata_hfi_buf_put(o, s + i, 1)) return -1; /* an invalid byte */
        i++;
        run = i;
        inert = 1;
    }
    return 0;
}

static int nfc(const uint8_t *s, size_t n, buf *o)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80) j++;
        if (j == n) return strata_hfi_buf_put(o, s + i, n - i);
        size_t a = j > i ? j - 1 : j; /* an ASCII starter may compose with what follows */
        if (strata_hfi_buf_put(o, s + i, a - i)) return -1;
        size_t b = j;
        while (b < n && s[b] >= 0x80) b++;
        if (nfc_region(s + a, b - a, o)) return -1;
        i = b;
    }
    return 0;
}

/* Normalises the next stretch of the current segment and appends it to
 * norm_buf, with the first pre-tokenizer's edits (ByteLevel's prefix space,
 * Metaspace's replacement) that would otherwise need the whole segment. */
strata_err strata_hfi_norm_append(strata_hf *h, const uint8_t *s, size_t n)
{
    if (!n) return strata_ok();
    int cur = -1; /* -1: s itself, else scratch[cur] */
    for (int i = 0; i < h->n_norm; i++) {
        const norm_step *st = &h->norm[i];
        const uint8_t *src = cur < 0 ? s : h->scratch[cur].p;
        size_t sn = cur < 0 ? n : h->scratch[cur].n;
        buf *dst = &h->scratch[cur == 0 ? 1 : 0];
        dst->n = 0;
        int r = 0;
        if (st->type == NM_NFC) {
            r = nfc(src, sn, dst);
        } else if (st->type == NM_PREPEND) {
            if (h->seg_fresh && sn) r = strata_hfi_buf_put(dst, st->a, st->alen);
            r = r || strata_hfi_buf_put(dst, src, sn);
        } else {
            r = strata_hfi_buf_put(dst, src, sn) ||
                strata_hfi_replace_all(dst, st->a, st->alen, st->b, st->blen);
        }
        if (r) return strata_hfi_oom();
        cur = cur == 0 ? 1 : 0;
    }
    const uint8_t *src = cur < 0 ? s : h->scratch[cur].p;
    size_t sn = cur < 0 ? n : h->scratch[cur].n;
    buf *nb = &h->norm_buf;
    const pre_step *p0 = h->n_pre ? &h->pre[0] : NULL;
    if (p0 && p0->type == PT_BYTELEVEL && p0->add_prefix_space && h->seg_fresh &&
        (!sn || src[0] != ' ') && strata_hfi_buf_put(nb, " ", 1))
        return strata_hfi_oom();
    if (p0 && p0->type == PT_METASPACE) {
        size_t at = nb->n;
        int pre = p0->scheme == PS_ALWAYS || (p0->scheme == PS_FIRST && h->seg_at_doc_start);
        if (strata_hfi_buf_put(nb, src, sn)) return strata_hfi_oom();
        buf tail = {nb->p + at, nb->n - at, 0};
        /* replace within the appended part only */
        buf tmp = {0};
        if (strata_hfi_buf_put(&tmp, tail.p, tail.n) ||
            strata_hfi_replace_all(&tmp, " ", 1, p0->rep, p0->rep_len)) {
            free(tmp.p);
            return strata_hfi_oom();
        }
        nb->n = at;
        int need =
            h->seg_fresh && pre && (tmp.n < p0->rep_len || memcmp(tmp.p, p0->rep, p0->rep_len));
        int r = (need && strata_hfi_buf_put(nb, p0->rep, p0->rep_len)) ||
                strata_hfi_buf_put(nb, tmp.p, tmp.n);
        free(tmp.p);
        if (r) return strata_hfi_oom();
    } else if (strata_hfi_buf_put(nb, src, sn)) {
        return strata_hfi_oom();
    }
    h->seg_fresh = 0;
    return strata_ok();
}
