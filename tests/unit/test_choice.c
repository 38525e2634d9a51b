/* test_choice.c — multiple-choice eval sets against PyTorch.
 *
 * tests/fixtures/choice/ (written by tests/fixtures/make_choice_fixture.py,
 * described at its top) holds a tiny random llama (V 256, block_size 128),
 * items.jsonl in both accepted forms and reference.txt: each candidate's
 * token row, where its continuation starts and its log-likelihood from a
 * float64 forward, and the acc / acc_norm counts. strata must build the same
 * rows (exactly: HellaSwag's preprocess, the trailing-space move, the
 * truncation to block_size + 1), score every candidate to 1e-4 and count the
 * same accuracies, for any micro-batch. Malformed files are refused with
 * STRATA_EINPUT naming the file and the line.
 */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/choice.h"
#include "strata/choice_eval.h"
#include "strata/config.h"
#include "strata/hf.h"
#include "strata/model.h"
#include "strata/tokenizer.h"

#define LL_TOL 1e-4

/* No MPI here: the rank split is tests/integration/test_choice_eval.sh's (2
 * ranks against 1), and MPI's plugins leak where LeakSanitizer cannot name them. */
static strata_comm *const comm = NULL;

typedef struct ref_cand {
    int item, choice, cont_start, len;
    double ll;
    uint32_t *row;
} ref_cand;

typedef struct reference {
    int n_items, n_cands, acc, acc_norm;
    ref_cand *c;
} reference;

static void fixture_path(char *out, size_t cap, const char *name)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    snprintf(out, cap, "%s/tests/fixtures/choice/%s", src ? src : ".", name);
}

static void read_reference(reference *r)
{
    char path[4096], line[8192];
    fixture_path(path, sizeof path, "reference.txt");
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open %s (set STRATA_SOURCE_DIR to the repository)", path);
    memset(r, 0, sizeof *r);
    int k = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (sscanf(line, "items %d cands %d", &r->n_items, &r->n_cands) == 2) {
            r->c = calloc((size_t)r->n_cands, sizeof *r->c);
            continue;
        }
        if (sscanf(line, "acc_norm %d", &r->acc_norm) == 1) continue;
        if (sscanf(line, "acc %d", &r->acc) == 1) continue;
        assert_non_null(r->c);
        assert_true(k < r->n_cands);
        ref_cand *c = &r->c[k++];
        int used;
        assert_int_equal(sscanf(line, "cand %d %d %d %lf %d%n", &c->item, &c->choice,
                                &c->cont_start, &c->ll, &c->len, &used),
                         5);
        c->row = malloc((size_t)c->len * sizeof *c->row);
        char *p = line + used;
        for (int i = 0; i < c->len; i++) c->row[i] = (uint32_t)strtoul(p, &p, 10);
    }
    fclose(f);
    assert_int_equal(k, r->n_cands);
}

static void free_reference(reference *r)
{
    for (int i = 0; i < r->n_cands; i++) free(r->c[i].row);
    free(r->c);
}

static strata_choice_set *load_fixture_set(strata_model *m, long max_items)
{
    char path[4096];
    fixture_path(path, sizeof path, "items.jsonl");
    strata_tokenizer *tok = NULL;
    assert_int_equal(strata_tokenizer_byte(&tok).code, 0);
    strata_choice_set *s = NULL;
    const strata_model_shape *sh = strata_model_get_shape(m);
    strata_err e = strata_choice_load(&s, path, tok, sh->vocab_size, sh->block_size, max_items);
    strata_tokenizer_free(tok);
    if (e.code) fail_msg("%s", e.msg);
    return s;
}

static strata_model *load_fixture_model(void)
{
    char dir[4096];
    fixture_path(dir, sizeof dir, "model");
    strata_model *m = NULL;
    strata_err e = strata_hf_import(dir, &m);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_model_get_shape(m)->block_size, 128);
    return m;
}

/* The rows strata builds are PyTorch's, token for token. */
static void test_rows_equal_reference(void **state)
{
    (void)state;
    reference r;
    read_reference(&r);
    strata_model *m = load_fixture_model();
    strata_choice_set *s = load_fixture_set(m, 0);
    assert_int_equal(s->n_items, r.n_items);
    assert_int_equal(s->n_cands, r.n_cands);
    int truncated = 0;
    for (int k = 0; k < r.n_cands; k++) {
        const strata_choice_item *it = &s->items[r.c[k].item];
        const strata_choice_cand *c = &s->cands[it->first_cand + (size_t)r.c[k].choice];
        assert_int_equal(c->len, r.c[k].len);
        assert_int_equal(c->len - c->n_cont, r.c[k].cont_start);
        for (int i = 0; i < c->len; i++)
            if (s->tokens[c->off + i] != r.c[k].row[i])
                fail_msg("item %d choice %d: token %d is %u, reference %u", r.c[k].item,
                         r.c[k].choice, i, s->tokens[c->off + i], r.c[k].row[i]);
        truncated += c->len == 129;
    }
    assert_true(truncated >= 3); /* the long contexts were cut to block_size + 1 */
    assert_int_equal(s->items[0].line, 1);
    assert_int_equal(s->items[1].answer, 1); /* HellaSwag's label as a string */
    strata_choice_free(s);
    strata_model_free(m);
    free_reference(&r);
}

