/* torch_fixture.h — the PyTorch fixtures of test_model_fixture.c and
 * test_dropout_fixture.c: reading them, and comparing strata with them.
 *
 * A fixture (tests/fixtures/torch_*.h5, written once by the make_torch_*.py
 * beside it) holds a tiny GPT-2's config as attributes, a batch (/inputs,
 * /targets), the mean loss (/loss), and the weights and gradients of every
 * tensor (/params/<name>, /grads/<name>), plus what its own test needs. It is
 * read with raw HDF5 calls, so the tests depend on nothing but the model (and
 * the optimizer); every dataset's rank and dimensions are checked before it
 * is read. Everything here is static and test-only: include it once, after
 * cmocka.h.
 */
#ifndef STRATA_TESTS_TORCH_FIXTURE_H
#define STRATA_TESTS_TORCH_FIXTURE_H

#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/model.h"

/* What every fixture holds, loaded into strata. */
typedef struct torch_fixture {
    hid_t file;      /* open until torch_fixture_free */
    strata_model *m; /* the fixture's config and weights, reserved for (B, T) */
    int B, T;
    uint32_t *inputs, *targets; /* (B, T) */
    float loss;
    float *params, *grads; /* strata's layout (wte padded with zero rows) */
} torch_fixture;

static void attr_read(hid_t f, const char *name, hid_t memtype, void *buf)
{
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) fail_msg("fixture: attribute %s missing", name);
    assert_true(H5Aread(a, memtype, buf) >= 0);
    H5Aclose(a);
}

static int attr_int(hid_t f, const char *name)
{
    int v = 0;
    attr_read(f, name, H5T_NATIVE_INT, &v);
    return v;
}

static double attr_double(hid_t f, const char *name)
{
    double v = 0;
    attr_read(f, name, H5T_NATIVE_DOUBLE, &v);
    return v;
}

/* Reads path into buf after checking its rank and dimensions. */
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

/* /group/<tensor> for every tensor of the table, into a buffer of strata's layout. */
static float *read_tensors(hid_t f, const strata_model *m, const char *group)
{
    float *buf = calloc(strata_model_n_floats(m), sizeof *buf);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    if (g < 0) fail_msg("fixture: group %s missing", group);
    H5G_info_t info;
    assert_true(H5Gget_info(g, &info) >= 0);
    /* Exactly strata's tensors: none missing (checked below), none extra. */
    assert_int_equal(info.nlinks, strata_model_n_tensors(m));
    H5Gclose(g);
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        char path[128];
        snprintf(path, sizeof path, "%s/%s", group, t->name);
        hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        read_dataset(f, path, H5T_NATIVE_FLOAT, buf + t->offset, t->ndim, dims);
    }
    return buf;
}

/* Loads tests/fixtures/<name> of the repository at $STRATA_SOURCE_DIR: a
 * model of its config with its weights, reserved for its batch. Returns -1,
 * having said why on stderr, when the file cannot be opened. */
static int torch_fixture_load(torch_fixture *x, const char *name)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", src ? src : ".", name);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "cannot open %s (set STRATA_SOURCE_DIR to the repository)\n", path);
        return -1;
    }
    x->file = f;
    strata_model_shape shape = {.n_layer = attr_int(f, "n_layer"),
                                .n_head = attr_int(f, "n_head"),
                                .n_embd = attr_int(f, "n_embd"),
                                .block_size = attr_int(f, "block_size"),
                                .vocab_size = attr_int(f, "vocab_size")};
    strata_err e = strata_model_create(&x->m, &shape);
    if (e.code) fail_msg("%s", e.msg);
    x->B = attr_int(f, "batch");
    x->T = attr_int(f, "seq_len");

    size_t BT = (size_t)x->B * x->T;
    int32_t *tok = malloc(BT * sizeof *tok);
    x->inputs = malloc(BT * sizeof *x->inputs);
    x->targets = malloc(BT * sizeof *x->targets);
    hsize_t bt[2] = {(hsize_t)x->B, (hsize_t)x->T};
    read_dataset(f, "/inputs", H5T_NATIVE_INT32, tok, 2, bt);
    for (size_t i = 0; i < BT; i++) x->inputs[i] = (uint32_t)tok[i];
    read_dataset(f, "/targets", H5T_NATIVE_INT32, tok, 2, bt);
    for (size_t i = 0; i < BT; i++) x->targets[i] = (uint32_t)tok[i];
    free(tok);
    for (size_t i = 0; i < BT; i++) {
        assert_true(x->inputs[i] < (uint32_t)shape.vocab_size);
        assert_true(x->targets[i] < (uint32_t)shape.vocab_size);
    }
    read_dataset(f, "/loss", H5T_NATIVE_FLOAT, &x->loss, 0, NULL);
    x->params = read_tensors(f, x->m, "/params");
    x->grads = read_tensors(f, x->m, "/grads");

    memcpy(strata_model_params(x->m), x->params, strata_model_n_floats(x->m) * sizeof(float));
    e = strata_model_reserve(x->m, x->B, x->T);
    if (e.code) fail_msg("%s", e.msg);
    return 0;
}

static void torch_fixture_free(torch_fixture *x)
{
    H5Fclose(x->file);
    strata_model_free(x->m);
    free(x->inputs), free(x->targets), free(x->params), free(x->grads);
}

/* Zero gradient, forward and the backward of the mean loss, with the
 * model's current weights (and dropout settings). */
static float torch_fixture_forward_backward(torch_fixture *x)
{
    strata_model_zero_grad(x->m);
    float loss = 0;
    strata_backward_opts o = {.loss_scale = 1.0f / (float)(x->B * x->T)};
    (void)strata_model_forward_backward(x->m, x->inputs, x->targets, x->B, x->T, NULL, &loss, &o);
    return loss;
}

/* max |a - b| / max |b| over [begin, end). */
static double max_abs_normalised(const float *a, const float *b, size_t begin, size_t end)
{
    double d = 0, mx = 0;
    for (size_t i = begin; i < end; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return d / fmax(mx, 1e-30);
}

/* strata's gradient against the fixture's, tensor by tensor: the worst
 * max-abs-normalised error (its tensor in *where); a tensor at or above tol
 * is named on its own line. The padded rows of wte are not in the file and
 * must get exactly zero. */
static double worst_gradient_error(torch_fixture *x, double tol, const char **where)
{
    const float *g = strata_model_grads(x->m);
    double worst = 0;
    *where = "";
    for (int i = 0; i < strata_model_n_tensors(x->m); i++) {
        const strata_tensor *t = strata_model_tensor(x->m, i);
        double e = max_abs_normalised(g, x->grads, t->offset, t->offset + t->numel);
        if (e >= tol) print_message("  %s: %.2e\n", t->name, e);
        if (e > worst) worst = e, *where = t->name;
    }
    const strata_tensor *wte = strata_model_find(x->m, "wte.weight");
    const strata_model_shape *s = strata_model_get_shape(x->m);
    for (size_t i = wte->numel; i < (size_t)s->padded_vocab * s->n_embd; i++)
        assert_true(g[wte->offset + i] == 0.0f);
    return worst;
}

#endif
