/* test_generate.c — generation with a KV cache (include/strata/generate.h).
 *
 * - Greedy decoding of every model in tests/fixtures/sample/greedy.txt (a
 *   GPT-2 and the five llama-family fixtures: GQA, q/k/v bias, QK-norm,
 *   BF16 weights, sliding window) gives PyTorch's 64 tokens exactly
 *   (make_sample_fixtures.py recomputes the whole sequence at every step).
 * - The cache's logits at every position of that sequence, prefilled in one
 *   call and fed one token at a time, equal the training forward's over the
 *   whole sequence (strata_model_forward, itself held to PyTorch by
 *   test_llama_fixture / test_model_fixture); the score equals its loss.
 * - The sampler: greedy's tie rule, top-k 1 and a tiny top-p are greedy,
 *   the draws are a pure function of the seed, the frequencies at
 *   temperature 1 with top-k 3 follow the renormalised softmax, bad options
 *   are refused.
 * - UTF-8 streaming holds a character split across tokens until complete.
 */
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

#include "strata/generate.h"
#include "strata/hf.h"
#include "strata/model.h"

#define MAX_IDS 256

typedef struct reference {
    char name[64], dir[256];
    int n_prompt, n_new;
    uint32_t prompt[MAX_IDS], greedy[MAX_IDS];
} reference;

static int read_ids(FILE *f, uint32_t *ids, int *n)
{
    if (fscanf(f, "%d", n) != 1 || *n < 0 || *n > MAX_IDS) return -1;
    for (int i = 0; i < *n; i++)
        if (fscanf(f, "%u", &ids[i]) != 1) return -1;
    return 0;
}

/* The references of greedy.txt, in file order; returns how many. */
static int read_references(reference *refs, int max)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/tests/fixtures/sample/greedy.txt", src ? src : ".");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int n = 0;
    char line[8192];
    while (n < max && fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        FILE *l = fmemopen(line, strlen(line), "r");
        reference *r = &refs[n];
        char dir[200];
        double margin;
        assert_int_equal(fscanf(l, "%63s %199s", r->name, dir), 2);
        snprintf(r->dir, sizeof r->dir, "%s/%s", src ? src : ".", dir);
        assert_int_equal(read_ids(l, r->prompt, &r->n_prompt), 0);
        assert_int_equal(read_ids(l, r->greedy, &r->n_new), 0);
        assert_int_equal(fscanf(l, "%lf", &margin), 1);
        fclose(l);
        n++;
    }
    fclose(f);
    return n;
}

static strata_model *import(const reference *r)
{
    strata_model *m = NULL;
    strata_err e = strata_hf_import(r->dir, &m);
    if (e.code) fail_msg("%s: %s", r->dir, e.msg);
    return m;
}

static void greedy_matches_pytorch_one(const reference *r)
{
    strata_model *m = import(r);
    strata_generator *g = NULL;
    assert_int_equal(strata_generator_create(&g, m, r->n_prompt + r->n_new - 1).code, 0);
    uint32_t out[MAX_IDS];
    int got = 0;
    strata_sample_opts o = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1};
    assert_int_equal(
        strata_generate(g, r->prompt, r->n_prompt, r->n_new, &o, 0, out, &got, NULL, NULL).code, 0);
    assert_int_equal(got, r->n_new);
    int same = 0;
    while (same < got && out[same] == r->greedy[same]) same++;
    print_message("%-15s %s: %d of %d greedy tokens equal PyTorch's\n", r->name,
                  strata_model_family_name(m), same, r->n_new);
    assert_int_equal(same, r->n_new);
    /* One more position than the context is refused. */
    assert_int_equal(
        strata_generate(g, r->prompt, r->n_prompt, r->n_new + 1, &o, 0, out, &got, NULL, NULL).code,
        STRATA_EINPUT);
    strata_generator_free(g);
    strata_model_free(m);
}

static void greedy_matches_pytorch(void **state)
{
    (void)state;
    static reference refs[8];
    int n = read_references(refs, 8);
    assert_int_equal(n, 6);
    for (int i = 0; i < n; i++) greedy_matches_pytorch_one(&refs[i]);
}

static float max_abs_diff(const float *a, const float *b, int n, float *scale)
{
    float d = 0;
    *scale = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(a[i] - b[i]) > d) d = fabsf(a[i] - b[i]);
        if (fabsf(b[i]) > *scale) *scale = fabsf(b[i]);
    }
    return d;
}

