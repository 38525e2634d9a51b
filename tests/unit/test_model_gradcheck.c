/* test_model_gradcheck.c — strata's GPT-2 against a naive double-precision
 * reference written from the math alone (gpt2_reference.h, shared with
 * test_dropout.c).
 *
 * The reference (plain loops, double, one sequence at a time) reads strata's
 * parameter buffer only through the tensor table, so it checks the layout as
 * well as the arithmetic. Its loss must match strata's forward, and central
 * finite differences of its loss must match strata's analytic gradient on a
 * random subset of every tensor (always including the first and the last
 * entry). The backward options (frozen blocks, frozen embeddings, stop at the
 * top) are checked against a full backward, and attention is checked at the
 * kernel level past one row block of 64 queries.
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

#include "gpt2_reference.h"

#include "strata/kernels.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/rng.h"

/* The tiny config: V = 67 pads to 128, so 61 padding rows are exercised. */
enum { TL = 2, TC = 32, TNH = 4, TT = 8, TV = 67, TB = 3 };

/* Finite differences in double: truncation error ~ h^2 |f'''| ~ 1e-10 and
 * rounding ~ 1e-16 * |loss| / h ~ 1e-11, both far below fp32's own error. */
#define FD_STEP   1e-5
#define GRAD_RTOL 1e-3
/* Denominator floor for the relative error: FLOOR_REL times the largest
 * |gradient| of the tensor. strata's gradient is computed in fp32, so an
 * entry that sums terms as large as the tensor's largest gradient carries
 * an absolute rounding error of a few eps_f32 * max|g| ~ 1e-7 max|g|. Some
 * entries are zero in exact arithmetic — the key bias of every head
 * (softmax is invariant to adding q.b to a whole row of scores), wpe rows
 * past T — and strata rightly returns that rounding noise for them (measured:
 * up to 1.3e-8 next to max|g| = 0.16, i.e. 8e-8 max|g|). With the floor,
 * entries below 1e-3 max|g| are held to an absolute 1e-6 max|g| (about ten
 * times fp32's noise) instead of a relative error they cannot have; every
 * entry above it is held to the relative 1e-3. */
#define GRAD_FLOOR_REL   1e-3
#define N_RANDOM_ENTRIES 20

/* ---------------------------------------------------------------------------
 * Fixtures: a tiny model with random parameters (gpt2_reference.h); a batch
 * whose tokens include 0 and V-1.
 */

static uint64_t g_seed = 0x67ad;

typedef struct tiny {
    strata_model *m;
    ref_net ref;
    int B, T;
    uint32_t *inp, *tgt;
    float loss;
    float *full_grad; /* gradient of the mean loss, full backward */
} tiny;

static tiny *tiny_make(int B, int T, int block_size, uint64_t seed)
{
    tiny *s = calloc(1, sizeof *s);
    strata_model_shape shape = {
        .n_layer = TL, .n_head = TNH, .n_embd = TC, .block_size = block_size, .vocab_size = TV};
    strata_err e = strata_model_create(&s->m, &shape);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_model_get_shape(s->m)->padded_vocab, 128);
    randomise_params(s->m, seed);
    e = strata_model_reserve(s->m, B, T);
    if (e.code) fail_msg("%s", e.msg);
    s->ref = ref_from_model(s->m);
    s->ref.sum_per_sequence = 1;
    s->B = B, s->T = T;
    s->inp = malloc((size_t)B * T * sizeof *s->inp);
    s->tgt = malloc((size_t)B * T * sizeof *s->tgt);
    random_tokens(s->inp, B * T, TV, seed + 1);
    random_tokens(s->tgt, B * T, TV, seed + 2);
    s->inp[0] = s->tgt[0] = 0;
    s->inp[B * T - 1] = s->tgt[B * T - 1] = TV - 1;
    return s;
}

static void tiny_free(tiny *s)
{
    strata_model_free(s->m);
    free(s->inp), free(s->tgt), free(s->full_grad), free(s);
}

