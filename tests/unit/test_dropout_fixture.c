/* test_dropout_fixture.c — strata's GPT-2 with dropout against PyTorch.
 *
 * tests/fixtures/torch_dropout.h5 was written once by
 * make_torch_dropout_fixture.py beside it (torch 1.13, float32, checked
 * against float64): a tiny GPT-2's weights, a batch with each row's slot in
 * the global batch, a seed and a step, the dropout masks strata draws for
 * them at every site, and the loss and every gradient torch computes with
 * those masks. strata must draw the same masks bit for bit (so the fixture
 * pins the mask function: resumed runs and other rank counts rely on it),
 * and then reproduce the loss and every gradient to 1e-5, relative to each
 * tensor's largest value. Raw HDF5 calls, as in test_model_fixture.c.
 */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/model.h"

#define LOSS_RTOL 1e-5
#define GRAD_RTOL 1e-5

typedef struct fixture {
    strata_model *m;
    int B, T, L, NH, C;
    double p;
    uint64_t seed;
    long step;
    int64_t *ids;
    uint32_t *inputs, *targets;
    float loss;
    float *params, *grads; /* strata's layout (wte padded with zero rows) */
    hid_t file;
} fixture;

static hid_t open_attr(hid_t f, const char *name)
{
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) fail_msg("fixture: attribute %s missing", name);
    return a;
}

static int attr_int(hid_t f, const char *name)
{
    int v = 0;
    hid_t a = open_attr(f, name);
    assert_true(H5Aread(a, H5T_NATIVE_INT, &v) >= 0);
    H5Aclose(a);
    return v;
}

static void read_dataset(hid_t f, const char *path, hid_t memtype, void *buf, int ndim,
                         const hsize_t *dims)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) fail_msg("fixture: %s missing", path);
    hid_t sp = H5Dget_space(d);
    hsize_t got[4] = {0};
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd != ndim) fail_msg("fixture: %s has rank %d, expected %d", path, nd, ndim);
    H5Sget_simple_extent_dims(sp, got, NULL);
    for (int i = 0; i < nd; i++)
        if (got[i] != dims[i])
            fail_msg("fixture: %s dimension %d is %llu, expected %llu", path, i,
                     (unsigned long long)got[i], (unsigned long long)dims[i]);
    assert_true(H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
}

static float *read_tensors(hid_t f, const strata_model *m, const char *group)
{
    float *buf = calloc(strata_model_n_floats(m), sizeof *buf);
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        char path[128];
        snprintf(path, sizeof path, "%s/%s", group, t->name);
        hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        read_dataset(f, path, H5T_NATIVE_FLOAT, buf + t->offset, t->ndim, dims);
    }
    return buf;
}

static int load_fixture(void **state)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/torch_dropout.h5", src ? src : ".");
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "cannot open %s (set STRATA_SOURCE_DIR to the repository)\n", path);
        return -1;
    }
    fixture *x = calloc(1, sizeof *x);
    strata_model_shape shape = {.n_layer = attr_int(f, "n_layer"),
                                .n_head = attr_int(f, "n_head"),
                                .n_embd = attr_int(f, "n_embd"),
                                .block_size = attr_int(f, "block_size"),
                                .vocab_size = attr_int(f, "vocab_size")};
    strata_err e = strata_model_create(&x->m, &shape);
    if (e.code) fail_msg("%s", e.msg);
    x->L = shape.n_layer, x->NH = shape.n_head, x->C = shape.n_embd;
    x->B = attr_int(f, "batch");
    x->T = attr_int(f, "seq_len");
    hid_t a = open_attr(f, "dropout");
    assert_true(H5Aread(a, H5T_NATIVE_DOUBLE, &x->p) >= 0);
    H5Aclose(a);
    a = open_attr(f, "seed");
    assert_true(H5Aread(a, H5T_NATIVE_UINT64, &x->seed) >= 0);
    H5Aclose(a);
    int64_t step = 0;
    a = open_attr(f, "step");
    assert_true(H5Aread(a, H5T_NATIVE_INT64, &step) >= 0);
    H5Aclose(a);
    x->step = (long)step;
    assert_true(x->p > 0 && x->p < 1);

    size_t BT = (size_t)x->B * x->T;
    int32_t *tok = malloc(BT * sizeof *tok);
    x->inputs = malloc(BT * sizeof *x->inputs);
    x->targets = malloc(BT * sizeof *x->targets);
    hsize_t bt[2] = {(hsize_t)x->B, (hsize_t)x->T}, b1 = (hsize_t)x->B;
    read_dataset(f, "/inputs", H5T_NATIVE_INT32, tok, 2, bt);
    for (size_t i = 0; i < BT; i++) x->inputs[i] = (uint32_t)tok[i];
    read_dataset(f, "/targets", H5T_NATIVE_INT32, tok, 2, bt);
    for (size_t i = 0; i < BT; i++) x->targets[i] = (uint32_t)tok[i];
    free(tok);
    for (size_t i = 0; i < BT; i++) {
        assert_true(x->inputs[i] < (uint32_t)shape.vocab_size);
        assert_true(x->targets[i] < (uint32_t)shape.vocab_size);
    }
    x->ids = malloc(x->B * sizeof *x->ids);
    read_dataset(f, "/sample_ids", H5T_NATIVE_INT64, x->ids, 1, &b1);
    read_dataset(f, "/loss", H5T_NATIVE_FLOAT, &x->loss, 0, NULL);
    x->params = read_tensors(f, x->m, "/params");
    x->grads = read_tensors(f, x->m, "/grads");
    x->file = f; /* the masks are read by their test */

    memcpy(strata_model_params(x->m), x->params, strata_model_n_floats(x->m) * sizeof(float));
    e = strata_model_reserve(x->m, x->B, x->T);
    if (e.code) fail_msg("%s", e.msg);
    *state = x;
    return 0;
}

