/* train_ckpt.h — a training run's checkpoints: the model a config names,
 * saving, resuming, and the DONE marker.
 *
 * Besides tensors and strata_ckpt_state's attributes, a run's checkpoint
 * carries in extra_json one JSON object: "eval_baselines" ({set: loss} at
 * step 0, so a resumed run reports forgetting against the same figures),
 * "import" (the model's origin, carried from the init checkpoint: its
 * import and tokenizer) and "resume" (the typed values that fix the data
 * order: global_batch, seq_len, shuffle_window as integers, replay_ratio as
 * a real). A resume is refused, naming the key, when one of them, the data
 * seed or the streams' fingerprint differs from the checkpoint's.
 * Checkpoints without "resume" (older ones) are compared through the same
 * keys in their config text.
 */
#ifndef STRATA_TRAIN_CKPT_H
#define STRATA_TRAIN_CKPT_H

#include <jansson.h>

#include "strata/ckpt.h"
#include "strata/comm.h"
#include "strata/config.h"
#include "strata/evaluation.h"
#include "strata/loader.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/watchdog.h"

/* The model of cfg ([model], its shape from init's checkpoint when init is
 * one), initialised from scratch or loaded from init (NULL: cfg's
 * [model] init). init_state (may be NULL) receives the init checkpoint's
 * attributes. On failure *out is NULL. */
strata_err strata_train_model_open(const strata_config *cfg, const char *init, strata_model **out,
                                   strata_ckpt_state *init_state);

/* Sets the eval baselines found in a checkpoint's extra_json (may be NULL). */
void strata_train_extra_baselines(const char *extra_json, strata_eval_session *evals);
/* The "import" member of a checkpoint's extra_json (the model's origin:
 * tokenizer_hash, vocab_extension, ...), a new reference; NULL if none. */
json_t *strata_train_origin(const char *extra_json);

typedef struct strata_train_ckpt {
    const strata_config *cfg;
    strata_comm *comm;
    strata_ckpt_state st; /* what the next save writes (owned) */
    json_t *origin;       /* the model's origin, from the init checkpoint */
    long last_saved_step; /* -1 until this run saved or resumed */
    double last_save_time;
} strata_train_ckpt;

/* Starts the state of a run: seed, config text, the streams' fingerprint,
 * the origin from the init checkpoint's extra_json. */
strata_err strata_train_ckpt_init(strata_train_ckpt *k, const strata_config *cfg, strata_comm *comm,
                                  const strata_loader *loader, const char *init_extra_json);
void strata_train_ckpt_free(strata_train_ckpt *k);
/* Whether [checkpoint] every or every_minutes asks for a save after step. */
int strata_train_ckpt_due(const strata_train_ckpt *k, long step);
/* Saves on rank 0 (Adam's moments gathered first under ZeRO); every rank
 * learns whether it worked, so a full disk ends the job on every rank. */
strata_err strata_train_ckpt_save(strata_train_ckpt *k, const strata_model *m,
                                  const strata_adamw *opt, const strata_eval_session *evals,
                                  strata_watchdog *w);
/* [checkpoint] resume: auto (the newest good checkpoint of the directory,
 * if any), never, or a path. Loads the model, this rank's part of Adam's
 * moments, the state and the baselines; *resumed is 1 when it did. */
strata_err strata_train_ckpt_resume(strata_train_ckpt *k, strata_model *m, strata_adamw *opt,
                                    strata_eval_session *evals, const strata_loader *loader,
                                    int *resumed);
/* The campaign's end, for slurm/: dir/DONE holds "FINAL_STEP TARGET_STEPS",
 * replaced atomically (rank 0). */
strata_err strata_train_ckpt_done(const strata_train_ckpt *k, long step);

#endif
