/* test_sampler.c — the data order is a pure function of (seed, step, slot,
 * stream lengths): the same for any world size, exact in its replay
 * fraction, each new sample once per pass, resumable at any step. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "strata/sampler.h"

static strata_sampler make(int G, double ratio, int64_t n_new, int64_t window)
{
    strata_sampler sp;
    memset(&sp, 0, sizeof sp);
    sp.seed = 1234;
    sp.global_batch = G;
    sp.replay_slots = strata_sampler_replay_slots(ratio, G);
    sp.window = window;
    sp.new_samples = n_new;
    sp.new_final = 1;
    sp.wrap = 1;
    sp.n_replay = 2;
    sp.replay_samples[0] = 5000;
    sp.replay_samples[1] = 777;
    sp.replay_weight[0] = 0.7;
    sp.replay_weight[1] = 0.3;
    return sp;
}

static int64_t slot_id(const strata_sampler *sp, long s, int j)
{
    strata_sample_ref r;
    assert_int_equal(strata_sampler_slot(sp, s, j, &r), STRATA_SAMPLE_OK);
    return strata_sample_id(&r);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* What rank r of W computes: its slots [r*G/W, (r+1)*G/W), walked in
 * micro-batches of mb slots. */
static int rank_ids(const strata_sampler *sp, long s, int r, int W, int mb, int64_t *out)
{
    int G = sp->global_batch, begin = r * G / W, end = (r + 1) * G / W, n = 0;
    for (int m0 = begin; m0 < end; m0 += mb)
        for (int j = m0; j < end && j < m0 + mb; j++) out[n++] = slot_id(sp, s, j);
    return n;
}

static void global_batch_multiset_is_the_same_for_any_world_size_and_micro_batch(void **state)
{
    const int Gs[] = {8, 12, 64, 7};
    const double ratios[] = {0.0, 0.05, 0.25, 0.5};
    for (size_t g = 0; g < sizeof Gs / sizeof *Gs; g++) {
        for (size_t q = 0; q < sizeof ratios / sizeof *ratios; q++) {
            strata_sampler sp = make(Gs[g], ratios[q], 3000, 256);
            int G = sp.global_batch;
            int64_t ref[64], got[64];
            for (long s = 0; s < 50; s += 7) {
                for (int j = 0; j < G; j++) ref[j] = slot_id(&sp, s, j);
                qsort(ref, (size_t)G, sizeof *ref, cmp_i64);
                for (int W = 1; W <= 4; W++) {
                    for (int mb = 1; mb <= G; mb = mb * 2 + 1) {
                        int n = 0;
                        for (int r = 0; r < W; r++) n += rank_ids(&sp, s, r, W, mb, got + n);
                        assert_int_equal(n, G);
                        qsort(got, (size_t)G, sizeof *got, cmp_i64);
                        assert_memory_equal(ref, got, (size_t)G * sizeof *ref);
                    }
                }
            }
        }
    }
}

