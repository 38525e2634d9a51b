/* shard.c — reading HDF5 token shards (the reader half of shard.h).
 *
 * The reader trusts nothing in the file. Opening checks, in order: the file
 * is HDF5 and opens; /tokens is a 1-D unsigned 16- or 32-bit integer
 * dataset; its filters are available; its data is actually stored (every
 * chunk present, or the contiguous block inside the file); the four
 * attributes have the right class and a value in range. Reading checks every
 * token id against vocab_size. HDF5 reports damage as an error on its error
 * stack; we never let it print (H5Eset_auto2 off, per thread, since the
 * thread-safe build keeps one stack per thread) and fold the innermost
 * message into ours instead.
 */
#include "strata/shard.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct strata_shard {
    char *path;
    hid_t file, dset;
    strata_shard_info info;
    uint16_t *scratch; /* uint16 shards are read here, then widened */
    size_t scratch_cap;
};

/* Largest token count we accept: keeps every byte count and sample id far
 * from overflow (2^48 tokens is 512 TiB of uint16). */
#define MAX_TOKENS ((int64_t)1 << 48)

static void hdf5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static herr_t innermost_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    char *buf = data;
    if (n == 0 && e->desc) snprintf(buf, 256, "%s", e->desc);
    return 0;
}

/* The innermost message on this thread's HDF5 error stack, made one line,
 * or "" if none; the stack is cleared. */
static const char *hdf5_reason(char buf[256])
{
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, buf);
    H5Eclear2(H5E_DEFAULT);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    return buf;
}

static void type_name(hid_t t, char *buf, size_t n)
{
    size_t size = H5Tget_size(t);
    switch (H5Tget_class(t)) {
    case H5T_INTEGER:
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * size);
        break;
    case H5T_FLOAT: snprintf(buf, n, "float%zu", 8 * size); break;
    case H5T_STRING: snprintf(buf, n, "a string"); break;
    case H5T_COMPOUND: snprintf(buf, n, "a compound type"); break;
    case H5T_ARRAY: snprintf(buf, n, "an array type"); break;
    case H5T_ENUM: snprintf(buf, n, "an enum"); break;
    case H5T_BITFIELD: snprintf(buf, n, "a bitfield"); break;
    case H5T_OPAQUE: snprintf(buf, n, "opaque"); break;
    case H5T_REFERENCE: snprintf(buf, n, "a reference"); break;
    case H5T_VLEN: snprintf(buf, n, "a variable-length sequence"); break;
    default: snprintf(buf, n, "an unknown type"); break;
    }
}

/* Reads an integer attribute of any width and signedness held in a scalar
 * or one-element dataspace. h5py writes int64; C writers often int32. */
static strata_err read_int_attr(hid_t obj, const char *path, const char *name, int64_t *v)
{
    char why[256];
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read attributes of /tokens (%s)", path,
                             hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: /tokens has no %s attribute", path, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open attribute %s (%s)", path, name,
                             hdf5_reason(why));
    strata_err e = strata_ok();
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (t < 0 || sp < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                          hdf5_reason(why));
    } else if (H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) > 8) {
        char tn[64];
        type_name(t, tn, sizeof tn);
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %s, expected an integer", path, name,
                          tn);
    } else if (np != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s holds %lld values, expected one", path,
                          name, (long long)np);
    } else if (H5Aread(a, H5T_NATIVE_INT64, v) < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                          hdf5_reason(why));
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return e;
}

/* ---- variable-length strings: check before HDF5 reads them ------------
 *
 * A variable-length string attribute holds (length, heap collection
 * address, object index) and its bytes live in a global heap collection.
 * HDF5 1.10 trusts all three: a damaged index or object size makes
 * H5HG_read copy from a wild pointer or past its buffer, and a zero-sized
 * free-space record makes the collection parser loop forever. h5py writes
 * every str attribute this way, so before any H5Aread of such a string we
 * find the attribute message in the object header ourselves (plain reads
 * of the file, versions 1 and 2 headers, following continuation chunks),
 * walk the heap collection exactly as HDF5 will, and refuse unless the
 * object exists with the declared length. */

typedef struct rawfile {
    int fd;
    uint64_t eof, base;
    unsigned sa, ss; /* sizes of addresses and lengths */
} rawfile;

static uint64_t le(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = n; i-- > 0;) v = v << 8 | p[i];
    return v;
}

static int raw_read(const rawfile *r, uint64_t addr, void *buf, size_t n)
{
    if (addr > r->eof || r->base > r->eof - addr || n > r->eof - r->base - addr) return -1;
    return pread(r->fd, buf, n, (off_t)(r->base + addr)) == (ssize_t)n ? 0 : -1;
}

