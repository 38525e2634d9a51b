/* INI configs through libinih, checked key by key against one table. */
#include "strata/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    K_INT,
    K_LONG,
    K_U64,
    K_DOUBLE,
    K_BOOL,
    K_STR,
    K_PATH,
    K_SCHED,
    K_ENUM, /* one of names[], stored as its index (int) */
    K_REPLAY,
    K_FREEZE
} key_kind;

typedef struct key_spec {
    const char *section, *name;
    key_kind kind;
    size_t offset;
    double lo, hi;            /* inclusive range for numbers */
    const char *const *names; /* K_ENUM's values, NULL-terminated */
} key_spec;

static const char *const family_names[] = {"gpt2", "llama", NULL};
static const char *const rope_names[] = {"none", "linear", "llama3", NULL};
static const char *const precision_names[] = {"fp32", "bf16", NULL};

#define OFF(field) offsetof(strata_config, field)
#define BIG        1e18

static const key_spec keys[] = {
    {"model", "init", K_PATH, OFF(model.init), 0, 0, NULL},
    {"model", "n_layer", K_INT, OFF(model.n_layer), 1, 1024, NULL},
    {"model", "n_head", K_INT, OFF(model.n_head), 1, 1024, NULL},
    {"model", "n_embd", K_INT, OFF(model.n_embd), 1, 65536, NULL},
    {"model", "block_size", K_INT, OFF(model.block_size), 2, 1 << 20, NULL},
    {"model", "vocab_size", K_INT, OFF(model.vocab_size), 2, 1 << 24, NULL},
    {"model", "family", K_ENUM, OFF(model.family), 0, 0, family_names},
    {"model", "n_kv_head", K_INT, OFF(model.n_kv_head), 0, 1024, NULL},
    {"model", "head_dim", K_INT, OFF(model.head_dim), 0, 1024, NULL},
    {"model", "ffn_dim", K_INT, OFF(model.ffn_dim), 0, 1 << 20, NULL},
    {"model", "tied", K_BOOL, OFF(model.tied), 0, 1, NULL},
    {"model", "qkv_bias", K_BOOL, OFF(model.qkv_bias), 0, 1, NULL},
    {"model", "qk_norm", K_BOOL, OFF(model.qk_norm), 0, 1, NULL},
    {"model", "sliding_window", K_INT, OFF(model.sliding_window), 0, 1 << 20, NULL},
    {"model", "norm_eps", K_DOUBLE, OFF(model.norm_eps), 0, 1, NULL},
    {"model", "rope_theta", K_DOUBLE, OFF(model.rope_theta), 0, BIG, NULL},
    {"model", "rope_scaling", K_ENUM, OFF(model.rope_type), 0, 0, rope_names},
    {"model", "rope_factor", K_DOUBLE, OFF(model.rope_factor), 0, 1e6, NULL},
    {"model", "rope_low_freq_factor", K_DOUBLE, OFF(model.rope_low_freq_factor), 0, 1e6, NULL},
    {"model", "rope_high_freq_factor", K_DOUBLE, OFF(model.rope_high_freq_factor), 0, 1e6, NULL},
    {"model", "rope_original_max", K_INT, OFF(model.rope_original_max), 0, 1 << 24, NULL},
    {"model", "dropout", K_DOUBLE, OFF(model.dropout), 0, 0.999999, NULL},
    {"data", "new", K_PATH, OFF(data.new_path), 0, 0, NULL},
    {"data", "replay", K_REPLAY, 0, 0, 0, NULL},
    {"data", "replay_ratio", K_DOUBLE, OFF(data.replay_ratio), 0, 1, NULL},
    {"data", "seq_len", K_INT, OFF(data.seq_len), 1, 1 << 20, NULL},
    {"data", "seed", K_U64, OFF(data.seed), 0, 0, NULL},
    {"data", "follow", K_BOOL, OFF(data.follow), 0, 1, NULL},
    {"data", "follow_timeout", K_DOUBLE, OFF(data.follow_timeout), 0, BIG, NULL},
    {"data", "wrap", K_BOOL, OFF(data.wrap), 0, 1, NULL},
    {"data", "shuffle_window", K_INT, OFF(data.shuffle_window), 1, 1 << 30, NULL},
    {"data", "prefetch", K_BOOL, OFF(data.prefetch), 0, 1, NULL},
    {"train", "steps", K_LONG, OFF(train.steps), 1, BIG, NULL},
    {"train", "global_batch", K_INT, OFF(train.global_batch), 1, 1 << 24, NULL},
    {"train", "micro_batch", K_INT, OFF(train.micro_batch), 1, 1 << 20, NULL},
    {"train", "lr", K_DOUBLE, OFF(train.lr), 0, 10, NULL},
    {"train", "min_lr", K_DOUBLE, OFF(train.min_lr), 0, 10, NULL},
    {"train", "warmup", K_LONG, OFF(train.warmup), 0, BIG, NULL},
    {"train", "schedule", K_SCHED, OFF(train.schedule), 0, 0, NULL},
    {"train", "decay_fraction", K_DOUBLE, OFF(train.decay_fraction), 0, 1, NULL},
    {"train", "weight_decay", K_DOUBLE, OFF(train.weight_decay), 0, 10, NULL},
    {"train", "beta1", K_DOUBLE, OFF(train.beta1), 0, 0.999999, NULL},
    {"train", "beta2", K_DOUBLE, OFF(train.beta2), 0, 0.99999999, NULL},
    {"train", "eps", K_DOUBLE, OFF(train.eps), 0, 1, NULL},
    {"train", "grad_clip", K_DOUBLE, OFF(train.grad_clip), 0, BIG, NULL},
    {"train", "zero", K_INT, OFF(train.zero), 0, 1, NULL},
    {"train", "precision", K_ENUM, OFF(train.precision), 0, 0, precision_names},
    {"train", "bucket_mb", K_DOUBLE, OFF(train.bucket_mb), 0.001, 4096, NULL},
    {"train", "comm_thread", K_BOOL, OFF(train.comm_thread), 0, 1, NULL},
    {"train", "max_bad_steps", K_INT, OFF(train.max_bad_steps), 1, 1 << 30, NULL},
    {"train", "step_timeout", K_DOUBLE, OFF(train.step_timeout), -1, BIG, NULL},
    {"train", "l2sp", K_DOUBLE, OFF(train.l2sp), 0, BIG, NULL},
    {"train", "ewc", K_DOUBLE, OFF(train.ewc), 0, BIG, NULL},
    {"train", "fisher", K_PATH, OFF(train.fisher), 0, 0, NULL},
    {"train", "l1", K_DOUBLE, OFF(train.l1), 0, BIG, NULL},
    {"train", "l1_to_init", K_BOOL, OFF(train.l1_to_init), 0, 1, NULL},
    {"train", "freeze", K_FREEZE, 0, 0, 0, NULL},
    {"train", "unfreeze_every", K_LONG, OFF(train.unfreeze_every), 0, BIG, NULL},
    {"train", "layer_lr_decay", K_DOUBLE, OFF(train.layer_lr_decay), 0.001, 1, NULL},
    {"train", "new_token_lr_mult", K_DOUBLE, OFF(train.new_token_lr_mult), 0, 1000, NULL},
    {"train", "new_token_steps", K_LONG, OFF(train.new_token_steps), 0, BIG, NULL},
    {"train", "init_seed", K_U64, OFF(train.init_seed), 0, 0, NULL},
    {"checkpoint", "dir", K_PATH, OFF(checkpoint.dir), 0, 0, NULL},
    {"checkpoint", "every", K_LONG, OFF(checkpoint.every), 0, BIG, NULL},
    {"checkpoint", "every_minutes", K_DOUBLE, OFF(checkpoint.every_minutes), 0, BIG, NULL},
    {"checkpoint", "keep", K_INT, OFF(checkpoint.keep), 0, 1 << 30, NULL},
    {"checkpoint", "keep_every", K_LONG, OFF(checkpoint.keep_every), 0, BIG, NULL},
    {"checkpoint", "resume", K_PATH, OFF(checkpoint.resume), 0, 0, NULL},
    {"log", "metrics", K_PATH, OFF(log.metrics), 0, 0, NULL},
    {"log", "every", K_LONG, OFF(log.every), 1, BIG, NULL},
    {"log", "eval_every", K_LONG, OFF(log.eval_every), 0, BIG, NULL},
    {"log", "sample_every", K_LONG, OFF(log.sample_every), 0, BIG, NULL},
    {"log", "sample_prompt", K_STR, OFF(log.sample_prompt), 0, 0, NULL},
    {"log", "sample_tokenizer", K_PATH, OFF(log.sample_tokenizer), 0, 0, NULL},
};
#define N_KEYS (sizeof keys / sizeof keys[0])