static void every_new_sample_is_used_exactly_once_per_pass(void **state)
{
    /* 1000 steps of 61 new samples over a stream of 10007: six whole passes
     * and part of a seventh; windows of 1024 leave a partial last window. */
    strata_sampler sp = make(64, 0.05, 10007, 1024);
    int64_t N = sp.new_samples, per_step = sp.global_batch - sp.replay_slots;
    assert_int_equal(per_step, 61);
    int64_t total = 1000 * per_step, passes = total / N + 1;
    int *seen = calloc((size_t)(passes * N), sizeof *seen);
    int64_t *first_pass = malloc((size_t)N * sizeof *first_pass);
    int64_t k = 0;
    for (long s = 0; s < 1000; s++) {
        for (int j = 0; j < sp.global_batch; j++) {
            strata_sample_ref r;
            assert_int_equal(strata_sampler_slot(&sp, s, j, &r), STRATA_SAMPLE_OK);
            if (r.source != 0) continue;
            assert_true(r.index >= 0 && r.index < N);
            assert_int_equal(r.pass, k / N);
            /* consumed in order, window by window */
            assert_int_equal(r.index / 1024, (k % N) / 1024);
            seen[r.pass * N + r.index]++;
            if (r.pass == 0) first_pass[k] = r.index;
            k++;
        }
    }
    assert_int_equal(k, total);
    for (int64_t p = 0; p < passes; p++) {
        int64_t used = 0;
        for (int64_t i = 0; i < N; i++) {
            assert_true(seen[p * N + i] <= 1);
            used += seen[p * N + i];
        }
        assert_int_equal(used, p < passes - 1 ? N : total - (passes - 1) * N);
    }
    /* The second pass is another permutation of each window. */
    int64_t differ = 0;
    for (int64_t kk = 0; kk < N; kk++) {
        strata_sample_ref r;
        int64_t k2 = N + kk, s = k2 / per_step, idx = k2 % per_step;
        int j = 0;
        for (int64_t c = -1; j < sp.global_batch; j++)
            if (!strata_sampler_is_replay(&sp, j) && ++c == idx) break;
        assert_int_equal(strata_sampler_slot(&sp, (long)s, j, &r), STRATA_SAMPLE_OK);
        assert_int_equal(r.pass, 1);
        differ += r.index != first_pass[kk];
    }
    assert_true(differ > N / 2);
    free(seen);
    free(first_pass);
}

static void replay_fraction_is_exact_in_every_global_batch(void **state)
{
    const int Gs[] = {1, 7, 8, 20, 64, 100};
    const double ratios[] = {0.0, 0.05, 0.1, 0.25, 0.35, 0.5, 0.9, 1.0};
    for (size_t g = 0; g < sizeof Gs / sizeof *Gs; g++) {
        for (size_t q = 0; q < sizeof ratios / sizeof *ratios; q++) {
            strata_sampler sp = make(Gs[g], ratios[q], 100000, 1024);
            int G = Gs[g], R = sp.replay_slots;
            assert_int_equal(R, (int)floor(ratios[q] * G + 0.5 + 1e-9));
            for (long s = 0; s < 1000; s++) {
                int replay = 0, last = -1, max_gap = 0;
                for (int j = 0; j < G; j++) {
                    strata_sample_ref r;
                    assert_int_equal(strata_sampler_slot(&sp, s, j, &r), STRATA_SAMPLE_OK);
                    assert_int_equal(r.source != 0, strata_sampler_is_replay(&sp, j));
                    if (r.source != 0) {
                        replay++;
                        if (j - last > max_gap) max_gap = j - last;
                        last = j;
                    }
                }
                assert_int_equal(replay, R);
                /* spread evenly: no run of new slots longer than ceil(G/R) */
                if (R > 0) assert_true(max_gap <= (G + R - 1) / R);
            }
        }
    }
    /* 0.35 * 10 is 3.4999999999999996 in binary: still 4 slots */
    assert_int_equal(strata_sampler_replay_slots(0.35, 10), 4);
    assert_int_equal(strata_sampler_replay_slots(0.05, 64), 3);
}

static void restarting_at_step_s_reproduces_steps_s_onwards(void **state)
{
    strata_sampler sp = make(16, 0.25, 5000, 512);
    enum { STEPS = 400 };
    int64_t *run = malloc(STEPS * 16 * sizeof *run);
    for (long s = 0; s < STEPS; s++)
        for (int j = 0; j < 16; j++) run[s * 16 + j] = slot_id(&sp, s, j);
    /* A "resumed" sampler built from scratch, asked from step 237, in
     * reverse order for good measure: nothing depends on history. */
    strata_sampler again = make(16, 0.25, 5000, 512);
    for (long s = STEPS - 1; s >= 237; s--)
        for (int j = 15; j >= 0; j--) assert_int_equal(slot_id(&again, s, j), run[s * 16 + j]);
    /* Another seed gives another order. */
    again.seed = 99;
    int differ = 0;
    for (int j = 0; j < 16; j++) differ += slot_id(&again, 10, j) != run[10 * 16 + j];
    assert_true(differ > 8);
    free(run);
}