#define MAX_CHUNKS 64
#define MAX_CHUNK_BYTES ((size_t)1 << 20)

typedef struct hdr_scan {
    const char *name;
    int found;
    unsigned char desc[4 + 8 + 4]; /* the vlen descriptor of the attribute */
    uint64_t cont_addr[MAX_CHUNKS], cont_len[MAX_CHUNKS];
    int n_cont;
} hdr_scan;

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

/* The descriptor of attribute message m (n bytes), laid out as HDF5's
 * H5O_attr_decode reads it; -1 when it does not fit in the message. */
static int attr_descriptor(const rawfile *r, const unsigned char *m, size_t n, hdr_scan *sc)
{
    if (n < 8) return -1;
    unsigned version = m[0];
    uint64_t name_len = le(m + 2, 2), dt = le(m + 4, 2), ds = le(m + 6, 2);
    uint64_t pos = version >= 3 ? 9 : 8;
    if (version < 1 || version > 3 || name_len == 0 || pos + name_len > n) return -1;
    /* HDF5 takes the name up to its first NUL. */
    size_t want = strlen(sc->name);
    if (memchr(m + pos, 0, name_len) == NULL) return -1;
    if (strlen((const char *)m + pos) != want || memcmp(m + pos, sc->name, want) != 0) return 0;
    if (version == 1) pos += align8(name_len) + align8(dt) + align8(ds);
    else pos += name_len + dt + ds;
    size_t dn = 4 + r->sa + 4;
    if (pos > n || dn > n - pos) return -1;
    memcpy(sc->desc, m + pos, dn);
    sc->found = 1;
    return 1;
}

/* Walks the messages of one header chunk, v1 or v2 layout. */
static int scan_messages(const rawfile *r, const unsigned char *b, size_t len, int v2,
                         int crt_order, hdr_scan *sc)
{
    size_t off = 0, mh = v2 ? (crt_order ? 6 : 4) : 8;
    while (off + mh <= len && !sc->found) {
        unsigned type = v2 ? b[off] : (unsigned)le(b + off, 2);
        size_t size = (size_t)le(b + off + (v2 ? 1 : 2), 2);
        unsigned flags = b[off + (v2 ? 3 : 4)];
        const unsigned char *m = b + off + mh;
        if (size > len - off - mh) return -1;
        if (type == 0x10) { /* continuation: another chunk of this header */
            if (size < r->sa + r->ss || sc->n_cont >= MAX_CHUNKS) return -1;
            sc->cont_addr[sc->n_cont] = le(m, r->sa);
            sc->cont_len[sc->n_cont] = le(m + r->sa, r->ss);
            sc->n_cont++;
        } else if (type == 0x0c && !(flags & 0x02)) { /* an attribute, not shared */
            if (attr_descriptor(r, m, size, sc) < 0) return -1;
        }
        off += mh + size;
    }
    return 0;
}

/* Finds attribute `name` in the object header at addr; -1 if the header
 * does not parse. */
static int scan_header(const rawfile *r, uint64_t addr, unsigned version, hdr_scan *sc)
{
    unsigned char pre[64];
    size_t len;
    uint64_t at;
    int crt_order = 0;
    if (version == 1) {
        if (raw_read(r, addr, pre, 16) || pre[0] != 1) return -1;
        len = (size_t)le(pre + 8, 4);
        at = addr + 16;
    } else {
        if (raw_read(r, addr, pre, 6) || memcmp(pre, "OHDR", 4) || pre[4] != 2) return -1;
        unsigned fl = pre[5];
        size_t h = 6 + (fl & 0x20 ? 16 : 0) + (fl & 0x10 ? 4 : 0);
        unsigned csz = 1u << (fl & 3);
        if (raw_read(r, addr, pre, h + csz)) return -1;
        len = (size_t)le(pre + h, csz); /* messages only: the checksum follows */
        at = addr + h + csz;
        crt_order = (fl & 0x04) != 0;
    }
    for (int chunk = 0;; chunk++) {
        if (len > MAX_CHUNK_BYTES) return -1;
        unsigned char *b = malloc(len ? len : 1);
        if (!b || raw_read(r, at, b, len)) {
            free(b);
            return -1;
        }
        size_t body = len, skip = 0;
        if (version == 2 && chunk) { /* later chunks: "OCHK", messages, checksum */
            skip = 4;
            if (body < 8 || memcmp(b, "OCHK", 4)) {
                free(b);
                return -1;
            }
            body -= 8;
        }
        int rc = scan_messages(r, b + skip, body, version == 2, crt_order, sc);
        free(b);
        if (rc < 0) return -1;
        if (sc->found || chunk >= sc->n_cont) return 0;
        at = sc->cont_addr[chunk];
        len = (size_t)sc->cont_len[chunk];
        if (sc->cont_len[chunk] > MAX_CHUNK_BYTES) return -1;
    }
}

