/* test_dropout.c — dropout in strata's GPT-2: gradients, masks, p = 0.
 *
 * The reference is the naive double-precision GPT-2 of gpt2_reference.h
 * (plain loops, one sequence at a time), with dropout at GPT-2's four sites:
 * the embedding sum, the attention probabilities (after the softmax, before
 * AV) and the outputs of attn.c_proj and mlp.c_proj before the residual add.
 * It reads strata's masks through strata_model_dropout_mask, so with the
 * masks fixed the loss is a smooth function of the weights and central finite
 * differences of the reference must match strata's analytic gradient.
 *
 * The masks themselves must be a pure function of (seed, step, sample id,
 * layer, site, position): the same inputs give the same bits whatever the
 * batch they sit in, and any change of input gives other bits, dropping a
 * fraction p. With p = 0 the model is bitwise the plain one.
 *
 * Run with STRATA_BENCH=dropout or STRATA_BENCH=feature_extraction, the
 * binary times the small config instead (tests/bench_feature_extraction.sh).
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
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpt2_reference.h"

#include "strata/kernels.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/rng.h"

/* The tiny config of test_model_gradcheck.c: V = 67 pads to 128. */
enum { TL = 2, TC = 32, TNH = 4, TT = 8, TV = 67, TB = 3 };
#define P_DROP    0.1f
#define DROP_SEED 0x5eedull
#define DROP_STEP 17L

/* As in test_model_gradcheck.c: double finite differences, relative error
 * 1e-3 above a floor of 1e-3 times the tensor's largest gradient. */
#define FD_STEP          1e-5
#define GRAD_RTOL        1e-3
#define GRAD_FLOOR_REL   1e-3
#define N_RANDOM_ENTRIES 12

/* ---------------------------------------------------------------------------
 * Fixtures.
 */

static strata_model *tiny_model(int B, int T, uint64_t seed)
{
    strata_model *m;
    strata_model_shape shape = {
        .n_layer = TL, .n_head = TNH, .n_embd = TC, .block_size = 128, .vocab_size = TV};
    strata_err e = strata_model_create(&m, &shape);
    if (e.code) fail_msg("%s", e.msg);
    randomise_params(m, seed);
    e = strata_model_reserve(m, B, T);
    if (e.code) fail_msg("%s", e.msg);
    return m;
}

typedef struct tiny {
    strata_model *m;
    ref_net ref;
    int B, T;
    uint32_t *inp, *tgt;
    int64_t ids[TB];
} tiny;

static int setup_tiny(void **state)
{
    tiny *s = calloc(1, sizeof *s);
    s->B = TB, s->T = TT;
    s->m = tiny_model(TB, TT, 0x67ad);
    s->ref = ref_from_model(s->m);
    s->inp = malloc((size_t)TB * TT * sizeof *s->inp);
    s->tgt = malloc((size_t)TB * TT * sizeof *s->tgt);
    random_tokens(s->inp, TB * TT, TV, 0x67ae);
    random_tokens(s->tgt, TB * TT, TV, 0x67af);
    /* Global slots of a micro-batch on some rank: not 0, 1, 2. */
    s->ids[0] = 9, s->ids[1] = 4, s->ids[2] = 130;
    *state = s;
    return 0;
}

static int teardown_tiny(void **state)
{
    tiny *s = *state;
    strata_model_free(s->m);
    free(s->inp), free(s->tgt), free(s);
    return 0;
}

/* zero_grad, forward, backward of the MEAN loss. */
static float run_backward(strata_model *m, const uint32_t *inp, const uint32_t *tgt, int B, int T,
                          strata_backward_opts o)
{
    strata_model_zero_grad(m);
    float loss = 0;
    o.loss_scale = 1.0f / (float)(B * T);
    (void)strata_model_forward_backward(m, inp, tgt, B, T, NULL, &loss, &o);
    return loss;
}

static float *copy_floats(const float *x, size_t n)
{
    float *c = malloc(n * sizeof *c);
    memcpy(c, x, n * sizeof *c);
    return c;
}

/* The masks of the last forward, as doubles for the reference. */
static ref_masks read_masks(const strata_model *m)
{
    ref_masks mk = {0};
    int L = strata_model_get_shape(m)->n_layer;
    double **where[1 + 3 * REF_MAX_L];
    int layer[1 + 3 * REF_MAX_L], site[1 + 3 * REF_MAX_L], n = 0;
    where[n] = &mk.emb, layer[n] = -1, site[n++] = STRATA_DROPOUT_EMBED;
    for (int l = 0; l < L; l++) {
        where[n] = &mk.att[l], layer[n] = l, site[n++] = STRATA_DROPOUT_ATTN;
        where[n] = &mk.attproj[l], layer[n] = l, site[n++] = STRATA_DROPOUT_ATTN_PROJ;
        where[n] = &mk.mlpproj[l], layer[n] = l, site[n++] = STRATA_DROPOUT_MLP_PROJ;
    }
    for (int i = 0; i < n; i++) {
        size_t k = strata_model_dropout_mask(m, layer[i], site[i], NULL);
        assert_true(k > 0);
        float *f = malloc(k * sizeof *f);
        assert_int_equal(strata_model_dropout_mask(m, layer[i], site[i], f), k);
        double *d = malloc(k * sizeof *d);
        for (size_t j = 0; j < k; j++) d[j] = f[j];
        *where[i] = d;
        free(f);
    }
    return mk;
}

static void free_masks(ref_masks *mk)
{
    free(mk->emb);
    for (int l = 0; l < REF_MAX_L; l++)
        free(mk->att[l]), free(mk->attproj[l]), free(mk->mlpproj[l]);
}

