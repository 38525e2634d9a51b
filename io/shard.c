/* shard.c — reading HDF5 token shards (the reader half of shard.h).
 *
 * The reader trusts nothing in the file. Opening checks, in order: the file
 * is HDF5 and opens; /tokens is a 1-D unsigned 16- or 32-bit integer
 * dataset; its filters are available; its data is actually stored (every
 * chunk present, or the contiguous block inside the file); its attribute
 * messages are sound; the four attributes have the right class and a value
 * in range. Reading checks every chunk it touches the first time and every
 * token id against vocab_size.
 *
 * HDF5 1.10 itself is not safe on damaged files: it crashes or hangs on a
 * corrupt attribute message, global heap or filter mask (found by flipping
 * bytes of real shards). Where it would, we look at the bytes first, with
 * plain reads of the file, and refuse what HDF5 would trip over; see
 * "attribute messages" and check_storage below. HDF5 reports other damage
 * as an error on its error stack; we never let it print (H5Eset_auto2 off,
 * per thread, since the thread-safe build keeps one stack per thread) and
 * fold the innermost message into ours instead.
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
#include <zlib.h>

/* What a filtered chunk must look like before HDF5 may read it (see
 * check_chunk): chunks are checked at their first read, since HDF5 1.10
 * finds one chunk's record only by walking the index. */
typedef struct chunk_rules {
    int64_t n_chunks;
    uint64_t chunk_bytes, file_bytes;
    uint64_t optional; /* filters a chunk may skip */
    uint64_t all;      /* every filter of the pipeline */
    uint8_t *checked;  /* one bit per chunk; NULL when unfiltered or decoded here */
} chunk_rules;

/* Chunks compressed with deflate (and shuffle, as `strata pack` and h5py
 * write them) are read raw and decoded here: HDF5 1.10 copies a whole
 * chunk out of whatever its filters returned, so a damaged chunk or chunk
 * shape makes it read past its buffer, and no check from outside can see
 * the inflated size before HDF5 trusts it. Decoded chunks are kept, least
 * recently used out. */
#define MAX_FILTERS 8
typedef struct decoded {
    int64_t chunk; /* -1: empty */
    uint8_t *data; /* chunk_bytes, file byte order */
    uint64_t used;
} decoded;

typedef struct own_decoder {
    int on;
    int n_filters;
    int filter[MAX_FILTERS]; /* H5Z_FILTER_DEFLATE or H5Z_FILTER_SHUFFLE, in pipeline order */
    uint8_t *raw, *work[2];  /* a stored chunk; two chunks of scratch */
    size_t raw_cap;
    decoded *cache;
    int n_cache;
    uint64_t tick;
} own_decoder;

struct strata_shard {
    char *path;
    hid_t file, dset;
    strata_shard_info info;
    int big_endian; /* byte order of /tokens in the file */
    chunk_rules rules;
    own_decoder dec;
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

/* How a message names an HDF5 type: "uint16", "float64", "a string". */
static void type_name(hid_t t, char *buf, size_t n)
{
    static const char *const class_names[H5T_NCLASSES] = {
        [H5T_STRING] = "a string",       [H5T_COMPOUND] = "a compound type",
        [H5T_ARRAY] = "an array type",   [H5T_ENUM] = "an enum",
        [H5T_BITFIELD] = "a bitfield",   [H5T_OPAQUE] = "opaque",
        [H5T_REFERENCE] = "a reference", [H5T_VLEN] = "a variable-length sequence",
    };
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    if (cls == H5T_INTEGER)
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * size);
    else if (cls == H5T_FLOAT)
        snprintf(buf, n, "float%zu", 8 * size);
    else if (cls > H5T_NO_CLASS && cls < H5T_NCLASSES && class_names[cls])
        snprintf(buf, n, "%s", class_names[cls]);
    else
        snprintf(buf, n, "an unknown type");
}

/* Call right after the HDF5 call that failed, before another one clears
 * the error stack that holds the reason. */
static strata_err attr_unreadable(const char *path, const char *name)
{
    char why[256];
    return strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                         hdf5_reason(why));
}

/* Opens attribute name of /tokens and checks it holds one value of class
 * cls: an integer of at most 64 bits, or a string. *a and *t receive the
 * attribute and its type, for the caller to read and close. */
