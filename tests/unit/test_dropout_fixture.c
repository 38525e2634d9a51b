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
 * tensor's largest value. Raw HDF5 calls (torch_fixture.h), as in
 * test_model_fixture.c.
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

#include "torch_fixture.h"

#include "strata/model.h"

#define LOSS_RTOL 1e-5
#define GRAD_RTOL 1e-5

typedef struct fixture {
    torch_fixture torch; /* the model, the batch, the loss, params and grads */
    int L, NH, C;
    double p;
    uint64_t seed;
    long step;
    int64_t *ids; /* (B): each row's slot in the global batch */
} fixture;

static int load_fixture(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    if (torch_fixture_load(&x->torch, "torch_dropout.h5")) {
        free(x);
        return -1;
    }
    hid_t f = x->torch.file; /* kept open: the masks are read by their test */
    const strata_model_shape *shape = strata_model_get_shape(x->torch.m);
    x->L = shape->n_layer, x->NH = shape->n_head, x->C = shape->n_embd;
    x->p = attr_double(f, "dropout");
    attr_read(f, "seed", H5T_NATIVE_UINT64, &x->seed);
    int64_t step = 0;
    attr_read(f, "step", H5T_NATIVE_INT64, &step);
    x->step = (long)step;
    assert_true(x->p > 0 && x->p < 1);
    hsize_t b1 = (hsize_t)x->torch.B;
    x->ids = malloc(x->torch.B * sizeof *x->ids);
    read_dataset(f, "/sample_ids", H5T_NATIVE_INT64, x->ids, 1, &b1);
    *state = x;
    return 0;
}

static int free_fixture(void **state)
{
    fixture *x = *state;
    torch_fixture_free(&x->torch);
    free(x->ids), free(x);
    return 0;
}

/* Dropout as the fixture's (seed, step, sample ids), then forward and the
 * backward of the mean loss. */
static float forward_backward(fixture *x)
{
    strata_model_set_dropout(x->torch.m, (float)x->p, x->seed, x->step, x->ids);
    return torch_fixture_forward_backward(&x->torch);
}

static void masks_are_the_ones_strata_draws_bit_for_bit(void **state)
{
    fixture *x = *state;
    const torch_fixture *tf = &x->torch;
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
            hsize_t dims[4] = {(hsize_t)tf->B, (hsize_t)x->NH, (hsize_t)tf->T, (hsize_t)tf->T};
            int nd = 4;
            if (site != STRATA_DROPOUT_ATTN) dims[1] = tf->T, dims[2] = x->C, nd = 3;
            size_t n = strata_model_dropout_mask(tf->m, l, site, NULL);
            assert_int_equal(n, dims[0] * dims[1] * dims[2] * (nd == 4 ? dims[3] : 1));
            float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
            read_dataset(tf->file, path, H5T_NATIVE_FLOAT, want, nd, dims);
            strata_model_dropout_mask(tf->m, l, site, got);
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
    const torch_fixture *tf = &x->torch;
    float loss = forward_backward(x);
    double rel = fabs((double)loss - tf->loss) / tf->loss;
    print_message("loss with dropout %.2f: strata %.7f, torch %.7f, relative error %.2e\n", x->p,
                  loss, tf->loss, rel);
    assert_true(rel < LOSS_RTOL);
    /* Without dropout the loss is another one: the masks matter. */
    strata_model_set_dropout(tf->m, 0.0f, 0, 0, NULL);
    float plain;
    assert_int_equal(
        strata_model_forward(tf->m, tf->inputs, tf->targets, tf->B, tf->T, NULL, &plain).code, 0);
    assert_true(fabs(plain - tf->loss) > 1e-3);
}

static void every_gradient_matches_pytorch_with_the_same_masks(void **state)
{
    fixture *x = *state;
    forward_backward(x);
    const char *where;
    double worst = worst_gradient_error(&x->torch, GRAD_RTOL, &where);
    print_message("gradients with dropout: worst max-abs-normalised error %.2e (%s)\n", worst,
                  where);
    assert_true(worst < GRAD_RTOL);
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
