/* The one matrix product; see include/strata/gemm.h.
 *
 * A bf16 product is cut into panels until its operands fit the per-thread
 * scratch (the largest of M, N, K halved at a multiple of 64, recursively:
 * a function of the shape only), then each leaf converts what it must and
 * runs on oneDNN or on cblas_sgemm. A K split accumulates the second half
 * onto the first (beta 1), so every panel order is fixed. */
#include "strata/gemm.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef STRATA_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

/* Floats of converted operands per leaf (16 MiB). */
#define LEAF_FLOATS (4L << 20)

void strata_bf16_from_floats(strata_bf16 *out, const float *in, size_t n)
{
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = strata_bf16_from_float(in[i]);
}

void strata_bf16_to_floats(float *out, const strata_bf16 *in, size_t n)
{
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = strata_bf16_to_float(in[i]);
}

/* ---- per-thread scratch ------------------------------------------------ */

static _Thread_local void *tls_buf;
static _Thread_local size_t tls_bytes;

static void *scratch(size_t bytes)
{
    if (bytes > tls_bytes) {
        free(tls_buf);
        tls_buf = malloc(bytes);
        tls_bytes = tls_buf ? bytes : 0;
    }
    return tls_buf;
}

/* ---- operands ---------------------------------------------------------- */

/* op(X)[r0:, c0:] of an operand whose op is (rows, cols). */
static strata_mat sub(strata_mat x, int r0, int c0)
{
    size_t at = x.trans ? (size_t)c0 * x.ld + r0 : (size_t)r0 * x.ld + c0;
    x.p = (const char *)x.p + at * (x.bf16 ? 2 : 4);
    return x;
}

/* op(x) is (R, S); its storage is (S, R) when transposed. Writes the stored
 * block densely into dst, as fp32 values of bf16 (to_bf16 0) or as bf16. */
static strata_mat convert(void *dst, strata_mat x, int R, int S, int to_bf16)
{
    int rows = x.trans ? S : R, cols = x.trans ? R : S;
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && (long)rows * cols > 65536)
    for (int i = 0; i < rows; i++) {
        const float *sf = (const float *)x.p + (size_t)i * x.ld;
        const strata_bf16 *sh = (const strata_bf16 *)x.p + (size_t)i * x.ld;
        if (to_bf16) {
            strata_bf16 *d = (strata_bf16 *)dst + (size_t)i * cols;
            if (x.bf16)
                memcpy(d, sh, (size_t)cols * 2);
            else
                for (int j = 0; j < cols; j++) d[j] = strata_bf16_from_float(sf[j]);
        } else {
            float *d = (float *)dst + (size_t)i * cols;
            if (x.bf16)
                for (int j = 0; j < cols; j++) d[j] = strata_bf16_to_float(sh[j]);
            else
                for (int j = 0; j < cols; j++) d[j] = strata_bf16_round(sf[j]);
        }
    }
    return (strata_mat){dst, cols, x.trans, to_bf16};
}

static void sgemm(int M, int N, int K, float alpha, strata_mat A, strata_mat B, float beta,
                  float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, A.trans ? CblasTrans : CblasNoTrans,
                B.trans ? CblasTrans : CblasNoTrans, M, N, K, alpha, A.p, A.ld, B.p, B.ld, beta, C,
                ldc);
}

/* ---- the oneDNN backend -------------------------------------------------- */

static struct {
    pthread_once_t once;
    int native;
    char line[256];
} be = {PTHREAD_ONCE_INIT, 0, ""};

static void backend_init(void);

#ifdef STRATA_HAVE_DNNL
static dnnl_engine_t engine;
static _Thread_local dnnl_stream_t tls_stream;

typedef struct prim_key {
    int M, N, K, lda, ldb, ldc, ta, tb;
    float alpha, beta;
} prim_key;
#define MAX_PRIMS                                                                                  \
    4096 /* a run meets ~100 shapes; beyond this, sgemm (never evicted: the choice stays a         \
            function of the run) */
static prim_key prim_keys[MAX_PRIMS];
static dnnl_primitive_t prims[MAX_PRIMS];
static int n_prims;
static pthread_mutex_t prim_lock = PTHREAD_MUTEX_INITIALIZER;

