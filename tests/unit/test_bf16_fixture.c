/* test_bf16_fixture.c — bf16 matmuls against PyTorch's fp32 gradients.
 *
 * On the PyTorch fixtures of test_model_fixture.c (GPT-2, torch_tiny.h5) and
 * test_llama_fixture.c (tests/fixtures/hf: GQA, Qwen2 biases, Qwen3 QK-norm,
 * a bf16 checkpoint, Mistral's window), strata in precision bf16 must give
 * every tensor's gradient with cosine similarity >= 0.999 to torch's fp32 one
 * and a relative norm difference | ||g|| - ||g_torch|| | / ||g_torch|| <= 2e-2
 * (issue 13), and the loss within 1e-2. The relative error ||g - g_torch|| /
 * ||g_torch||, which a cosine of 0.999 allows up to 4.5e-2, is printed and
 * held to 4e-2. That the bf16 path really ran is checked too: its gradients are
 * further from torch's than fp32's 1e-5. Switching back to fp32 gives
 * torch's gradients to 1e-5 again (the bf16 copy is then unused).
 *
 * Qwen2's key bias is left out: its exact gradient is zero (the softmax does
 * not see a constant added to every score of a row), so what both runs hold
 * is rounding noise and a cosine means nothing.
 */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include "strata/gemm.h"
#include "strata/hf.h"
/* Only some of its helpers are used here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "torch_fixture.h"

#define COS_MIN   0.999
#define NORM_MAX  2e-2
#define REL_MAX   4e-2
#define LOSS_RTOL 1e-2
#define FP32_RTOL 1e-5
#define BF16_SEEN 1e-4 /* bf16's worst tensor must be further than this */

typedef struct stats {
    double worst_cos, worst_rel, worst_norm;
    const char *cos_at, *rel_at, *norm_at;
} stats;

/* cosine and ||g - r|| / ||r|| per tensor, the worst of each. */
static stats compare(const strata_model *m, const float *g, const float *ref)
{
    stats s = {1.0, 0.0, 0.0, "", "", ""};
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        if (strstr(t->name, "k_proj.bias")) continue;
        double gg = 0, rr = 0, gr = 0, dd = 0;
        for (size_t k = t->offset; k < t->offset + t->numel; k++) {
            gg += (double)g[k] * g[k], rr += (double)ref[k] * ref[k], gr += (double)g[k] * ref[k];
            dd += ((double)g[k] - ref[k]) * ((double)g[k] - ref[k]);
        }
        double cos = gr / sqrt(gg * rr + 1e-300), rel = sqrt(dd / (rr + 1e-300));
        double norm = fabs(sqrt(gg) - sqrt(rr)) / (sqrt(rr) + 1e-300);
        if (cos < s.worst_cos) s.worst_cos = cos, s.cos_at = t->name;
        if (norm > s.worst_norm) s.worst_norm = norm, s.norm_at = t->name;
        if (rel > s.worst_rel) s.worst_rel = rel, s.rel_at = t->name;
    }
    return s;
}

static float fwd_bwd(strata_model *m, const uint32_t *in, const uint32_t *tg, int B, int T)
{
    strata_model_zero_grad(m);
    float loss = 0;
    strata_backward_opts o = {.loss_scale = 1.0f / (float)(B * T)};
    assert_int_equal(strata_model_forward_backward(m, in, tg, B, T, NULL, &loss, &o).code, 0);
    return loss;
}

/* bf16 then fp32 on one model and batch, against torch's loss and grads. */
static void check_model(const char *what, strata_model *m, const uint32_t *in, const uint32_t *tg,
                        int B, int T, double torch_loss, const float *ref)
{
    strata_err e = strata_model_set_precision(m, STRATA_BF16);
#ifndef STRATA_HAVE_DNNL
    /* A build without oneDNN refuses bf16, naming the library. */
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "libdnnl"));
    return;
#endif
    assert_int_equal(e.code, 0);
    float loss = fwd_bwd(m, in, tg, B, T);
    stats s = compare(m, strata_model_grads(m), ref);
    double lrel = fabs(loss - torch_loss) / torch_loss;
    print_message("%s bf16: loss %.6f vs torch %.6f (rel %.1e); worst cosine %.6f (%s), worst "
                  "norm difference %.2e (%s), worst rel error %.2e (%s)\n",
                  what, loss, torch_loss, lrel, s.worst_cos, s.cos_at, s.worst_norm, s.norm_at,
                  s.worst_rel, s.rel_at);
    assert_true(lrel < LOSS_RTOL);
    assert_true(s.worst_cos >= COS_MIN);
    assert_true(s.worst_norm <= NORM_MAX);
    assert_true(s.worst_rel <= REL_MAX);
    assert_true(s.worst_rel > BF16_SEEN);

    assert_int_equal(strata_model_set_precision(m, STRATA_FP32).code, 0);
    loss = fwd_bwd(m, in, tg, B, T);
    stats f = compare(m, strata_model_grads(m), ref);
    print_message("%s fp32: worst rel %.2e (%s)\n", what, f.worst_rel, f.rel_at);
    assert_true(f.worst_rel < FP32_RTOL);
}

static void gpt2_bf16_gradients_match_pytorch(void **state)
{
    torch_fixture x;
    if (torch_fixture_load(&x, "torch_tiny.h5")) fail_msg("no fixture");
    check_model("gpt2 tiny", x.m, x.inputs, x.targets, x.B, x.T, x.loss, x.grads);
    torch_fixture_free(&x);
}

static void llama_family_bf16_gradients_match_pytorch(void **state)
{
    static const char *const dirs[] = {"llama_gqa", "qwen2_bias", "qwen3_qknorm", "llama_bf16",
                                       "mistral_window"};
    const char *src = getenv("STRATA_SOURCE_DIR");
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tests/fixtures/hf/%s.expect.h5", src ? src : ".", dirs[d]);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) fail_msg("cannot open %s", path);
        snprintf(path, sizeof path, "%s/tests/fixtures/hf/%s", src ? src : ".", dirs[d]);
        strata_model *m;
        strata_err e = strata_hf_import(path, &m);
        if (e.code) fail_msg("%s", e.msg);
        int B = attr_int(f, "batch"), T = attr_int(f, "seq_len");
        size_t BT = (size_t)B * T;
        int64_t *tok = malloc(BT * sizeof *tok);
        uint32_t *in = malloc(BT * sizeof *in), *tg = malloc(BT * sizeof *tg);
        hsize_t bt[2] = {(hsize_t)B, (hsize_t)T};
        read_dataset(f, "/inputs", H5T_NATIVE_INT64, tok, 2, bt);
        for (size_t i = 0; i < BT; i++) in[i] = (uint32_t)tok[i];
        read_dataset(f, "/targets", H5T_NATIVE_INT64, tok, 2, bt);
        for (size_t i = 0; i < BT; i++) tg[i] = (uint32_t)tok[i];
        double loss;
        read_dataset(f, "/loss", H5T_NATIVE_DOUBLE, &loss, 0, NULL);
        float *ref = read_tensors(f, m, "/grads");
        assert_int_equal(strata_model_reserve(m, B, T).code, 0);
        check_model(dirs[d], m, in, tg, B, T, loss, ref);
        free(ref), free(tok), free(in), free(tg);
        strata_model_free(m);
        H5Fclose(f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gpt2_bf16_gradients_match_pytorch),
        cmocka_unit_test(llama_family_bf16_gradients_match_pytorch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
