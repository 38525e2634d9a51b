/* sampler.c — the data order as a pure function; see sampler.h. */
#include "strata/sampler.h"

#include <math.h>

#include "strata/rng.h"

/* Domain tags keep the new-data permutation and the replay draws on
 * independent streams of the counter RNG even for equal counters. */
#define TAG_NEW    0x6e65772d77696e64ull /* "new-wind" */
#define TAG_SOURCE 0x7265706c2d737263ull /* "repl-src" */
#define TAG_INDEX  0x7265706c2d696478ull /* "repl-idx" */

int strata_sampler_replay_slots(double replay_ratio, int global_batch)
{
    double r = floor(replay_ratio * global_batch + 0.5 + 1e-9);
    if (r < 0) r = 0;
    if (r > global_batch) r = global_batch;
    return (int)r;
}

strata_err strata_sampler_check(const strata_sampler *sp)
{
    int G = sp->global_batch, R = sp->replay_slots;
    if (G < 1) return strata_errorf(STRATA_EINPUT, "sampler: global batch %d < 1", G);
    if (R < 0 || R > G)
        return strata_errorf(STRATA_EINPUT, "sampler: %d replay slots in a batch of %d", R, G);
    if (sp->window < 1 || sp->window > ((int64_t)1 << 40))
        return strata_errorf(STRATA_EINPUT, "sampler: shuffle window %lld out of range",
                             (long long)sp->window);
    if (sp->new_samples < 0 || sp->new_samples >= ((int64_t)1 << 56))
        return strata_errorf(STRATA_EINPUT, "sampler: %lld new samples out of range",
                             (long long)sp->new_samples);
    if (R == 0) return strata_ok();
    if (sp->n_replay < 1 || sp->n_replay > STRATA_SAMPLER_MAX_REPLAY)
        return strata_errorf(STRATA_EINPUT,
                             "sampler: %d replay slots per batch but %d replay sources", R,
                             sp->n_replay);
    double total = 0;
    for (int i = 0; i < sp->n_replay; i++) {
        double w = sp->replay_weight[i];
        if (!(w >= 0) || !isfinite(w))
            return strata_errorf(STRATA_EINPUT, "sampler: replay source %d has weight %g", i, w);
        if (w > 0 && (sp->replay_samples[i] < 1 || sp->replay_samples[i] >= ((int64_t)1 << 56)))
            return strata_errorf(STRATA_EINPUT, "sampler: replay source %d has %lld samples", i,
                                 (long long)sp->replay_samples[i]);
        total += w;
    }
    if (!(total > 0))
        return strata_errorf(STRATA_EINPUT, "sampler: replay weights sum to %g", total);
    return strata_ok();
}

/* Replay slots among [0, j): floor(j*R/G). Slot j is replay iff the count
 * steps up at j; its index among the new slots is j minus that count. */
static int64_t replay_before(const strata_sampler *sp, int j)
{
    return (int64_t)j * sp->replay_slots / sp->global_batch;
}

int strata_sampler_is_replay(const strata_sampler *sp, int j)
{
    return replay_before(sp, j + 1) > replay_before(sp, j);
}

/* Samples of the new stream usable now: all of them once final, else the
 * whole windows. */
static int64_t new_usable(const strata_sampler *sp)
{
    if (sp->new_final) return sp->new_samples;
    return sp->new_samples / sp->window * sp->window;
}

/* Status of the k-th new sample overall. */
static int new_status(const strata_sampler *sp, int64_t k)
{
    int64_t n = new_usable(sp);
    if (k < n) return STRATA_SAMPLE_OK;
    if (!sp->new_final) return STRATA_SAMPLE_WAIT;
    return sp->wrap && n > 0 ? STRATA_SAMPLE_OK : STRATA_SAMPLE_END;
}

int strata_sampler_step_status(const strata_sampler *sp, long s)
{
    int64_t per_step = sp->global_batch - sp->replay_slots;
    if (per_step == 0) return STRATA_SAMPLE_OK;
    if (s < 0) return STRATA_SAMPLE_END;
    return new_status(sp, ((int64_t)s + 1) * per_step - 1);
}