/* Every position's logits through the cache against the full forward. */
static void cache_matches_full_forward_one(const reference *r)
{
    strata_model *m = import(r);
    const strata_model_shape *s = strata_model_get_shape(m);
    int T = r->n_prompt + r->n_new - 1, V = s->vocab_size, Vp = s->padded_vocab;
    uint32_t seq[MAX_IDS], targets[MAX_IDS];
    memcpy(seq, r->prompt, r->n_prompt * sizeof *seq);
    memcpy(seq + r->n_prompt, r->greedy, (r->n_new - 1) * sizeof *seq);
    memcpy(targets, seq + 1, (T - 1) * sizeof *seq);
    targets[T - 1] = r->greedy[r->n_new - 1];
    assert_int_equal(strata_model_reserve(m, 1, T).code, 0);
    float unused;
    assert_int_equal(strata_model_forward(m, seq, NULL, 1, T, NULL, &unused).code, 0);
    float *full = malloc((size_t)T * Vp * sizeof(float));
    memcpy(full, strata_model_logits(m), (size_t)T * Vp * sizeof(float));

    strata_generator *g = NULL;
    assert_int_equal(strata_generator_create(&g, m, T).code, 0);
    const float *logits;
    float worst = 0, scale;
    for (int t = 0; t < T; t++) {
        assert_int_equal(strata_generator_feed(g, &seq[t], 1, &logits).code, 0);
        float d = max_abs_diff(logits, full + (size_t)t * Vp, V, &scale);
        if (d / fmaxf(scale, 1) > worst) worst = d / fmaxf(scale, 1);
    }
    assert_int_equal(strata_generator_pos(g), T);
    /* Prefill of the whole sequence in one call (chunked inside). */
    strata_generator_reset(g);
    assert_int_equal(strata_generator_feed(g, seq, T, &logits).code, 0);
    float d_prefill = max_abs_diff(logits, full + (size_t)(T - 1) * Vp, V, &scale);
    d_prefill /= fmaxf(scale, 1);
    /* Past the context: refused. */
    assert_int_equal(strata_generator_feed(g, seq, 1, &logits).code, STRATA_EINPUT);

    float loss;
    assert_int_equal(strata_model_forward(m, seq, targets, 1, T, NULL, &loss).code, 0);
    double score = 0;
    uint32_t all[MAX_IDS];
    memcpy(all, seq, T * sizeof *seq);
    all[T] = targets[T - 1];
    assert_int_equal(strata_generator_score(g, all, T + 1, 1, &score).code, 0);
    print_message("%-15s cache vs full forward, %d positions: max |diff| %.2e token by token, "
                  "%.2e prefill; loss %.6f vs %.6f\n",
                  r->name, T, worst, d_prefill, score, loss);
    assert_true(worst < 1e-5f);
    assert_true(d_prefill < 1e-5f);
    assert_true(fabs(score - loss) < 1e-5 * fmax(1, loss));
    strata_generator_free(g);
    free(full);
    strata_model_free(m);
}

static void cache_matches_full_forward(void **state)
{
    (void)state;
    static reference refs[8];
    int n = read_references(refs, 8);
    for (int i = 0; i < n; i++) cache_matches_full_forward_one(&refs[i]);
}

/* ---- the sampler ---------------------------------------------------------- */

static void sampler_greedy_and_limits(void **state)
{
    (void)state;
    float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f, 0.0f}, scratch[12];
    strata_sample_opts greedy = {0, 0, 1, 7};
    /* Ties go to the lowest id. */
    assert_int_equal(strata_sample_token(logits, 6, &greedy, 0, 0, scratch), 1);
    strata_sample_opts top1 = {5.0f, 1, 1, 7}, tiny_p = {5.0f, 0, 1e-6f, 7};
    for (uint64_t step = 0; step < 200; step++) {
        assert_int_equal(strata_sample_token(logits, 6, &top1, 3, step, scratch), 1);
        assert_int_equal(strata_sample_token(logits, 6, &tiny_p, 3, step, scratch), 1);
    }
    /* top-p 0.5 at temperature 1 keeps ids 1 and 3 (the first two reach
     * half the mass), never 4. */
    strata_sample_opts half = {1.0f, 0, 0.5f, 7};
    int seen[6] = {0};
    for (uint64_t step = 0; step < 2000; step++)
        seen[strata_sample_token(logits, 6, &half, 0, step, scratch)]++;
    assert_int_equal(seen[0] + seen[2] + seen[4] + seen[5], 0);
    assert_true(seen[1] > 800 && seen[3] > 800);
}

