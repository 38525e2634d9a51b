/* test_schedule.c — the learning rate at chosen steps, computed by hand.
 *
 * lr = 1, min_lr = 0.1, warmup = 10 and total_steps = 110 make the numbers
 * easy to check on paper: warmup gives (step + 1) / 10; the decay then spans
 * the 100 steps 10..109, so step 10 + 100 f sits at fraction f.
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

#include "strata/schedule.h"

static void assert_lr(const strata_schedule *s, long step, double expected)
{
    float got = strata_schedule_lr(s, step);
    if (!(fabs(got - expected) <= 1e-6 * fmax(1.0, fabs(expected))))
        fail_msg("step %ld: lr %.9g, expected %.9g", step, got, expected);
}

static strata_schedule sched(strata_schedule_kind kind)
{
    strata_schedule s = {.kind = kind,
                         .lr = 1.0f,
                         .min_lr = 0.1f,
                         .warmup = 10,
                         .total_steps = 110,
                         .decay_fraction = 0.2f};
    return s;
}

static void warmup_rises_linearly_from_lr_over_warmup_to_lr(void **state)
{
    (void)state;
    for (int k = STRATA_SCHED_COSINE; k <= STRATA_SCHED_WSD; k++) {
        strata_schedule s = sched((strata_schedule_kind)k);
        assert_lr(&s, 0, 0.1);
        assert_lr(&s, 4, 0.5);
        assert_lr(&s, 9, 1.0); /* the last warmup step reaches lr */
        assert_lr(&s, 10, 1.0);
        for (long t = 1; t < 10; t++) /* strictly rising */
            assert_true(strata_schedule_lr(&s, t) > strata_schedule_lr(&s, t - 1));
    }
}

static void cosine_starts_at_lr_after_warmup_and_ends_at_min_lr(void **state)
{
    (void)state;
    strata_schedule s = sched(STRATA_SCHED_COSINE);
    assert_lr(&s, 10, 1.0);                                  /* f = 0 */
    assert_lr(&s, 35, 0.1 + 0.45 * (1 + cos(M_PI / 4)));     /* f = 1/4: 0.868198 */
    assert_lr(&s, 60, 0.55);                                 /* f = 1/2 */
    assert_lr(&s, 85, 0.1 + 0.45 * (1 - cos(M_PI / 4)));     /* f = 3/4: 0.231802 */
    assert_lr(&s, 109, 0.1 + 0.45 * (1 + cos(0.99 * M_PI))); /* 0.100222 */
    assert_lr(&s, 110, 0.1);                                 /* min_lr at total */
    assert_lr(&s, 5000, 0.1);                                /* and after */
    for (long t = 11; t <= 110; t++)                         /* never rises */
        assert_true(strata_schedule_lr(&s, t) <= strata_schedule_lr(&s, t - 1));
}

static void linear_decays_in_equal_steps_to_min_lr(void **state)
{
    (void)state;
    strata_schedule s = sched(STRATA_SCHED_LINEAR);
    assert_lr(&s, 10, 1.0);
    assert_lr(&s, 35, 0.775); /* 0.1 + 0.9 * 0.75 */
    assert_lr(&s, 60, 0.55);
    assert_lr(&s, 100, 0.19);
    assert_lr(&s, 110, 0.1);
    assert_lr(&s, 111, 0.1);
    /* Without warmup the first step already has the full rate. */
    strata_schedule z = {
        .kind = STRATA_SCHED_LINEAR, .lr = 2.0f, .min_lr = 0.0f, .warmup = 0, .total_steps = 100};
    assert_lr(&z, 0, 2.0);
    assert_lr(&z, 25, 1.5);
    assert_lr(&z, 100, 0.0);
}

static void constant_holds_lr_after_warmup_forever(void **state)
{
    (void)state;
    strata_schedule s = sched(STRATA_SCHED_CONSTANT);
    assert_lr(&s, 0, 0.1);
    assert_lr(&s, 10, 1.0);
    assert_lr(&s, 109, 1.0);
    assert_lr(&s, 110, 1.0); /* past total: still lr, not min_lr */
    assert_lr(&s, 100000, 1.0);
}

static void wsd_holds_lr_then_decays_linearly_over_the_last_fraction(void **state)
{
    (void)state;
    /* decay_fraction 0.2 of 110 steps: the last 22 steps, 88..109. */
    strata_schedule s = sched(STRATA_SCHED_WSD);
    assert_lr(&s, 10, 1.0);
    assert_lr(&s, 50, 1.0);
    assert_lr(&s, 87, 1.0);  /* last stable step */
    assert_lr(&s, 88, 1.0);  /* decay starts at fraction 0 */
    assert_lr(&s, 99, 0.55); /* (99 - 88) / 22 = 1/2 */
    assert_lr(&s, 109, 0.1 + 0.9 / 22);
    assert_lr(&s, 110, 0.1);
    assert_lr(&s, 200, 0.1);
    /* A decay fraction of 1 cannot start decaying before warmup ends: it
     * is then the linear schedule. */
    s.decay_fraction = 1.0f;
    strata_schedule lin = sched(STRATA_SCHED_LINEAR);
    for (long t = 0; t <= 120; t += 7)
        assert_true(strata_schedule_lr(&s, t) == strata_schedule_lr(&lin, t));
}

static void schedule_names_parse_and_unknown_names_are_rejected(void **state)
{
    (void)state;
    assert_int_equal(strata_schedule_parse("cosine"), STRATA_SCHED_COSINE);
    assert_int_equal(strata_schedule_parse("linear"), STRATA_SCHED_LINEAR);
    assert_int_equal(strata_schedule_parse("constant"), STRATA_SCHED_CONSTANT);
    assert_int_equal(strata_schedule_parse("wsd"), STRATA_SCHED_WSD);
    assert_int_equal(strata_schedule_parse("cosin"), -1);
    assert_int_equal(strata_schedule_parse(""), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(warmup_rises_linearly_from_lr_over_warmup_to_lr),
        cmocka_unit_test(cosine_starts_at_lr_after_warmup_and_ends_at_min_lr),
        cmocka_unit_test(linear_decays_in_equal_steps_to_min_lr),
        cmocka_unit_test(constant_holds_lr_after_warmup_forever),
        cmocka_unit_test(wsd_holds_lr_then_decays_linearly_over_the_last_fraction),
        cmocka_unit_test(schedule_names_parse_and_unknown_names_are_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