/* All masks of the last forward, concatenated, as 0/scale floats. */
static float *all_masks(const strata_model *m, size_t *n_out)
{
    int L = strata_model_get_shape(m)->n_layer;
    size_t n = strata_model_dropout_mask(m, -1, STRATA_DROPOUT_EMBED, NULL);
    for (int l = 0; l < L; l++)
        for (int site = STRATA_DROPOUT_ATTN; site <= STRATA_DROPOUT_MLP_PROJ; site++)
            n += strata_model_dropout_mask(m, l, site, NULL);
    float *f = malloc(n * sizeof *f), *o = f;
    o += strata_model_dropout_mask(m, -1, STRATA_DROPOUT_EMBED, o);
    for (int l = 0; l < L; l++)
        for (int site = STRATA_DROPOUT_ATTN; site <= STRATA_DROPOUT_MLP_PROJ; site++)
            o += strata_model_dropout_mask(m, l, site, o);
    assert_int_equal((size_t)(o - f), n);
    *n_out = n;
    return f;
}

/* ---------------------------------------------------------------------------
 * Gradients.
 */

static void gradient_with_dropout_matches_double_finite_differences(void **state)
{
    tiny *s = *state;
    strata_model_set_dropout(s->m, P_DROP, DROP_SEED, DROP_STEP, s->ids);
    strata_backward_opts o = {0};
    float loss = run_backward(s->m, s->inp, s->tgt, s->B, s->T, o);
    size_t n = strata_model_n_floats(s->m);
    float *g = copy_floats(strata_model_grads(s->m), n);
    ref_masks mk = read_masks(s->m);

    /* Every site dropped something, and only 0 and 1/(1-p) occur. */
    float scale = 1.0f / (1.0f - P_DROP);
    size_t n_mask, dropped = 0;
    float *flat = all_masks(s->m, &n_mask);
    for (size_t i = 0; i < n_mask; i++) {
        assert_true(flat[i] == 0.0f || flat[i] == scale);
        dropped += flat[i] == 0.0f;
    }
    free(flat);
    assert_true(dropped > 0);
    size_t emb_n = strata_model_dropout_mask(s->m, -1, STRATA_DROPOUT_EMBED, NULL);
    size_t emb_dropped = 0;
    for (size_t i = 0; i < emb_n; i++) emb_dropped += mk.emb[i] == 0.0;
    assert_true(emb_dropped > 0);

    double *pd = params_as_double(s->m);
    double ref = ref_loss(&s->ref, pd, NULL, &mk, s->inp, s->tgt, s->B, s->T, NULL);
    double plain = ref_loss(&s->ref, pd, NULL, NULL, s->inp, s->tgt, s->B, s->T, NULL);
    double rel = fabs(loss - ref) / ref;
    print_message("loss with dropout %.2f: strata %.7f, reference %.10f (without dropout %.6f), "
                  "relative error %.2e\n",
                  P_DROP, loss, ref, plain, rel);
    assert_true(rel < 1e-5);
    assert_true(fabs(ref - plain) > 1e-3); /* the masks change the loss */

    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < strata_model_n_tensors(s->m); i++) {
        const strata_tensor *t = strata_model_tensor(s->m, i);
        double gmax = 0, tmax = 0;
        for (size_t k = 0; k < t->numel; k++) gmax = fmax(gmax, fabs(g[t->offset + k]));
        double den_floor = fmax(GRAD_FLOOR_REL * gmax, 1e-30);
        for (int j = 0; j < 2 + N_RANDOM_ENTRIES; j++) {
            size_t idx = t->offset + pick_entry(t, j, 0xd0);
            double fd =
                ref_loss_fd(&s->ref, pd, NULL, &mk, s->inp, s->tgt, s->B, s->T, pd + idx, FD_STEP);
            double e = rel_err(g[idx], fd, den_floor);
            if (e >= GRAD_RTOL)
                print_message("  %s[%zu]: analytic %.9e, finite difference %.9e\n", t->name,
                              idx - t->offset, g[idx], fd);
            tmax = fmax(tmax, e);
        }
        assert_true(gmax > 1e-4);
        if (tmax > worst) worst = tmax, worst_name = t->name;
    }
    print_message("gradient with dropout: worst relative error %.2e in %s (tolerance %.0e)\n",
                  worst, worst_name, GRAD_RTOL);
    assert_true(worst < GRAD_RTOL);
    free_masks(&mk);
    free(pd), free(g);
}

/* The masks are applied by the kernels, not looked up per element, so check
 * attention past one row block (64 queries) too: T = 100, p = 0.3, forward
 * output and dqkv against double sums written from the definitions. */
static void attention_dropout_matches_reference_across_row_blocks(void **state)
{
    (void)state;
    enum { B = 2, T = 100, C = 48, NH = 3 };
    float p = 0.3f, scale = 1.0f / (1.0f - p);
    attention_case a = attention_case_make(B, T, C, NH, 12);
    long row_len = (long)NH * T * T, wpr = (row_len + 63) / 64;
    uint64_t *words = malloc((size_t)B * wpr * sizeof *words), keys[B] = {0xabc, 0xdef};
    double *md = malloc(a.natt * sizeof *md);
    strata_dropout_generate(words, wpr, keys, B, row_len, (uint32_t)lrint(p * 65536));
    strata_dropout d = {words, wpr, scale};
    for (int b = 0; b < B; b++)
        for (long i = 0; i < row_len; i++)
            md[(size_t)b * row_len + i] =
                (double)((words[b * wpr + i / 64] >> (i % 64)) & 1) * scale;

    strata_attention_forward_dropout(a.out, a.att, a.datt, a.qkv, B, T, C, NH, &d);
    for (size_t i = 0; i < a.natt; i++) a.datt[i] = NAN; /* the backward must not rely on it */
    strata_attention_backward_dropout(a.dqkv, a.datt, a.dout, a.qkv, a.att, B, T, C, NH, &d);
    attention_errors e = attention_case_compare(&a, md);
    print_message("attention with dropout %.1f, T=%d: out %.2e, undropped probabilities %.2e, "
                  "dqkv %.2e (max-abs-normalised)\n",
                  p, T, e.out, e.att, e.dqkv);
    assert_true(e.out < 1e-5);
    assert_true(e.att < 1e-5); /* att keeps the undropped probabilities */
    assert_true(e.dqkv < 1e-5);
    attention_case_free(&a);
    free(words), free(md);
}