static strata_err open_attr(hid_t obj, const char *path, const char *name, H5T_class_t cls,
                            hid_t *a, hid_t *t)
{
    char why[256];
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read attributes of /tokens (%s)", path,
                             hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: /tokens has no %s attribute", path, name);
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open attribute %s (%s)", path, name,
                             hdf5_reason(why));
    int is_int = cls == H5T_INTEGER;
    strata_err e = strata_ok();
    hid_t type = H5Aget_type(attr), sp = H5Aget_space(attr);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (type < 0 || sp < 0) {
        e = attr_unreadable(path, name);
    } else if (H5Tget_class(type) != cls || (is_int && H5Tget_size(type) > 8)) {
        char tn[64];
        type_name(type, tn, sizeof tn);
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %s, expected %s", path, name, tn,
                          is_int ? "an integer" : "a string");
    } else if (np != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s holds %lld %s, expected one", path, name,
                          (long long)np, is_int ? "values" : "strings");
    }
    if (sp >= 0) H5Sclose(sp);
    if (e.code) {
        if (type >= 0) H5Tclose(type);
        H5Aclose(attr);
        return e;
    }
    *a = attr;
    *t = type;
    return strata_ok();
}

/* Reads an integer attribute of any width and signedness held in a scalar
 * or one-element dataspace. h5py writes int64; C writers often int32. */
static strata_err read_int_attr(hid_t obj, const char *path, const char *name, int64_t *v)
{
    hid_t a = -1, t = -1;
    STRATA_TRY(open_attr(obj, path, name, H5T_INTEGER, &a, &t));
    strata_err e = H5Aread(a, H5T_NATIVE_INT64, v) < 0 ? attr_unreadable(path, name) : strata_ok();
    H5Tclose(t);
    H5Aclose(a);
    return e;
}

/* ---- attribute messages: check before HDF5 decodes them ---------------
 *
 * HDF5 1.10 trusts the attribute messages of an object header (version 1
 * headers carry no checksum): a damaged name length, datatype or dataspace
 * makes its decoder copy past its buffers. And a variable-length string
 * attribute holds (length, heap collection address, object index) whose
 * bytes live in a global heap collection that H5HG_read trusts too: a bad
 * index copies from a wild pointer, a bad size overruns the buffer, a
 * zero-sized free-space record loops forever. h5py writes every str
 * attribute this way. So before HDF5 touches the attributes of an object
 * from an untrusted file, we read its object header ourselves (plain reads,
 * header versions 1 and 2, following continuation chunks), apply to every
 * attribute message the bounds checks later HDF5 releases added, and walk
 * any heap collection a string points into exactly as HDF5 will. */

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

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

#define MAX_CHUNKS      64
#define MAX_CHUNK_BYTES ((size_t)1 << 20)

typedef struct hdr_scan {
    const char *name; /* attribute whose vlen descriptor we want, or NULL */
    int found;
    unsigned char desc[16]; /* its descriptor: length, heap address, index */
    const char *problem;    /* the first damage seen */
    uint64_t cont_addr[MAX_CHUNKS], cont_len[MAX_CHUNKS];
    int n_cont;
} hdr_scan;

/* Size in the file of one element of the datatype encoded at dt (n bytes
 * available), checked as strictly as HDF5's decoder checks it (its error
 * paths are no safer than its bounds); 0 when not sane. *used receives the
 * encoding's length. Classes whose members we do not walk (compound, array,
 * time, reference) pass on their size field alone. */
static uint64_t dtype_check(const rawfile *r, const unsigned char *dt, uint64_t n, int depth,
                            uint64_t *used)
{
    if (n < 8 || depth > 4) return 0;
    unsigned cls = dt[0] & 0x0f, version = dt[0] >> 4;
    uint64_t size = le(dt + 4, 4);
    *used = 8;
    if (version < 1 || version > 3 || cls > 10 || size == 0 || size > ((uint64_t)1 << 24)) return 0;
    switch (cls) {
    case 0: /* integer: bit offset, precision */
    case 4: /* bitfield */
        if (n < 12 || le(dt + 8, 2) + le(dt + 10, 2) > 8 * size || le(dt + 10, 2) == 0) return 0;
        *used = 12;
        return size;
    case 1: /* float: offset, precision, exponent and mantissa fields, bias */
        if (n < 20 || le(dt + 8, 2) + le(dt + 10, 2) > 8 * size || le(dt + 10, 2) == 0) return 0;
        *used = 20;
        return size;
    case 3: /* fixed-length string */
        return size;
    case 9: { /* variable-length: sequence (type 0) or string (type 1) of a base type */
        unsigned kind = dt[1] & 0x0f;
        uint64_t bused = 0, bsize = dtype_check(r, dt + 8, n - 8, depth + 1, &bused);
        if (kind > 1 || bsize == 0 || (kind == 1 && bsize != 1) || size != 4 + r->sa + 4) return 0;
        *used = 8 + bused;
        return 4 + r->sa + 4; /* on disk: length and a heap reference */
    }
    case 8: { /* enum: base type, then member names and values */
        uint64_t nmemb = le(dt + 1, 2), bused = 0;
        uint64_t bsize = dtype_check(r, dt + 8, n - 8, depth + 1, &bused);
        if (bsize == 0 || bsize != size || nmemb > 65535) return 0;
        uint64_t pos = 8 + bused;
        for (uint64_t i = 0; i < nmemb; i++) {
            const unsigned char *nm = dt + pos;
            size_t len = pos < n ? strnlen((const char *)nm, n - pos) : 0;
            if (pos >= n || len == n - pos) return 0;
            pos += version < 3 ? align8(len + 1) : len + 1;
        }
        if (pos > n || nmemb * size > n - pos) return 0;
        *used = pos + nmemb * size;
        return size;
    }
    default:
        return size;
    }
}

