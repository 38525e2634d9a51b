/* test_vocab_extend.c — vocabulary extension (vocab_extend.h): old rows and
 * every other tensor bitwise kept, new rows at the mean of the old ones
 * (plus seeded noise of the asked size), old tokens' logits unchanged to
 * 1e-6 for both families, the checkpoint round trip bitwise, the
 * tokenizer check naming the first renumbered id of a real renumbering
 * tokenizer.json, and the new-token lr groups moving the new rows exactly
 * new_token_lr_mult times as far in AdamW's first step. */
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

#include "strata/ckpt.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/rng.h"
#include "strata/tokenizer.h"
#include "strata/vocab_extend.h"

static const strata_model_shape gpt2_shape = {
    .n_layer = 2, .n_head = 2, .n_embd = 16, .block_size = 16, .vocab_size = 100};
static const strata_model_shape llama_shape = {.n_layer = 2,
                                               .n_head = 4,
                                               .n_embd = 32,
                                               .block_size = 16,
                                               .vocab_size = 100,
                                               .family = STRATA_FAMILY_LLAMA,
                                               .n_kv_head = 2,
                                               .ffn_dim = 48,
                                               .tied = 0};

static strata_model *make(const strata_model_shape *s, uint64_t seed)
{
    strata_model *m = NULL;
    assert_int_equal(strata_model_create(&m, s).code, 0);
    strata_model_init(m, seed);
    return m;
}

/* Every tensor but the vocabulary matrices bitwise equal; in those, rows
 * [0, k0) and [k1, v0) bitwise, [k0, k1) the double mean of [0, k0) (plus
 * noise: then the deviations' mean and spread are checked), padding zero. */
static void check_rows(strata_model *m, strata_model *x, int k0, int k1, float noise)
{
    int v0 = strata_model_get_shape(m)->vocab_size, C = strata_model_get_shape(m)->n_embd;
    int v1 = strata_model_get_shape(x)->vocab_size, vp = strata_model_get_shape(x)->padded_vocab;
    assert_int_equal(v1, k1 > v0 ? k1 : v0);
    assert_int_equal(strata_model_n_tensors(m), strata_model_n_tensors(x));
    const float *p = strata_model_params(m), *q = strata_model_params(x);
    int matrices = 0;
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *a = strata_model_tensor(m, i), *b = strata_model_tensor(x, i);
        assert_string_equal(a->name, b->name);
        const float *pa = p + a->offset, *qb = q + b->offset;
        if (a->role != STRATA_ROLE_TOKEN_EMBED && a->role != STRATA_ROLE_LM_HEAD) {
            assert_int_equal(a->numel, b->numel);
            assert_memory_equal(pa, qb, a->numel * sizeof(float));
            continue;
        }
        matrices++;
        assert_int_equal(b->shape[0], v1);
        assert_memory_equal(pa, qb, (size_t)k0 * C * sizeof(float));
        if (v0 > k1)
            assert_memory_equal(pa + (size_t)k1 * C, qb + (size_t)k1 * C,
                                (size_t)(v0 - k1) * C * sizeof(float));
        double dev_sum = 0, dev_sq = 0;
        for (int j = 0; j < C; j++) {
            double mean = 0;
            for (int r = 0; r < k0; r++) mean += pa[(size_t)r * C + j];
            mean /= k0;
            for (int r = k0; r < k1; r++) {
                double d = qb[(size_t)r * C + j] - mean;
                if (noise == 0) assert_true(fabs(d) <= 1e-7 * (fabs(mean) + 1e-3));
                dev_sum += d, dev_sq += d * d;
            }
        }
        if (noise > 0) {
            double n = (double)(k1 - k0) * C, sd = sqrt(dev_sq / n - pow(dev_sum / n, 2));
            assert_true(fabs(dev_sum / n) < 4 * noise / sqrt(n));
            assert_true(fabs(sd / noise - 1) < 0.1);
        }
        for (size_t r = (size_t)v1; r < (size_t)vp; r++)
            for (int j = 0; j < C; j++) assert_true(qb[r * C + j] == 0.0f);
    }
    int tied = strata_model_find_role(m, STRATA_ROLE_LM_HEAD) == NULL;
    assert_int_equal(matrices, tied ? 1 : 2);
}

/* Logits of a batch of old ids: old tokens' to 1e-6 of the old model's,
 * new tokens' finite and (no noise) the mean of the old tokens' logits. */
