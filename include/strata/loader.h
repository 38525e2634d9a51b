/* loader.h — what the trainer sees of the data: batches for one rank.
 *
 * The loader turns the data config into this rank's samples of each global
 * batch: slot j of step s holds a sample chosen by the sampler (a pure
 * function of seed, s, j and the stream lengths; see sampler.h), and rank r
 * of W owns slots [r*G/W, (r+1)*G/W). A background thread reads the next
 * step's samples with HDF5 while the current step computes; it is the only
 * thread that calls HDF5 for this loader. Every token handed out has been
 * checked against the model's vocab_size.
 */
#ifndef STRATA_LOADER_H
#define STRATA_LOADER_H

#include <stdint.h>

#include "strata/err.h"

#define STRATA_MAX_REPLAY 8 /* replay sources of a run */

typedef struct strata_replay_source {
    char path[4096]; /* manifest, directory or one shard */
    double weight;
} strata_replay_source;

typedef struct strata_loader_config {
    char new_path[4096]; /* the new-data stream */
    strata_replay_source replay[STRATA_MAX_REPLAY];
    int n_replay;
    double replay_ratio; /* exact: round(ratio * G) replay slots per step */
    int seq_len;         /* T */
    int vocab_size;      /* tokens must be < this */
    uint64_t seed;
    int global_batch;         /* G */
    int slot_begin, slot_end; /* this rank's slots [begin, end) */
    int follow;               /* wait for new shards when the new stream is used up */
    double follow_timeout_s;  /* give up waiting after this long (0 = forever) */
    int wrap;                 /* without follow: start the new stream over when used up */
    int shuffle_window;       /* samples per shuffle window of the new stream (0 = default) */
    int prefetch;             /* 1 = background thread (default), 0 = read on demand */
    double follow_poll_s;     /* seconds between re-reads of the stream while following (0 = 2) */
    /* The model's tokenizer (SHA-256 of its tokenizer.json, as shards record
     * it); when not empty, every source must have been packed with it. */
    char tokenizer_hash[65];
} strata_loader_config;

/* The samples of one step for this rank. tokens holds n rows of T+1 ids:
 * inputs are row[0..T), targets row[1..T+1). */
typedef struct strata_batch {
    long step;
    int n; /* slot_end - slot_begin */
    int T;
    uint32_t *tokens;   /* (n, T+1) */
    uint8_t *is_replay; /* (n) */
    int64_t *sample_id; /* (n) global identity of each sample, for tests */
} strata_batch;

typedef struct strata_loader strata_loader;

/* Opens every stream (checking every shard's format and vocab_size against
 * cfg->vocab_size) and starts the prefetch thread. */
strata_err strata_loader_open(strata_loader **out, const strata_loader_config *cfg);
/* Fills batch (owned by the loader, valid until the next call) with step's
 * samples, waiting for the prefetch if needed; *wait_ms receives the time
 * spent waiting. Steps are normally asked in increasing order; any step may
 * be asked (resume). When the new stream is used up and neither follow nor
 * wrap is set, returns STRATA_OK with *exhausted = 1 and no batch. */
strata_err strata_loader_get(strata_loader *l, long step, strata_batch **batch, int *exhausted,
                             double *wait_ms);
/* Status of strata_loader_poll. */
enum {
    STRATA_LOADER_READY = 0,     /* *batch holds the step */
    STRATA_LOADER_EXHAUSTED = 1, /* the new stream is used up (or follow timed out) */
    STRATA_LOADER_WAITING = 2    /* following: the step needs shards not there yet */
};
/* strata_loader_get that gives up after timeout_s seconds (< 0: never) with
 * *status = STRATA_LOADER_WAITING, so the trainer can log
 * strata_loader_wait_reason, check for signals and agree with the other
 * ranks, then call again. Waiting for data (follow) is measured from the
 * first call for that step; follow_timeout_s then yields EXHAUSTED. */
strata_err strata_loader_poll(strata_loader *l, long step, double timeout_s, strata_batch **batch,
                              int *status, double *wait_ms);
/* One line saying what a WAITING loader waits for ("" when not waiting):
 * "waiting for new shards in data/new.manifest: step 120 needs 7808 new
 * samples, 7168 usable". Valid until the next call on l. */
const char *strata_loader_wait_reason(strata_loader *l);
/* Steps the new stream can feed without wrapping (for messages and ETA);
 * -1 when following. */
long strata_loader_steps_available(const strata_loader *l);
/* A short string identifying the streams (shard names and lengths), stored in
 * checkpoints so a resume with other data is refused. */
const char *strata_loader_fingerprint(const strata_loader *l);
/* Checks a fingerprint saved in a checkpoint against the streams now: the
 * same, or the new stream grown by shards appended at its end (follow).
 * Otherwise STRATA_EINPUT naming the first difference. */
strata_err strata_loader_check_fingerprint(const strata_loader *l, const char *saved);
void strata_loader_close(strata_loader *l);

/* Held-out sets: consecutive samples of one stream, read on demand. */
typedef struct strata_evalset strata_evalset;
strata_err strata_evalset_open(strata_evalset **out, const char *path, int seq_len, int vocab_size,
                               long max_samples);
long strata_evalset_n_samples(const strata_evalset *e);
/* Reads samples [first, first+n) into tokens (n, T+1). */
strata_err strata_evalset_read(strata_evalset *e, long first, int n, uint32_t *tokens);
void strata_evalset_close(strata_evalset *e);

#endif