void strata_config_defaults(strata_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model.init, sizeof c->model.init, "scratch");
    c->model.n_layer = 4, c->model.n_head = 4, c->model.n_embd = 128;
    c->model.block_size = 128, c->model.vocab_size = 256;
    c->data.seq_len = 128, c->data.seed = 1234, c->data.prefetch = 1;
    c->data.shuffle_window = 1024;
    c->train.steps = 100, c->train.global_batch = 8, c->train.micro_batch = 8;
    c->train.lr = 3e-4, c->train.min_lr = 3e-5, c->train.warmup = 10;
    c->train.schedule = STRATA_SCHED_COSINE, c->train.decay_fraction = 0.2;
    c->train.weight_decay = 0.1, c->train.beta1 = 0.9, c->train.beta2 = 0.95;
    c->train.eps = 1e-8, c->train.grad_clip = 1.0, c->train.bucket_mb = 25;
    c->train.comm_thread = 1;
    c->train.max_bad_steps = 5, c->train.step_timeout = -1, c->train.layer_lr_decay = 1;
    c->train.new_token_lr_mult = 1;
    c->train.init_seed = 1337;
    c->checkpoint.dir[0] = 0; /* strata_config_load: ckpt beside the config file */
    c->checkpoint.every = 0, c->checkpoint.keep = 3;
    snprintf(c->checkpoint.resume, sizeof c->checkpoint.resume, "auto");
    c->log.every = 10, c->log.eval_every = 0;
}