/* zero_grad, forward, backward of the MEAN loss with the given options. */
static float run_backward(tiny *s, strata_backward_opts o)
{
    strata_model_zero_grad(s->m);
    float loss = 0;
    o.loss_scale = 1.0f / (float)(s->B * s->T);
    (void)strata_model_forward_backward(s->m, s->inp, s->tgt, s->B, s->T, NULL, &loss, &o);
    return loss;
}

static float *copy_grads(strata_model *m)
{
    size_t n = strata_model_n_floats(m);
    float *g = malloc(n * sizeof *g);
    memcpy(g, strata_model_grads(m), n * sizeof *g);
    return g;
}

/* Central difference of the reference loss in parameter pd[idx] (or, with
 * lm non-NULL, in the untied lm head's entry lm[idx]). */
static double fd_grad(tiny *s, double *pd, double *lm, size_t idx)
{
    double *x = lm ? lm + idx : pd + idx;
    return ref_loss_fd(&s->ref, pd, lm, NULL, s->inp, s->tgt, s->B, s->T, x, FD_STEP);
}

/* GRAD_FLOOR_REL * max |g| over the tensor's real entries (see above). */
static double tensor_floor(const float *g, const strata_tensor *t)
{
    double mx = 0;
    for (size_t k = 0; k < t->numel; k++) mx = fmax(mx, fabs(g[t->offset + k]));
    return fmax(GRAD_FLOOR_REL * mx, 1e-30);
}

static int setup_tiny(void **state)
{
    tiny *s = tiny_make(TB, TT, TT, g_seed);
    strata_backward_opts o = {0};
    s->loss = run_backward(s, o);
    s->full_grad = copy_grads(s->m);
    *state = s;
    return 0;
}

static int teardown_tiny(void **state)
{
    tiny_free(*state);
    return 0;
}

static int all_zero(const float *g, size_t begin, size_t end)
{
    for (size_t i = begin; i < end; i++)
        if (g[i] != 0.0f) return 0;
    return 1;
}

static int same_bits(const float *a, const float *b, size_t begin, size_t end)
{
    return !memcmp(a + begin, b + begin, (end - begin) * sizeof(float));
}

/* [begin, end) of a tensor in the buffer, padding included (wte: Vp rows). */
static void extent(const strata_model *m, const strata_tensor *t, size_t *begin, size_t *end)
{
    *begin = t->offset;
    *end = t->offset + t->numel;
    if (!strcmp(t->name, "wte.weight"))
        *end = t->offset + (size_t)strata_model_get_shape(m)->padded_vocab * t->shape[1];
}

/* ---------------------------------------------------------------------------
 * Tests.
 */

static void reference_loss_matches_strata_forward(void **state)
{
    tiny *s = *state;
    double *pd = params_as_double(s->m);
    double seq_ref[TB];
    float seq[TB];
    double ref = ref_loss(&s->ref, pd, NULL, NULL, s->inp, s->tgt, s->B, s->T, seq_ref);
    float loss;
    assert_int_equal(strata_model_forward(s->m, s->inp, s->tgt, s->B, s->T, seq, &loss).code, 0);
    double rel = fabs(loss - ref) / ref;
    print_message("loss: strata %.7f, reference %.10f, relative error %.2e\n", loss, ref, rel);
    assert_true(rel < 1e-5);
    assert_true(loss == s->loss); /* the forward is deterministic */
    for (int b = 0; b < TB; b++) assert_true(fabs(seq[b] - seq_ref[b]) / seq_ref[b] < 1e-5);
    /* Parameters far from the tiny GPT-2 init: the loss is not ~ln(V). */
    assert_true(fabs(ref - log((double)TV)) > 0.1);
    free(pd);
}