static void replay_source_weights_are_respected(void **state)
{
    strata_sampler sp = make(10, 0.5, 100000, 1024);
    sp.n_replay = 3;
    sp.replay_samples[0] = 5000;
    sp.replay_samples[1] = 10;
    sp.replay_samples[2] = 3;
    sp.replay_weight[0] = 0.7;
    sp.replay_weight[1] = 0.3;
    sp.replay_weight[2] = 0.0; /* never drawn */
    long counts[3] = {0}, small[10] = {0}, draws = 0;
    for (long s = 0; s < 20000; s++) {
        for (int j = 0; j < 10; j++) {
            strata_sample_ref r;
            assert_int_equal(strata_sampler_slot(&sp, s, j, &r), STRATA_SAMPLE_OK);
            if (r.source == 0) continue;
            assert_true(r.source >= 1 && r.source <= 3);
            assert_true(r.index >= 0 && r.index < sp.replay_samples[r.source - 1]);
            counts[r.source - 1]++;
            if (r.source == 2) small[r.index]++;
            draws++;
        }
    }
    assert_int_equal(draws, 100000);
    assert_int_equal(counts[2], 0);
    /* Binomial: sd = sqrt(n p (1-p)) ~ 145; allow 5 sd. */
    double p0 = (double)counts[0] / (double)draws;
    assert_true(fabs(p0 - 0.7) < 5 * sqrt(0.7 * 0.3 / (double)draws));
    /* Uniform within a source: each of 10 samples ~3000 times. */
    for (int i = 0; i < 10; i++)
        assert_true(labs(small[i] - counts[1] / 10) < 5 * (long)sqrt((double)counts[1] / 10));
}

static void a_growing_stream_uses_whole_windows_and_keeps_its_order(void **state)
{
    /* Following: 2500 samples present, windows of 1024 -> 2048 usable. */
    strata_sampler grow = make(8, 0.25, 2500, 1024);
    grow.new_final = 0;
    grow.wrap = 0;
    assert_int_equal(strata_sampler_steps_available(&grow), 2048 / 6);
    assert_int_equal(strata_sampler_step_status(&grow, 2048 / 6 - 1), STRATA_SAMPLE_OK);
    assert_int_equal(strata_sampler_step_status(&grow, 2048 / 6), STRATA_SAMPLE_WAIT);
    int64_t before[341 * 8];
    for (long s = 0; s < 341; s++)
        for (int j = 0; j < 8; j++) before[s * 8 + j] = slot_id(&grow, s, j);
    /* More shards arrive: the steps already drawn do not change, and they
     * are what a run on the final stream draws too. */
    grow.new_samples = 9000;
    strata_sampler fin = make(8, 0.25, 9000, 1024);
    fin.wrap = 0;
    for (long s = 0; s < 341; s++)
        for (int j = 0; j < 8; j++) {
            assert_int_equal(slot_id(&grow, s, j), before[s * 8 + j]);
            assert_int_equal(slot_id(&fin, s, j), before[s * 8 + j]);
        }
    /* The final stream also uses its partial last window, then ends. */
    assert_int_equal(strata_sampler_steps_available(&grow), 8192 / 6);
    assert_int_equal(strata_sampler_steps_available(&fin), 9000 / 6);
    assert_int_equal(strata_sampler_step_status(&fin, 9000 / 6 - 1), STRATA_SAMPLE_OK);
    assert_int_equal(strata_sampler_step_status(&fin, 9000 / 6), STRATA_SAMPLE_END);
    strata_sample_ref r;
    assert_int_equal(strata_sampler_slot(&fin, 9000 / 6, 1, &r), STRATA_SAMPLE_END);
}

