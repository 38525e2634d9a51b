/* ckpt.h — checkpoints: the whole training state in one HDF5 file.
 *
 * A checkpoint `ckpt-<step>.h5` holds /model/<tensor name> (shapes as in the
 * model's tensor table: wte has vocab_size rows, never the padding), Adam's
 * moments /optim/m/<name> and /optim/v/<name> (gathered, so a checkpoint
 * does not depend on the number of ranks), and attributes on / (see
 * strata_ckpt_state) with format = "strata-ckpt-1". Every dataset is chunked
 * with the Fletcher32 filter; the attributes are covered by one more,
 * attrs_fnv1a64 (HDF5 does not checksum the heap that holds long ones).
 *
 * Saving writes `.ckpt-<step>.h5.tmp-<pid>`, fsyncs it, renames it into
 * place and fsyncs the directory; then `latest` (a one-line text file
 * naming the checkpoint) is replaced the same way. So a reader sees the old
 * file or the new one, never half, and a kill at any moment leaves `latest`
 * naming a complete checkpoint. Loading checks every shape against the
 * model before it reads a byte and reads every dataset through its
 * checksum; a checkpoint that fails is reported and the previous one used.
 */
#ifndef STRATA_CKPT_H
#define STRATA_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/model.h"

#define STRATA_CKPT_FORMAT "strata-ckpt-1"

/* Everything besides tensors that a bit-identical resume needs. */
typedef struct strata_ckpt_state {
    long step;              /* optimizer steps completed */
    long tokens_seen;       /* training tokens consumed (new + replay) */
    uint64_t seed;          /* [data] seed */
    int world_size;         /* W at save time (informational) */
    long adam_t;            /* AdamW's update count (bias correction) */
    long skipped_steps;     /* updates skipped for a non-finite loss or norm */
    int bad_in_a_row;       /* consecutive skipped updates at save time */
    char *config;           /* the resolved config text (owned; free with strata_ckpt_state_free) */
    char *data_fingerprint; /* identifies the data streams (owned) */
    char *extra_json;       /* free-form JSON object, e.g. eval baselines (owned) */
} strata_ckpt_state;

void strata_ckpt_state_free(strata_ckpt_state *st);

/* Reads the model shape stored in a checkpoint (attributes n_layer, n_head,
 * n_embd, block_size, vocab_size on /). */
strata_err strata_ckpt_read_shape(const char *path, strata_model_shape *shape);

/* Writes path atomically (temporary name, fsync, rename, directory fsync).
 * adam_m/adam_v are full-buffer moments in the model's layout (NULL: a
 * model-only checkpoint, as import writes). st may be NULL for model-only. */
strata_err strata_ckpt_write(const char *path, const strata_model *m, const float *adam_m,
                             const float *adam_v, const strata_ckpt_state *st);

/* Saves dir/ckpt-<step>.h5, points dir/latest at it, then deletes old
 * checkpoints beyond the newest `keep` (keep <= 0: keep all), sparing those
 * whose step is a multiple of keep_every (> 0). saved receives the path. */
strata_err strata_ckpt_save(const char *dir, const strata_model *m, const float *adam_m,
                            const float *adam_v, const strata_ckpt_state *st, int keep,
                            long keep_every, char *saved, size_t saved_len);

/* Loads path into m (shapes must match exactly, else STRATA_EINPUT naming
 * the tensor) and, when adam_m/adam_v are not NULL, the moments (missing
 * moments are an error then). st (may be NULL) receives the attributes.
 * Every dataset's checksum is verified. On failure m and the moments may
 * hold part of the file's data; st is left untouched. */
strata_err strata_ckpt_load(const char *path, strata_model *m, float *adam_m, float *adam_v,
                            strata_ckpt_state *st);

/* Finds the newest loadable checkpoint in dir: `latest` first, then
 * ckpt-*.h5 by descending step. Each one that fails (truncated, bad
 * checksum, wrong format) is passed to warn (may be NULL) and skipped.
 * A shape mismatch (the config's doing, not damage: older checkpoints
 * would not fit either) is returned at once instead. Returns STRATA_OK
 * with path[0] == 0 when dir holds no checkpoint. On success the
 * checkpoint has been loaded into m/adam/st exactly as by strata_ckpt_load. */
strata_err strata_ckpt_load_latest(const char *dir, strata_model *m, float *adam_m, float *adam_v,
                                   strata_ckpt_state *st, char *path, size_t path_len,
                                   void (*warn)(void *ctx, const char *msg), void *warn_ctx);

/* What `strata inspect` shows of a checkpoint, read with plain HDF5 calls
 * (so any checkpoint, even one strata_ckpt_load refuses): a title line, the
 * root attributes one a line (numbers, short strings; long or multi-line
 * strings as their size), the tensors under /model with shape and type, a
 * total, and what /optim holds. *desc (malloc'd; the caller frees it) holds
 * the lines described before an error too, so a damaged file shows how far
 * it reads. */
strata_err strata_ckpt_describe(const char *path, char **desc);

/* What an HDF5 file is to `strata inspect`. */
enum { STRATA_H5_NOT_HDF5 = 0, STRATA_H5_OTHER = 1, STRATA_H5_CHECKPOINT = 2 };
/* *kind of path: not HDF5 (by its signature), a checkpoint (root format =
 * STRATA_CKPT_FORMAT) or another HDF5 file; STRATA_EINPUT when an HDF5
 * file does not open or its root's attribute messages are damaged. */
strata_err strata_ckpt_probe(const char *path, int *kind);

#endif