/* Elements in the dataspace message ds (n bytes); -1 when not sane. */
static int64_t dspace_points(const rawfile *r, const unsigned char *ds, uint64_t n)
{
    if (n < 4) return -1;
    unsigned version = ds[0], rank = ds[1], flags = ds[2];
    uint64_t head = version == 1 ? 8 : 4;
    if (version < 1 || version > 2 || rank > 32) return -1;
    if (version == 2 && ds[3] == 2) return 0; /* null dataspace */
    if (version == 2 && ds[3] == 0) return 1; /* scalar */
    if (version == 2 && ds[3] != 1) return -1;
    if (flags & ~3u || (version == 2 && (flags & 2))) return -1;
    if (rank == 0) return 1;
    uint64_t per = flags & 1 ? 2 : 1;
    if (head + (uint64_t)rank * r->ss * per > n) return -1;
    uint64_t np = 1, unlimited = r->ss == 8 ? ~(uint64_t)0 : ((uint64_t)1 << (8 * r->ss)) - 1;
    for (unsigned i = 0; i < rank; i++) {
        uint64_t d = le(ds + head + (uint64_t)i * r->ss, r->ss);
        if (flags & 1) { /* a maximum below the size is damage */
            uint64_t mx = le(ds + head + ((uint64_t)rank + i) * r->ss, r->ss);
            if (mx != unlimited && mx < d) return -1;
        }
        if (d && np > (((uint64_t)1 << 62) / d)) return -1;
        np *= d;
    }
    return (int64_t)np;
}

/* Checks one attribute message m of n bytes as HDF5 will decode it, and
 * keeps the descriptor of the attribute sought. */
static void check_attr_message(const rawfile *r, const unsigned char *m, uint64_t n, hdr_scan *sc)
{
    if (n < 8) {
        sc->problem = "an attribute message is truncated";
        return;
    }
    unsigned version = m[0], flags = m[1];
    uint64_t name_len = le(m + 2, 2), dt_len = le(m + 4, 2), ds_len = le(m + 6, 2);
    uint64_t pos = version >= 3 ? 9 : 8;
    if (version < 1 || version > 3 || (version >= 2 && (flags & ~3u))) {
        sc->problem = "an attribute message has a bad version or flags";
        return;
    }
    if (name_len == 0 || pos + name_len > n ||
        strnlen((const char *)m + pos, name_len) + 1 != name_len) {
        sc->problem = "an attribute name is damaged";
        return;
    }
    const char *name = (const char *)m + pos;
    pos += version == 1 ? align8(name_len) : name_len;
    const unsigned char *dt = m + pos;
    if (pos + dt_len > n) {
        sc->problem = "an attribute datatype is damaged";
        return;
    }
    pos += version == 1 ? align8(dt_len) : dt_len;
    const unsigned char *ds = m + pos;
    if (pos + ds_len > n) {
        sc->problem = "an attribute dataspace is damaged";
        return;
    }
    pos += version == 1 ? align8(ds_len) : ds_len;
    /* Shared datatypes or dataspaces live elsewhere; HDF5 checks those. */
    uint64_t used = 0, esize = flags & 1 ? 1 : dtype_check(r, dt, dt_len, 0, &used);
    if (!(flags & 1) && used > dt_len) esize = 0;
    int64_t np = flags & 2 ? 0 : dspace_points(r, ds, ds_len);
    if (esize == 0 || esize > ((uint64_t)1 << 24) || np < 0) {
        sc->problem = "an attribute's type or shape is damaged";
        return;
    }
    if (!(flags & 3) && ((uint64_t)np > (((uint64_t)1 << 62) / esize) || pos > n ||
                         (uint64_t)np * esize > n - pos)) {
        sc->problem = "an attribute's data overruns its message";
        return;
    }
    if (sc->name && !sc->found && strcmp(name, sc->name) == 0 && (dt[0] & 0x0f) == 9 &&
        !(flags & 3) && np == 1) {
        memcpy(sc->desc, m + pos, 4 + r->sa + 4);
        sc->found = 1;
    }
}