typedef struct parse_ctx {
    strata_config *cfg;
    char dir[STRATA_PATH_MAX]; /* the config file's directory, for relative paths */
    const char *where;         /* file name, or "--set" */
    int line;
    char error[900];
} parse_ctx;

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

static int fail(parse_ctx *p, const char *fmt, const char *section, const char *name,
                const char *value)
{
    char what[600];
    snprintf(what, sizeof what, fmt, value);
    if (p->line > 0)
        snprintf(p->error, sizeof p->error, "%s:%d: [%s] %s: %s", p->where, p->line, section, name,
                 what);
    else
        snprintf(p->error, sizeof p->error, "%s %s.%s: %s", p->where, section, name, what);
    return 0;
}

static void resolve_path(const parse_ctx *p, const char *value, char *out)
{
    if (value[0] == '/' || !p->dir[0] || !strcmp(value, "scratch") || !strcmp(value, "auto") ||
        !strcmp(value, "never") || !strcmp(value, "byte"))
        snprintf(out, STRATA_PATH_MAX, "%s", value);
    else
        snprintf(out, STRATA_PATH_MAX, "%s/%s", p->dir, value);
}

static int parse_number(const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *trim(end) || errno || !isfinite(d)) return 0;
    *out = d;
    return 1;
}

static int parse_replay(parse_ctx *p, const char *section, const char *name, const char *value)
{
    strata_config *c = p->cfg;
    c->data.n_replay = 0;
    char buf[8192];
    snprintf(buf, sizeof buf, "%s", value);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        item = trim(item);
        if (!*item) continue;
        if (c->data.n_replay == STRATA_MAX_REPLAY) {
            char most[16];
            snprintf(most, sizeof most, "%d", STRATA_MAX_REPLAY);
            return fail(p, "more than %s replay sources", section, name, most);
        }
        strata_replay_source *r = &c->data.replay[c->data.n_replay++];
        r->weight = 1.0;
        char *colon = strrchr(item, ':');
        if (colon) {
            double w;
            if (!parse_number(colon + 1, &w) || w <= 0)
                return fail(p, "replay weight in '%s' must be a positive number", section, name,
                            item);
            r->weight = w;
            *colon = 0;
        }
        resolve_path(p, trim(item), r->path);
    }
    return 1;
}