static void every_tensor_gradient_matches_double_finite_differences(void **state)
{
    tiny *s = *state;
    double *pd = params_as_double(s->m);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < strata_model_n_tensors(s->m); i++) {
        const strata_tensor *t = strata_model_tensor(s->m, i);
        double tmax = 0, gmax = 0, den_floor = tensor_floor(s->full_grad, t);
        for (int j = 0; j < 2 + N_RANDOM_ENTRIES; j++) {
            size_t idx = t->offset + pick_entry(t, j, g_seed);
            double fd = fd_grad(s, pd, NULL, idx);
            double an = s->full_grad[idx];
            double e = rel_err(an, fd, den_floor);
            if (e > tmax) tmax = e;
            if (fabs(fd) > gmax) gmax = fabs(fd);
            if (e >= GRAD_RTOL)
                print_message("  %s[%zu]: analytic %.9e, finite difference %.9e\n", t->name,
                              idx - t->offset, an, fd);
        }
        print_message("%-24s max relative error %.2e  (max |grad| checked %.1e)\n", t->name, tmax,
                      gmax);
        /* A tensor whose gradient vanishes everywhere would pass vacuously. */
        assert_true(gmax > 1e-4);
        if (tmax > worst) worst = tmax, worst_name = t->name;
    }
    print_message("worst: %.2e in %s (tolerance %.0e)\n", worst, worst_name, GRAD_RTOL);
    assert_true(worst < GRAD_RTOL);
    free(pd);
}

static void padded_rows_of_wte_get_exactly_zero_gradient(void **state)
{
    tiny *s = *state;
    const strata_tensor *wte = strata_model_find(s->m, "wte.weight");
    size_t begin, end;
    extent(s->m, wte, &begin, &end);
    assert_int_equal(end - begin, (size_t)128 * TC);
    assert_true(all_zero(s->full_grad, begin + wte->numel, end));
    /* ... and the real rows do get one (the lm head touches every row). */
    for (int v = 0; v < TV; v++)
        assert_false(all_zero(s->full_grad, begin + (size_t)v * TC, begin + (size_t)(v + 1) * TC));
}

static void backward_adds_to_the_gradient_buffer(void **state)
{
    tiny *s = *state;
    strata_model_zero_grad(s->m);
    strata_backward_opts o = {.loss_scale = 1.0f / (s->B * s->T)};
    for (int k = 0; k < 2; k++) {
        {
            float fb_loss_;
            (void)strata_model_forward_backward(s->m, s->inp, s->tgt, s->B, s->T, NULL, &fb_loss_,
                                                &o);
        }
    }
    const float *g = strata_model_grads(s->m);
    double maxg = 0, maxd = 0;
    for (size_t i = 0; i < strata_model_n_floats(s->m); i++) {
        maxg = fmax(maxg, fabs(s->full_grad[i]));
        maxd = fmax(maxd, fabs(g[i] - 2.0 * s->full_grad[i]));
    }
    assert_true(maxd <= 1e-6 * maxg);
}

static void freezing_block_0_zeroes_its_and_the_embedding_gradients_only(void **state)
{
    tiny *s = *state;
    strata_backward_opts o = {.first_trainable_block = 1};
    float loss = run_backward(s, o);
    assert_true(loss == s->loss);
    const float *g = strata_model_grads(s->m);
    size_t b0, e0, b1, e1;
    strata_model_block_range(s->m, 0, &b0, &e0);
    strata_model_block_range(s->m, 1, &b1, &e1);
    /* Buffer order: wte, wpe, h.0, h.1, ln_f. Below block 1: all zero. */
    assert_int_equal(strata_model_find(s->m, "wte.weight")->offset, 0);
    assert_true(all_zero(g, 0, b0));
    assert_true(all_zero(g, b0, e0));
    /* Block 1 and ln_f: bit for bit what the full backward computed. */
    assert_int_equal(e0, b1);
    assert_true(same_bits(g, s->full_grad, b1, strata_model_n_floats(s->m)));
    assert_false(all_zero(g, b1, e1));
}

