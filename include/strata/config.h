/* config.h — the run's configuration, from an INI file and --set overrides.
 *
 * Sections [model] [data] [train] [checkpoint] [log] and one [eval.NAME] per
 * held-out set. Every key has a type and a range; an unknown key, a bad
 * value or a value out of range is an error naming the file and line (or
 * the --set argument). Paths are resolved relative to the config file's
 * directory. strata_config_text renders the resolved values, one key per
 * line, so a checkpoint records exactly what ran.
 */
#ifndef STRATA_CONFIG_H
#define STRATA_CONFIG_H

#include <stdint.h>

#include "strata/err.h"
#include "strata/loader.h"
#include "strata/model.h"
#include "strata/schedule.h"

#define STRATA_MAX_EVALS 8
#define STRATA_PATH_MAX  4096

/* [eval.NAME] kind (STRATA_EVAL_LOSS, _CHOICE): held-out loss on a token shard, or multiple-choice
 * accuracy on a JSON Lines file (choice.h) tokenized with `tokenizer`. */
enum { STRATA_EVAL_LOSS = 0, STRATA_EVAL_CHOICE = 1 };
/* What an eval set's loss measures, besides itself: [eval.NAME] role. */
enum {
    STRATA_EVAL_PLAIN = 0, /* role = none */
    STRATA_EVAL_OLD = 1,   /* role = old: the old domain; its rise is `forgetting` */
    STRATA_EVAL_NEW = 2    /* role = new: the new domain; its fall is `learning` */
};

typedef struct strata_eval_config {
    char name[64];
    char path[STRATA_PATH_MAX];
    long max_samples; /* 0 = all (choice: items) */
    int kind;         /* STRATA_EVAL_LOSS or STRATA_EVAL_CHOICE */
    /* choice: "byte", "gpt2" (with vocab and merges) or a tokenizer.json */
    char tokenizer[STRATA_PATH_MAX], vocab[STRATA_PATH_MAX], merges[STRATA_PATH_MAX];
    int role;     /* STRATA_EVAL_PLAIN, _OLD or _NEW; without a role key, [eval.old]
                     and [eval.new] get theirs from the name (the older configs'
                     convention) */
    int role_set; /* the role key was given */
} strata_eval_config;

typedef struct strata_config {
    char path[STRATA_PATH_MAX]; /* the config file */
    struct {
        char init[STRATA_PATH_MAX]; /* "scratch" or a checkpoint path */
        int n_layer, n_head, n_embd, block_size, vocab_size;
        /* The rest of strata_model_shape (model.h); 0 = the family's default. */
        int family, n_kv_head, head_dim, ffn_dim, tied, qkv_bias, qk_norm, sliding_window;
        double norm_eps, rope_theta;
        int rope_type; /* [model] rope_scaling = none | linear | llama3 */
        double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
        int rope_original_max;
        /* Bit i set: the i-th shape key (as strata_config_model_key) was given,
         * so that an init checkpoint supplies the others. */
        unsigned long given;
        double dropout;
    } model;
    struct {
        char new_path[STRATA_PATH_MAX];
        strata_replay_source replay[STRATA_MAX_REPLAY];
        int n_replay;
        double replay_ratio;
        int seq_len;
        uint64_t seed;
        int follow, wrap, shuffle_window, prefetch;
        double follow_timeout;
    } data;
    struct {
        long steps;
        int global_batch, micro_batch;
        double lr, min_lr, decay_fraction;
        long warmup;
        strata_schedule_kind schedule;
        double weight_decay, beta1, beta2, eps, grad_clip;
        int zero;
        int precision; /* of the matrix products: STRATA_FP32 (0) or STRATA_BF16 (1), gemm.h */
        double bucket_mb;
        int comm_thread; /* a progress thread drives the gradient reduction */
        int max_bad_steps;
        double step_timeout; /* seconds; < 0 = automatic, 0 = off */
        double l2sp;         /* alpha of the L2-SP penalty toward the init weights */
        double ewc;          /* lambda of the EWC penalty */
        char fisher[STRATA_PATH_MAX];
        double l1;      /* lambda of the L1 proximal step */
        int l1_to_init; /* L1 toward the init weights instead of zero */
        int freeze_embeddings;
        int freeze_blocks;     /* lowest k blocks frozen */
        int freeze_all_blocks; /* feature extraction */
        long unfreeze_every;   /* gradual unfreezing: one more block every N steps */
        double layer_lr_decay; /* lr multiplier per block below the top (1 = off) */
        /* lr multiplier of the rows strata extend-vocab added (1 = off), for
         * the first new_token_steps steps (0 = the whole run) */
        double new_token_lr_mult;
        long new_token_steps;
        uint64_t init_seed;
    } train;
    struct {
        char dir[STRATA_PATH_MAX];
        long every;
        double every_minutes;
        int keep;
        long keep_every;
        char resume[STRATA_PATH_MAX]; /* "auto", "never" or a path */
    } checkpoint;
    struct {
        char metrics[STRATA_PATH_MAX];
        long every, eval_every;
        long sample_every;                      /* 0: no samples during training */
        char sample_prompt[STRATA_PATH_MAX];    /* text, "" = the document's lead tokens only */
        char sample_tokenizer[STRATA_PATH_MAX]; /* "byte" (default), tokenizer.json or GPT-2 dir */
    } log;
    strata_eval_config evals[STRATA_MAX_EVALS];
    int n_evals;
} strata_config;

/* Sets every key to its default. */
void strata_config_defaults(strata_config *cfg);
/* Reads path, then applies each "section.key=value" of sets in order. */
strata_err strata_config_load(strata_config *cfg, const char *path, char **sets, int n_sets);
/* The model's architecture from [model]. With init a checkpoint, the
 * checkpoint's shape (file_shape, may be NULL for scratch) supplies every
 * key the config does not give, and a key the config gives must agree with
 * it (else an error naming the key). */
strata_err strata_config_model_shape(const strata_config *cfg, const strata_model_shape *file_shape,
                                     strata_model_shape *out);

/* The resolved configuration as INI text (malloc'd). */
char *strata_config_text(const strata_config *cfg);

#endif