/* Walks the global heap collection at addr as H5HG's parser does and checks
 * object idx exists, lies inside the collection and holds exactly len
 * bytes (the buffer HDF5 copies it into). */
static const char *check_heap_object(const rawfile *r, uint64_t addr, uint64_t idx, uint64_t len)
{
    unsigned char h[16];
    uint64_t hdr = align8(8 + r->ss), objhdr = align8(8 + r->ss);
    if (raw_read(r, addr, h, 8 + r->ss) || memcmp(h, "GCOL", 4) || h[4] != 1)
        return "its global heap collection is missing or damaged";
    uint64_t size = le(h + 8, r->ss);
    if (size < hdr + objhdr || size > ((uint64_t)1 << 30))
        return "its global heap collection has a bad size";
    unsigned char *c = malloc((size_t)size);
    if (!c || raw_read(r, addr, c, (size_t)size)) {
        free(c);
        return "its global heap collection lies outside the file";
    }
    const char *why = "its global heap object is missing";
    uint64_t p = hdr;
    while (p < size) {
        if (p + objhdr > size) break; /* tail too small for an object: free space */
        uint64_t i = le(c + p, 2), osz = le(c + p + 8, r->ss);
        uint64_t need = i > 0 ? objhdr + align8(osz) : osz;
        if (need == 0 || need > ((uint64_t)1 << 62)) {
            why = "its global heap collection is damaged";
            break;
        }
        if (i == idx) {
            if (osz != len || p + objhdr + osz > size) why = "its global heap object has a bad size";
            else why = NULL;
        }
        p += need;
    }
    free(c);
    return why;
}

/* Whether HDF5 may read the variable-length string attribute `name` of obj
 * without tripping over damage; on 0, why receives the problem. */
static int vlen_attr_ok(hid_t obj, const char *name, char *why, size_t why_len)
{
    rawfile r = {.fd = -1};
    const char *problem = NULL;
    hid_t file = H5Iget_file_id(obj), fcpl = -1;
    size_t sa = 0, ss = 0;
    hsize_t ub = 0;
    char fname[4096];
    H5O_info_t oi;
    /* The characters' type: a damaged size makes HDF5 allocate and clear
     * length x size bytes (gigabytes) before it reads a byte. */
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a < 0 ? -1 : H5Aget_type(a), base = t < 0 ? -1 : H5Tget_super(t);
    if (base < 0 || H5Tget_size(base) != 1) problem = "its character type is damaged";
    if (base >= 0) H5Tclose(base);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    int layout_ok = file >= 0 && (fcpl = H5Fget_create_plist(file)) >= 0 &&
                    H5Pget_sizes(fcpl, &sa, &ss) >= 0 && H5Pget_userblock(fcpl, &ub) >= 0 &&
                    sa >= 2 && sa <= 8 && ss >= 2 && ss <= 8 &&
                    H5Fget_name(file, fname, sizeof fname) > 0 &&
                    H5Oget_info2(obj, &oi, H5O_INFO_BASIC | H5O_INFO_HDR) >= 0;
    if (problem) {
        /* reported below */
    } else if (!layout_ok) {
        problem = "the file's layout is unreadable";
    } else if ((r.fd = open(fname, O_RDONLY)) < 0) {
        problem = "the file cannot be reopened";
    } else {
        struct stat st;
        r.eof = fstat(r.fd, &st) == 0 ? (uint64_t)st.st_size : 0;
        r.base = ub;
        r.sa = (unsigned)sa;
        r.ss = (unsigned)ss;
        hdr_scan sc = {.name = name};
        if (scan_header(&r, oi.addr, oi.hdr.version, &sc) < 0) {
            problem = "its object header is damaged";
        } else if (sc.found) {
            uint64_t len = le(sc.desc, 4), addr = le(sc.desc + 4, r.sa);
            uint64_t idx = le(sc.desc + 4 + r.sa, 4);
            /* A null (address 0) or empty string is never looked up. */
            if (addr != 0 && len != 0) problem = check_heap_object(&r, addr, idx, len);
        }
        /* Not found in the header: dense attribute storage, whose blocks
         * HDF5 checksums itself. */
    }
    if (r.fd >= 0) close(r.fd);
    if (fcpl >= 0) H5Pclose(fcpl);
    if (file >= 0) H5Fclose(file);
    H5Eclear2(H5E_DEFAULT);
    if (problem) snprintf(why, why_len, "%s", problem);
    return problem == NULL;
}