static void stop_at_top_gives_gradients_only_to_ln_f_and_the_lm_head(void **state)
{
    tiny *s = *state;
    strata_backward_opts o = {.stop_at_top = 1};
    run_backward(s, o);
    const float *g = strata_model_grads(s->m);
    const strata_tensor *wte = strata_model_find(s->m, "wte.weight");
    const strata_tensor *wpe = strata_model_find(s->m, "wpe.weight");
    const strata_tensor *lnf_w = strata_model_find(s->m, "ln_f.weight");
    size_t wb, we;
    extent(s->m, wte, &wb, &we);
    assert_true(all_zero(g, wpe->offset, lnf_w->offset)); /* wpe and every block */
    /* ln_f's gradient comes from G = dlogits^T xhat without forming dlogits wte
     * (model.c): equal to the full backward's up to rounding. */
    {
        size_t lo = lnf_w->offset, hi = strata_model_n_floats(s->m);
        double diff = 0, scale = 0;
        for (size_t i = lo; i < hi; i++) {
            diff = fmax(diff, fabs((double)g[i] - s->full_grad[i]));
            scale = fmax(scale, fabs((double)s->full_grad[i]));
        }
        assert_true(diff <= 1e-5 * scale);
    }
    assert_true(all_zero(g, wb + wte->numel, we));
    /* wte's gradient is the lm head's share only: finite differences of the
     * reference with an untied lm head that starts equal to wte. */
    double *pd = params_as_double(s->m);
    double *lm = malloc(wte->numel * sizeof *lm);
    memcpy(lm, pd + wte->offset, wte->numel * sizeof *lm);
    double worst = 0, den_floor = tensor_floor(g, wte);
    for (int j = 0; j < 2 + N_RANDOM_ENTRIES; j++) {
        size_t k = pick_entry(wte, j, g_seed + 7);
        double e = rel_err(g[wte->offset + k], fd_grad(s, pd, lm, k), den_floor);
        worst = fmax(worst, e);
    }
    print_message("lm head share of wte's gradient: max relative error %.2e\n", worst);
    assert_true(worst < GRAD_RTOL);
    /* It differs from the full gradient, which adds the embedding lookup's share. */
    assert_false(same_bits(g, s->full_grad, wb, wb + wte->numel));
    free(pd), free(lm);
}

static void frozen_embeddings_get_no_gradient_and_blocks_are_unchanged(void **state)
{
    tiny *s = *state;
    strata_backward_opts o = {.embeddings_frozen = 1};
    run_backward(s, o);
    const float *g = strata_model_grads(s->m);
    size_t b0, e0;
    strata_model_block_range(s->m, 0, &b0, &e0);
    assert_true(all_zero(g, 0, b0)); /* wte (padding included) and wpe */
    assert_true(same_bits(g, s->full_grad, b0, strata_model_n_floats(s->m)));
}

typedef struct seen_blocks {
    int n, layers[16];
} seen_blocks;
static void record_block(void *ctx, int layer)
{
    seen_blocks *sb = ctx;
    if (sb->n < 16) sb->layers[sb->n] = layer;
    sb->n++;
}

static void callbacks_report_each_block_from_the_top_down(void **state)
{
    tiny *s = *state;
    seen_blocks sb = {0};
    strata_backward_opts o = {.on_block_done = record_block, .ctx = &sb};
    run_backward(s, o);
    /* ln_f (L), then blocks L-1 ... 0, then the embeddings (-1). */
    assert_int_equal(sb.n, TL + 2);
    for (int i = 0; i < sb.n; i++) assert_int_equal(sb.layers[i], TL - i);
}

/* kernels.c promises that its own reductions (column sums for bias and
 * LayerNorm gradients, the embedding scatter, attention per head, the sum of
 * squares) run in a fixed order at any thread count. The whole model's
 * gradient is not held to that: OpenBLAS's sgemm may split a product
 * differently with more threads (some of its kernels do, whichever it picks
 * on this machine), so bitwise resume needs the same thread count. */