static int parse_freeze(parse_ctx *p, const char *section, const char *name, const char *value)
{
    strata_config *c = p->cfg;
    c->train.freeze_embeddings = c->train.freeze_blocks = c->train.freeze_all_blocks = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", value);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        item = trim(item);
        long k;
        char *end;
        if (!strcmp(item, "none") || !*item) continue;
        if (!strcmp(item, "embeddings"))
            c->train.freeze_embeddings = 1;
        else if (!strcmp(item, "all_blocks"))
            c->train.freeze_all_blocks = 1;
        else if (!strncmp(item, "blocks:", 7) && (k = strtol(item + 7, &end, 10)) >= 0 && !*end &&
                 end != item + 7 && k <= 1024)
            c->train.freeze_blocks = (int)k;
        else
            return fail(p,
                        "unknown freeze keyword '%s' (expected none, embeddings, blocks:K or "
                        "all_blocks)",
                        section, name, item);
    }
    return 1;
}

static int set_eval_key(parse_ctx *p, const char *section, const char *name, const char *value)
{
    strata_config *c = p->cfg;
    const char *ename = section + 5;
    if (!*ename || strlen(ename) >= sizeof c->evals[0].name)
        return fail(p, "eval section needs a short name, like [eval.old]%s", section, name, "");
    strata_eval_config *e = NULL;
    for (int i = 0; i < c->n_evals; i++)
        if (!strcmp(c->evals[i].name, ename)) e = &c->evals[i];
    if (!e) {
        if (c->n_evals == STRATA_MAX_EVALS)
            return fail(p, "more than 8 eval sets%s", section, name, "");
        e = &c->evals[c->n_evals++];
        snprintf(e->name, sizeof e->name, "%s", ename);
    }
    if (!strcmp(name, "path")) {
        resolve_path(p, value, e->path);
        return 1;
    }
    if (!strcmp(name, "max_samples")) {
        double d;
        if (!parse_number(value, &d) || d < 0 || d != floor(d))
            return fail(p, "'%s' is not a non-negative integer", section, name, value);
        e->max_samples = (long)d;
        return 1;
    }
    if (!strcmp(name, "kind")) {
        if (strcmp(value, "loss") && strcmp(value, "choice"))
            return fail(p, "unknown kind '%s' (expected loss or choice)", section, name, value);
        e->kind = !strcmp(value, "choice") ? STRATA_EVAL_CHOICE : STRATA_EVAL_LOSS;
        return 1;
    }
    char *tok_field = !strcmp(name, "tokenizer") ? e->tokenizer
                      : !strcmp(name, "vocab")   ? e->vocab
                      : !strcmp(name, "merges")  ? e->merges
                                                 : NULL;
    if (tok_field && *value) {
        if (tok_field == e->tokenizer && (!strcmp(value, "byte") || !strcmp(value, "gpt2")))
            snprintf(tok_field, STRATA_PATH_MAX, "%s", value);
        else
            resolve_path(p, value, tok_field);
        return 1;
    }
    if (!strcmp(name, "role")) {
        static const char *roles[] = {"none", "old", "new"};
        for (int r = 0; r < 3; r++)
            if (!strcmp(value, roles[r])) {
                e->role = r, e->role_set = 1;
                return 1;
            }
        return fail(p, "'%s' is not a role (expected old, new or none)", section, name, value);
    }
    return fail(p,
                "unknown key%s (eval sets take path, max_samples, role, kind and, for kind = "
                "choice, tokenizer, vocab, merges)",
                section, name, "");
}

static int set_key_value(parse_ctx *p, const key_spec *k, const char *section, const char *name,
                         const char *value);

/* Sets a key from its text; a [model] shape key is also marked as given. */
static int set_key(parse_ctx *p, const char *section, const char *name, const char *value)
{
    if (!strncmp(section, "eval.", 5)) return set_eval_key(p, section, name, value);
    const key_spec *k = NULL;
    for (size_t i = 0; i < N_KEYS && !k; i++)
        if (!strcmp(keys[i].section, section) && !strcmp(keys[i].name, name)) k = &keys[i];
    if (!k) {
        int known_section = 0;
        for (size_t i = 0; i < N_KEYS; i++) known_section |= !strcmp(keys[i].section, section);
        return fail(p, known_section ? "unknown key%s" : "unknown section%s", section, name, "");
    }
    if (!set_key_value(p, k, section, name, value)) return 0;
    size_t i = (size_t)(k - keys);
    if (!strcmp(section, "model") && strcmp(name, "init") && strcmp(name, "dropout") &&
        i < 8 * sizeof p->cfg->model.given)
        p->cfg->model.given |= 1ul << i;
    return 1;
}