static void check_logits(strata_model *m, strata_model *x, int k0, int k1, float noise)
{
    enum { B = 2, T = 12 };
    uint32_t in[B * T];
    for (int i = 0; i < B * T; i++)
        in[i] = (uint32_t)strata_rng_below(strata_rng_u64(7, i, 0, 0), k0);
    assert_int_equal(strata_model_reserve(m, B, T).code, 0);
    assert_int_equal(strata_model_reserve(x, B, T).code, 0);
    float unused;
    assert_int_equal(strata_model_forward(m, in, NULL, B, T, NULL, &unused).code, 0);
    assert_int_equal(strata_model_forward(x, in, NULL, B, T, NULL, &unused).code, 0);
    int vp0 = strata_model_get_shape(m)->padded_vocab,
        vp1 = strata_model_get_shape(x)->padded_vocab;
    const float *a = strata_model_logits(m), *b = strata_model_logits(x);
    double worst = 0;
    for (int i = 0; i < B * T; i++) {
        double mean = 0, scale = 0;
        for (int v = 0; v < k0; v++) {
            double d = fabs(a[(size_t)i * vp0 + v] - b[(size_t)i * vp1 + v]);
            worst = d > worst ? d : worst;
            mean += a[(size_t)i * vp0 + v];
            scale = fmax(scale, fabs(a[(size_t)i * vp0 + v]));
        }
        mean /= k0;
        for (int v = k0; v < k1; v++) {
            float z = b[(size_t)i * vp1 + v];
            assert_true(isfinite(z));
            if (noise == 0) assert_true(fabs(z - mean) <= 1e-5 * (scale + 1));
        }
    }
    printf("  %s: old tokens' logits differ by at most %.3g\n", strata_model_family_name(m), worst);
    assert_true(worst <= 1e-6);
}

static void extend_and_check(const strata_model_shape *s, int k0, int k1, float noise)
{
    strata_model *m = make(s, 11), *x = NULL;
    assert_int_equal(strata_vocab_extend(m, k0, k1, noise, 5, &x).code, 0);
    check_rows(m, x, k0, k1, noise);
    check_logits(m, x, k0, k1, noise);
    strata_model_free(m);
    strata_model_free(x);
}

static void gpt2_tied_grows(void **state)
{
    (void)state;
    extend_and_check(&gpt2_shape, 100, 141, 0); /* V 100 -> 141 (padded 128 -> 192) */
    extend_and_check(&gpt2_shape, 90, 130, 0);  /* rows 90..99 the model had are new tokens' */
    extend_and_check(&gpt2_shape, 60, 80, 0);   /* fits in the model's rows: V stays 100 */
    extend_and_check(&gpt2_shape, 100, 300, 0.02f);
}

static void llama_untied_grows(void **state)
{
    (void)state;
    extend_and_check(&llama_shape, 100, 141, 0);
    extend_and_check(&llama_shape, 97, 100, 0);
    extend_and_check(&llama_shape, 100, 300, 0.05f);
}

static void noise_is_a_function_of_the_seed(void **state)
{
    (void)state;
    strata_model *m = make(&llama_shape, 3), *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(strata_vocab_extend(m, 100, 120, 0.1f, 42, &a).code, 0);
    assert_int_equal(strata_vocab_extend(m, 100, 120, 0.1f, 42, &b).code, 0);
    assert_int_equal(strata_vocab_extend(m, 100, 120, 0.1f, 43, &c).code, 0);
    size_t n = strata_model_n_floats(a);
    assert_memory_equal(strata_model_params(a), strata_model_params(b), n * sizeof(float));
    assert_memory_not_equal(strata_model_params(a), strata_model_params(c), n * sizeof(float));
    strata_model *bad = NULL;
    assert_int_equal(strata_vocab_extend(m, 100, 100, 0, 1, &bad).code, STRATA_EINPUT);
    assert_int_equal(strata_vocab_extend(m, 101, 120, 0, 1, &bad).code, STRATA_EINPUT);
    assert_int_equal(strata_vocab_extend(m, 100, 120, -1, 1, &bad).code, STRATA_EINPUT);
    assert_null(bad);
    strata_model_free(m), strata_model_free(a), strata_model_free(b), strata_model_free(c);
}

static void checkpoint_round_trip_is_bitwise(void **state)
{
    (void)state;
    char path[] = "/tmp/strata-vocab-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    strata_model *m = make(&llama_shape, 9), *x = NULL, *y = NULL;
    assert_int_equal(strata_vocab_extend(m, 100, 157, 0.01f, 1, &x).code, 0);
    assert_int_equal(strata_ckpt_write(path, x, NULL, NULL, NULL).code, 0);
    strata_model_shape s;
    assert_int_equal(strata_ckpt_read_shape(path, &s).code, 0);
    assert_int_equal(s.vocab_size, 157);
    assert_int_equal(strata_model_create(&y, &s).code, 0);
    assert_int_equal(strata_ckpt_load(path, y, NULL, NULL, NULL).code, 0);
    assert_memory_equal(strata_model_params(x), strata_model_params(y),
                        strata_model_n_floats(x) * sizeof(float));
    check_rows(m, y, 100, 157, 0.01f);
    unlink(path);
    strata_model_free(m), strata_model_free(x), strata_model_free(y);
}

static strata_tokenizer *fixture_tokenizer(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/vocab/%s/tokenizer.json",
             getenv("STRATA_SOURCE_DIR"), name);
    strata_tokenizer *t = NULL;
    strata_err e = strata_tokenizer_hf(&t, path);
    if (e.code) fail_msg("%s", e.msg);
    return t;
}