/* Backward options with dropout: what a block computes does not depend on
 * the blocks below it, so freezing them leaves the trained tensors'
 * gradients bit for bit those of the full backward, and stopping at the top
 * leaves ln_f's the same (to rounding). */
static void frozen_blocks_and_stop_at_top_reuse_the_forward_masks(void **state)
{
    tiny *s = *state;
    size_t n = strata_model_n_floats(s->m);
    strata_model_set_dropout(s->m, P_DROP, DROP_SEED, DROP_STEP, s->ids);
    strata_backward_opts full = {0}, from1 = {.first_trainable_block = 1}, top = {.stop_at_top = 1};
    float l0 = run_backward(s->m, s->inp, s->tgt, s->B, s->T, full);
    float *g = copy_floats(strata_model_grads(s->m), n);
    float l1 = run_backward(s->m, s->inp, s->tgt, s->B, s->T, from1);
    assert_true(l0 == l1);
    size_t b1, e1;
    strata_model_block_range(s->m, 1, &b1, &e1);
    assert_memory_equal(g + b1, strata_model_grads(s->m) + b1, (n - b1) * sizeof *g);
    /* Stopping at the top, ln_f's gradient may come from another summation
     * (strata_lm_head_backward): the same to fp32 rounding. */
    run_backward(s->m, s->inp, s->tgt, s->B, s->T, top);
    size_t lnf = strata_model_find(s->m, "ln_f.weight")->offset;
    const float *gt = strata_model_grads(s->m);
    double d = 0, mx = 0;
    for (size_t i = lnf; i < n; i++) d = fmax(d, fabs(gt[i] - g[i])), mx = fmax(mx, fabs(g[i]));
    assert_true(d <= 1e-5 * mx);
    free(g);
}

/* ---------------------------------------------------------------------------
 * Masks: a pure function of (seed, step, sample id, layer, site, position).
 */

/* Sequence `row` of the (B, len) masks a, against row `row_b` of b. */
static int same_row(const float *a, int row, const float *b, int row_b, size_t len)
{
    return !memcmp(a + (size_t)row * len, b + (size_t)row_b * len, len * sizeof *a);
}

static double fraction_different(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return (double)d / n;
}

static float *masks_for(strata_model *m, const uint32_t *inp, const uint32_t *tgt, int B, int T,
                        uint64_t seed, long step, const int64_t *ids, int layer, int site,
                        size_t *n)
{
    strata_model_set_dropout(m, P_DROP, seed, step, ids);
    assert_int_equal(strata_model_forward(m, inp, tgt, B, T, NULL, NULL).code, 0);
    *n = strata_model_dropout_mask(m, layer, site, NULL);
    float *f = malloc(*n * sizeof *f);
    strata_model_dropout_mask(m, layer, site, f);
    return f;
}

static void masks_depend_on_the_sample_not_on_its_batch_or_the_weights(void **state)
{
    tiny *s = *state;
    int T = s->T;
    /* Another model (other weights) runs the same samples one and two at a
     * time, as on other ranks or in other micro-batches, in another order. */
    strata_model *other = tiny_model(2, T, 0x1234);
    int64_t one[1] = {s->ids[1]}, two[2] = {s->ids[2], s->ids[0]};
    uint32_t *inp1 = s->inp + T, *inp2 = malloc(2 * (size_t)T * sizeof *inp2);
    memcpy(inp2, s->inp + 2 * T, T * sizeof *inp2);
    memcpy(inp2 + T, s->inp, T * sizeof *inp2);
    for (int l = -1; l < TL; l++)
        for (int site = l < 0 ? 0 : 1; site <= (l < 0 ? 0 : 3); site++) {
            size_t n3, n1, n2;
            float *m3 =
                masks_for(s->m, s->inp, s->tgt, TB, T, DROP_SEED, DROP_STEP, s->ids, l, site, &n3);
            float *again =
                masks_for(s->m, s->inp, s->tgt, TB, T, DROP_SEED, DROP_STEP, s->ids, l, site, &n3);
            assert_memory_equal(m3, again, n3 * sizeof *m3);
            float *m1 = masks_for(other, inp1, NULL, 1, T, DROP_SEED, DROP_STEP, one, l, site, &n1);
            float *m2 = masks_for(other, inp2, NULL, 2, T, DROP_SEED, DROP_STEP, two, l, site, &n2);
            size_t len = n1;
            assert_int_equal(n3, 3 * len);
            assert_int_equal(n2, 2 * len);
            assert_true(same_row(m3, 1, m1, 0, len));
            assert_true(same_row(m3, 2, m2, 0, len));
            assert_true(same_row(m3, 0, m2, 1, len));
            free(m3), free(again), free(m1), free(m2);
        }
    strata_model_free(other);
    free(inp2);
}