static void sampler_is_seeded(void **state)
{
    (void)state;
    float logits[50], scratch[100];
    for (int v = 0; v < 50; v++) logits[v] = sinf((float)v);
    strata_sample_opts a = {0.8f, 0, 1, 11}, b = {0.8f, 0, 1, 12};
    int differ = 0;
    for (uint64_t step = 0; step < 100; step++) {
        uint32_t x = strata_sample_token(logits, 50, &a, 2, step, scratch);
        assert_int_equal(x, strata_sample_token(logits, 50, &a, 2, step, scratch));
        differ += x != strata_sample_token(logits, 50, &b, 2, step, scratch);
    }
    assert_true(differ > 50); /* another seed, other draws */
}

/* Frequencies at temperature 1, top-k 3: p_i = e^{l_i} / sum of the top 3,
 * each within 4 standard deviations over N draws. */
static void sampler_follows_softmax(void **state)
{
    (void)state;
    float logits[5] = {1.0f, 0.2f, -0.5f, 0.9f, 0.0f}, scratch[10];
    strata_sample_opts o = {1.0f, 3, 1, 99};
    const int N = 40000;
    int count[5] = {0};
    for (int i = 0; i < N; i++)
        count[strata_sample_token(logits, 5, &o, 0, (uint64_t)i, scratch)]++;
    double z = exp(1.0) + exp(0.2) + exp(0.9);
    double p[5] = {exp(1.0) / z, exp(0.2) / z, 0, exp(0.9) / z, 0};
    for (int v = 0; v < 5; v++) {
        double f = (double)count[v] / N, sd = sqrt(p[v] * (1 - p[v]) / N);
        print_message("id %d: %.4f drawn, %.4f expected\n", v, f, p[v]);
        assert_true(fabs(f - p[v]) <= 4 * sd + 1e-12);
    }
}

static void sampler_refuses_bad_options(void **state)
{
    (void)state;
    strata_sample_opts ok = {0.7f, 40, 0.9f, 1};
    assert_int_equal(strata_sample_check(&ok).code, 0);
    strata_sample_opts bad[] = {
        {-0.1f, 0, 1, 1}, {NAN, 0, 1, 1}, {1, -1, 1, 1}, {1, 0, 0, 1}, {1, 0, 1.5f, 1}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        strata_err e = strata_sample_check(&bad[i]);
        assert_int_equal(e.code, STRATA_EINPUT);
        assert_non_null(strstr(e.msg, "--"));
    }
    strata_err e = strata_sample_check(&bad[0]);
    assert_non_null(strstr(e.msg, "--temperature"));
}

/* ---- streaming ------------------------------------------------------------ */

static void utf8_stream_holds_split_characters(void **state)
{
    (void)state;
    strata_utf8_stream s = {0};
    uint8_t out[16];
    /* "é" = C3 A9 in two tokens. */
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"a\xc3", 2, out), 1);
    assert_memory_equal(out, "a", 1);
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\xa9!", 2, out), 3);
    assert_memory_equal(out, "\xc3\xa9!", 3);
    /* U+1F600 = F0 9F 98 80 as 1 + 2 + 1 bytes. */
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\xf0", 1, out), 0);
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\x9f\x98", 2, out), 0);
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\x80", 1, out), 4);
    assert_memory_equal(out, "\xf0\x9f\x98\x80", 4);
    /* An invalid byte and a broken sequence pass through as they are. */
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\xff\xe2\x82x", 4, out), 4);
    assert_memory_equal(out, "\xff\xe2\x82x", 4);
    /* An incomplete tail comes out with the flush. */
    assert_int_equal(strata_utf8_push(&s, (const uint8_t *)"\xe2\x82", 2, out), 0);
    assert_int_equal(strata_utf8_flush(&s, out), 2);
    assert_memory_equal(out, "\xe2\x82", 2);
    assert_int_equal(strata_utf8_flush(&s, out), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_matches_pytorch),
        cmocka_unit_test(cache_matches_full_forward),
        cmocka_unit_test(sampler_greedy_and_limits),
        cmocka_unit_test(sampler_is_seeded),
        cmocka_unit_test(sampler_follows_softmax),
        cmocka_unit_test(sampler_refuses_bad_options),
        cmocka_unit_test(utf8_stream_holds_split_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