static void tokenizers_are_checked_id_by_id(void **state)
{
    (void)state;
    strata_tokenizer *old = fixture_tokenizer("old"), *nw = fixture_tokenizer("new");
    strata_tokenizer *ren = fixture_tokenizer("renumbered"), *byte = NULL;
    assert_int_equal(strata_tokenizer_byte(&byte).code, 0);
    assert_int_equal(strata_vocab_check_tokenizers(old, nw, "old", "new", 457).code, 0);
    /* The fixture's ids 0..255 are the bytes: it extends the byte tokenizer too. */
    assert_int_equal(strata_vocab_check_tokenizers(byte, nw, "byte", "new", 256).code, 0);
    strata_err e = strata_vocab_check_tokenizers(old, ren, "old", "ren", 457);
    assert_int_equal(e.code, STRATA_EINPUT);
    printf("  %s\n", e.msg);
    assert_non_null(strstr(e.msg, "ren: renumbers id 300:"));
    e = strata_vocab_check_tokenizers(old, old, "old", "old", 457);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "adds no token"));
    e = strata_vocab_check_tokenizers(old, nw, "old", "new", 300);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "only 300 rows"));
    /* The old tokenizer is not a prefix of the byte one: refused at id 256. */
    e = strata_vocab_check_tokenizers(nw, byte, "new", "byte", 557);
    assert_int_equal(e.code, STRATA_EINPUT);
    strata_tokenizer_free(old), strata_tokenizer_free(nw), strata_tokenizer_free(ren);
    strata_tokenizer_free(byte);
}

/* One group per tensor, as the trainer builds them. */
static int tensor_groups(strata_model *m, strata_param_group *g)
{
    int n = strata_model_n_tensors(m);
    for (int i = 0; i < n; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        g[i] = (strata_param_group){
            t->offset, i + 1 < n ? strata_model_tensor(m, i + 1)->offset : strata_model_n_floats(m),
            t->decay, 1.0f};
    }
    return n;
}

static void new_rows_move_mult_times_as_far(void **state)
{
    (void)state;
    strata_model *m = make(&llama_shape, 4);
    const strata_model_shape *s = strata_model_get_shape(m);
    int C = s->n_embd, first_new = 80;
    strata_param_group g[64];
    int n = tensor_groups(m, g);
    assert_int_equal(strata_vocab_lr_groups(m, first_new, 10, 5, 5, g, n), n); /* warm-up over */
    assert_int_equal(strata_vocab_lr_groups(m, 0, 10, 0, 0, g, n), n);
    assert_int_equal(strata_vocab_lr_groups(m, s->vocab_size, 10, 0, 0, g, n), n);
    int k = strata_vocab_lr_groups(m, first_new, 10, 5, 4, g, n);
    assert_int_equal(k, n + 2); /* the embedding and the untied head split */
    for (int i = 0; i < k; i++) assert_int_equal(g[i].begin, i ? g[i - 1].end : 0);
    assert_int_equal(g[k - 1].end, strata_model_n_floats(m));
    const strata_tensor *emb = strata_model_find_role(m, STRATA_ROLE_TOKEN_EMBED);
    const strata_tensor *head = strata_model_find_role(m, STRATA_ROLE_LM_HEAD);
    /* AdamW's first step moves each parameter by lr * lr_mult (m/sqrt(v) = sign
     * of the gradient; no weight decay here). */
    size_t nf = strata_model_n_floats(m);
    float *p = strata_model_params(m), *before = malloc(nf * sizeof(float));
    float *grads = strata_model_grads(m);
    for (size_t i = 0; i < nf; i++)
        grads[i] = 0.5f + strata_rng_uniform(strata_rng_u64(1, i, 0, 0));
    memcpy(before, p, nf * sizeof(float));
    strata_adamw opt;
    strata_adamw_config ac = {0.9f, 0.95f, 1e-8f, 0.0f};
    assert_int_equal(strata_adamw_init(&opt, &ac, 0, nf).code, 0);
    strata_adamw_step(&opt, p, grads, 1.0f, 1e-3f, g, k);
    for (size_t i = 0; i < nf; i++) {
        int is_new = 0;
        if ((i >= emb->offset + (size_t)first_new * C &&
             i < emb->offset + (size_t)s->padded_vocab * C) ||
            (i >= head->offset + (size_t)first_new * C &&
             i < head->offset + (size_t)s->padded_vocab * C))
            is_new = 1;
        double want = is_new ? 1e-2 : 1e-3;
        assert_true(fabs(fabs((double)before[i] - p[i]) - want) < 1e-6);
    }
    strata_adamw_free(&opt);
    free(before);
    strata_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gpt2_tied_grows),
        cmocka_unit_test(llama_untied_grows),
        cmocka_unit_test(noise_is_a_function_of_the_seed),
        cmocka_unit_test(checkpoint_round_trip_is_bitwise),
        cmocka_unit_test(tokenizers_are_checked_id_by_id),
        cmocka_unit_test(new_rows_move_mult_times_as_far),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