static int set_key_value(parse_ctx *p, const key_spec *k, const char *section, const char *name,
                         const char *value)
{
    char *field = (char *)p->cfg + k->offset;
    double d;
    switch (k->kind) {
    case K_PATH:
        if (!*value) return fail(p, "empty path%s", section, name, "");
        resolve_path(p, value, field);
        return 1;
    case K_STR:
        snprintf(field, STRATA_PATH_MAX, "%s", value);
        return 1;
    case K_REPLAY:
        return parse_replay(p, section, name, value);
    case K_FREEZE:
        return parse_freeze(p, section, name, value);
    case K_SCHED: {
        int s = strata_schedule_parse(value);
        if (s < 0)
            return fail(p, "unknown schedule '%s' (expected cosine, linear, constant or wsd)",
                        section, name, value);
        *(strata_schedule_kind *)field = (strata_schedule_kind)s;
        return 1;
    }
    case K_ENUM:
        for (int i = 0; k->names[i]; i++)
            if (!strcmp(value, k->names[i])) {
                *(int *)field = i;
                return 1;
            }
        {
            char expected[600];
            size_t n =
                (size_t)snprintf(expected, sizeof expected, "unknown value '%s' (expected", value);
            for (int i = 0; k->names[i] && n < sizeof expected; i++)
                n += (size_t)snprintf(expected + n, sizeof expected - n, "%s %s",
                                      i ? (k->names[i + 1] ? "," : " or") : "", k->names[i]);
            if (n < sizeof expected) snprintf(expected + n, sizeof expected - n, ")");
            return fail(p, "%s", section, name, expected);
        }
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
            *(int *)field = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
            *(int *)field = 0;
        else
            return fail(p, "'%s' is not a boolean (true or false)", section, name, value);
        return 1;
    case K_U64: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-')
            return fail(p, "'%s' is not a non-negative integer", section, name, value);
        *(uint64_t *)field = u;
        return 1;
    }
    default:
        break;
    }
    if (!parse_number(value, &d)) return fail(p, "'%s' is not a number", section, name, value);
    if ((k->kind == K_INT || k->kind == K_LONG) && d != floor(d))
        return fail(p, "'%s' is not an integer", section, name, value);
    if (d < k->lo || d > k->hi) {
        char range[600];
        snprintf(range, sizeof range, "%s is out of range [%g, %g]", value, k->lo, k->hi);
        return fail(p, "%s", section, name, range);
    }
    if (k->kind == K_INT)
        *(int *)field = (int)d;
    else if (k->kind == K_LONG)
        *(long *)field = (long)d;
    else
        *(double *)field = d;
    return 1;
}

static int on_ini_key(void *user, const char *section, const char *name, const char *value)
{
    parse_ctx *p = user;
    char v[STRATA_PATH_MAX];
    snprintf(v, sizeof v, "%s", value ? value : "");
    if (!name) return 1; /* a section header */
    return set_key(p, section, name, trim(v));
}

/* libinih reads lines through this, so the handler knows the line number. */
typedef struct line_reader {
    FILE *f;
    parse_ctx *p;
    int read_errno; /* set when fgets fails on an error, not at end of file */
} line_reader;

static char *read_line(char *str, int num, void *stream)
{
    line_reader *r = stream;
    char *s = fgets(str, num, r->f);
    if (s)
        r->p->line++;
    else if (ferror(r->f))
        r->read_errno = errno;
    return s;
}

/* --set overrides: relative paths in them are relative to the current
 * directory, as the user typed them. */
