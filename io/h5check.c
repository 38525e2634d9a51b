/* h5check.c — looking at an HDF5 object header's bytes before HDF5 does;
 * see h5check.h.
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
#include "h5check.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static herr_t innermost_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    char *buf = data;
    if (n == 0 && e->desc) snprintf(buf, 256, "%s", e->desc);
    return 0;
}

const char *strata_hdf5_reason(char buf[256])
{
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, buf);
    H5Eclear2(H5E_DEFAULT);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    return buf;
}

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
const char *strata_hdf5_attrs_problem(hid_t obj, const char *name)
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

int strata_hdf5_vlen_attr_ok(hid_t obj, const char *name, char *why, size_t why_len)
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
    if (!problem) problem = strata_hdf5_attrs_problem(obj, name);
    if (problem) snprintf(why, why_len, "%s", problem);
    return problem == NULL;
}

int strata_hdf5_attrs_ok(hid_t obj, char *why, size_t why_len)
{
    const char *problem = strata_hdf5_attrs_problem(obj, NULL);
    if (problem) snprintf(why, why_len, "%s", problem);
    return problem == NULL;
}