static dnnl_status_t matmul_pd(dnnl_primitive_desc_t *pd, const prim_key *k)
{
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t ad = {k->M, k->K}, bd = {k->K, k->N}, cd = {k->M, k->N};
    dnnl_dims_t as = {k->ta ? 1 : k->lda, k->ta ? k->lda : 1};
    dnnl_dims_t bs = {k->tb ? 1 : k->ldb, k->tb ? k->ldb : 1}, cs = {k->ldc, 1};
    dnnl_status_t s;
    if ((s = dnnl_memory_desc_init_by_strides(&a, 2, ad, dnnl_bf16, as)) ||
        (s = dnnl_memory_desc_init_by_strides(&b, 2, bd, dnnl_bf16, bs)) ||
        (s = dnnl_memory_desc_init_by_strides(&c, 2, cd, dnnl_f32, cs)))
        return s;
    dnnl_matmul_desc_t md;
    if ((s = dnnl_matmul_desc_init(&md, &a, &b, NULL, &c))) return s;
    dnnl_primitive_attr_t attr;
    if ((s = dnnl_primitive_attr_create(&attr))) return s;
    dnnl_post_ops_t po = NULL;
    s = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha);
    if (!s && k->beta != 0.0f && !(s = dnnl_post_ops_create(&po)) &&
        !(s = dnnl_post_ops_append_sum(po, k->beta)))
        s = dnnl_primitive_attr_set_post_ops(attr, po);
    if (!s) s = dnnl_primitive_desc_create(pd, &md, attr, engine, NULL);
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

/* The primitive of a shape, created on first use; NULL if oneDNN refuses. */
static dnnl_primitive_t primitive(const prim_key *k)
{
    pthread_mutex_lock(&prim_lock);
    dnnl_primitive_t p = NULL;
    for (int i = 0; i < n_prims && !p; i++)
        if (!memcmp(&prim_keys[i], k, sizeof *k)) p = prims[i];
    dnnl_primitive_desc_t pd;
    if (!p && n_prims < MAX_PRIMS && matmul_pd(&pd, k) == dnnl_success) {
        if (dnnl_primitive_create(&p, pd) != dnnl_success) p = NULL;
        dnnl_primitive_desc_destroy(pd);
        if (p) prim_keys[n_prims] = *k, prims[n_prims++] = p;
    }
    pthread_mutex_unlock(&prim_lock);
    return p;
}

/* A and B bf16; returns 0 when it ran. */
static int dnnl_leaf(int M, int N, int K, float alpha, strata_mat A, strata_mat B, float beta,
                     float *C, int ldc)
{
    prim_key k = {M, N, K, A.ld, B.ld, ldc, A.trans, B.trans, alpha, beta};
    dnnl_primitive_t p = primitive(&k);
    if (!p) return -1;
    if (!tls_stream && dnnl_stream_create(&tls_stream, engine, dnnl_stream_default_flags))
        return -1;
    const dnnl_memory_desc_t *md[3];
    dnnl_primitive_desc_t pd;
    dnnl_primitive_get_primitive_desc(p, (const_dnnl_primitive_desc_t *)&pd);
    md[0] = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    md[1] = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    md[2] = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    void *ptr[3] = {(void *)A.p, (void *)B.p, C};
    int arg[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
    dnnl_memory_t mem[3] = {NULL, NULL, NULL};
    dnnl_exec_arg_t args[3];
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        ok = ok && dnnl_memory_create(&mem[i], md[i], engine, ptr[i]) == dnnl_success;
        args[i] = (dnnl_exec_arg_t){arg[i], mem[i]};
    }
    ok = ok && dnnl_primitive_execute(p, tls_stream, 3, args) == dnnl_success &&
         dnnl_stream_wait(tls_stream) == dnnl_success;
    for (int i = 0; i < 3; i++)
        if (mem[i]) dnnl_memory_destroy(mem[i]);
    return ok ? 0 : -1;
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41:
        return "sse41";
    case dnnl_cpu_isa_avx:
        return "avx";
    case dnnl_cpu_isa_avx2:
        return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
        return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core:
        return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
        return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
        return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
        return "avx512_core_amx";
    default:
        return "other";
    }
}
#endif

/* ---- one leaf, then the panels ------------------------------------------- */