int strata_hdf5_vlen_attr_ok(int64_t obj, const char *name, char *why, size_t why_len)
{
    return vlen_attr_ok((hid_t)obj, name, why, why_len);
}

/* Reads a string attribute, fixed-length (any padding) or variable-length,
 * ASCII or UTF-8, into out (at most cap-1 bytes; longer is an error). */
static strata_err read_str_attr(hid_t obj, const char *path, const char *name, char *out,
                                size_t cap)
{
    char why[256];
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read attributes of /tokens (%s)", path,
                             hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: /tokens has no %s attribute", path, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open attribute %s (%s)", path, name,
                             hdf5_reason(why));
    strata_err e = strata_ok();
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a), mt = -1;
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    char *buf = NULL;
    if (t < 0 || sp < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                          hdf5_reason(why));
        goto done;
    }
    if (H5Tget_class(t) != H5T_STRING) {
        char tn[64];
        type_name(t, tn, sizeof tn);
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %s, expected a string", path, name,
                          tn);
        goto done;
    }
    if (np != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s holds %lld strings, expected one", path,
                          name, (long long)np);
        goto done;
    }
    /* The memory type keeps the file's character set: HDF5 refuses to
     * convert between ASCII and UTF-8 strings. */
    mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(t));
    const char *s = NULL;
    if (H5Tis_variable_str(t) > 0) {
        H5Tset_size(mt, H5T_VARIABLE);
        char *vs = NULL;
        if (!vlen_attr_ok(obj, name, why, sizeof why)) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is damaged (%s)", path, name, why);
            goto done;
        }
        if (H5Aread(a, mt, &vs) < 0) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                              hdf5_reason(why));
            goto done;
        }
        if (vs) {
            buf = strdup(vs);
            H5free_memory(vs);
            if (!buf) {
                e = strata_errorf(STRATA_EFAIL, "%s: out of memory", path);
                goto done;
            }
        }
        s = buf ? buf : "";
    } else {
        size_t size = H5Tget_size(t);
        if (size == 0 || size > 4096) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is a string of %zu bytes", path,
                              name, size);
            goto done;
        }
        H5Tset_size(mt, size + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        buf = calloc(size + 1, 1);
        if (!buf) {
            e = strata_errorf(STRATA_EFAIL, "%s: out of memory", path);
            goto done;
        }
        if (H5Aread(a, mt, buf) < 0) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                              hdf5_reason(why));
            goto done;
        }
        buf[size] = 0;
        s = buf;
    }
    size_t len = strlen(s);
    while (len > 0 && s[len - 1] == ' ') len--; /* space-padded strings */
    if (len >= cap) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %zu bytes long, expected < %zu", path,
                          name, len, cap);
        goto done;
    }
    memcpy(out, s, len);
    out[len] = 0;
done:
    free(buf);
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return e;
}

/* Printable form of an attribute string for a message. */
static const char *shown(const char *s, char *buf, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isprint(c)) buf[j++] = (char)c;
        else j += (size_t)snprintf(buf + j, n - j, "\\x%02x", c);
    }
    buf[j] = 0;
    return buf;
}

static int tokenizer_name_ok(const char *s)
{
    if (!s[0]) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-') return 0;
    return 1;
}