/* Walks the messages of one header chunk, v1 or v2 layout. */
static int scan_messages(const rawfile *r, const unsigned char *b, size_t len, int v2,
                         int crt_order, hdr_scan *sc)
{
    size_t off = 0, mh = v2 ? (crt_order ? 6 : 4) : 8;
    while (off + mh <= len && !sc->problem) {
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
        } else if (type == 0x0c && !(flags & 0x02)) { /* an attribute, stored here */
            check_attr_message(r, m, size, sc);
        }
        off += mh + size;
    }
    return 0;
}

/* Scans the object header at addr; -1 if its chunks do not parse. */
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
        if (sc->problem || chunk >= sc->n_cont) return 0;
        at = sc->cont_addr[chunk];
        if (sc->cont_len[chunk] > MAX_CHUNK_BYTES) return -1;
        len = (size_t)sc->cont_len[chunk];
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
            if (osz != len || p + objhdr + osz > size)
                why = "its global heap object has a bad size";
            else
                why = NULL;
        }
        p += need;
    }
    free(c);
    return why;
}

/* Checks the attribute messages of obj's header and, when name is given,
 * the heap object of that variable-length string attribute. NULL when
 * HDF5 may go ahead, else the problem. */
static const char *check_object_attrs(hid_t obj, const char *name)
{
    rawfile r = {.fd = -1};
    const char *problem = NULL;
    hid_t file = H5Iget_file_id(obj), fcpl = -1;
    size_t sa = 0, ss = 0;
    hsize_t ub = 0;
    char fname[4096];
    H5O_info_t oi;
    int layout_ok = file >= 0 && (fcpl = H5Fget_create_plist(file)) >= 0 &&
                    H5Pget_sizes(fcpl, &sa, &ss) >= 0 && H5Pget_userblock(fcpl, &ub) >= 0 &&
                    sa >= 2 && sa <= 8 && ss >= 2 && ss <= 8 &&
                    H5Fget_name(file, fname, sizeof fname) > 0 &&
                    H5Oget_info2(obj, &oi, H5O_INFO_BASIC | H5O_INFO_HDR) >= 0;
    if (!layout_ok) {
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
        } else if (sc.problem) {
            problem = sc.problem;
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
    return problem;
}

/* Whether HDF5 may read the variable-length string attribute `name` of obj
 * without tripping over damage; on 0, why receives the problem. */
static int vlen_attr_ok(hid_t obj, const char *name, char *why, size_t why_len)
{
    /* The characters' type: a damaged size makes HDF5 allocate and clear
     * length x size bytes (gigabytes) before it reads a byte. */
    const char *problem = NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a < 0 ? -1 : H5Aget_type(a), base = t < 0 ? -1 : H5Tget_super(t);
    if (base < 0 || H5Tget_size(base) != 1) problem = "its character type is damaged";
    if (base >= 0) H5Tclose(base);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    if (!problem) problem = check_object_attrs(obj, name);
    if (problem) snprintf(why, why_len, "%s", problem);
    return problem == NULL;
}

int strata_hdf5_attrs_ok(int64_t obj, char *why, size_t why_len)
{
    const char *problem = check_object_attrs((hid_t)obj, NULL);
    if (problem) snprintf(why, why_len, "%s", problem);
    return problem == NULL;
}

int strata_hdf5_vlen_attr_ok(int64_t obj, const char *name, char *why, size_t why_len)
{
    return vlen_attr_ok((hid_t)obj, name, why, why_len);
}

const char *strata_hdf5_reason(char buf[256]) { return hdf5_reason(buf); }

/* Reads a string attribute, fixed-length (any padding) or variable-length,
 * ASCII or UTF-8, into out (at most cap-1 bytes; longer is an error). */
static strata_err read_str_attr(hid_t obj, const char *path, const char *name, char *out,
                                size_t cap)
{
    char why[256];
    hid_t a = -1, t = -1;
    STRATA_TRY(open_attr(obj, path, name, H5T_STRING, &a, &t));
    strata_err e = strata_ok();
    char *buf = NULL;
    /* The memory type keeps the file's character set: HDF5 refuses to
     * convert between ASCII and UTF-8 strings. */
    hid_t mt = H5Tcopy(H5T_C_S1);
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
            e = attr_unreadable(path, name);
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
            e = attr_unreadable(path, name);
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
    H5Tclose(t);
    H5Aclose(a);
    return e;
}

/* Printable form of an attribute string for a message. */
static const char *shown(const char *s, char *buf, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isprint(c))
            buf[j++] = (char)c;
        else
            j += (size_t)snprintf(buf + j, n - j, "\\x%02x", c);
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

/* A dataset access list whose chunk cache holds the whole shard up to
 * 32 MiB, and at least four chunks: a sample of T+1 tokens spans at most
 * two chunks and the samples of one shuffle window lie in a few
 * neighbouring ones, so each chunk is read (and inflated) once per window;
 * random replay reads of a small corpus hit the cache once it is warm.
 * HDF5 takes the memory only for chunks actually read. */
static hid_t chunk_cache_dapl(int64_t n_tokens, int64_t chunk_tokens, int bytes_per_token)
{
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0) return dapl;
    size_t chunk_bytes = (size_t)chunk_tokens * (size_t)bytes_per_token;
    size_t shard_bytes = (size_t)n_tokens * (size_t)bytes_per_token;
    size_t nbytes = shard_bytes < ((size_t)32 << 20) ? shard_bytes : (size_t)32 << 20;
    if (nbytes < 4 * chunk_bytes) nbytes = 4 * chunk_bytes;
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
        H5Z_filter_t id =
            H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name, &cfg);
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