int64_t strata_sampler_steps_available(const strata_sampler *sp)
{
    int64_t per_step = sp->global_batch - sp->replay_slots;
    if (per_step == 0) return INT64_MAX;
    return new_usable(sp) / per_step;
}

/* One Feistel round function: a keyed hash of the right half. */
static uint64_t feistel_f(uint64_t key, unsigned round, uint64_t right)
{
    return strata_mix64(key ^ strata_mix64(right * 0x9e3779b97f4a7c15ull + round));
}

uint64_t strata_permute(uint64_t key, uint64_t n, uint64_t x)
{
    if (n <= 1) return 0;
    /* A balanced Feistel network on the smallest even number of bits that
     * covers n is a bijection of [0, 2^bits); walking the cycle until the
     * value falls below n restricts it to a bijection of [0, n). The domain
     * is < 4n, so a walk takes under 4 rounds on average. */
    unsigned bits = 2;
    while (bits < 64 && (n - 1) >> bits) bits += 2;
    unsigned half = bits / 2;
    uint64_t mask = (1ull << half) - 1;
    do {
        uint64_t l = x >> half, r = x & mask;
        for (unsigned i = 0; i < 6; i++) {
            uint64_t t = l ^ (feistel_f(key, i, r) & mask);
            l = r;
            r = t;
        }
        x = (l << half) | r;
    } while (x >= n);
    return x;
}

static int new_slot(const strata_sampler *sp, int64_t k, strata_sample_ref *out)
{
    int st = new_status(sp, k);
    if (st != STRATA_SAMPLE_OK) return st;
    int64_t n = sp->new_final ? sp->new_samples : new_usable(sp);
    int64_t pass = 0, q = k;
    if (sp->new_final && k >= n) { /* wrapping */
        pass = k / n;
        q = k % n;
    }
    int64_t w = q / sp->window, start = w * sp->window;
    /* The window's size: whole, or the stream's tail once final. */
    int64_t size = sp->new_samples - start < sp->window ? sp->new_samples - start : sp->window;
    uint64_t key = strata_rng_u64(sp->seed, TAG_NEW, (uint64_t)pass, (uint64_t)w);
    out->source = 0;
    out->index = start + (int64_t)strata_permute(key, (uint64_t)size, (uint64_t)(q - start));
    out->pass = pass;
    return STRATA_SAMPLE_OK;
}

static void replay_slot(const strata_sampler *sp, long s, int j, strata_sample_ref *out)
{
    double total = 0;
    for (int i = 0; i < sp->n_replay; i++) total += sp->replay_weight[i];
    uint64_t b = strata_rng_u64(sp->seed, TAG_SOURCE, (uint64_t)s, (uint64_t)j);
    double u = (double)(b >> 11) * 0x1p-53 * total, acc = 0;
    int src = -1;
    for (int i = 0; i < sp->n_replay; i++) {
        if (sp->replay_weight[i] <= 0) continue;
        src = i; /* the last positive-weight source absorbs rounding */
        acc += sp->replay_weight[i];
        if (u < acc) break;
    }
    uint64_t c = strata_rng_u64(sp->seed, TAG_INDEX, (uint64_t)s, (uint64_t)j);
    out->source = 1 + src;
    out->index = (int64_t)strata_rng_below(c, (uint64_t)sp->replay_samples[src]);
    out->pass = 0;
}

int strata_sampler_slot(const strata_sampler *sp, long s, int j, strata_sample_ref *out)
{
    if (s < 0 || j < 0 || j >= sp->global_batch) return STRATA_SAMPLE_END;
    if (strata_sampler_is_replay(sp, j)) {
        replay_slot(sp, s, j, out);
        return STRATA_SAMPLE_OK;
    }
    int64_t per_step = sp->global_batch - sp->replay_slots;
    int64_t k = (int64_t)s * per_step + (j - replay_before(sp, j));
    return new_slot(sp, k, out);
}