static int is_prime(size_t n)
{
    if (n < 2) return 0;
    for (size_t d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

/* A dataset access list whose chunk cache holds a few chunks: a sample of
 * T+1 tokens spans at most two chunks, and the samples of one shuffle window
 * lie in a few neighbouring chunks, so four chunks keep each chunk
 * decompressed once per window. Capped at 64 MiB per shard. */
static hid_t chunk_cache_dapl(int64_t chunk_tokens, int bytes_per_token)
{
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0) return dapl;
    size_t chunk_bytes = (size_t)chunk_tokens * (size_t)bytes_per_token;
    size_t cap = (size_t)64 << 20, nbytes = 4 * chunk_bytes;
    if (nbytes > cap) nbytes = chunk_bytes > cap ? chunk_bytes : cap;
    if (nbytes < ((size_t)1 << 20)) nbytes = (size_t)1 << 20;
    if (nbytes > ((size_t)256 << 20)) nbytes = (size_t)256 << 20;
    /* HDF5 wants a prime number of hash slots, ~100 per chunk that fits. */
    size_t slots = 100 * (nbytes / (chunk_bytes ? chunk_bytes : 1) + 1);
    if (slots < 521) slots = 521;
    if (slots > 100003) slots = 100003;
    while (!is_prime(slots)) slots++;
    H5Pset_chunk_cache(dapl, slots, nbytes, 0.75);
    return dapl;
}

/* Checks a dataset's filters are all available (h5py may write LZF, which
 * plain HDF5 lacks) and notes whether it is compressed. */
static strata_err check_filters(hid_t dcpl, const char *path, const char *what)
{
    int nf = H5Pget_nfilters(dcpl);
    char why[256];
    if (nf < 0)
        return strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable filter pipeline (%s)", path,
                             what, hdf5_reason(why));
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[16], cfg = 0;
        size_t ncd = 16;
        char name[64] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name,
                                         &cfg);
        if (id < 0)
            return strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable filter (%s)", path, what,
                                 hdf5_reason(why));
        name[sizeof name - 1] = 0;
        /* An optional filter HDF5 lacks was skipped when the chunks were
         * written without it; if a chunk does need it, reading says so. */
        if (!(flags & H5Z_FLAG_OPTIONAL) && H5Zfilter_avail(id) <= 0) {
            char nb[80];
            return strata_errorf(STRATA_EINPUT,
                                 "%s: %s uses filter '%s' (id %d), which this HDF5 build lacks "
                                 "(HINT: rewrite the shard with gzip or no compression)",
                                 path, what, shown(name, nb, sizeof nb), (int)id);
        }
    }
    return strata_ok();
}

/* Checks the data of /tokens is really in the file: HDF5 silently returns
 * the fill value for chunks that were never written, a damaged header may
 * point anywhere, and HDF5 1.10 copies a whole chunk out of a buffer the
 * size of the stored chunk, so an unfiltered chunk stored shorter than a
 * chunk (its filter message lost to damage, say) reads past the buffer. */
static strata_err check_storage(strata_shard *s, hid_t dcpl, int esize)
{
    char why[256];
    H5D_layout_t layout = H5Pget_layout(dcpl);
    int64_t n = s->info.n_tokens;
    hsize_t fsize = 0;
    if (H5Fget_filesize(s->file, &fsize) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot get the file size (%s)", s->path,
                             hdf5_reason(why));
    if (layout == H5D_CHUNKED) {
        int64_t ck = s->info.chunk_tokens;
        int64_t need = (n + ck - 1) / ck;
        uint64_t chunk_bytes = (uint64_t)ck * (uint64_t)esize;
        /* Filters a chunk may skip: only optional ones (a damaged mask that
         * skips deflate hands its compressed bytes on as if they were data). */
        int nf = H5Pget_nfilters(dcpl);
        uint64_t optional = 0, all = nf > 0 && nf < 64 ? ((uint64_t)1 << nf) - 1 : 0;
        for (int i = 0; i < nf && i < 64; i++) {
            unsigned flags = 0, cfg = 0;
            size_t ncd = 0;
            if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, &cfg) >= 0 &&
                (flags & H5Z_FLAG_OPTIONAL))
                optional |= (uint64_t)1 << i;
        }
        for (int64_t c = 0; c < need; c++) {
            hsize_t off = (hsize_t)(c * ck), size = 0;
            haddr_t addr = HADDR_UNDEF;
            unsigned mask = 0;
            if (H5Dget_chunk_info_by_coord(s->dset, &off, &mask, &addr, &size) < 0)
                return strata_errorf(STRATA_EINPUT, "%s: cannot look up chunk %" PRId64
                                     " of /tokens (%s)", s->path, c, hdf5_reason(why));
            if (addr == HADDR_UNDEF)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of /tokens (%" PRId64
                                     " chunks) is not stored (file incomplete or damaged)",
                                     s->path, c, need);
            if (mask & ~optional)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of /tokens skips a required filter "
                                     "(mask 0x%x; damaged)",
                                     s->path, c, mask);
            int raw = (mask & all) == all; /* stored as plain tokens */
            if (addr > fsize || size > fsize - addr || size == 0 || (raw && size != chunk_bytes))
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of /tokens claims %llu bytes at byte "
                                     "%llu of a %llu-byte file (damaged)",
                                     s->path, c, (unsigned long long)size,
                                     (unsigned long long)addr, (unsigned long long)fsize);
        }
    } else if (layout == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(s->dset);
        if (off == HADDR_UNDEF)
            return strata_errorf(STRATA_EINPUT, "%s: /tokens has no data stored", s->path);
        if (off > fsize || (uint64_t)n * (uint64_t)esize > fsize - off)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: /tokens claims %lld tokens at byte %llu but the file has "
                                 "%llu bytes (truncated or damaged)",
                                 s->path, (long long)n, (unsigned long long)off,
                                 (unsigned long long)fsize);
    } else if (layout != H5D_COMPACT) {
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has an unknown storage layout", s->path);
    }
    return strata_ok();
}