/* Sets up our own decoding when the pipeline holds only deflate and
 * shuffle (with the element size of the tokens); 0 leaves the chunks to
 * HDF5's pipeline, behind check_chunk. */
static int setup_decoder(strata_shard *s, hid_t dcpl, int esize)
{
    own_decoder *d = &s->dec;
    int nf = H5Pget_nfilters(dcpl);
    if (nf < 1 || nf > MAX_FILTERS) return 0;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[4] = {0}, cfg = 0;
        size_t ncd = 4;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, 0, NULL, &cfg);
        if (id == H5Z_FILTER_SHUFFLE && ncd >= 1 && cd[0] == (unsigned)esize)
            d->filter[i] = (int)id;
        else if (id == H5Z_FILTER_DEFLATE)
            d->filter[i] = (int)id;
        else
            return 0;
    }
    uint64_t cb = s->rules.chunk_bytes;
    if (cb > ((uint64_t)1 << 30)) return 0;
    /* Decoded chunks kept: 32 MiB worth, at least 2 (a sample may span two
     * chunks), at most 64; memory is taken as chunks are decoded. */
    int64_t n = (int64_t)((((uint64_t)32 << 20)) / cb);
    n = n < 2 ? 2 : n > 64 ? 64 : n;
    if (n > s->rules.n_chunks) n = s->rules.n_chunks;
    if (!(d->cache = calloc((size_t)n, sizeof *d->cache))) return 0;
    for (int64_t i = 0; i < n; i++) d->cache[i].chunk = -1;
    d->n_cache = (int)n;
    d->n_filters = nf;
    d->on = 1;
    return 1;
}

/* Inflates a zlib stream of n bytes into exactly `want` bytes at out. */
static int inflate_exact(const uint8_t *in, size_t n, uint8_t *out, size_t want)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK) return -1;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)want;
    int rc = inflate(&z, Z_FINISH);
    size_t got = z.total_out;
    inflateEnd(&z);
    return rc == Z_STREAM_END && got == want ? 0 : -1;
}