static void masks_change_with_seed_step_sample_layer_and_site(void **state)
{
    tiny *s = *state;
    int T = s->T;
    size_t n, len = (size_t)T * TC;
    float *base = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP, s->ids, 0,
                            STRATA_DROPOUT_ATTN_PROJ, &n);
    /* Two independent masks of rate p differ on 2 p (1 - p) = 18% of elements. */
    double lo = 0.12, hi = 0.24;
    float *m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP + 1, s->ids, 0,
                         STRATA_DROPOUT_ATTN_PROJ, &n);
    double f_step = fraction_different(base, m, n);
    free(m);
    m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED + 1, DROP_STEP, s->ids, 0,
                  STRATA_DROPOUT_ATTN_PROJ, &n);
    double f_seed = fraction_different(base, m, n);
    free(m);
    int64_t ids[TB] = {s->ids[0], s->ids[1] + 1, s->ids[2]};
    m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP, ids, 0, STRATA_DROPOUT_ATTN_PROJ,
                  &n);
    double f_sample = fraction_different(base + len, m + len, len);
    assert_true(same_row(base, 0, m, 0, len) && same_row(base, 2, m, 2, len));
    free(m);
    m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP, s->ids, 1,
                  STRATA_DROPOUT_ATTN_PROJ, &n);
    double f_layer = fraction_different(base, m, n);
    free(m);
    m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP, s->ids, 0,
                  STRATA_DROPOUT_MLP_PROJ, &n);
    double f_site = fraction_different(base, m, n);
    free(m);
    m = masks_for(s->m, s->inp, NULL, TB, T, DROP_SEED, DROP_STEP, s->ids, -1, STRATA_DROPOUT_EMBED,
                  &n);
    double f_embed = fraction_different(base, m, n);
    free(m);
    double f_rows = fraction_different(base, base + len, len);
    print_message("elements whose mask changes with the step %.3f, seed %.3f, sample id %.3f, "
                  "layer %.3f, site %.3f (embedding %.3f), between two samples %.3f "
                  "(independent: %.3f)\n",
                  f_step, f_seed, f_sample, f_layer, f_site, f_embed, f_rows,
                  2 * P_DROP * (1 - P_DROP));
    double all[] = {f_step, f_seed, f_layer, f_site, f_embed};
    for (int i = 0; i < 5; i++) assert_true(all[i] > lo && all[i] < hi);
    /* One sample's row alone: 256 elements, so a wider band. */
    assert_true(f_sample > 0.08 && f_sample < 0.30);
    assert_true(f_rows > 0.08 && f_rows < 0.30);
    free(base);
}

/* Bits from the kernel on a million elements: the fraction dropped is p to
 * within 5 sigma, two rows drop together at rate p^2 (no correlation across
 * samples), bits past the row's end are zero, and the bits do not depend on
 * the thread count. */
static void dropped_fraction_is_p_and_bits_do_not_depend_on_threads(void **state)
{
    (void)state;
    enum { ROWS = 4 };
    long len = 250001, wpr = (len + 63) / 64 + 1; /* a padded row stride */
    uint64_t keys[ROWS], *w = malloc((size_t)ROWS * wpr * sizeof *w);
    uint64_t *w1 = malloc((size_t)ROWS * wpr * sizeof *w1);
    for (int r = 0; r < ROWS; r++) keys[r] = strata_rng_u64(5, 6, (uint64_t)r, 7);
    const float ps[] = {0.1f, 0.5f, 0.02f};
    int saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        uint32_t thr = (uint32_t)lrint(ps[k] * 65536);
        memset(w, 0xff, (size_t)ROWS * wpr * sizeof *w);
        memset(w1, 0xff, (size_t)ROWS * wpr * sizeof *w1);
        omp_set_num_threads(3);
        strata_dropout_generate(w, wpr, keys, ROWS, len, thr);
        omp_set_num_threads(1);
        strata_dropout_generate(w1, wpr, keys, ROWS, len, thr);
        omp_set_num_threads(saved);
        for (int r = 0; r < ROWS; r++)
            assert_memory_equal(w + (size_t)r * wpr, w1 + (size_t)r * wpr,
                                (size_t)(len + 63) / 64 * sizeof *w);
        long kept = 0, both_dropped = 0, n = ROWS * len;
        for (int r = 0; r < ROWS; r++) {
            const uint64_t *row = w + (size_t)r * wpr;
            assert_true((row[len / 64] >> (len % 64)) == 0); /* past the end: zero */
            for (long i = 0; i < len; i++) kept += (row[i / 64] >> (i % 64)) & 1;
        }
        for (long i = 0; i < len; i++)
            both_dropped += !((w[i / 64] >> (i % 64)) & 1) && !((w[wpr + i / 64] >> (i % 64)) & 1);
        double p = ps[k], f = 1.0 - (double)kept / n, sigma = sqrt(p * (1 - p) / n);
        double f2 = (double)both_dropped / len, sigma2 = sqrt(p * p * (1 - p * p) / len);
        print_message("p = %.2f: dropped %.5f (%.1f sigma), two samples together %.5f (p^2 = %.5f, "
                      "%.1f sigma)\n",
                      p, f, (f - p) / sigma, f2, p * p, (f2 - p * p) / sigma2);
        assert_true(fabs(f - p) < 5 * sigma);
        assert_true(fabs(f2 - p * p) < 5 * sigma2);
    }
    /* apply: inp * mask * scale, in place too. */
    strata_dropout d = {w, wpr, 2.0f};
    float x[200], y[200];
    for (int i = 0; i < 200; i++) x[i] = (float)i + 0.5f;
    strata_dropout_apply(y, x, &d, 1, 200);
    for (int i = 0; i < 200; i++)
        assert_true(y[i] == (((w[i / 64] >> (i % 64)) & 1) ? 2.0f * x[i] : 0.0f));
    strata_dropout_apply(x, x, &d, 1, 200);
    assert_memory_equal(x, y, sizeof x);
    free(w), free(w1);
}

/* ---------------------------------------------------------------------------
 * p = 0: the plain model, bit for bit.
 */