/* Opens a 1-D dataset and checks rank and class; *dims receives its length. */
static strata_err open_1d(hid_t file, const char *path, const char *name, hid_t dapl, hid_t *out,
                          int64_t *dims)
{
    char why[256];
    *out = -1;
    htri_t ex = H5Lexists(file, name, H5P_DEFAULT);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up %s (%s)", path, name,
                             hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: no %s dataset", path, name);
    H5O_info_t oi;
    if (H5Oget_info_by_name2(file, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: %s is unreadable (%s)", path, name,
                             hdf5_reason(why));
    if (oi.type != H5O_TYPE_DATASET)
        return strata_errorf(STRATA_EINPUT, "%s: %s is a %s, not a dataset", path, name,
                             oi.type == H5O_TYPE_GROUP ? "group" : "named type");
    hid_t d = H5Dopen2(file, name, dapl);
    if (d < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open %s (%s)", path, name,
                             hdf5_reason(why));
    hid_t sp = H5Dget_space(d);
    int rank = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hsize_t dim = 0;
    strata_err e = strata_ok();
    if (sp < 0 || rank < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable shape (%s)", path, name,
                          hdf5_reason(why));
    } else if (H5Sget_simple_extent_type(sp) != H5S_SIMPLE || rank != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: %s has rank %d, expected 1", path, name,
                          H5Sget_simple_extent_type(sp) == H5S_SIMPLE ? rank : 0);
    } else {
        H5Sget_simple_extent_dims(sp, &dim, NULL);
        if (dim > (hsize_t)MAX_TOKENS)
            e = strata_errorf(STRATA_EINPUT, "%s: %s claims %llu elements (damaged?)", path, name,
                              (unsigned long long)dim);
    }
    if (sp >= 0) H5Sclose(sp);
    if (e.code) {
        H5Dclose(d);
        return e;
    }
    *out = d;
    *dims = (int64_t)dim;
    return strata_ok();
}