static int free_fixture(void **state)
{
    fixture *x = *state;
    H5Fclose(x->file);
    strata_model_free(x->m);
    free(x->ids), free(x->inputs), free(x->targets), free(x->params), free(x->grads), free(x);
    return 0;
}

static double max_abs_normalised(const float *a, const float *b, size_t begin, size_t end)
{
    double d = 0, mx = 0;
    for (size_t i = begin; i < end; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return d / fmax(mx, 1e-30);
}

/* Dropout as the fixture's (seed, step, sample ids), then forward and the
 * backward of the mean loss. */
static float forward_backward(fixture *x)
{
    strata_model_zero_grad(x->m);
    strata_model_set_dropout(x->m, (float)x->p, x->seed, x->step, x->ids);
    float loss = strata_model_forward(x->m, x->inputs, x->targets, x->B, x->T, NULL);
    strata_backward_opts o = {.loss_scale = 1.0f / (float)(x->B * x->T)};
    strata_model_backward(x->m, &o);
    return loss;
}

static void masks_are_the_ones_strata_draws_bit_for_bit(void **state)
{
    fixture *x = *state;
    forward_backward(x);
    size_t total = 0, dropped = 0;
    for (int l = -1; l < x->L; l++) {
        const int sites[3] = {STRATA_DROPOUT_ATTN, STRATA_DROPOUT_ATTN_PROJ,
                              STRATA_DROPOUT_MLP_PROJ};
        const char *names[3] = {"attn", "attn_proj", "mlp_proj"};
        for (int k = 0; k < (l < 0 ? 1 : 3); k++) {
            int site = l < 0 ? STRATA_DROPOUT_EMBED : sites[k];
            char path[64];
            if (l < 0)
                snprintf(path, sizeof path, "/masks/embed");
            else
                snprintf(path, sizeof path, "/masks/h.%d.%s", l, names[k]);
            hsize_t dims[4] = {(hsize_t)x->B, (hsize_t)x->NH, (hsize_t)x->T, (hsize_t)x->T};
            int nd = 4;
            if (site != STRATA_DROPOUT_ATTN) dims[1] = x->T, dims[2] = x->C, nd = 3;
            size_t n = strata_model_dropout_mask(x->m, l, site, NULL);
            assert_int_equal(n, dims[0] * dims[1] * dims[2] * (nd == 4 ? dims[3] : 1));
            float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
            read_dataset(x->file, path, H5T_NATIVE_FLOAT, want, nd, dims);
            strata_model_dropout_mask(x->m, l, site, got);
            size_t differ = 0;
            for (size_t i = 0; i < n; i++) {
                differ += memcmp(&want[i], &got[i], sizeof(float)) != 0;
                dropped += got[i] == 0.0f;
            }
            if (differ)
                fail_msg("%s: %zu of %zu mask values differ from strata's", path, differ, n);
            total += n;
            free(want), free(got);
        }
    }
    print_message("masks: %zu factors at %d sites, the same bits as strata's; %.4f dropped "
                  "(p = %.2f)\n",
                  total, 1 + 3 * x->L, (double)dropped / total, x->p);
    assert_true(dropped > 0);
}

static void loss_matches_pytorch_with_the_same_masks(void **state)
{
    fixture *x = *state;
    float loss = forward_backward(x);
    double rel = fabs((double)loss - x->loss) / x->loss;
    print_message("loss with dropout %.2f: strata %.7f, torch %.7f, relative error %.2e\n", x->p,
                  loss, x->loss, rel);
    assert_true(rel < LOSS_RTOL);
    /* Without dropout the loss is another one: the masks matter. */
    strata_model_set_dropout(x->m, 0.0f, 0, 0, NULL);
    float plain = strata_model_forward(x->m, x->inputs, x->targets, x->B, x->T, NULL);
    assert_true(fabs(plain - x->loss) > 1e-3);
}

static void every_gradient_matches_pytorch_with_the_same_masks(void **state)
{
    fixture *x = *state;
    forward_backward(x);
    const float *g = strata_model_grads(x->m);
    double worst = 0;
    const char *where = "";
    for (int i = 0; i < strata_model_n_tensors(x->m); i++) {
        const strata_tensor *t = strata_model_tensor(x->m, i);
        double e = max_abs_normalised(g, x->grads, t->offset, t->offset + t->numel);
        if (e >= GRAD_RTOL) print_message("  %s: %.2e\n", t->name, e);
        if (e > worst) worst = e, where = t->name;
    }
    print_message("gradients with dropout: worst max-abs-normalised error %.2e (%s)\n", worst,
                  where);
    assert_true(worst < GRAD_RTOL);
    const strata_tensor *wte = strata_model_find(x->m, "wte.weight");
    const strata_model_shape *s = strata_model_get_shape(x->m);
    for (size_t i = wte->numel; i < (size_t)s->padded_vocab * s->n_embd; i++)
        assert_true(g[wte->offset + i] == 0.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(masks_are_the_ones_strata_draws_bit_for_bit),
        cmocka_unit_test(loss_matches_pytorch_with_the_same_masks),
        cmocka_unit_test(every_gradient_matches_pytorch_with_the_same_masks),
    };
    return cmocka_run_group_tests(tests, load_fixture, free_fixture);
}