/* Without scratch (out of memory): the same products, one at a time. */
static void naive(strata_precision prec, int M, int N, int K, float alpha, strata_mat A,
                  strata_mat B, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                strata_mat a = sub(A, i, k), b = sub(B, k, j);
                float x =
                    a.bf16 ? strata_bf16_to_float(*(const strata_bf16 *)a.p) : *(const float *)a.p;
                float y =
                    b.bf16 ? strata_bf16_to_float(*(const strata_bf16 *)b.p) : *(const float *)b.p;
                if (prec == STRATA_BF16) x = strata_bf16_round(x), y = strata_bf16_round(y);
                acc += x * y;
            }
            float *c = C + (size_t)i * ldc + j;
            *c = alpha * acc + (beta == 0.0f ? 0.0f : beta * *c);
        }
}

static void leaf(strata_precision prec, int M, int N, int K, float alpha, strata_mat A,
                 strata_mat B, float beta, float *C, int ldc)
{
    pthread_once(&be.once, backend_init);
    size_t na = (size_t)M * K, nb = (size_t)K * N;
#ifdef STRATA_HAVE_DNNL
    if (be.native && prec == STRATA_BF16) {
        strata_bf16 *s = scratch((na + nb) * 2);
        if (s) {
            strata_mat a = A.bf16 ? A : convert(s, A, M, K, 1);
            strata_mat b = B.bf16 ? B : convert(s + na, B, K, N, 1);
            if (!dnnl_leaf(M, N, K, alpha, a, b, beta, C, ldc)) return;
        }
    }
#endif
    /* bf16: every operand to bf16 values in fp32; fp32: only the bf16 ones
     * widened (exact), the fp32 ones as they are. */
    int conv_a = prec == STRATA_BF16 || A.bf16, conv_b = prec == STRATA_BF16 || B.bf16;
    float *s = scratch(((conv_a ? na : 0) + (conv_b ? nb : 0)) * 4);
    if (!s) {
        naive(prec, M, N, K, alpha, A, B, beta, C, ldc);
        return;
    }
    strata_mat a = conv_a ? convert(s, A, M, K, 0) : A;
    strata_mat b = conv_b ? convert(s + (conv_a ? na : 0), B, K, N, 0) : B;
    sgemm(M, N, K, alpha, a, b, beta, C, ldc);
}

static int split_at(int d) { return d > 128 ? (d / 2 + 63) / 64 * 64 : d / 2; }

static void panels(strata_precision prec, int M, int N, int K, float alpha, strata_mat A,
                   strata_mat B, float beta, float *C, int ldc)
{
    if ((long)M * K + (long)K * N <= LEAF_FLOATS || (M <= 64 && N <= 64 && K <= 64)) {
        leaf(prec, M, N, K, alpha, A, B, beta, C, ldc);
    } else if (M >= N && M >= K) {
        int h = split_at(M);
        panels(prec, h, N, K, alpha, A, B, beta, C, ldc);
        panels(prec, M - h, N, K, alpha, sub(A, h, 0), B, beta, C + (size_t)h * ldc, ldc);
    } else if (N >= K) {
        int h = split_at(N);
        panels(prec, M, h, K, alpha, A, B, beta, C, ldc);
        panels(prec, M, N - h, K, alpha, A, sub(B, 0, h), beta, C + h, ldc);
    } else {
        int h = split_at(K);
        panels(prec, M, N, h, alpha, A, B, beta, C, ldc);
        panels(prec, M, N, K - h, alpha, sub(A, 0, h), sub(B, h, 0), 1.0f, C, ldc);
    }
}

void strata_gemm(strata_precision prec, int M, int N, int K, float alpha, strata_mat A,
                 strata_mat B, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (prec == STRATA_FP32 && !A.bf16 && !B.bf16) {
        sgemm(M, N, K, alpha, A, B, beta, C, ldc);
        return;
    }
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
        return;
    }
    /* fp32 with a bf16 operand: widening is exact, so the bf16 path is it. */
    panels(prec, M, N, K, alpha, A, B, beta, C, ldc);
}

/* ---- which backend ------------------------------------------------------ */

#ifdef STRATA_HAVE_DNNL
/* Runs a small product with transposes, strides, alpha and beta on oneDNN
 * and on the fallback; 0 when they agree to fp32 summation-order error. */