static strata_err apply_sets(parse_ctx *p, char **sets, int n_sets)
{
    p->where = "--set";
    p->line = 0;
    p->dir[0] = 0;
    for (int i = 0; i < n_sets; i++) {
        char buf[STRATA_PATH_MAX + 128];
        snprintf(buf, sizeof buf, "%s", sets[i]);
        char *eq = strchr(buf, '='), *dot = strrchr(buf, '.');
        if (eq && dot > eq) { /* a dot in the value: the key's dot comes before '=' */
            *eq = 0;
            dot = strrchr(buf, '.');
            *eq = '=';
        }
        if (!eq || !dot || dot > eq)
            return strata_errorf(STRATA_EINPUT,
                                 "--set %s: expected section.key=value (e.g. train.lr=1e-4)",
                                 sets[i]);
        *eq = 0;
        *dot = 0;
        if (!set_key(p, trim(buf), trim(dot + 1), trim(eq + 1)))
            return strata_errorf(STRATA_EINPUT, "%s", p->error);
    }
    return strata_ok();
}

/* Checks across keys of the model, data and train sections. */
static strata_err check_across_keys(const strata_config *cfg, const char *path)
{
    int from_scratch = !strcmp(cfg->model.init, "scratch");
    if (from_scratch && cfg->data.seq_len > cfg->model.block_size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] seq_len (%d) exceeds [model] block_size (%d)", path,
                             cfg->data.seq_len, cfg->model.block_size);
    if (from_scratch && cfg->model.family == STRATA_FAMILY_GPT2 &&
        cfg->model.n_embd % cfg->model.n_head)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [model] n_embd (%d) must be a multiple of n_head (%d)", path,
                             cfg->model.n_embd, cfg->model.n_head);
    if (cfg->train.min_lr > cfg->train.lr)
        return strata_errorf(STRATA_EINPUT, "%s: [train] min_lr (%g) exceeds lr (%g)", path,
                             cfg->train.min_lr, cfg->train.lr);
    if (cfg->data.replay_ratio > 0 && cfg->data.n_replay == 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] replay_ratio is %g but no [data] replay source is set",
                             path, cfg->data.replay_ratio);
    return strata_ok();
}

/* Every eval set needs a path, gets a role (from its name when none is
 * given), and has a tokenizer exactly when it is a choice set. */
static strata_err check_evals(strata_config *cfg, const char *path)
{
    for (int i = 0; i < cfg->n_evals; i++) {
        strata_eval_config *e = &cfg->evals[i];
        if (!e->path[0])
            return strata_errorf(STRATA_EINPUT, "%s: [eval.%s] needs a path", path, e->name);
        if (!e->role_set) /* fallback: the names older configs gave the roles */
            e->role = !strcmp(e->name, "old")   ? STRATA_EVAL_OLD
                      : !strcmp(e->name, "new") ? STRATA_EVAL_NEW
                                                : STRATA_EVAL_PLAIN;
    }
    for (int i = 0; i < cfg->n_evals; i++) {
        const strata_eval_config *e = &cfg->evals[i];
        if (e->kind == STRATA_EVAL_CHOICE && !e->tokenizer[0])
            return strata_errorf(STRATA_EINPUT,
                                 "%s: [eval.%s] kind = choice needs tokenizer = byte, gpt2 or the "
                                 "path of the model's tokenizer.json",
                                 path, e->name);
        if (e->kind != STRATA_EVAL_CHOICE && (e->tokenizer[0] || e->vocab[0] || e->merges[0]))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: [eval.%s] tokenizer, vocab and merges are for kind = choice",
                                 path, e->name);
    }
    return strata_ok();
}

/* The default checkpoint directory is relative to the config file, like
 * every path in it, so two runs started from one directory stay apart. */
static void default_checkpoint_dir(strata_config *cfg, const char *path)
{
    if (cfg->checkpoint.dir[0]) return;
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 0;
    snprintf(cfg->checkpoint.dir, sizeof cfg->checkpoint.dir, "%.*s%sckpt", dir_len, path,
             slash ? "/" : "");
}