static void dropout_off_is_bitwise_the_plain_model(void **state)
{
    tiny *s = *state;
    size_t n = strata_model_n_floats(s->m);
    strata_backward_opts o = {0};
    /* A model that never heard of dropout. */
    strata_model *plain = tiny_model(TB, TT, 0x67ad);
    float l_plain = run_backward(plain, s->inp, s->tgt, TB, TT, o);
    float *g_plain = copy_floats(strata_model_grads(plain), n);
    /* The same weights with dropout on, then off again. */
    strata_model_set_dropout(s->m, P_DROP, DROP_SEED, DROP_STEP, s->ids);
    float l_drop = run_backward(s->m, s->inp, s->tgt, TB, TT, o);
    assert_true(l_drop != l_plain);
    strata_model_set_dropout(s->m, 0.0f, DROP_SEED, DROP_STEP, s->ids);
    float l_off = run_backward(s->m, s->inp, s->tgt, TB, TT, o);
    assert_true(l_off == l_plain);
    assert_memory_equal(strata_model_grads(s->m), g_plain, n * sizeof *g_plain);
    assert_memory_equal(strata_model_params(s->m), strata_model_params(plain), n * sizeof(float));
    /* ... and its masks read as all ones. */
    size_t n_mask;
    float *flat = all_masks(s->m, &n_mask);
    for (size_t i = 0; i < n_mask; i++) assert_true(flat[i] == 1.0f);
    free(flat);
    /* The logits path (no targets) too. */
    assert_int_equal(strata_model_forward(plain, s->inp, NULL, TB, TT, NULL, NULL).code, 0);
    size_t nl = (size_t)TB * TT * strata_model_get_shape(plain)->padded_vocab;
    float *lg = copy_floats(strata_model_logits(plain), nl);
    assert_int_equal(strata_model_forward(s->m, s->inp, NULL, TB, TT, NULL, NULL).code, 0);
    assert_memory_equal(strata_model_logits(s->m), lg, nl * sizeof *lg);
    free(lg), free(g_plain);
    strata_model_free(plain);
}

static void unknown_sites_and_layers_export_nothing(void **state)
{
    tiny *s = *state;
    strata_model_set_dropout(s->m, P_DROP, DROP_SEED, DROP_STEP, s->ids);
    assert_int_equal(strata_model_forward(s->m, s->inp, s->tgt, TB, TT, NULL, NULL).code, 0);
    assert_int_equal(strata_model_dropout_mask(s->m, TL, STRATA_DROPOUT_ATTN, NULL), 0);
    assert_int_equal(strata_model_dropout_mask(s->m, -1, STRATA_DROPOUT_ATTN, NULL), 0);
    assert_int_equal(strata_model_dropout_mask(s->m, 0, 4, NULL), 0);
    assert_int_equal(strata_model_dropout_mask(s->m, 0, -1, NULL), 0);
    assert_int_equal(strata_model_dropout_mask(s->m, 0, STRATA_DROPOUT_ATTN, NULL),
                     (size_t)TB * TNH * TT * TT);
    assert_int_equal(strata_model_dropout_mask(s->m, 7, STRATA_DROPOUT_EMBED, NULL),
                     (size_t)TB * TT * TC);
}

/* ---------------------------------------------------------------------------
 * Feature extraction: the lm head's backward without the LayerNorm input's
 * gradient (strata_lm_head_backward) against the two products it replaces.
 */

static void lm_head_backward_without_dinp_matches_the_two_products(void **state)
{
    (void)state;
    /* Vp past one block of 2048 vocabulary rows, with padded (zero) columns. */
    enum { N = 40, C = 24, V = 2500, Vp = 2560 };
    size_t nx = (size_t)N * C, nl = (size_t)N * Vp, nw = (size_t)Vp * C;
    float *x = malloc(nx * sizeof *x), *y = malloc(nx * sizeof *y), *dy = calloc(nx, sizeof *dy);
    float *mean = malloc(N * sizeof *mean), *rstd = malloc(N * sizeof *rstd);
    float *w = malloc(C * sizeof *w), *b = malloc(C * sizeof *b), *wte = calloc(nw, sizeof *wte);
    float *dl = malloc(nl * sizeof *dl);
    uint32_t *tgt = malloc(N * sizeof *tgt);
    float *losses = malloc(N * sizeof *losses);
    for (size_t i = 0; i < nx; i++)
        x[i] = 2.0f * strata_rng_normal(strata_rng_u64(31, 0, i, 0)) + 0.5f;
    for (int c = 0; c < C; c++) {
        w[c] = 1.0f + 0.2f * strata_rng_normal(strata_rng_u64(31, 1, c, 0));
        b[c] = 0.3f * strata_rng_normal(strata_rng_u64(31, 2, c, 0));
    }
    for (size_t i = 0; i < (size_t)V * C; i++)
        wte[i] = 0.5f * strata_rng_normal(strata_rng_u64(31, 3, i, 0));
    for (int n = 0; n < N; n++) tgt[n] = (uint32_t)strata_rng_below(strata_rng_u64(31, 4, n, 0), V);
    strata_layernorm_forward(y, mean, rstd, x, w, b, N, C);
    strata_matmul_forward(dl, y, wte, NULL, N, C, Vp, 0.0f);
    strata_crossentropy_forward_backward(dl, losses, tgt, N, V, Vp, 1.0f / N);

    /* The usual way: dy = dlogits @ wte, dwte = dlogits^T y, LayerNorm's dw, db from dy. */
    float *dwte0 = calloc(nw, sizeof *dwte0), *dw0 = calloc(C, sizeof *dw0),
          *db0 = calloc(C, sizeof *db0);
    strata_matmul_backward(dy, dwte0, NULL, dl, y, wte, N, C, Vp);
    strata_layernorm_backward(NULL, dw0, db0, dy, x, w, mean, rstd, N, C);
    /* One product; the outputs start non-zero (backward adds). */
    float *dwte1 = malloc(nw * sizeof *dwte1), *dw1 = malloc(C * sizeof *dw1),
          *db1 = malloc(C * sizeof *db1);
    for (size_t i = 0; i < nw; i++) dwte1[i] = 1.0f;
    for (int c = 0; c < C; c++) dw1[c] = db1[c] = 1.0f;
    float *scratch = malloc(strata_lm_head_scratch_floats(N, C) * sizeof *scratch);
    strata_lm_head_backward(dwte1, dw1, db1, dl, x, mean, rstd, wte, w, b, N, C, Vp, scratch);
    double e_wte = 0, m_wte = 0, e_w = 0, m_w = 0, e_b = 0, m_b = 0;
    for (size_t i = 0; i < nw; i++) {
        e_wte = fmax(e_wte, fabs((dwte1[i] - 1.0) - dwte0[i]));
        m_wte = fmax(m_wte, fabs(dwte0[i]));
    }
    for (size_t i = (size_t)V * C; i < nw; i++) assert_true(dwte1[i] == 1.0f); /* padding: + 0 */
    for (int c = 0; c < C; c++) {
        e_w = fmax(e_w, fabs((dw1[c] - 1.0) - dw0[c])), m_w = fmax(m_w, fabs(dw0[c]));
        e_b = fmax(e_b, fabs((db1[c] - 1.0) - db0[c])), m_b = fmax(m_b, fabs(db0[c]));
    }
    print_message("lm head backward with one product: dwte %.2e, ln_f dw %.2e, db %.2e "
                  "(max-abs-normalised)\n",
                  e_wte / m_wte, e_w / m_w, e_b / m_b);
    /* The +1 offsets cost ~6e-8 absolute; the values are ~1e-2 .. 1. */
    assert_true(e_wte / m_wte < 1e-5);
    assert_true(e_w / m_w < 1e-5);
    assert_true(e_b / m_b < 1e-5);
    /* Without dwte: the same ln_f sums. */
    float dw2[C], db2[C];
    for (int c = 0; c < C; c++) dw2[c] = db2[c] = 1.0f;
    strata_lm_head_backward(NULL, dw2, db2, dl, x, mean, rstd, wte, w, b, N, C, Vp, scratch);
    assert_memory_equal(dw2, dw1, sizeof dw2);
    assert_memory_equal(db2, db1, sizeof db2);
    free(x), free(y), free(dy), free(mean), free(rstd), free(w), free(b), free(wte), free(dl);
    free(tgt), free(losses), free(dwte0), free(dw0), free(db0), free(dwte1), free(dw1), free(db1);
    free(scratch);
}