static void kernel_reductions_are_bitwise_identical_at_any_thread_count(void **state)
{
    (void)state;
    /* Sizes that give every thread count several chunks of 16 and 64. */
    enum { B = 3, T = 70, C = 80, NH = 5, OC = 200, V = 37, N = B * T };
    size_t nC = (size_t)N * C, nOC = (size_t)N * OC, natt = (size_t)B * NH * T * T;
    float *x = malloc(nC * sizeof *x), *dout = malloc(nC * sizeof *dout);
    float *w = malloc(C * sizeof *w), *mean = malloc(N * sizeof *mean);
    float *rstd = malloc(N * sizeof *rstd), *y = malloc(nC * sizeof *y);
    float *doc = malloc(nOC * sizeof *doc), *qkv = malloc(nC * 3 * sizeof *qkv);
    float *att = malloc(natt * sizeof *att), *datt = malloc(natt * sizeof *datt);
    uint32_t *tok = malloc(N * sizeof *tok);
    for (size_t i = 0; i < nC; i++) {
        x[i] = strata_rng_normal(strata_rng_u64(21, 0, i, 0));
        dout[i] = strata_rng_normal(strata_rng_u64(21, 1, i, 0));
    }
    for (size_t i = 0; i < nOC; i++) doc[i] = strata_rng_normal(strata_rng_u64(21, 2, i, 0));
    for (size_t i = 0; i < 3 * nC; i++) qkv[i] = strata_rng_normal(strata_rng_u64(21, 3, i, 0));
    for (int c = 0; c < C; c++) w[c] = 1.0f + 0.1f * strata_rng_normal(strata_rng_u64(21, 4, c, 0));
    for (int i = 0; i < N; i++) tok[i] = (uint32_t)strata_rng_below(strata_rng_u64(21, 5, i, 0), V);
    strata_layernorm_forward(y, mean, rstd, x, w, w, N, C);

    /* Everything each kernel writes, concatenated. */
    size_t n_out = 2 * nC + 3 * C + OC + (size_t)V * C + (size_t)T * C + nC + 3 * nC + 1;
    float *ref = NULL, *out = malloc(n_out * sizeof *out);
    int saved = omp_get_max_threads();
    for (int th = 1; th <= 4; th++) {
        omp_set_num_threads(th);
        memset(out, 0, n_out * sizeof *out);
        float *o = out;
        float *dinp = o;
        o += nC;
        float *dw = o;
        o += C;
        float *db = o;
        o += C;
        strata_layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd, N, C);
        float *dbias = o;
        o += OC;
        strata_matmul_backward(NULL, NULL, dbias, doc, x, NULL, N, C, OC);
        float *dwte = o;
        o += (size_t)V * C;
        float *dwpe = o;
        o += (size_t)T * C;
        strata_encoder_backward(dwte, dwpe, dout, tok, B, T, C);
        float *atty = o;
        o += nC;
        strata_attention_forward(atty, att, qkv, B, T, C, NH);
        float *dqkv = o;
        o += 3 * nC;
        strata_attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH);
        float *ss = o;
        o += 1;
        *ss = (float)strata_sum_squares(x, 0, nC);
        float *lnw = o;
        o += C; /* a second accumulation into dw */
        strata_layernorm_backward(NULL, lnw, NULL, dout, x, w, mean, rstd, N, C);
        assert_true((size_t)(o - out) <= n_out);
        if (!ref) {
            ref = malloc(n_out * sizeof *ref);
            memcpy(ref, out, n_out * sizeof *ref);
        } else if (memcmp(ref, out, n_out * sizeof *ref)) {
            fail_msg("kernel outputs at %d threads differ from 1 thread", th);
        }
    }
    omp_set_num_threads(saved);
    free(x), free(dout), free(w), free(mean), free(rstd), free(y), free(doc), free(qkv);
    free(att), free(datt), free(tok), free(ref), free(out);
}

/* Attention at T = 100: the kernel works in row blocks of 64 queries, so the
 * second block (rows 64..99) sees keys from both blocks and has a ragged end. */
