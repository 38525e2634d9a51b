/* The step with gradient accumulation (train_step.h) and the one summation
 * tree (tree_sum.h): the streaming tree equals the recursive definition
 * bitwise for every count; a step's accumulated gradients equal the tree
 * sum of the micro-batches' separate gradients bitwise, for two models of
 * different sizes used in turn in one process (the buffers belong to each
 * step object, not to the first caller); a forced out-of-memory in the
 * accumulation comes back as STRATA_ENOMEM and the object recovers. */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include "strata/mem.h"
#include "strata/model.h"
#include "strata/rng.h"
#include "strata/train_step.h"
#include "strata/tree_sum.h"

/* The definition, written independently of tree_sum.c: split at the
 * largest power of two below the count. */
static void reference_tree(float *parts, size_t n, int lo, int hi)
{
    if (hi - lo < 2) return;
    int p = 1;
    while (p * 2 < hi - lo) p *= 2;
    reference_tree(parts, n, lo, lo + p);
    reference_tree(parts, n, lo + p, hi);
    for (size_t i = 0; i < n; i++) parts[(size_t)lo * n + i] += parts[(size_t)(lo + p) * n + i];
}

static float rand_float(uint64_t k)
{
    return (float)((double)strata_rng_u64(11, k, 0, 0) / 1.8e19 - 0.5) * 3.0f;
}

static void test_tree_matches_definition(void **state)
{
    (void)state;
    enum { N = 37 };
    for (int count = 1; count <= 19; count++) {
        float *a = malloc(sizeof(float) * N * count), *b = malloc(sizeof(float) * N * count);
        float *c = malloc(sizeof(float) * N * count);
        for (int i = 0; i < N * count; i++)
            a[i] = b[i] = c[i] = rand_float((uint64_t)i * 131 + count);
        reference_tree(a, N, 0, count);
        strata_tree_sum_parts(b, N, count, 0);
        assert_memory_equal(a, b, sizeof(float) * N);
        /* Copying pushes, the last part folded in two ranges. */
        strata_tree_sum t;
        strata_tree_sum_init(&t, N, 1);
        for (int i = 0; i < count - 1; i++)
            assert_int_equal(strata_tree_sum_push(&t, c + i * N, 0).code, 0);
        float *last = c + (size_t)(count - 1) * N;
        strata_tree_sum_fold(&t, last, 20, N);
        strata_tree_sum_fold(&t, last, 0, 20);
        assert_memory_equal(a, last, sizeof(float) * N);
        strata_tree_sum_free(&t);
        free(a), free(b), free(c);
    }
}

typedef struct fixture {
    strata_model *m;
    strata_train_step *step;
    uint32_t *tokens;
    uint8_t *replay;
    strata_batch batch;
    int mb, T;
} fixture;

static void make(fixture *f, int L, int C, int n, int mb, int T)
{
    strata_model_shape s = {
        .n_layer = L, .n_head = 2, .n_embd = C, .block_size = 16, .vocab_size = 67};
    assert_int_equal(strata_model_create(&f->m, &s).code, 0);
    strata_model_init(f->m, 5);
    f->mb = mb, f->T = T;
    assert_int_equal(strata_train_step_create(&f->step, f->m, mb, T, 0).code, 0);
    f->tokens = malloc(sizeof(uint32_t) * n * (T + 1));
    f->replay = calloc(n, 1);
    for (int i = 0; i < n * (T + 1); i++)
        f->tokens[i] = (uint32_t)strata_rng_below(strata_rng_u64(3, i, C, 0), 67);
    for (int i = 0; i < n; i += 3) f->replay[i] = 1;
    f->batch =
        (strata_batch){.step = 1, .n = n, .T = T, .tokens = f->tokens, .is_replay = f->replay};
}

static void destroy(fixture *f)
{
    strata_train_step_free(f->step);
    strata_model_free(f->m);
    free(f->tokens), free(f->replay);
}

