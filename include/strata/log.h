/* log.h — where the library's progress lines and warnings go.
 *
 * Library code never prints (err.h). What a run has to say while it runs
 * (progress, warnings, a watchdog's or an abort's last words) goes to one
 * sink, a callback the program installs, as Lua's lua_WarnFunction: the CLI
 * prints info lines on stdout and the rest on stderr; a test installs one
 * that keeps the lines to read them. With no sink installed lines are
 * dropped. The sink is set once before any thread starts and may be called
 * from any thread (the watchdog's), one whole line per call, without its
 * newline.
 */
#ifndef STRATA_LOG_H
#define STRATA_LOG_H

typedef enum {
    STRATA_LOG_INFO,   /* progress: step lines, evaluations, saves (stdout) */
    STRATA_LOG_NOTICE, /* a state worth knowing on stderr ("waiting for new shards") */
    STRATA_LOG_WARN,   /* something went wrong and was worked around */
    STRATA_LOG_FATAL   /* the last line before the job ends (abort, watchdog) */
} strata_log_level;

typedef void (*strata_log_fn)(void *ctx, strata_log_level level, const char *line);

/* Installs the sink (NULL: drop every line). */
void strata_log_set(strata_log_fn fn, void *ctx);
/* Formats one line (no trailing newline needed; one is removed) and hands
 * it to the sink. */
void strata_log(strata_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
