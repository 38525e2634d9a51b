/* ckpt_dir.c — a directory of checkpoints (the durability half of ckpt.h):
 * ckpt-<step>.h5 files, `latest` naming the newest complete one, pruning,
 * and loading the newest that loads.
 *
 * The order of a save is what makes a kill at any moment cost nothing but
 * the steps since the last checkpoint: the new file is published (file.h's
 * rule: fsync, rename, directory fsync), then `latest` is, and only then
 * are old checkpoints removed. Temporary files of a process that is gone
 * are removed at the next save.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_file.h"
#include "file.h"

#include "strata/ckpt.h"

/* ---- the directory: names, latest, pruning -------------------------------- */

/* Parses "ckpt-<digits>.h5" exactly; anything else (temporary files
 * included) is not a checkpoint. */
static int parse_ckpt_name(const char *name, long *step)
{
    if (strncmp(name, "ckpt-", 5)) return 0;
    const char *p = name + 5, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || q - p > 18 || strcmp(q, ".h5")) return 0;
    *step = strtol(p, NULL, 10);
    return 1;
}

typedef struct ckpt_list {
    long *steps;
    size_t n;
} ckpt_list;

static int cmp_desc(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

/* The steps of dir's checkpoints, newest first. A missing dir is empty. */
static strata_err list_ckpts(const char *dir, ckpt_list *out)
{
    out->steps = NULL;
    out->n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return strata_ok();
        return strata_errorf(STRATA_EINPUT, "%s: cannot list checkpoints: %s", dir,
                             strerror(errno));
    }
    size_t cap = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        long step;
        if (!parse_ckpt_name(ent->d_name, &step)) continue;
        if (out->n == cap) {
            cap = cap ? 2 * cap : 16;
            long *grown = realloc(out->steps, cap * sizeof *grown);
            if (!grown) {
                closedir(d);
                free(out->steps);
                out->steps = NULL;
                return strata_errorf(STRATA_ENOMEM, "out of memory");
            }
            out->steps = grown;
        }
        out->steps[out->n++] = step;
    }
    closedir(d);
    if (out->n) qsort(out->steps, out->n, sizeof *out->steps, cmp_desc);
    return strata_ok();
}

/* Writes dir/latest naming file, by the same durability rule (file.h). */
static strata_err write_latest(const char *dir, const char *file)
{
    char path[PATH_MAX], line[PATH_MAX];
    int n = snprintf(line, sizeof line, "%s\n", file);
    if (snprintf(path, sizeof path, "%s/latest", dir) >= (int)sizeof path || n >= (int)sizeof line)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", dir);
    return strata_write_atomic(path, line, (size_t)n);
}

/* Removes temporary files that a killed save left behind: ours are named
 * .ckpt-<step>.h5.tmp-<pid> and .latest.tmp-<pid>; one whose process is
 * gone can never be completed. */
static void remove_stale_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        const char *n = ent->d_name;
        if (strncmp(n, ".ckpt-", 6) && strncmp(n, ".latest.", 8)) continue;
        const char *tag = strstr(n, ".tmp-");
        if (!tag) continue;
        char *end;
        long pid = strtol(tag + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, n) < (int)sizeof path) unlink(path);
    }
    closedir(d);
}

strata_err strata_ckpt_save(const char *dir, const strata_model *m, const float *adam_m,
                            const float *adam_v, const strata_ckpt_state *st, int keep,
                            long keep_every, char *saved, size_t saved_len)
{
    long step = st ? st->step : 0;
    if (step < 0) return strata_errorf(STRATA_EFAIL, "%s: negative step %ld", dir, step);
    char name[64], path[PATH_MAX];
    snprintf(name, sizeof name, "ckpt-%ld.h5", step);
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", dir);
    STRATA_TRY(strata_mkdir_p(dir));
    remove_stale_temporaries(dir);
    STRATA_TRY(strata_ckpt_write(path, m, adam_m, adam_v, st));
    STRATA_TRY(write_latest(dir, name));
    if (saved && saved_len) snprintf(saved, saved_len, "%s", path);

    /* Pruning comes last: until `latest` names the new file, the old ones
     * are the only complete state. */
    if (keep <= 0) return strata_ok();
    ckpt_list list;
    STRATA_TRY(list_ckpts(dir, &list));
    int removed = 0;
    for (size_t i = (size_t)keep; i < list.n; i++) {
        long s = list.steps[i];
        if (s == step || (keep_every > 0 && s % keep_every == 0)) continue;
        char old[PATH_MAX];
        if (snprintf(old, sizeof old, "%s/ckpt-%ld.h5", dir, s) >= (int)sizeof old) continue;
        if (unlink(old) == 0) removed = 1;
    }
    free(list.steps);
    if (removed) return strata_sync_dir(dir);
    return strata_ok();
}

/* The file named by dir/latest, if that is a well-formed checkpoint name. */
static int read_latest(const char *dir, long *step)
{
    char path[PATH_MAX], buf[128];
    if (snprintf(path, sizeof path, "%s/latest", dir) >= (int)sizeof path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = 0;
    return parse_ckpt_name(buf, step);
}

strata_err strata_ckpt_load_latest(const char *dir, strata_model *m, float *adam_m, float *adam_v,
                                   strata_ckpt_state *st, char *path, size_t path_len,
                                   void (*warn)(void *ctx, const char *msg), void *warn_ctx)
{
    if (path && path_len) path[0] = 0;
    ckpt_list list;
    STRATA_TRY(list_ckpts(dir, &list));
    long latest = 0;
    int has_latest = read_latest(dir, &latest);
    char msg[sizeof((strata_err *)0)->msg + 64];
    if (has_latest) {
        int found = 0;
        for (size_t i = 0; i < list.n; i++) found |= list.steps[i] == latest;
        if (!found) {
            has_latest = 0;
            if (warn) {
                snprintf(msg, sizeof msg, "%s/latest names ckpt-%ld.h5, which is missing", dir,
                         latest);
                warn(warn_ctx, msg);
            }
        }
    }
    /* Try `latest` first, then every checkpoint from the newest down. */
    strata_err first_failure = strata_ok();
    size_t tried = 0;
    for (size_t i = 0; i < list.n + (size_t)has_latest; i++) {
        long s = has_latest ? (i == 0 ? latest : list.steps[i - 1]) : list.steps[i];
        if (has_latest && i > 0 && s == latest) continue;
        char file[PATH_MAX];
        if (snprintf(file, sizeof file, "%s/ckpt-%ld.h5", dir, s) >= (int)sizeof file) continue;
        int mismatch = 0;
        tried++;
        strata_err e = strata_ckpt_load_checked(file, m, adam_m, adam_v, st, &mismatch);
        if (!e.code) {
            free(list.steps);
            if (path && path_len) snprintf(path, path_len, "%s", file);
            return e;
        }
        /* A shape mismatch is the config's doing, not damage: every older
         * checkpoint would mismatch too. */
        if (mismatch) {
            free(list.steps);
            return e;
        }
        if (!first_failure.code) first_failure = e;
        if (warn) {
            snprintf(msg, sizeof msg, "%s; skipping this checkpoint", e.msg);
            warn(warn_ctx, msg);
        }
    }
    free(list.steps);
    if (!tried) return strata_ok();
    return strata_errorf(STRATA_EINPUT, "%s: none of its %zu checkpoints loads; the newest: %.700s",
                         dir, tried, first_failure.msg);
}