/* The micro-batches' gradients one by one, tree-summed; and the loss sums. */
static float *expected(fixture *f, strata_step_sums *sums)
{
    size_t n = strata_model_n_floats(f->m);
    int parts = (f->batch.n + f->mb - 1) / f->mb, T = f->T;
    float *all = malloc(sizeof(float) * n * parts);
    uint32_t *in = malloc(sizeof(uint32_t) * f->mb * T), *tg = malloc(sizeof(uint32_t) * f->mb * T);
    float seq[8];
    memset(sums, 0, sizeof *sums);
    for (int p = 0; p < parts; p++) {
        int first = p * f->mb, k = f->batch.n - first < f->mb ? f->batch.n - first : f->mb;
        strata_split_rows(f->tokens + (size_t)first * (T + 1), k, T, in, tg);
        strata_model_zero_grad(f->m);
        strata_backward_opts bo = {.loss_scale = 1.0f};
        float loss;
        assert_int_equal(strata_model_forward_backward(f->m, in, tg, k, T, seq, &loss, &bo).code,
                         0);
        memcpy(all + (size_t)p * n, strata_model_grads(f->m), sizeof(float) * n);
        for (int i = 0; i < k; i++) {
            if (f->replay[first + i])
                sums->loss_replay += (double)seq[i] * T, sums->tokens_replay += T;
            else
                sums->loss_new += (double)seq[i] * T, sums->tokens_new += T;
        }
    }
    reference_tree(all, n, 0, parts);
    free(in), free(tg);
    return all;
}

static void check_step(fixture *f)
{
    strata_step_sums want, got;
    float *ref = expected(f, &want);
    strata_step_opts o = {0};
    assert_int_equal(strata_train_step_gradients(f->step, &f->batch, &o, NULL, &got).code, 0);
    assert_memory_equal(ref, strata_model_grads(f->m), sizeof(float) * strata_model_n_floats(f->m));
    assert_true(got.loss_new == want.loss_new && got.loss_replay == want.loss_replay);
    assert_true(got.tokens_new == want.tokens_new && got.tokens_replay == want.tokens_replay);
    free(ref);
}

static void test_two_models_in_one_process(void **state)
{
    (void)state;
    fixture small, big;
    make(&small, 1, 16, 5, 1, 8); /* 5 micro-batches: pending sums of depth 0 and 2 */
    make(&big, 3, 32, 7, 2, 12);  /* 4 micro-batches, the last one short, a model 10x larger */
    assert_true(strata_model_n_floats(big.m) > 4 * strata_model_n_floats(small.m));
    check_step(&small);
    check_step(&big); /* would write past buffers sized for the small model */
    check_step(&small);
    destroy(&big);
    destroy(&small);
}

static void test_accumulation_out_of_memory(void **state)
{
    (void)state;
    fixture f;
    make(&f, 2, 16, 4, 1, 8);
    assert_int_equal(strata_model_reserve(f.m, 1, 8).code, 0);
    strata_step_opts o = {0};
    strata_step_sums got;
    strata_mem_fail_after(1);
    strata_err e = strata_train_step_gradients(f.step, &f.batch, &o, NULL, &got);
    long made = strata_mem_fail_after(0);
    assert_int_equal(e.code, STRATA_ENOMEM);
    assert_non_null(strstr(e.msg, "out of memory for gradient accumulation"));
    assert_true(made >= 1);
    check_step(&f); /* the next step allocates what it needs and is right */
    destroy(&f);
}

static void test_bad_shapes(void **state)
{
    (void)state;
    strata_model *m;
    strata_model_shape s = {
        .n_layer = 1, .n_head = 2, .n_embd = 16, .block_size = 16, .vocab_size = 67};
    assert_int_equal(strata_model_create(&m, &s).code, 0);
    uint32_t tok[40] = {0};
    float loss = 123.0f;
    strata_err e = strata_model_forward(m, tok, tok, 1, 17, NULL, &loss);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "block_size 16"));
    assert_true(loss == 123.0f); /* not written on failure */
    assert_int_equal(strata_model_forward(m, tok, tok, 0, 4, NULL, &loss).code, STRATA_EINPUT);
    /* Out of memory for the activations: the model stays usable. */
    strata_mem_fail_after(1);
    e = strata_model_forward(m, tok, tok, 2, 8, NULL, &loss);
    strata_mem_fail_after(0);
    assert_int_equal(e.code, STRATA_ENOMEM);
    assert_non_null(strstr(e.msg, "out of memory"));
    assert_int_equal(strata_model_forward(m, tok, tok, 2, 8, NULL, &loss).code, 0);
    assert_true(loss > 3.0f && loss < 6.0f); /* ~ln 67 for a fresh model */
    strata_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree_matches_definition),
        cmocka_unit_test(test_two_models_in_one_process),
        cmocka_unit_test(test_accumulation_out_of_memory),
        cmocka_unit_test(test_bad_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