/* Reads chunk c raw and undoes its filters into out (chunk_bytes). */
static strata_err decode_chunk(strata_shard *s, int64_t c, uint8_t *out)
{
    own_decoder *d = &s->dec;
    chunk_rules *cr = &s->rules;
    char why[256];
    hsize_t off = (hsize_t)(c * s->info.chunk_tokens), size = 0;
    if (H5Dget_chunk_storage_size(s->dset, &off, &size) < 0 || size == 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens is not stored (file incomplete or "
                             "damaged)",
                             s->path, c);
    /* deflate never grows data by more than a few bytes per 16 KiB */
    if (size > cr->file_bytes || size > cr->chunk_bytes + cr->chunk_bytes / 64 + 4096)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens claims %llu bytes (damaged)",
                             s->path, c, (unsigned long long)size);
    size_t cb = (size_t)cr->chunk_bytes;
    for (int k = 0; k < 2; k++)
        if (!d->work[k] && !(d->work[k] = malloc(cb)))
            return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
    if (size > d->raw_cap) {
        uint8_t *p = realloc(d->raw, (size_t)size);
        if (!p) return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
        d->raw = p;
        d->raw_cap = (size_t)size;
    }
    uint32_t mask = 0;
    if (H5Dread_chunk(s->dset, H5P_DEFAULT, &off, &mask, d->raw) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read chunk %" PRId64 " of /tokens (%s)",
                             s->path, c, hdf5_reason(why));
    if (d->n_filters < 32 && (mask >> d->n_filters))
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens has a bad filter "
                             "mask 0x%x (damaged)",
                             s->path, c, (unsigned)mask);
    /* Undo the filters last to first; the last step writes into out. */
    int steps = 0, done = 0;
    for (int i = 0; i < d->n_filters; i++) steps += !(mask >> i & 1);
    const uint8_t *cur = d->raw;
    size_t cur_n = (size_t)size;
    for (int i = d->n_filters - 1; i >= 0; i--) {
        if (mask >> i & 1) continue;
        uint8_t *dst = ++done == steps ? out : d->work[done & 1];
        if (d->filter[i] == H5Z_FILTER_DEFLATE) {
            if (inflate_exact(cur, cur_n, dst, cb))
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of /tokens does not inflate to %zu "
                                     "bytes (damaged)",
                                     s->path, c, cb);
        } else { /* shuffle: byte k of every element was stored together */
            size_t e = (size_t)s->info.token_bits / 8, ne = cb / e;
            if (cur_n != cb)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of /tokens holds %zu bytes, %zu "
                                     "expected (damaged)",
                                     s->path, c, cur_n, cb);
            for (size_t k = 0; k < e; k++)
                for (size_t j = 0; j < ne; j++) dst[j * e + k] = cur[k * ne + j];
        }
        cur = dst;
        cur_n = cb;
    }
    if (steps == 0) {
        if (cur_n != cb)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: chunk %" PRId64 " of /tokens holds %zu bytes, %zu expected "
                                 "(damaged)",
                                 s->path, c, cur_n, cb);
        memcpy(out, cur, cb);
    }
    return strata_ok();
}

/* The decoded bytes of chunk c, from the cache or decoded now. */
static strata_err get_chunk(strata_shard *s, int64_t c, const uint8_t **data)
{
    own_decoder *d = &s->dec;
    int victim = 0;
    for (int i = 0; i < d->n_cache; i++) {
        if (d->cache[i].chunk == c) {
            d->cache[i].used = ++d->tick;
            *data = d->cache[i].data;
            return strata_ok();
        }
        if (d->cache[i].used < d->cache[victim].used) victim = i;
    }
    decoded *slot = &d->cache[victim];
    if (!slot->data && !(slot->data = malloc((size_t)s->rules.chunk_bytes)))
        return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
    slot->chunk = -1;
    STRATA_TRY(decode_chunk(s, c, slot->data));
    slot->chunk = c;
    slot->used = ++d->tick;
    *data = slot->data;
    return strata_ok();
}

/* Tokens [start, start+n) from decoded chunks, as host uint32. */
static strata_err read_decoded(strata_shard *s, int64_t start, int64_t n, uint32_t *out)
{
    int64_t ck = s->info.chunk_tokens, end = start + n;
    int e = s->info.token_bits / 8, be = s->big_endian;
    for (int64_t c = start / ck; c * ck < end; c++) {
        const uint8_t *p = NULL;
        STRATA_TRY(get_chunk(s, c, &p));
        int64_t a = start > c * ck ? start : c * ck, b = end < (c + 1) * ck ? end : (c + 1) * ck;
        for (int64_t i = a; i < b; i++) {
            const uint8_t *q = p + (size_t)(i - c * ck) * (size_t)e;
            uint32_t v = 0;
            for (int k = 0; k < e; k++) v |= (uint32_t)q[be ? e - 1 - k : k] << (8 * k);
            out[i - start] = v;
        }
    }
    return strata_ok();
}