static void check_scores(int micro_batch)
{
    reference r;
    read_reference(&r);
    strata_model *m = load_fixture_model();
    strata_choice_set *s = load_fixture_set(m, 0);
    strata_choice_result res;
    strata_err e = strata_choice_evaluate(m, s, comm, micro_batch, &res);
    if (e.code) fail_msg("%s", e.msg);
    double worst = 0;
    for (int k = 0; k < r.n_cands; k++) {
        size_t idx = s->items[r.c[k].item].first_cand + (size_t)r.c[k].choice;
        double d = fabs(res.ll[idx] - r.c[k].ll);
        if (d > worst) worst = d;
        if (!(d <= LL_TOL))
            fail_msg("item %d choice %d: ll %.9f, PyTorch %.9f", r.c[k].item, r.c[k].choice,
                     res.ll[idx], r.c[k].ll);
    }
    printf("micro_batch %d: worst |ll - torch| %.2e over %d candidates; acc %ld/%zu (torch %d), "
           "acc_norm %ld/%zu (torch %d)\n",
           micro_batch, worst, r.n_cands, res.correct, res.n_items, r.acc, res.correct_norm,
           res.n_items, r.acc_norm);
    assert_int_equal(res.correct, r.acc);
    assert_int_equal(res.correct_norm, r.acc_norm);
    assert_true(res.correct != res.correct_norm); /* the normalisation changed some answers */
    assert_true(fabs(res.acc - (double)r.acc / r.n_items) < 1e-15);
    assert_true(fabs(res.acc_norm - (double)r.acc_norm / r.n_items) < 1e-15);
    strata_choice_result_free(&res);
    strata_choice_free(s);
    strata_model_free(m);
    free_reference(&r);
}

static void test_scores_batch_1(void **state)
{
    (void)state;
    check_scores(1);
}

static void test_scores_batch_5(void **state)
{
    (void)state;
    check_scores(5);
}

static void test_max_items(void **state)
{
    (void)state;
    strata_model *m = load_fixture_model();
    strata_choice_set *s = load_fixture_set(m, 3);
    assert_int_equal(s->n_items, 3);
    assert_int_equal(s->n_cands, 4 + 4 + 3);
    strata_choice_free(s);
    strata_model_free(m);
}

/* ---- malformed files --------------------------------------------------- */

/* Writes text to a scratch file and loads it; returns the error. */
static strata_err load_text(const char *text, int vocab_size, int max_len, char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/strata_test_choice_%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    strata_tokenizer *tok = NULL;
    assert_int_equal(strata_tokenizer_byte(&tok).code, 0);
    strata_choice_set *s = NULL;
    strata_err e = strata_choice_load(&s, path, tok, vocab_size, max_len, 0);
    strata_tokenizer_free(tok);
    strata_choice_free(s);
    unlink(path);
    return e;
}

static void expect_bad(const char *text, int line, const char *needle, int vocab_size, int max_len)
{
    char path[256], where[300];
    strata_err e = load_text(text, vocab_size, max_len, path, sizeof path);
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    if (e.code != STRATA_EINPUT || strncmp(e.msg, where, strlen(where)) || !strstr(e.msg, needle))
        fail_msg("expected EINPUT '%s...%s', got %d '%s'", where, needle, e.code, e.msg);
}