strata_err strata_config_load(strata_config *cfg, const char *path, char **sets, int n_sets)
{
    strata_config_defaults(cfg);
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    parse_ctx p = {.cfg = cfg, .where = path};
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(p.dir, sizeof p.dir, "%.*s", (int)(slash - path), path);
    if (slash == path) snprintf(p.dir, sizeof p.dir, "/");

    FILE *f = fopen(path, "r");
    if (!f)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open config: %s", path, strerror(errno));
    ini_use_stack = false;
    ini_max_line = 16384;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
    line_reader reader = {f, &p, 0};
    int rc = ini_parse_stream(read_line, &reader, on_ini_key, &p);
    fclose(f);
    /* fopen succeeds on a directory; only the read says EISDIR. */
    if (reader.read_errno)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read config: %s", path,
                             strerror(reader.read_errno));
    if (rc != 0) {
        if (p.error[0]) return strata_errorf(STRATA_EINPUT, "%s", p.error);
        return strata_errorf(STRATA_EINPUT, "%s:%d: not a valid INI line", path, rc > 0 ? rc : 0);
    }

    STRATA_TRY(apply_sets(&p, sets, n_sets));
    STRATA_TRY(check_across_keys(cfg, path));
    STRATA_TRY(check_evals(cfg, path));
    default_checkpoint_dir(cfg, path);
    return strata_ok();
}

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (*len + (size_t)n < *cap) {
            *len += (size_t)n;
            return;
        }
        char *grown = realloc(*buf, *cap * 2 + (size_t)n);
        if (!grown) return;
        *buf = grown;
        *cap = *cap * 2 + (size_t)n;
    }
}

char *strata_config_text(const strata_config *c)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    buf[0] = 0;
    static const char *sched_names[] = {"cosine", "linear", "constant", "wsd"};
    const char *section = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_spec *k = &keys[i];
        if (strcmp(section, k->section)) {
            append(&buf, &len, &cap, "%s[%s]\n", len ? "\n" : "", k->section);
            section = k->section;
        }
        const char *field = (const char *)c + k->offset;
        append(&buf, &len, &cap, "%s = ", k->name);
        switch (k->kind) {
        case K_INT:
            append(&buf, &len, &cap, "%d\n", *(const int *)field);
            break;
        case K_BOOL:
            append(&buf, &len, &cap, "%s\n", *(const int *)field ? "true" : "false");
            break;
        case K_LONG:
            append(&buf, &len, &cap, "%ld\n", *(const long *)field);
            break;
        case K_U64:
            append(&buf, &len, &cap, "%llu\n", (unsigned long long)*(const uint64_t *)field);
            break;
        case K_DOUBLE:
            append(&buf, &len, &cap, "%.17g\n", *(const double *)field);
            break;
        case K_STR:
        case K_PATH:
            append(&buf, &len, &cap, "%s\n", field);
            break;
        case K_SCHED:
            append(&buf, &len, &cap, "%s\n", sched_names[*(const int *)field]);
            break;
        case K_ENUM:
            append(&buf, &len, &cap, "%s\n", k->names[*(const int *)field]);
            break;
        case K_REPLAY:
            for (int r = 0; r < c->data.n_replay; r++)
                append(&buf, &len, &cap, "%s%s:%.17g", r ? ", " : "", c->data.replay[r].path,
                       c->data.replay[r].weight);
            append(&buf, &len, &cap, "\n");
            break;
        case K_FREEZE:
            append(&buf, &len, &cap, "%s%sblocks:%d\n",
                   c->train.freeze_embeddings ? "embeddings, " : "",
                   c->train.freeze_all_blocks ? "all_blocks, " : "", c->train.freeze_blocks);
            break;
        }
    }
    for (int i = 0; i < c->n_evals; i++) {
        const strata_eval_config *e = &c->evals[i];
        append(&buf, &len, &cap, "\n[eval.%s]\npath = %s\nmax_samples = %ld\nrole = %s\n", e->name,
               e->path, e->max_samples,
               e->role == STRATA_EVAL_OLD   ? "old"
               : e->role == STRATA_EVAL_NEW ? "new"
                                            : "none");
        if (e->kind != STRATA_EVAL_CHOICE) continue;
        append(&buf, &len, &cap, "kind = choice\ntokenizer = %s\n", e->tokenizer);
        if (e->vocab[0]) append(&buf, &len, &cap, "vocab = %s\n", e->vocab);
        if (e->merges[0]) append(&buf, &len, &cap, "merges = %s\n", e->merges);
    }
    return buf;
}