static void attention_matches_reference_across_ragged_row_blocks(void **state)
{
    (void)state;
    enum { B = 2, T = 100, C = 48, NH = 3 };
    attention_case a = attention_case_make(B, T, C, NH, 11);
    strata_attention_forward(a.out, a.att, a.qkv, B, T, C, NH);
    strata_attention_backward(a.dqkv, a.datt, a.dout, a.qkv, a.att, B, T, C, NH);
    attention_errors e = attention_case_compare(&a, NULL);
    for (size_t i = 0; i < a.natt; i++) {
        size_t t = (i / T) % T, j = i % T;
        if (j > t) assert_true(a.att[i] == 0.0f); /* masked: exactly zero */
    }
    print_message("attention T=%d: out %.2e, probabilities %.2e, dqkv %.2e (max-abs-normalised)\n",
                  T, e.out, e.att, e.dqkv);
    assert_true(e.out < 1e-5);
    assert_true(e.att < 1e-5); /* probabilities are at most 1 */
    assert_true(e.dqkv < 1e-5);
    attention_case_free(&a);
}

/* The whole model at T = 100 (block_size 128): loss and a sample of the
 * gradient, including wpe rows on both sides of the row-block edge at 64
 * and the unused rows past T, which must get exactly zero. */
static void model_gradient_matches_reference_at_T_100(void **state)
{
    (void)state;
    enum { B = 2, T = 100, BS = 128 };
    tiny *s = tiny_make(B, T, BS, g_seed + 100);
    strata_backward_opts o = {0};
    float loss = run_backward(s, o);
    double *pd = params_as_double(s->m);
    double ref = ref_loss(&s->ref, pd, NULL, NULL, s->inp, s->tgt, B, T, NULL);
    double rel = fabs(loss - ref) / ref;
    const float *g = strata_model_grads(s->m);
    const strata_tensor *wpe = strata_model_find(s->m, "wpe.weight");
    assert_true(all_zero(g, wpe->offset + (size_t)T * TC, wpe->offset + wpe->numel));
    double worst = 0;
    const int wpe_rows[] = {0, 63, 64, 99};
    for (int r = 0; r < 4; r++) {
        size_t idx = wpe->offset + (size_t)wpe_rows[r] * TC + (size_t)(r * 7) % TC;
        worst = fmax(worst, rel_err(g[idx], fd_grad(s, pd, NULL, idx), tensor_floor(g, wpe)));
    }
    for (int i = 0; i < strata_model_n_tensors(s->m); i++) {
        const strata_tensor *t = strata_model_tensor(s->m, i);
        if (t->layer != 0 && strcmp(t->name, "wte.weight")) continue;
        for (int j = 2; j < 4; j++) {
            size_t idx = t->offset + pick_entry(t, j, g_seed + 100);
            double e = rel_err(g[idx], fd_grad(s, pd, NULL, idx), tensor_floor(g, t));
            worst = fmax(worst, e);
        }
    }
    print_message("T=%d: loss relative error %.2e, gradient max relative error %.2e\n", T, rel,
                  worst);
    assert_true(rel < 1e-5);
    assert_true(worst < GRAD_RTOL);
    free(pd);
    tiny_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(reference_loss_matches_strata_forward, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test_setup_teardown(every_tensor_gradient_matches_double_finite_differences,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test_setup_teardown(padded_rows_of_wte_get_exactly_zero_gradient, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test_setup_teardown(backward_adds_to_the_gradient_buffer, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test_setup_teardown(
            freezing_block_0_zeroes_its_and_the_embedding_gradients_only, setup_tiny,
            teardown_tiny),
        cmocka_unit_test_setup_teardown(stop_at_top_gives_gradients_only_to_ln_f_and_the_lm_head,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test_setup_teardown(frozen_embeddings_get_no_gradient_and_blocks_are_unchanged,
                                        setup_tiny, teardown_tiny),
        cmocka_unit_test_setup_teardown(callbacks_report_each_block_from_the_top_down, setup_tiny,
                                        teardown_tiny),
        cmocka_unit_test(kernel_reductions_are_bitwise_identical_at_any_thread_count),
        cmocka_unit_test(attention_matches_reference_across_ragged_row_blocks),
        cmocka_unit_test(model_gradient_matches_reference_at_T_100),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