/* Checks the data of /tokens is really in the file: HDF5 silently returns
 * the fill value for chunks that were never written, and a damaged header
 * may point anywhere. HDF5 1.10 also copies a whole chunk out of a buffer
 * the size of what its filters returned, so a chunk that reaches it shorter
 * than a chunk reads past that buffer: an unfiltered chunk stored short
 * (its filter message lost to damage, say), or a compressed chunk whose
 * filter mask, damaged, skips the decompression. Unfiltered datasets are
 * checked here in one pass (stored bytes = chunks x chunk size); chunks
 * compressed with deflate and shuffle are decoded by us (decode_chunk),
 * and chunks behind other filters are checked one by one at their first
 * read (check_chunk). */
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
        chunk_rules *cr = &s->rules;
        int64_t ck = s->info.chunk_tokens;
        cr->n_chunks = (n + ck - 1) / ck;
        cr->chunk_bytes = (uint64_t)ck * (uint64_t)esize;
        cr->file_bytes = fsize;
        int nf = H5Pget_nfilters(dcpl);
        cr->all = nf > 0 && nf < 64 ? ((uint64_t)1 << nf) - 1 : 0;
        for (int i = 0; i < nf && i < 64; i++) {
            unsigned flags = 0, cfg = 0;
            size_t ncd = 0;
            if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, &cfg) >= 0 &&
                (flags & H5Z_FLAG_OPTIONAL))
                cr->optional |= (uint64_t)1 << i;
        }
        hsize_t have = 0;
        hid_t fs = H5Dget_space(s->dset);
        herr_t r = fs < 0 ? -1 : H5Dget_num_chunks(s->dset, fs, &have);
        if (fs >= 0) H5Sclose(fs);
        if (r < 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot list the chunks of /tokens (%s)",
                                 s->path, hdf5_reason(why));
        /* HDF5 drops chunks outside the extent when a dataset shrinks, so
         * any other count means a damaged index or chunk shape. */
        if ((int64_t)have != cr->n_chunks)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: /tokens has %llu chunks stored, %" PRId64
                                 " expected (file incomplete or damaged)",
                                 s->path, (unsigned long long)have, cr->n_chunks);
        if (nf == 0) {
            hsize_t stored = H5Dget_storage_size(s->dset);
            if (stored != have * cr->chunk_bytes)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: /tokens stores %llu bytes in %llu uncompressed chunks "
                                     "of %llu bytes (damaged)",
                                     s->path, (unsigned long long)stored, (unsigned long long)have,
                                     (unsigned long long)cr->chunk_bytes);
        } else if (!setup_decoder(s, dcpl, esize) &&
                   !(cr->checked = calloc((size_t)(cr->n_chunks + 7) / 8, 1))) {
            return strata_errorf(STRATA_EFAIL, "%s: out of memory", s->path);
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

/* Checks filtered chunk c before its first read: stored inside the file,
 * skipping no required filter, and stored whole if it skips them all. */
static strata_err check_chunk(strata_shard *s, int64_t c)
{
    chunk_rules *cr = &s->rules;
    if (!cr->checked || (cr->checked[c / 8] >> (c % 8) & 1)) return strata_ok();
    char why[256];
    hsize_t off = (hsize_t)(c * s->info.chunk_tokens), size = 0;
    haddr_t addr = HADDR_UNDEF;
    unsigned mask = 0;
    if (H5Dget_chunk_info_by_coord(s->dset, &off, &mask, &addr, &size) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up chunk %" PRId64 " of /tokens (%s)",
                             s->path, c, hdf5_reason(why));
    if (addr == HADDR_UNDEF)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens is not stored (file incomplete "
                             "or damaged)",
                             s->path, c);
    if (mask & ~cr->optional)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens skips a required filter (mask "
                             "0x%x; damaged)",
                             s->path, c, mask);
    int raw = (mask & cr->all) == cr->all; /* stored as plain tokens */
    if (addr > cr->file_bytes || size > cr->file_bytes - addr || size == 0 ||
        (raw && size != cr->chunk_bytes))
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens claims %llu bytes at byte %llu of "
                             "a %llu-byte file (damaged)",
                             s->path, c, (unsigned long long)size, (unsigned long long)addr,
                             (unsigned long long)cr->file_bytes);
    cr->checked[c / 8] |= (uint8_t)(1u << (c % 8));
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
    if (stat(path, &st) != 0) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
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
    hdf5_reason(why); /* before the next call clears the error stack */
    H5Pclose(fapl);
    if (s->file < 0) return strata_errorf(STRATA_EINPUT, "%s: cannot open as HDF5 (%s)", path, why);

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
    s->big_endian = H5Tget_order(t) == H5T_ORDER_BE;
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

    /* HDF5 decodes every attribute message of /tokens to find one by name. */
    const char *bad = check_object_attrs(s->dset, NULL);
    if (bad)
        return strata_errorf(STRATA_EINPUT, "%s: attributes of /tokens are damaged (%s)", path,
                             bad);
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
        return strata_errorf(STRATA_EINPUT,
                             "%s: vocab_size attribute is %" PRId64 ", expected 1 .. %d", path,
                             vocab, INT_MAX);
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
    /* optional: written for Hugging Face tokenizers only */
    s->info.bos_token = -1;
    s->info.tokenizer_hash[0] = 0;
    if (H5Aexists(s->dset, "tokenizer_hash") > 0) {
        char hash[80];
        STRATA_TRY(read_str_attr(s->dset, path, "tokenizer_hash", hash, sizeof hash));
        if (strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: tokenizer_hash attribute is '%s', expected 64 hex digits",
                                 path, shown(hash, sb, sizeof sb));
        memcpy(s->info.tokenizer_hash, hash, 65);
    }
    if (H5Aexists(s->dset, "bos_token") > 0) {
        int64_t bos = 0;
        STRATA_TRY(read_int_attr(s->dset, path, "bos_token", &bos));
        if (bos < -1 || bos >= vocab)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: bos_token attribute is %" PRId64
                                 ", expected -1 or 0 .. %" PRId64,
                                 path, bos, vocab - 1);
        s->info.bos_token = (int)bos;
    }

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
        if (dt >= 0)
            type_name(dt, tn, sizeof tn);
        else
            snprintf(tn, sizeof tn, "unreadable");
        if (dt >= 0) H5Tclose(dt);
        H5Dclose(d);
        if (!ok)
            return strata_errorf(STRATA_EINPUT, "%s: /doc_offsets is %s, expected uint64", path,
                                 tn);
        if (nd > n)
            return strata_errorf(
                STRATA_EINPUT, "%s: /doc_offsets lists %" PRId64 " documents in %" PRId64 " tokens",
                path, nd, n);
        s->info.n_docs = nd;
    }

    /* Reopen /tokens with a chunk cache sized to its chunks. The access
     * list counts only when the dataset is not open already (a second open
     * shares the first one's cache), hence the close first. */
    if (s->info.chunk_tokens > 0) {
        H5Dclose(s->dset);
        hid_t dapl = chunk_cache_dapl(n, s->info.chunk_tokens, (int)esize);
        s->dset = dapl < 0 ? -1 : H5Dopen2(s->file, "/tokens", dapl);
        hdf5_reason(why);
        if (dapl >= 0) H5Pclose(dapl);
        if (s->dset < 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot reopen /tokens (%s)", path, why);
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

const char *strata_shard_tokenizer_hash(const strata_shard *s) { return s->info.tokenizer_hash; }

int64_t strata_shard_n_samples(const strata_shard *s, int T)
{
    if (T <= 0 || s->info.n_tokens < 2) return 0;
    return (s->info.n_tokens - 1) / T;
}

/* Every id handed out is below vocab_size. */
static strata_err check_ids(const strata_shard *s, int64_t start, int64_t n, const uint32_t *out)
{
    uint32_t v = (uint32_t)s->info.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (out[i] >= v)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: token %" PRId64 " is %" PRIu32 ", not < vocab_size %" PRIu32,
                                 s->path, start + i, out[i], v);
    return strata_ok();
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
    if (s->dec.on) {
        STRATA_TRY(read_decoded(s, start, n, out));
        return check_ids(s, start, n, out);
    }
    if (s->rules.checked)
        for (int64_t c = start / s->info.chunk_tokens; c <= (start + n - 1) / s->info.chunk_tokens;
             c++)
            STRATA_TRY(check_chunk(s, c));
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
    hdf5_reason(why); /* before the closes clear the error stack */
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (r < 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: cannot read /tokens[%" PRId64 ":%" PRId64 "] (%s; file damaged?)",
                             s->path, start, start + n, why);
    if (!wide)
        for (int64_t i = 0; i < n; i++) out[i] = s->scratch[i];
    return check_ids(s, start, n, out);
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
    free(s->rules.checked);
    for (int i = 0; i < s->dec.n_cache; i++) free(s->dec.cache[i].data);
    free(s->dec.cache);
    free(s->dec.raw);
    free(s->dec.work[0]);
    free(s->dec.work[1]);
    free(s->scratch);
    free(s->path);
    free(s);
}