static strata_err open_checked(strata_shard *s)
{
    char why[256];
    const char *path = s->path;
    struct stat st;
    if (stat(path, &st) != 0)
        return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return strata_errorf(STRATA_EINPUT, "%s: is a directory, not a shard", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        hdf5_reason(why);
        return strata_errorf(STRATA_EINPUT, "%s: not an HDF5 file", path);
    }
    /* Read-only opens need no lock, and locking fails on some cluster
     * filesystems; STRONG close releases every object with the file. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (s->file < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open as HDF5 (%s)", path,
                             hdf5_reason(why));

    int64_t n = 0;
    STRATA_TRY(open_1d(s->file, path, "/tokens", H5P_DEFAULT, &s->dset, &n));
    s->info.n_tokens = n;

    hid_t t = H5Dget_type(s->dset);
    if (t < 0)
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has an unreadable type (%s)", path,
                             hdf5_reason(why));
    H5T_class_t cls = H5Tget_class(t);
    H5T_sign_t sign = H5Tget_sign(t);
    size_t esize = H5Tget_size(t), prec = H5Tget_precision(t);
    int bitoff = H5Tget_offset(t);
    char tn[64];
    type_name(t, tn, sizeof tn);
    H5Tclose(t);
    if (cls != H5T_INTEGER || sign != H5T_SGN_NONE || (esize != 2 && esize != 4))
        return strata_errorf(STRATA_EINPUT, "%s: /tokens is %s, expected uint16 or uint32", path,
                             tn);
    if (prec != 8 * esize || bitoff != 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: /tokens is %s with %zu significant bits at bit %d, expected "
                             "all %zu bits",
                             path, tn, prec, bitoff, 8 * esize);
    s->info.token_bits = (int)(8 * esize);

    hid_t dcpl = H5Dget_create_plist(s->dset);
    if (dcpl < 0)
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has unreadable properties (%s)", path,
                             hdf5_reason(why));
    strata_err e = check_filters(dcpl, path, "/tokens");
    if (!e.code && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t ck = 0;
        if (H5Pget_chunk(dcpl, 1, &ck) != 1 || ck == 0 || ck > (hsize_t)MAX_TOKENS)
            e = strata_errorf(STRATA_EINPUT, "%s: /tokens has a bad chunk shape", path);
        s->info.chunk_tokens = (int64_t)ck;
    }
    if (!e.code && n == 0) e = strata_errorf(STRATA_EINPUT, "%s: empty shard (no tokens)", path);
    if (!e.code && n == 1)
        e = strata_errorf(STRATA_EINPUT, "%s: shard holds 1 token; a sample needs at least 2",
                          path);
    if (!e.code) e = check_storage(s, dcpl, (int)esize);
    H5Pclose(dcpl);
    if (e.code) return e;

    int64_t vocab = 0, eot = 0;
    STRATA_TRY(read_int_attr(s->dset, path, "vocab_size", &vocab));
    STRATA_TRY(read_int_attr(s->dset, path, "eot_token", &eot));
    char fmt[64], tok[64], sb[300];
    STRATA_TRY(read_str_attr(s->dset, path, "format", fmt, sizeof fmt));
    STRATA_TRY(read_str_attr(s->dset, path, "tokenizer", tok, sizeof tok));
    if (strcmp(fmt, STRATA_SHARD_FORMAT) != 0)
        return strata_errorf(STRATA_EINPUT, "%s: format attribute is '%s', expected '%s'", path,
                             shown(fmt, sb, sizeof sb), STRATA_SHARD_FORMAT);
    if (vocab < 1 || vocab > INT_MAX)
        return strata_errorf(STRATA_EINPUT, "%s: vocab_size attribute is %" PRId64
                             ", expected 1 .. %d", path, vocab, INT_MAX);
    if (esize == 2 && vocab > 65536)
        return strata_errorf(STRATA_EINPUT,
                             "%s: /tokens is uint16 but vocab_size is %" PRId64
                             " (ids above 65535 cannot be stored; expected uint32)",
                             path, vocab);
    if (eot < -1 || eot >= vocab)
        return strata_errorf(STRATA_EINPUT,
                             "%s: eot_token attribute is %" PRId64 ", expected -1 or 0 .. %" PRId64,
                             path, eot, vocab - 1);
    if (!tokenizer_name_ok(tok) || strlen(tok) >= sizeof s->info.tokenizer)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tokenizer attribute is '%s', expected a short name such as "
                             "'byte' or 'gpt2'",
                             path, shown(tok, sb, sizeof sb));
    s->info.vocab_size = (int)vocab;
    s->info.eot_token = (int)eot;
    snprintf(s->info.tokenizer, sizeof s->info.tokenizer, "%s", tok);

    htri_t has_docs = H5Lexists(s->file, "/doc_offsets", H5P_DEFAULT);
    if (has_docs < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up /doc_offsets (%s)", path,
                             hdf5_reason(why));
    if (has_docs > 0) {
        hid_t d = -1;
        int64_t nd = 0;
        STRATA_TRY(open_1d(s->file, path, "/doc_offsets", H5P_DEFAULT, &d, &nd));
        hid_t dt = H5Dget_type(d);
        int ok = dt >= 0 && H5Tget_class(dt) == H5T_INTEGER && H5Tget_size(dt) <= 8;
        if (dt >= 0) type_name(dt, tn, sizeof tn);
        else snprintf(tn, sizeof tn, "unreadable");
        if (dt >= 0) H5Tclose(dt);
        H5Dclose(d);
        if (!ok)
            return strata_errorf(STRATA_EINPUT, "%s: /doc_offsets is %s, expected uint64", path,
                                 tn);
        if (nd > n)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: /doc_offsets lists %" PRId64 " documents in %" PRId64
                                 " tokens",
                                 path, nd, n);
        s->info.n_docs = nd;
    }

    /* Reopen /tokens with a chunk cache sized to its chunks (the access
     * list must be given at open time). */
    if (s->info.chunk_tokens > 0) {
        hid_t dapl = chunk_cache_dapl(s->info.chunk_tokens, (int)esize);
        hid_t d = dapl < 0 ? -1 : H5Dopen2(s->file, "/tokens", dapl);
        if (dapl >= 0) H5Pclose(dapl);
        if (d < 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot reopen /tokens (%s)", path,
                                 hdf5_reason(why));
        H5Dclose(s->dset);
        s->dset = d;
    }
    return strata_ok();
}