static void a_batch_does_not_show_a_shards_order(void **state)
{
    strata_sampler sp = make(64, 0.0, 100000, 1024);
    int64_t ids[64];
    int ascending = 0;
    for (int j = 0; j < 64; j++) {
        strata_sample_ref r;
        assert_int_equal(strata_sampler_slot(&sp, 0, j, &r), STRATA_SAMPLE_OK);
        ids[j] = r.index;
        assert_true(r.index < 1024); /* from the first window */
        if (j && ids[j] == ids[j - 1] + 1) ascending++;
    }
    assert_true(ascending < 8);
    int64_t maxi = 0;
    for (int j = 0; j < 64; j++) maxi = ids[j] > maxi ? ids[j] : maxi;
    assert_true(maxi > 512); /* spread over the window, not its head */
}

static void permute_is_a_bijection_for_every_size(void **state)
{
    const uint64_t ns[] = {1, 2, 3, 5, 17, 1000, 1023, 1024, 1025, 65537};
    for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
        uint64_t n = ns[t];
        char *hit = calloc(n, 1);
        int fixed = 0;
        for (uint64_t x = 0; x < n; x++) {
            uint64_t y = strata_permute(0xabcdefull + t, n, x);
            assert_true(y < n);
            assert_int_equal(hit[y], 0);
            hit[y] = 1;
            fixed += y == x;
        }
        if (n >= 1000) assert_true(fixed < 20);
        free(hit);
    }
}

static void exhaustion_and_bad_settings_are_reported(void **state)
{
    strata_sampler sp = make(8, 0.25, 600, 1024);
    sp.wrap = 0;
    assert_int_equal(strata_sampler_steps_available(&sp), 100);
    assert_int_equal(strata_sampler_step_status(&sp, 99), STRATA_SAMPLE_OK);
    assert_int_equal(strata_sampler_step_status(&sp, 100), STRATA_SAMPLE_END);
    sp.wrap = 1;
    assert_int_equal(strata_sampler_step_status(&sp, 100000), STRATA_SAMPLE_OK);
    /* All replay: the new stream is never needed. */
    strata_sampler all = make(8, 1.0, 0, 1024);
    assert_int_equal(strata_sampler_step_status(&all, 1L << 40), STRATA_SAMPLE_OK);
    assert_int_equal(strata_sampler_check(&all).code, 0);

    strata_sampler bad = make(8, 0.25, 600, 1024);
    bad.n_replay = 0;
    assert_int_equal(strata_sampler_check(&bad).code, STRATA_EINPUT);
    bad = make(8, 0.25, 600, 1024);
    bad.replay_weight[0] = bad.replay_weight[1] = 0;
    assert_int_equal(strata_sampler_check(&bad).code, STRATA_EINPUT);
    bad = make(8, 0.25, 600, 1024);
    bad.replay_weight[1] = NAN;
    assert_int_equal(strata_sampler_check(&bad).code, STRATA_EINPUT);
    bad = make(8, 0.25, 600, 0);
    assert_int_equal(strata_sampler_check(&bad).code, STRATA_EINPUT);
    bad = make(0, 0.25, 600, 1024);
    assert_int_equal(strata_sampler_check(&bad).code, STRATA_EINPUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(global_batch_multiset_is_the_same_for_any_world_size_and_micro_batch),
        cmocka_unit_test(every_new_sample_is_used_exactly_once_per_pass),
        cmocka_unit_test(replay_fraction_is_exact_in_every_global_batch),
        cmocka_unit_test(restarting_at_step_s_reproduces_steps_s_onwards),
        cmocka_unit_test(replay_source_weights_are_respected),
        cmocka_unit_test(a_growing_stream_uses_whole_windows_and_keeps_its_order),
        cmocka_unit_test(a_batch_does_not_show_a_shards_order),
        cmocka_unit_test(permute_is_a_bijection_for_every_size),
        cmocka_unit_test(exhaustion_and_bad_settings_are_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
