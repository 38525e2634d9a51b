/* Freezing, layer-wise lr and the anti-forgetting terms; see param_policy.h. */
#include "strata/param_policy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "strata/ckpt.h"
#include "strata/mem.h"
#include "strata/vocab_extend.h"

int strata_policy_frozen_blocks(const strata_param_policy *p, long step)
{
    const strata_config *c = p->cfg;
    if (c->train.freeze_all_blocks) return p->L;
    int k = c->train.freeze_blocks < p->L ? c->train.freeze_blocks : p->L;
    if (c->train.unfreeze_every > 0) k -= (int)(step / c->train.unfreeze_every);
    return k > 0 ? k : 0;
}

/* The lr multiplier of tensor ts with `frozen` blocks frozen. */
static float lr_mult(const strata_param_policy *p, const strata_tensor *ts, int frozen, int untied)
{
    const strata_config *c = p->cfg;
    int is_embedding = ts->role == STRATA_ROLE_TOKEN_EMBED || ts->role == STRATA_ROLE_POS_EMBED;
    double depth = ts->layer >= 0 ? p->L - 1 - ts->layer : (is_embedding ? p->L : 0);
    if (ts->layer >= 0 && ts->layer < frozen) return 0;
    if (is_embedding && c->train.freeze_embeddings) return 0;
    /* Backprop stops at the lowest trainable block, so below it the
     * embeddings get no gradient: freeze them rather than let weight decay
     * alone shrink them. */
    if (is_embedding && frozen > 0 && !c->train.freeze_all_blocks) return 0;
    /* Feature extraction trains the final norm and the lm head only (the
     * token embedding too when it is the tied head). */
    if (c->train.freeze_all_blocks && ts->role == STRATA_ROLE_POS_EMBED) return 0;
    if (c->train.freeze_all_blocks && ts->role == STRATA_ROLE_TOKEN_EMBED && untied) return 0;
    return (float)pow(c->train.layer_lr_decay, depth);
}

void strata_policy_update_groups(strata_param_policy *p, long step)
{
    int frozen = strata_policy_frozen_blocks(p, step);
    int n = strata_model_n_tensors(p->model);
    int untied = strata_model_find_role(p->model, STRATA_ROLE_LM_HEAD) != NULL;
    for (int i = 0; i < n; i++) {
        const strata_tensor *ts = strata_model_tensor(p->model, i);
        strata_param_group *g = &p->groups[i];
        g->begin = ts->offset;
        g->end = i + 1 < n ? strata_model_tensor(p->model, i + 1)->offset : p->n_floats;
        g->decay = ts->decay;
        g->lr_mult = lr_mult(p, ts, frozen, untied);
    }
    /* The rows strata extend-vocab added learn at new_token_lr_mult (groups has room). */
    const strata_config *c = p->cfg;
    p->n_groups = strata_vocab_lr_groups(p->model, p->first_new_row, c->train.new_token_lr_mult,
                                         c->train.new_token_steps, step, p->groups, n);
}

strata_err strata_policy_set_new_rows(strata_param_policy *p, long first_new_row)
{
    if (p->cfg->train.new_token_lr_mult != 1 && first_new_row <= 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [train] new_token_lr_mult is set but [model] init records no "
                             "vocabulary extension (strata extend-vocab makes one)",
                             p->cfg->path);
    p->first_new_row = first_new_row;
    strata_policy_update_groups(p, 0);
    return strata_ok();
}

strata_step_opts strata_policy_step_opts(const strata_param_policy *p, long step)
{
    const strata_config *c = p->cfg;
    return (strata_step_opts){.first_trainable_block = strata_policy_frozen_blocks(p, step),
                              .embeddings_frozen = c->train.freeze_embeddings,
                              .stop_at_top = c->train.freeze_all_blocks,
                              .dropout = (float)c->model.dropout,
                              .seed = c->data.seed};
}