strata_err strata_shard_open(strata_shard **out, const char *path)
{
    *out = NULL;
    hdf5_quiet();
    strata_shard *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return strata_errorf(STRATA_EFAIL, "%s: out of memory", path);
    }
    s->file = s->dset = -1;
    strata_err e = open_checked(s);
    if (e.code) {
        strata_shard_close(s);
        return e;
    }
    *out = s;
    return strata_ok();
}

const strata_shard_info *strata_shard_get_info(const strata_shard *s) { return &s->info; }

const char *strata_shard_path(const strata_shard *s) { return s->path; }

int64_t strata_shard_n_samples(const strata_shard *s, int T)
{
    if (T <= 0 || s->info.n_tokens < 2) return 0;
    return (s->info.n_tokens - 1) / T;
}

strata_err strata_shard_read(strata_shard *s, int64_t start, int64_t n, uint32_t *out)
{
    char why[256];
    hdf5_quiet();
    if (start < 0 || n < 0 || start > s->info.n_tokens || n > s->info.n_tokens - start)
        return strata_errorf(STRATA_EFAIL,
                             "%s: read of tokens [%" PRId64 ", %" PRId64 ") outside 0 .. %" PRId64,
                             s->path, start, start + n, s->info.n_tokens);
    if (n == 0) return strata_ok();
    int wide = s->info.token_bits == 32;
    void *dst = out;
    if (!wide) {
        if ((size_t)n > s->scratch_cap) {
            uint16_t *p = realloc(s->scratch, (size_t)n * sizeof *p);
            if (!p) return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
            s->scratch = p;
            s->scratch_cap = (size_t)n;
        }
        dst = s->scratch;
    }
    hsize_t off = (hsize_t)start, cnt = (hsize_t)n;
    hid_t fs = H5Dget_space(s->dset);
    hid_t ms = H5Screate_simple(1, &cnt, NULL);
    herr_t r = -1;
    if (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL) >= 0)
        r = H5Dread(s->dset, wide ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16, ms, fs, H5P_DEFAULT,
                    dst);
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (r < 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: cannot read /tokens[%" PRId64 ":%" PRId64 "] (%s; file damaged?)",
                             s->path, start, start + n, hdf5_reason(why));
    if (!wide)
        for (int64_t i = 0; i < n; i++) out[i] = s->scratch[i];
    uint32_t v = (uint32_t)s->info.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (out[i] >= v)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: token %" PRId64 " is %" PRIu32 ", not < vocab_size %" PRIu32,
                                 s->path, start + i, out[i], v);
    return strata_ok();
}

strata_err strata_shard_verify(strata_shard *s)
{
    char why[256];
    int64_t n = s->info.n_tokens, block = (int64_t)1 << 20;
    uint32_t *buf = malloc((size_t)(n < block ? n : block) * sizeof *buf);
    if (!buf) return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
    strata_err e = strata_ok();
    for (int64_t i = 0; i < n && !e.code; i += block)
        e = strata_shard_read(s, i, n - i < block ? n - i : block, buf);
    free(buf);
    if (e.code || s->info.n_docs == 0) return e;

    /* /doc_offsets: first tokens of documents, non-decreasing (an empty
     * document repeats an offset) and never past the end. */
    hdf5_quiet();
    hid_t d = H5Dopen2(s->file, "/doc_offsets", H5P_DEFAULT);
    if (d < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open /doc_offsets (%s)", s->path,
                             hdf5_reason(why));
    int64_t nd = s->info.n_docs;
    uint64_t *off = malloc((size_t)nd * sizeof *off);
    if (!off) {
        H5Dclose(d);
        return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
    }
    if (H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off) < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: cannot read /doc_offsets (%s)", s->path,
                          hdf5_reason(why));
    } else {
        for (int64_t i = 0; i < nd && !e.code; i++)
            if ((i > 0 && off[i] < off[i - 1]) || off[i] > (uint64_t)n)
                e = strata_errorf(STRATA_EINPUT,
                                  "%s: /doc_offsets[%" PRId64 "] is %" PRIu64
                                  " (expected non-decreasing offsets up to %" PRId64 ")",
                                  s->path, i, off[i], n);
    }
    free(off);
    H5Dclose(d);
    return e;
}

void strata_shard_close(strata_shard *s)
{
    if (!s) return;
    hdf5_quiet();
    if (s->dset >= 0) H5Dclose(s->dset);
    if (s->file >= 0) H5Fclose(s->file);
    H5Eclear2(H5E_DEFAULT);
    free(s->scratch);
    free(s->path);
    free(s);
}