static int self_check(void)
{
    enum { M = 37, N = 45, K = 70, LD = 80 };
    static float a[K * LD], b[K * LD], c1[M * LD], c2[M * LD];
    static strata_bf16 ah[K * LD], bh[K * LD];
    for (int i = 0; i < K * LD; i++) {
        a[i] = strata_bf16_round((float)((i * 7919) % 113) / 113.0f - 0.5f);
        b[i] = strata_bf16_round((float)((i * 104729) % 97) / 97.0f - 0.5f);
        ah[i] = strata_bf16_from_float(a[i]), bh[i] = strata_bf16_from_float(b[i]);
    }
    for (int i = 0; i < M * LD; i++) c1[i] = c2[i] = (float)(i % 5) - 2.0f;
    strata_mat A = strata_mat_bf16(ah, LD, 1), B = strata_mat_bf16(bh, LD, 0);
    if (dnnl_leaf(M, N, K, 0.5f, A, B, 0.75f, c1, LD)) return -1;
    sgemm(M, N, K, 0.5f, strata_mat_f32(a, LD, 1), strata_mat_f32(b, LD, 0), 0.75f, c2, LD);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float x = c1[i * LD + j], y = c2[i * LD + j];
            if (!(x - y < 1e-4f && y - x < 1e-4f)) return -1;
        }
    return 0;
}
#endif

static void backend_init(void)
{
#ifdef STRATA_HAVE_DNNL
    const dnnl_version_t *v = dnnl_version();
    const char *isa = isa_name(dnnl_get_effective_cpu_isa());
    const char *force = getenv("STRATA_BF16_BACKEND");
    int forced = force && !strcmp(force, "sgemm");
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
        snprintf(be.line, sizeof be.line,
                 "bf16 matmul sgemm on bf16-rounded operands (oneDNN %d.%d: "
                 "no CPU engine)",
                 v->major, v->minor);
        return;
    }
    prim_key k = {64, 64, 64, 64, 64, 64, 0, 0, 1.0f, 0.0f};
    dnnl_primitive_desc_t pd;
    const char *impl = NULL;
    char impl_buf[96] = "";
    if (matmul_pd(&pd, &k) == dnnl_success) {
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        snprintf(impl_buf, sizeof impl_buf, "%s", impl ? impl : "?");
        dnnl_primitive_desc_destroy(pd);
    }
    int usable = impl_buf[0] && !strstr(impl_buf, "ref");
    if (usable && !forced) {
        be.native = 1;
        if (self_check()) be.native = 0;
    }
    if (be.native)
        snprintf(be.line, sizeof be.line, "bf16 matmul oneDNN %d.%d %s (ISA %s)", v->major,
                 v->minor, impl_buf, isa);
    else
        snprintf(be.line, sizeof be.line,
                 "bf16 matmul sgemm on bf16-rounded operands (oneDNN %d.%d, ISA %s: %s)", v->major,
                 v->minor, isa,
                 forced        ? "STRATA_BF16_BACKEND=sgemm"
                 : usable      ? "its bf16 matmul failed the self-check"
                 : impl_buf[0] ? "only a reference bf16 matmul"
                               : "no bf16 matmul for this ISA");
#else
    snprintf(be.line, sizeof be.line, "bf16 matmul unavailable (built without oneDNN, libdnnl)");
#endif
}

void strata_gemm_describe(char *buf, size_t n)
{
    pthread_once(&be.once, backend_init);
    snprintf(buf, n, "%s", be.line);
}

int strata_gemm_bf16_native(void)
{
    pthread_once(&be.once, backend_init);
    return be.native;
}

strata_err strata_gemm_check_precision(strata_precision prec)
{
#ifdef STRATA_HAVE_DNNL
    (void)prec;
    return strata_ok();
#else
    if (prec == STRATA_FP32) return strata_ok();
    return strata_errorf(STRATA_EINPUT,
                         "precision bf16 needs oneDNN (libdnnl), and this strata was built "
                         "without it: apt-get install libdnnl-dev, then rebuild");
#endif
}

void strata_gemv_f32(int M, int N, float alpha, const float *A, int lda, const float *x,
                     float beta, float *y)
{
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}