/* EWC's Fisher file has the checkpoint layout: read it into a scratch model. */
static strata_err load_fisher(strata_param_policy *p)
{
    const strata_config *c = p->cfg;
    if (!c->train.fisher[0])
        return strata_errorf(STRATA_EINPUT,
                             "%s: [train] ewc is %g but [train] fisher is not set "
                             "(HINT: strata fisher --config ... --out fisher.h5)",
                             c->path, c->train.ewc);
    strata_model *scratch;
    STRATA_TRY(strata_model_create(&scratch, strata_model_get_shape(p->model)));
    strata_err e = strata_ckpt_load(c->train.fisher, scratch, NULL, NULL, NULL);
    if (!e.code) {
        p->fisher = strata_malloc(p->n_floats * sizeof(float));
        if (p->fisher)
            memcpy(p->fisher, strata_model_params(scratch), p->n_floats * sizeof(float));
        else
            e = strata_errorf(STRATA_ENOMEM, "out of memory for the Fisher");
    }
    strata_model_free(scratch);
    return e;
}

strata_err strata_policy_init(strata_param_policy *p, const strata_config *cfg, strata_model *m)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg, p->model = m;
    p->L = strata_model_get_shape(m)->n_layer;
    p->n_floats = strata_model_n_floats(m);
    if (cfg->train.l2sp > 0 || cfg->train.ewc > 0 || (cfg->train.l1 > 0 && cfg->train.l1_to_init)) {
        p->theta0 = strata_malloc(p->n_floats * sizeof(float));
        if (!p->theta0) return strata_errorf(STRATA_ENOMEM, "out of memory for init weights");
        memcpy(p->theta0, strata_model_params(m), p->n_floats * sizeof(float));
    }
    if (cfg->train.ewc > 0) STRATA_TRY(load_fisher(p));
    p->groups = strata_calloc(strata_model_n_tensors(m) + 2, sizeof *p->groups);
    if (!p->groups) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_policy_update_groups(p, 0);
    return strata_ok();
}

void strata_policy_free(strata_param_policy *p)
{
    strata_free(p->groups), strata_free(p->theta0), strata_free(p->fisher);
    memset(p, 0, sizeof *p);
}

int strata_policy_has_penalty(const strata_param_policy *p)
{
    return p->theta0 && (p->cfg->train.l2sp > 0 || p->cfg->train.ewc > 0);
}

void strata_policy_penalty_grads(const strata_param_policy *p, float *g, const float *params,
                                 size_t lo, size_t hi)
{
    float alpha = (float)p->cfg->train.l2sp, lambda = (float)p->cfg->train.ewc;
    if (!p->theta0 || (alpha == 0 && lambda == 0)) return;
    const float *p0 = p->theta0, *F = p->fisher;
#pragma omp parallel for schedule(static)
    for (size_t i = lo; i < hi; i++) {
        float d = params[i] - p0[i];
        g[i] += alpha * d + (F ? lambda * F[i] * d : 0.0f);
    }
}

void strata_policy_l1_prox(const strata_param_policy *p, float *params, float lr, size_t lo,
                           size_t hi)
{
    float lambda = (float)p->cfg->train.l1;
    if (lambda == 0) return;
    const float *anchor = p->theta0 && p->cfg->train.l1_to_init ? p->theta0 : NULL;
    for (int gi = 0; gi < p->n_groups; gi++) {
        const strata_param_group *g = &p->groups[gi];
        size_t a = g->begin > lo ? g->begin : lo, b = g->end < hi ? g->end : hi;
        if (a >= b || g->lr_mult == 0 || !g->decay) continue;
        float thr = lr * g->lr_mult * lambda;
#pragma omp parallel for schedule(static)
        for (size_t i = a; i < b; i++) {
            float at = anchor ? anchor[i] : 0.0f;
            float d = params[i] - at;
            params[i] = d > thr ? params[i] - thr : d < -thr ? params[i] + thr : at;
        }
    }
}

double strata_policy_extra_bytes(const strata_param_policy *p)
{
    double n = (double)p->n_floats * sizeof(float);
    return (p->theta0 ? n : 0) + (p->fisher ? n : 0);
}