/* ---------------------------------------------------------------------------
 * Benchmarks (STRATA_BENCH=dropout | feature_extraction): the small config.
 */

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n)
{
    qsort(x, n, sizeof *x, compare_doubles);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static int env_int(const char *name, int fallback)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

typedef struct bench {
    strata_model *m;
    int B, T;
    uint32_t *tok;
    int64_t ids[64];
} bench;

static bench bench_small(void)
{
    bench b = {.B = env_int("STRATA_BENCH_B", 8), .T = 256};
    strata_model_shape shape = {
        .n_layer = 6, .n_head = 6, .n_embd = 384, .block_size = 256, .vocab_size = 50257};
    strata_err e = strata_model_create(&b.m, &shape);
    if (!e.code) e = strata_model_reserve(b.m, b.B, b.T);
    if (e.code) {
        fprintf(stderr, "%s\n", e.msg);
        exit(1);
    }
    strata_model_init(b.m, 1);
    b.tok = malloc(((size_t)b.B * b.T + 1) * sizeof *b.tok);
    for (long i = 0; i < (long)b.B * b.T + 1; i++)
        b.tok[i] = (uint32_t)strata_rng_below(strata_rng_u64(7, 0, 0, (uint64_t)i), 50257);
    for (int i = 0; i < b.B && i < 64; i++) b.ids[i] = 100 + i;
    return b;
}

/* Seconds of CPU time used by the process: on a shared machine a
 * single-threaded run's CPU time is its work, whatever else runs. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* forward + backward with dropout p: wall seconds, CPU seconds in *cpu. */
static double time_step(bench *b, float p, long step, double *cpu)
{
    strata_backward_opts o = {.loss_scale = 1.0f / (b->B * b->T)};
    double t0 = omp_get_wtime(), c0 = cpu_now();
    strata_model_zero_grad(b->m);
    strata_model_set_dropout(b->m, p, 1234, step, b->ids);
    {
        float fb_loss_;
        (void)strata_model_forward_backward(b->m, b->tok, b->tok + 1, b->B, b->T, NULL, &fb_loss_,
                                            &o);
    }
    *cpu = cpu_now() - c0;
    return omp_get_wtime() - t0;
}

static int bench_dropout(void)
{
    bench b = bench_small();
    int n = env_int("STRATA_BENCH_STEPS", 5);
    double *t0 = malloc(n * sizeof *t0), *t1 = malloc(n * sizeof *t1);
    double *c0 = malloc(n * sizeof *c0), *c1 = malloc(n * sizeof *c1);
    double *gen = malloc(n * sizeof *gen), *cgen = malloc(n * sizeof *cgen), unused;
    time_step(&b, 0.1f, 0, &unused); /* warm up, and allocate the masks */
    time_step(&b, 0.0f, 0, &unused);
    for (int i = 0; i < n; i++) {
        t0[i] = time_step(&b, 0.0f, i, &c0[i]);
        t1[i] = time_step(&b, 0.1f, i, &c1[i]);
    }
    /* What regenerating every mask in the backward would add: the bits of all
     * sites, from their keys, timed alone (same sizes as the forward's). */
    const strata_model_shape *s = strata_model_get_shape(b.m);
    long len_res = (long)b.T * s->n_embd, len_att = (long)s->n_head * b.T * b.T;
    long w_res = (len_res + 63) / 64, w_att = (len_att + 63) / 64;
    uint64_t *words = malloc((size_t)b.B * w_att * sizeof *words), keys[64];
    for (int i = 0; i < b.B; i++) keys[i] = strata_rng_u64(1, 2, 3, (uint64_t)i);
    for (int i = 0; i < n; i++) {
        double g0 = omp_get_wtime(), cg = cpu_now();
        strata_dropout_generate(words, w_res, keys, b.B, len_res, 6554);
        for (int l = 0; l < s->n_layer; l++) {
            strata_dropout_generate(words, w_att, keys, b.B, len_att, 6554);
            strata_dropout_generate(words, w_res, keys, b.B, len_res, 6554);
            strata_dropout_generate(words, w_res, keys, b.B, len_res, 6554);
        }
        gen[i] = omp_get_wtime() - g0;
        cgen[i] = cpu_now() - cg;
    }
    double m0 = median(t0, n), m1 = median(t1, n), mg = median(gen, n);
    double k0 = median(c0, n), k1 = median(c1, n), kg = median(cgen, n);
    size_t bits_bytes = (size_t)b.B * (w_res + s->n_layer * (w_att + 2 * w_res)) * 8;
    printf("dropout bench: L=%d C=%d NH=%d T=%d B=%d V=%d, %d threads, median of %d steps\n",
           s->n_layer, s->n_embd, s->n_head, b.T, b.B, s->vocab_size, omp_get_max_threads(), n);
    printf("forward+backward  wall: p=0 %.1f ms, p=0.1 %.1f ms (x%.3f); CPU time: p=0 %.1f ms, "
           "p=0.1 %.1f ms (x%.3f)\n",
           m0 * 1e3, m1 * 1e3, m1 / m0, k0 * 1e3, k1 * 1e3, k1 / k0);
    printf("mask bits of all sites: %.2f MiB kept; generating them all takes %.1f ms wall, "
           "%.1f ms CPU (%.2f%% of a p=0.1 step's CPU time) = what recomputing them in the "
           "backward adds\n",
           bits_bytes / 1048576.0, mg * 1e3, kg * 1e3, 100 * kg / k1);
    free(t0), free(t1), free(c0), free(c1), free(gen), free(cgen), free(words), free(b.tok);
    strata_model_free(b.m);
    return 0;
}

/* Feature extraction: a training step (zero_grad, forward, backward that
 * stops at the top, AdamW on ln_f and wte only) against a forward alone
 * (with the loss), interleaved so both see the same machine. */
static int bench_feature_extraction(void)
{
    bench b = bench_small();
    int n = env_int("STRATA_BENCH_STEPS", 5);
    size_t nf = strata_model_n_floats(b.m);
    strata_adamw opt;
    strata_adamw_config ac = {0.9f, 0.95f, 1e-8f, 0.1f};
    if (strata_adamw_init(&opt, &ac, 0, nf).code) return 1;
    int nt = strata_model_n_tensors(b.m);
    strata_param_group *groups = calloc(nt, sizeof *groups);
    for (int i = 0; i < nt; i++) {
        const strata_tensor *t = strata_model_tensor(b.m, i);
        groups[i].begin = t->offset;
        groups[i].end = i + 1 < nt ? strata_model_tensor(b.m, i + 1)->offset : nf;
        groups[i].decay = t->decay;
        groups[i].lr_mult = t->layer < 0 && strcmp(t->name, "wpe.weight") ? 1.0f : 0.0f;
    }
    double *fwd = malloc(n * sizeof *fwd), *step = malloc(n * sizeof *step);
    double *bwd = malloc(n * sizeof *bwd), *full = malloc(n * sizeof *full);
    double *cfwd = malloc(n * sizeof *cfwd), *cstep = malloc(n * sizeof *cstep);
    /* As the trainer runs it: the sum of losses, scaled by 1/tokens in AdamW. */
    strata_backward_opts top = {.loss_scale = 1.0f, .stop_at_top = 1};
    strata_backward_opts all = {.loss_scale = 1.0f};
    float per_token = 1.0f / (b.B * b.T);
    strata_model_timing tf = {0}, ts = {0};
    for (int i = -1; i < n; i++) { /* i = -1 warms up */
        strata_model_reset_timing(b.m);
        double t0 = omp_get_wtime(), c0 = cpu_now();
        assert_int_equal(strata_model_forward(b.m, b.tok, b.tok + 1, b.B, b.T, NULL, NULL).code, 0);
        double t1 = omp_get_wtime();
        if (i >= 0) fwd[i] = t1 - t0, cfwd[i] = cpu_now() - c0;
        if (i == n - 1) tf = strata_model_get_timing(b.m);

        strata_model_reset_timing(b.m);
        t0 = omp_get_wtime(), c0 = cpu_now();
        strata_model_zero_grad(b.m);
        double tb = omp_get_wtime(); /* forward and the head's backward, then the rest */
        {
            float fb_loss_;
            (void)strata_model_forward_backward(b.m, b.tok, b.tok + 1, b.B, b.T, NULL, &fb_loss_,
                                                &top);
        }
        double te = omp_get_wtime();
        strata_adamw_step(&opt, strata_model_params(b.m), strata_model_grads(b.m), per_token, 1e-4f,
                          groups, nt);
        t1 = omp_get_wtime();
        if (i >= 0) step[i] = t1 - t0, bwd[i] = te - tb, cstep[i] = cpu_now() - c0;
        if (i == n - 1) ts = strata_model_get_timing(b.m);

        t0 = omp_get_wtime();
        strata_model_zero_grad(b.m);
        {
            float fb_loss_;
            (void)strata_model_forward_backward(b.m, b.tok, b.tok + 1, b.B, b.T, NULL, &fb_loss_,
                                                &all);
        }
        if (i >= 0) full[i] = omp_get_wtime() - t0;
    }
    const strata_model_shape *s = strata_model_get_shape(b.m);
    /* The lm head's backward alone, the two ways, interleaved on the same
     * shapes: two products (dlogits @ wte for ln_f's gradient, dlogits^T y
     * for wte's) or one (strata_lm_head_backward). */
    int N = b.B * b.T, C = s->n_embd, Vp = s->padded_vocab;
    size_t nx = (size_t)N * C, nl = (size_t)N * Vp, nw = (size_t)Vp * C;
    float *x = malloc(nx * sizeof *x), *y = malloc(nx * sizeof *y), *dy = malloc(nx * sizeof *dy);
    float *mean = malloc(N * sizeof *mean), *rstd = malloc(N * sizeof *rstd);
    float *dl = malloc(nl * sizeof *dl), *dwte = calloc(nw, sizeof *dwte), dw[1024], db[1024];
    float *scratch = malloc(strata_lm_head_scratch_floats(N, C) * sizeof *scratch);
    const float *wte = strata_model_params(b.m),
                *lw = wte + strata_model_find(b.m, "ln_f.weight")->offset;
    const float *lb = wte + strata_model_find(b.m, "ln_f.bias")->offset;
    for (size_t i = 0; i < nx; i++) x[i] = strata_rng_normal(strata_rng_u64(9, 0, i, 0));
    for (size_t i = 0; i < nl; i++) dl[i] = 1e-4f * strata_rng_normal(strata_rng_u64(9, 1, i, 0));
    strata_layernorm_forward(y, mean, rstd, x, lw, lb, N, C);
    double *two = malloc(n * sizeof *two), *one = malloc(n * sizeof *one);
    double *ctwo = malloc(n * sizeof *ctwo), *cone = malloc(n * sizeof *cone);
    for (int i = -1; i < n; i++) {
        double t0 = omp_get_wtime(), c0 = cpu_now();
        memset(dy, 0, nx * sizeof *dy);
        strata_matmul_backward(dy, dwte, NULL, dl, y, wte, N, C, Vp);
        strata_layernorm_backward(NULL, dw, db, dy, x, lw, mean, rstd, N, C);
        double t1 = omp_get_wtime(), c1 = cpu_now();
        strata_lm_head_backward(dwte, dw, db, dl, x, mean, rstd, wte, lw, lb, N, C, Vp, scratch);
        if (i >= 0) {
            two[i] = t1 - t0, ctwo[i] = c1 - c0;
            one[i] = omp_get_wtime() - t1, cone[i] = cpu_now() - c1;
        }
    }
    double h2 = median(two, n), h1 = median(one, n), k2 = median(ctwo, n), k1 = median(cone, n);
    free(x), free(y), free(dy), free(mean), free(rstd), free(dl), free(dwte), free(scratch);
    free(two), free(one), free(ctwo), free(cone);

    double mf = median(fwd, n), ms = median(step, n), mb = median(bwd, n), mfull = median(full, n);
    double kf = median(cfwd, n), ks = median(cstep, n);
    /* FLOPs: the lm head is 2*BT*C*Vp per product; forward has one, the
     * backward two (dlogits @ wte for ln_f, dlogits^T @ lnf for wte). */
    double BT = (double)b.B * b.T, head = 2 * BT * s->n_embd * s->padded_vocab;
    double blocks = 2 * BT * 12.0 * s->n_embd * s->n_embd * s->n_layer;
    printf("feature extraction bench: L=%d C=%d NH=%d T=%d B=%d V=%d, %d threads, median of %d\n",
           s->n_layer, s->n_embd, s->n_head, b.T, b.B, s->vocab_size, omp_get_max_threads(), n);
    printf("forward alone (with the loss)        %8.1f ms\n", mf * 1e3);
    printf("feature-extraction step              %8.1f ms  = %.2fx the forward\n", ms * 1e3,
           ms / mf);
    printf("  of which backward (stop at top)    %8.1f ms\n", mb * 1e3);
    printf("CPU time: forward %.1f ms, feature-extraction step %.1f ms = %.2fx\n", kf * 1e3,
           ks * 1e3, ks / kf);
    printf("lm head backward alone: one product (strata_lm_head_backward, what the step uses) "
           "%.1f ms (CPU %.1f), two products %.1f ms (CPU %.1f): the step with two would be "
           "%.2fx the forward (CPU %.2fx)\n",
           h1 * 1e3, k1 * 1e3, h2 * 1e3, k2 * 1e3, (ms - h1 + h2) / mf, (ks - k1 + k2) / kf);
    printf("full training step (fwd+bwd, no opt) %8.1f ms  = %.2fx the forward\n", mfull * 1e3,
           mfull / mf);
    printf("last forward: matmul %.0f ms, attention %.0f ms, element-wise %.0f ms, loss %.0f ms\n",
           tf.matmul * 1e3, tf.attention * 1e3, tf.elementwise * 1e3, tf.loss * 1e3);
    printf("last step:    matmul %.0f ms, attention %.0f ms, element-wise %.0f ms, loss %.0f ms\n",
           ts.matmul * 1e3, ts.attention * 1e3, ts.elementwise * 1e3, ts.loss * 1e3);
    printf("matmul FLOPs: lm head %.1f GFLOP per product, block matmuls %.1f GFLOP, forward "
           "%.1f; a step with two head products in its backward %.1f (%.2fx), with one %.1f "
           "(%.2fx)\n",
           head / 1e9, blocks / 1e9, (head + blocks) / 1e9, (3 * head + blocks) / 1e9,
           (3 * head + blocks) / (head + blocks), (2 * head + blocks) / 1e9,
           (2 * head + blocks) / (head + blocks));
    free(fwd), free(step), free(bwd), free(full), free(cfwd), free(cstep), free(groups),
        free(b.tok);
    strata_adamw_free(&opt);
    strata_model_free(b.m);
    return 0;
}

int main(void)
{
    const char *bench_name = getenv("STRATA_BENCH");
    if (bench_name && !strcmp(bench_name, "dropout")) return bench_dropout();
    if (bench_name && !strcmp(bench_name, "feature_extraction")) return bench_feature_extraction();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(gradient_with_dropout_matches_double_finite_differences,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test(attention_dropout_matches_reference_across_row_blocks),
        cmocka_unit_test_setup_teardown(frozen_blocks_and_stop_at_top_reuse_the_forward_masks,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test_setup_teardown(masks_depend_on_the_sample_not_on_its_batch_or_the_weights,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test_setup_teardown(masks_change_with_seed_step_sample_layer_and_site,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test(dropped_fraction_is_p_and_bits_do_not_depend_on_threads),
        cmocka_unit_test_setup_teardown(dropout_off_is_bitwise_the_plain_model, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test_setup_teardown(unknown_sites_and_layers_export_nothing, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test(lm_head_backward_without_dinp_matches_the_two_products),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