static void test_malformed_lines(void **state)
{
    (void)state;
    const char *good = "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"answer\": 1}\n";
    char buf[4096];
#define BAD(second, needle)                                                                        \
    do {                                                                                           \
        snprintf(buf, sizeof buf, "%s\n%s\n", good, second);                                       \
        expect_bad(buf, 3, needle, 256, 128);                                                      \
    } while (0)
    BAD("{\"context\": \"a\", \"choices\": [\" b\"", "not valid JSON");
    BAD("[1, 2]", "not a JSON object");
    BAD("{\"choices\": [\" b\", \" c\"], \"answer\": 0}", "no string \"context\"");
    BAD("{\"context\": \"a\", \"choices\": [\" b\", \" c\"]}", "no integer \"answer\"");
    BAD("{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"answer\": 2}",
        "\"answer\" is 2, expected 0 to 1");
    BAD("{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"answer\": -1}", "\"answer\" is -1");
    BAD("{\"context\": \"a\", \"choices\": [\" b\"], \"answer\": 0}", "array of 2 to 64");
    BAD("{\"context\": \"a\", \"choices\": \" b\", \"answer\": 0}", "array of 2 to 64");
    BAD("{\"context\": \"a\", \"choices\": [\" b\", 3], \"answer\": 0}", "\"choices\"[1]");
    BAD("{\"context\": \"a\", \"choices\": [\" b\", \"\"], \"answer\": 0}", "\"choices\"[1]");
    BAD("{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": \"x\"}", "no integer \"label\"");
    BAD("{\"endings\": [\"b\", \"c\"], \"label\": 0}", "without a string \"ctx\"");
    BAD("{\"context\": 1, \"choices\": [\" b\", \" c\"], \"answer\": 0}", "no string \"context\"");
    BAD("{\"context\": \"a\", \"answer\": 0, \"answer\": 1, \"choices\": [\"b\", \"c\"]}",
        "not valid JSON");
#undef BAD
    /* a continuation longer than the model's positions; an id past its vocabulary */
    expect_bad("{\"context\": \"a\", \"choices\": [\" bbbbbbbbbb\", \" c\"], \"answer\": 0}\n", 1,
               "choice 0 is 11 tokens, more than the model's 8 positions", 256, 8);
    expect_bad("{\"context\": \"a\", \"choices\": [\" b\", \" \xc3\xa9\"], \"answer\": 0}\n", 1,
               "token id 195 is not below the model's vocab_size 128", 128, 64);
    /* an empty file */
    char path[256];
    strata_err e = load_text("\n\n", 256, 64, path, sizeof path);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "no items"));
    /* a missing file */
    strata_tokenizer *tok = NULL;
    assert_int_equal(strata_tokenizer_byte(&tok).code, 0);
    strata_choice_set *s = NULL;
    e = strata_choice_load(&s, "/nonexistent/x.jsonl", tok, 256, 64, 0);
    strata_tokenizer_free(tok);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "/nonexistent/x.jsonl: cannot open"));
}

/* Trailing spaces of a context move to the continuation, and a HellaSwag
 * item gets " " + ending: rows here are checked byte by byte. */
static void test_request_building(void **state)
{
    (void)state;
    char path[] = "/tmp/strata_test_choice_req_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "{\"context\": \"ab \", \"choices\": [\"c\", \"de\"], \"answer\": 0}\n"
                       "{\"activity_label\": \"L\", \"ctx_a\": \"x [title] y\", \"ctx_b\": \"zZ\", "
                       "\"endings\": [\"[step] e\", \"f\"], \"label\": 1}\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    strata_tokenizer *tok = NULL;
    assert_int_equal(strata_tokenizer_byte(&tok).code, 0);
    strata_choice_set *s = NULL;
    strata_err e = strata_choice_load(&s, path, tok, 256, 64, 0);
    unlink(path);
    strata_tokenizer_free(tok);
    if (e.code) fail_msg("%s", e.msg);
    const char *want[] = {"\0ab c", "\0ab de", "\0L: x. y Zz  e", "\0L: x. y Zz f"};
    const int cont[] = {2, 3, 3, 2};
    for (int k = 0; k < 4; k++) {
        const strata_choice_cand *c = &s->cands[k];
        size_t n = 1 + strlen(want[k] + 1);
        assert_int_equal(c->len, (int)n);
        assert_int_equal(c->n_cont, cont[k]);
        for (size_t i = 0; i < n; i++) assert_int_equal(s->tokens[c->off + i], (uint8_t)want[k][i]);
    }
    assert_true(s->cands[2].n_char == 3.0); /* "  e": the ending's "[step]" leaves its space */
    strata_choice_free(s);
}

/* The tokenizer an eval set names must be the model's. */
static void test_tokenizer_identity(void **state)
{
    (void)state;
    strata_tokenizer *tok = NULL;
    strata_err e = strata_choice_tokenizer(&tok, "byte", "", "", "", "c.ini: [eval.x] tokenizer");
    assert_int_equal(e.code, 0);
    strata_tokenizer_free(tok);
    e = strata_choice_tokenizer(&tok, "byte", "", "", "abc123", "c.ini: [eval.x] tokenizer");
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "c.ini: [eval.x] tokenizer: byte"));
    assert_null(tok);
    e = strata_choice_tokenizer(&tok, "gpt2", "", "", "", "c.ini: [eval.x] tokenizer");
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "vocab = encoder.json"));
    e = strata_choice_tokenizer(&tok, "/nonexistent/tokenizer.json", "", "", "", "w");
    assert_int_equal(e.code, STRATA_EINPUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_equal_reference), cmocka_unit_test(test_scores_batch_1),
        cmocka_unit_test(test_scores_batch_5),       cmocka_unit_test(test_max_items),
        cmocka_unit_test(test_malformed_lines),      cmocka_unit_test(test_request_building),
        cmocka_unit_test(test_tokenizer_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
