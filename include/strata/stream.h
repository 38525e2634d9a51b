/* stream.h — an ordered list of token shards, and its samples.
 *
 * A stream is named by one path:
 *  - a shard: a file ending in .h5 or .hdf5, or any file that starts with
 *    the HDF5 signature;
 *  - a directory: its *.h5 files sorted by name (byte order), skipping
 *    names that start with '.' (temporary files) and *.val.h5 (held-out
 *    sets that `strata pack --val-fraction` writes beside the shards);
 *    subdirectories are not searched;
 *  - a manifest: any other file, UTF-8 text with one entry per line,
 *    relative to the manifest's directory (or absolute). Blank lines and
 *    lines starting with '#' are ignored, as is the rest of a line from
 *    " #". An entry may itself be a shard, a directory or a manifest (up
 *    to 16 deep); a manifest that includes itself, directly or through
 *    others, is an error naming the chain.
 *
 * The flattened list is the stream. All its shards share vocab_size,
 * eot_token and tokenizer; vocab_size must not exceed the model's. Samples
 * at sequence length T are numbered through the shards in order: shard i
 * holds floor((n_tokens_i - 1) / T) of them (a sample never straddles two
 * shards).
 *
 * Refresh (follow): the stream is read again and may only grow at its end.
 * An entry whose file does not exist yet, and a manifest's last line while
 * it lacks its newline, are taken as "not written yet": the stream stops
 * before them until a later refresh. An existing entry that changed (other
 * path, other size or modification time) or is gone is an error. So a
 * producer appends lines to the manifest (or renames a new one into place)
 * and writes each shard under another name first, as `strata pack` does.
 */
#ifndef STRATA_STREAM_H
#define STRATA_STREAM_H

#include <stdint.h>

#include "strata/err.h"
#include "strata/shard.h"

typedef struct strata_stream strata_stream;

typedef struct strata_stream_shard {
    const char *path; /* as opened: manifest directory joined with the entry */
    const char *name; /* the file's base name, for fingerprints */
    strata_shard_info info;
    int64_t n_samples;    /* at the stream's seq_len */
    int64_t first_sample; /* index of its first sample in the stream */
} strata_stream_shard;

typedef struct strata_stream_opts {
    int seq_len;     /* T for sample counts (> 0) */
    int max_vocab;   /* > 0: every shard's vocab_size must be <= this */
    int allow_empty; /* 1: a manifest with no entries yet is fine (follow) */
} strata_stream_opts;

/* Opens every shard of the stream to check it, then closes them. */
strata_err strata_stream_open(strata_stream **out, const char *path,
                              const strata_stream_opts *opts);
void strata_stream_close(strata_stream *st);

const char *strata_stream_path(const strata_stream *st);
/* "shard", "directory" or "manifest". */
const char *strata_stream_kind(const strata_stream *st);
int strata_stream_n_shards(const strata_stream *st);
const strata_stream_shard *strata_stream_shard_at(const strata_stream *st, int i);
int64_t strata_stream_n_samples(const strata_stream *st);
int64_t strata_stream_n_tokens(const strata_stream *st);
/* vocab_size, eot_token, tokenizer shared by the shards (NULL when empty). */
const strata_shard_info *strata_stream_info(const strata_stream *st);
/* The shard holding stream sample `sample` (0 <= sample < n_samples) and
 * the sample's index within that shard. */
int strata_stream_locate(const strata_stream *st, int64_t sample, int64_t *local);

/* Reads the stream again and appends new shards; *added receives their
 * number. A single-shard stream never grows. */
strata_err strata_stream_refresh(strata_stream *st, int *added);

/* Appends "name:n_tokens" for each shard, comma-separated, to buf (which
 * has cap bytes, NUL-terminated); returns the length the whole string needs
 * (like snprintf). */
size_t strata_stream_fingerprint(const strata_stream *st, char *buf, size_t cap);

#endif