/* [model]'s keys in strata_model_shape, by their index in keys[]. */
static void config_shape(const strata_config *c, strata_model_shape *s)
{
    *s = (strata_model_shape){
        .n_layer = c->model.n_layer,
        .n_head = c->model.n_head,
        .n_embd = c->model.n_embd,
        .block_size = c->model.block_size,
        .vocab_size = c->model.vocab_size,
        .family = c->model.family,
        .n_kv_head = c->model.n_kv_head,
        .head_dim = c->model.head_dim,
        .ffn_dim = c->model.ffn_dim,
        .tied = c->model.tied,
        .qkv_bias = c->model.qkv_bias,
        .qk_norm = c->model.qk_norm,
        .sliding_window = c->model.sliding_window,
        .norm_eps = (float)c->model.norm_eps,
        .rope_theta = c->model.rope_theta,
        .rope_type = c->model.rope_type,
        .rope_factor = c->model.rope_factor,
        .rope_low_freq_factor = c->model.rope_low_freq_factor,
        .rope_high_freq_factor = c->model.rope_high_freq_factor,
        .rope_original_max = c->model.rope_original_max,
    };
}

/* [model]'s shape keys and the strata_model_shape field each one sets, for
 * comparing the keys a config gives with an init checkpoint's shape. */
enum { SF_INT, SF_FLOAT, SF_DOUBLE };
#define SF(key, field, kind)                                                                       \
    {                                                                                              \
        key, offsetof(strata_model_shape, field), kind                                             \
    }
static const struct shape_field {
    const char *key;
    size_t offset;
    int kind;
} shape_fields[] = {
    SF("n_layer", n_layer, SF_INT),
    SF("n_head", n_head, SF_INT),
    SF("n_embd", n_embd, SF_INT),
    SF("block_size", block_size, SF_INT),
    SF("vocab_size", vocab_size, SF_INT),
    SF("family", family, SF_INT),
    SF("n_kv_head", n_kv_head, SF_INT),
    SF("head_dim", head_dim, SF_INT),
    SF("ffn_dim", ffn_dim, SF_INT),
    SF("tied", tied, SF_INT),
    SF("qkv_bias", qkv_bias, SF_INT),
    SF("qk_norm", qk_norm, SF_INT),
    SF("sliding_window", sliding_window, SF_INT),
    SF("norm_eps", norm_eps, SF_FLOAT),
    SF("rope_theta", rope_theta, SF_DOUBLE),
    SF("rope_scaling", rope_type, SF_INT),
    SF("rope_factor", rope_factor, SF_DOUBLE),
    SF("rope_low_freq_factor", rope_low_freq_factor, SF_DOUBLE),
    SF("rope_high_freq_factor", rope_high_freq_factor, SF_DOUBLE),
    SF("rope_original_max", rope_original_max, SF_INT),
};
#undef SF

/* A field's value; floats compared as stored (norm_eps is a float). */
static double shape_value(const strata_model_shape *s, const struct shape_field *f)
{
    const char *p = (const char *)s + f->offset;
    if (f->kind == SF_INT) return *(const int *)p;
    if (f->kind == SF_FLOAT) return *(const float *)p;
    return *(const double *)p;
}

/* Whether the config gave [model] key (set_key marks it). */
static int given(const strata_config *c, const char *key)
{
    for (size_t i = 0; i < N_KEYS && i < 8 * sizeof c->model.given; i++)
        if (!strcmp(keys[i].section, "model") && !strcmp(keys[i].name, key))
            return (int)(c->model.given >> i & 1);
    return 0;
}

strata_err strata_config_model_shape(const strata_config *c, const strata_model_shape *file,
                                     strata_model_shape *out)
{
    if (!file) {
        config_shape(c, out);
        return strata_ok();
    }
    /* Compare the keys the config gives with the checkpoint's resolved
     * values (after resolving the config's own shape the same way, so that
     * "n_kv_head = 0" and an explicit default agree). */
    strata_model_shape want;
    config_shape(c, &want);
    strata_model_resolve_shape(&want);
    for (size_t i = 0; i < sizeof shape_fields / sizeof shape_fields[0]; i++) {
        const struct shape_field *f = &shape_fields[i];
        double a = shape_value(&want, f), b = shape_value(file, f);
        if (given(c, f->key) && a != b)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: [model] %s is %g in the config but %g in init checkpoint %s",
                                 c->path, f->key, a, b, c->model.init);
    }
    *out = *file;
    return strata_ok();
}
