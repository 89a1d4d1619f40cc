/*
 * npy.c - numpy .npy arrays: the header parser shared with dataset.c, a
 * writer (format 1.0, float32/float64) and a reader into doubles.
 *
 * Writes go to "<path>.tmp.<pid>", are fsync'ed, then renamed: a reader
 * never sees a half-written array, and a failure leaves nothing behind.
 */
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/npy_header.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The writer stores host floats as-is and the reader loads them as-is;
 * both are only right on a little-endian host. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/npy.c assumes a little-endian host"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
/* numpy >= 1.14 aligns the data of files it writes to 64 bytes. */
#define NPY_ALIGN 64
/* Headers longer than this are not arrays io/ could use. */
#define NPY_MAX_HEADER (1u << 20)

/* ------------------------------------------------------------- helpers */

static uint32_t le16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void fgmm_npy_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t at = 0;
    if (cap == 0) return;
    buf[0] = '\0';
    at += (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, ndim == 1 ? ",)" : ")");
}

/* ---------------------------------------------------------- header read */

/* A cursor over the header's Python dict literal, e.g.
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }        */
typedef struct {
    const char *p, *end;
} cursor;

static void cur_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int cur_eat(cursor *c, char ch)
{
    cur_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A '...' or "..." literal without escapes (numpy never writes any). */
static int cur_str(cursor *c, char *out, size_t cap)
{
    cur_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char q = *c->p++;
    const char *s = c->p;
    while (c->p < c->end && *c->p != q) c->p++;
    if (c->p >= c->end) return 0;
    size_t n = (size_t)(c->p - s);
    c->p++;
    if (n >= cap) return 0;
    memcpy(out, s, n);
    out[n] = '\0';
    return 1;
}

static int cur_word(cursor *c, const char *w)
{
    size_t n = strlen(w);
    cur_ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n)) return 0;
    c->p += n;
    return 1;
}

/* A tuple of non-negative integers: (), (5,), (3, 4), with optional 'L'. */
static int cur_shape(cursor *c, fgmm_npy_header *h)
{
    if (!cur_eat(c, '(')) return 0;
    h->ndim = 0;
    for (;;) {
        if (cur_eat(c, ')')) return 1;
        cur_ws(c);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (INT64_MAX - 9) / 10) return 0;
            v = v * 10 + (*c->p++ - '0');
        }
        if (c->p < c->end && *c->p == 'L') c->p++;
        if (h->ndim == FGMM_NPY_MAX_NDIM) return 0;
        h->shape[h->ndim++] = v;
        if (cur_eat(c, ',')) continue;
        if (cur_eat(c, ')')) return 1;
        return 0;
    }
}

/* Maps a descr to a kind. '<' and '=' are little-endian here; '|' (and any
 * byte order) is fine for one-byte types. */
static fgmm_npy_kind descr_kind(const char *d, size_t *elem)
{
    static const struct {
        const char *t;
        fgmm_npy_kind k;
        size_t size;
    } types[] = {
        {"f4", FGMM_NPY_K_F32, 4}, {"f2", FGMM_NPY_K_F16, 2}, {"u1", FGMM_NPY_K_U8, 1},
        {"i1", FGMM_NPY_K_I8, 1},  {"f8", FGMM_NPY_K_F64, 8}, {"i4", FGMM_NPY_K_I32, 4},
        {"i8", FGMM_NPY_K_I64, 8},
    };
    *elem = 0;
    if (strlen(d) != 3) return FGMM_NPY_K_UNKNOWN;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(d + 1, types[i].t)) continue;
        int little = d[0] == '<' || d[0] == '=' || d[0] == '|' ||
                     (types[i].size == 1 && d[0] == '>');
        if (!little) return FGMM_NPY_K_UNKNOWN;
        *elem = types[i].size;
        return types[i].k;
    }
    return FGMM_NPY_K_UNKNOWN;
}

static fgmm_status parse_dict(const char *text, size_t len, const char *path,
                              fgmm_npy_header *h, fgmm_error *err)
{
    cursor c = {text, text + len};
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!cur_eat(&c, '{')) goto bad;
    for (;;) {
        char key[32];
        if (cur_eat(&c, '}')) break;
        if (!cur_str(&c, key, sizeof key) || !cur_eat(&c, ':')) goto bad;
        if (!strcmp(key, "descr")) {
            /* Structured dtypes are lists: not a plain string, so refused. */
            if (!cur_str(&c, h->descr, sizeof h->descr)) {
                return fgmm_fail(err, FGMM_ERR_FORMAT,
                                 "%s: .npy dtype is not a simple type (structured arrays are "
                                 "not supported); expected e.g. '<f4'", path);
            }
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            if (cur_word(&c, "True")) h->fortran_order = 1;
            else if (cur_word(&c, "False")) h->fortran_order = 0;
            else goto bad;
            have_order = 1;
        } else if (!strcmp(key, "shape")) {
            if (!cur_shape(&c, h)) goto bad;
            have_shape = 1;
        } else {
            goto bad;
        }
        if (!cur_eat(&c, ',')) {
            if (cur_eat(&c, '}')) break;
            goto bad;
        }
    }
    if (!have_descr || !have_order || !have_shape) goto bad;
    h->kind = descr_kind(h->descr, &h->elem);
    return FGMM_OK;
bad:
    return fgmm_fail(err, FGMM_ERR_FORMAT,
                     "%s: malformed .npy header; expected a dict with 'descr', "
                     "'fortran_order' and 'shape'", path);
}

fgmm_status fgmm_npy_header_read(int fd, uint64_t file_bytes, const char *path,
                                 fgmm_npy_header *h, fgmm_error *err)
{
    unsigned char pre[12];
    memset(h, 0, sizeof *h);
    if (file_bytes == 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: file is empty; expected a .npy array", path);
    size_t got = file_bytes < sizeof pre ? (size_t)file_bytes : sizeof pre;
    fgmm_status st = fgmm_io_pread_all(fd, pre, got, 0, path, ".npy header", err);
    if (st) return st;
    if (got < 10 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN))
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: not a .npy file (expected the magic \\x93NUMPY at byte 0)", path);
    h->major = pre[6];
    h->minor = pre[7];
    uint64_t hlen, hstart;
    if (h->major == 1) {
        hlen = le16(pre + 8);
        hstart = 10;
    } else if (h->major == 2 || h->major == 3) {
        if (got < 12)
            return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: truncated .npy header (%llu bytes)",
                             path, (unsigned long long)file_bytes);
        hlen = le32(pre + 8);
        hstart = 12;
    } else {
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: .npy format version %d.%d is not supported; expected 1.0, 2.0 "
                         "or 3.0", path, h->major, h->minor);
    }
    if (hlen > NPY_MAX_HEADER || hstart + hlen > file_bytes)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: .npy header says it is %llu bytes long, but the file has %llu "
                         "bytes", path, (unsigned long long)hlen,
                         (unsigned long long)file_bytes);
    char *text = malloc((size_t)hlen + 1);
    if (!text) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    if ((st = fgmm_io_pread_all(fd, text, (size_t)hlen, hstart, path, ".npy header", err))) {
        free(text);
        return st;
    }
    text[hlen] = '\0';
    st = parse_dict(text, (size_t)hlen, path, h, err);
    free(text);
    h->data_offset = hstart + hlen;
    return st;
}

/* --------------------------------------------------------------- write */

/* Where the values come from: doubles or floats. */
typedef struct {
    const double *d;
    const float *f;
} npy_src;

static fgmm_status fail_errno(fgmm_error *err, const char *path, const char *what)
{
    return fgmm_fail(err, FGMM_ERR_IO, "%s: %s: %s", path, what, strerror(errno));
}

/* The version 1.0 header: magic, version, uint16 length, the dict, spaces
 * and '\n' so that the data starts at a multiple of NPY_ALIGN. */
static size_t build_header(char *buf, size_t cap, const char *descr, int ndim,
                           const int64_t *shape)
{
    char sh[128];
    fgmm_npy_shape_str(shape, ndim, sh, sizeof sh);
    char dict[256];
    int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                      descr, sh);
    size_t total = 10 + (size_t)dl + 1; /* + the final '\n' */
    total = (total + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    if (total > cap) return 0;
    size_t hlen = total - 10;
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)dl);
    memset(buf + 10 + dl, ' ', total - 10 - (size_t)dl - 1);
    buf[total - 1] = '\n';
    return total;
}

static fgmm_status npy_write(const char *path, fgmm_npy_type type, npy_src src, int ndim,
                             const int64_t *shape, fgmm_error *err);

fgmm_status fgmm_npy_write(const char *path, fgmm_npy_type type, const double *data, int ndim,
                           const int64_t *shape, fgmm_error *err)
{
    npy_src s = {data, NULL};
    return npy_write(path, type, s, ndim, shape, err);
}

fgmm_status fgmm_npy_write_f32(const char *path, const float *data, int ndim,
                               const int64_t *shape, fgmm_error *err)
{
    npy_src s = {NULL, data};
    return npy_write(path, FGMM_NPY_F32, s, ndim, shape, err);
}

/* -------------------------------------------------------------- stream */

static const char *type_descr(fgmm_npy_type t, size_t *elem)
{
    switch (t) {
    case FGMM_NPY_F32: *elem = 4; return "<f4";
    case FGMM_NPY_F64: *elem = 8; return "<f8";
    case FGMM_NPY_I32: *elem = 4; return "<i4";
    case FGMM_NPY_I64: *elem = 8; return "<i8";
    }
    return NULL;
}

struct fgmm_npy_stream {
    fgmm_io_tmpfile t;
    size_t elem;
    uint64_t count, written, off;
};

fgmm_status fgmm_npy_stream_open(const char *path, fgmm_npy_type type, int ndim,
                                 const int64_t *shape, fgmm_npy_stream **out, fgmm_error *err)
{
    *out = NULL;
    size_t elem = 0;
    const char *descr = type_descr(type, &elem);
    if (!descr)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: unknown .npy element type %d", path,
                         (int)type);
    if (ndim < 1 || ndim > 3)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: can write 1-D to 3-D arrays, not %d-D",
                         path, ndim);
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: negative shape %lld", path,
                             (long long)shape[i]);
        if (shape[i] && count > UINT64_MAX / 8 / (uint64_t)shape[i])
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: array too large", path);
        count *= (uint64_t)shape[i];
    }
    char hdr[512];
    size_t hl = build_header(hdr, sizeof hdr, descr, ndim, shape);
    if (!hl) return fgmm_fail(err, FGMM_ERR_INTERNAL, "%s: .npy header too long", path);
    fgmm_npy_stream *s = calloc(1, sizeof *s);
    if (!s) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    fgmm_status st = fgmm_io_tmp_create(&s->t, path, NULL, err);
    if (st) {
        free(s);
        return st;
    }
    if ((st = fgmm_io_pwrite_all(s->t.fd, hdr, hl, 0, s->t.tmp, err))) {
        fgmm_io_tmp_abort(&s->t);
        free(s);
        return st;
    }
    s->elem = elem;
    s->count = count;
    s->off = hl;
    *out = s;
    return FGMM_OK;
}

fgmm_status fgmm_npy_stream_append(fgmm_npy_stream *s, const void *values, int64_t count,
                                   fgmm_error *err)
{
    if (count < 0 || (uint64_t)count > s->count - s->written)
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "%s: %lld more values than its shape holds",
                         s->t.path, (long long)(s->written + (uint64_t)count - s->count));
    size_t bytes = (size_t)count * s->elem;
    fgmm_status st = fgmm_io_pwrite_all(s->t.fd, values, bytes, s->off, s->t.tmp, err);
    if (st) return st;
    s->off += bytes;
    s->written += (uint64_t)count;
    return FGMM_OK;
}

fgmm_status fgmm_npy_stream_commit(fgmm_npy_stream *s, fgmm_error *err)
{
    fgmm_status st;
    if (s->written != s->count) {
        st = fgmm_fail(err, FGMM_ERR_INTERNAL, "%s: %llu values written, its shape holds %llu",
                       s->t.path, (unsigned long long)s->written, (unsigned long long)s->count);
        fgmm_io_tmp_abort(&s->t);
    } else {
        st = fgmm_io_tmp_commit(&s->t, err);
    }
    free(s);
    return st;
}

void fgmm_npy_stream_abort(fgmm_npy_stream *s)
{
    if (!s) return;
    fgmm_io_tmp_abort(&s->t);
    free(s);
}

/* A whole array, converted to `type` in batches through a stream. */
static fgmm_status npy_write(const char *path, fgmm_npy_type type, npy_src src, int ndim,
                             const int64_t *shape, fgmm_error *err)
{
    if (type != FGMM_NPY_F32 && type != FGMM_NPY_F64)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: can write float32 or float64 from "
                         "floating-point values, not .npy element type %d", path, (int)type);
    fgmm_npy_stream *s;
    fgmm_status st = fgmm_npy_stream_open(path, type, ndim, shape, &s, err);
    if (st) return st;
    enum { BATCH = 8192 };
    double buf[BATCH]; /* 64 KiB; holds BATCH floats or doubles */
    for (uint64_t at = 0; at < s->count && !st; at += BATCH) {
        size_t n = s->count - at < BATCH ? (size_t)(s->count - at) : BATCH;
        if (type == FGMM_NPY_F64) {
            for (size_t i = 0; i < n; i++) buf[i] = src.d ? src.d[at + i] : (double)src.f[at + i];
        } else {
            float *f = (float *)buf;
            for (size_t i = 0; i < n; i++) f[i] = src.d ? (float)src.d[at + i] : src.f[at + i];
        }
        st = fgmm_npy_stream_append(s, buf, (int64_t)n, err);
    }
    if (st) {
        fgmm_npy_stream_abort(s);
        return st;
    }
    return fgmm_npy_stream_commit(s, err);
}

/* ---------------------------------------------------------------- read */

static void to_double(fgmm_npy_kind k, const void *src, size_t n, double *dst)
{
    switch (k) {
    case FGMM_NPY_K_F32:
        for (size_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, (const char *)src + 4 * i, 4);
            dst[i] = v;
        }
        break;
    case FGMM_NPY_K_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, (const char *)src + 2 * i, 2);
            dst[i] = fgmm_half_to_float(v);
        }
        break;
    case FGMM_NPY_K_U8:
        for (size_t i = 0; i < n; i++) dst[i] = ((const uint8_t *)src)[i];
        break;
    case FGMM_NPY_K_I8:
        for (size_t i = 0; i < n; i++) dst[i] = ((const int8_t *)src)[i];
        break;
    case FGMM_NPY_K_F64: memcpy(dst, src, n * 8); break;
    case FGMM_NPY_K_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)src + 4 * i, 4);
            dst[i] = v;
        }
        break;
    case FGMM_NPY_K_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, (const char *)src + 8 * i, 8);
            dst[i] = (double)v;
        }
        break;
    case FGMM_NPY_K_UNKNOWN: break;
    }
}

/* Checks what fgmm_npy_read accepts and returns the element count. */
static fgmm_status check_readable(const fgmm_npy_header *h, uint64_t file_bytes,
                                  const char *path, int max_ndim, uint64_t *count,
                                  fgmm_error *err)
{
    char sh[256];
    fgmm_npy_shape_str(h->shape, h->ndim, sh, sizeof sh);
    if (h->kind == FGMM_NPY_K_UNKNOWN)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: .npy dtype '%s' is not supported; expected one of '<f4', '<f8', "
                         "'<f2', '|u1', '|i1', '<i4', '<i8'", path, h->descr);
    if (h->ndim < 1 || h->ndim > max_ndim)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: array has %d dimensions (shape %s); "
                         "expected 1 to %d", path, h->ndim, sh, max_ndim);
    if (h->fortran_order && h->ndim >= 2)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: array is in Fortran order; expected C order (fortran_order False)",
                         path);
    uint64_t n = 1;
    for (int i = 0; i < h->ndim; i++) {
        if (h->shape[i] && n > UINT64_MAX / 8 / (uint64_t)h->shape[i])
            return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shape %s is too large", path, sh);
        n *= (uint64_t)h->shape[i];
    }
    /* n * elem <= UINT64_MAX - 7 by the loop's bound; the offset may still
     * carry it past 2^64, which no file has. */
    if (n * h->elem > UINT64_MAX - h->data_offset)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: shape %s is too large", path, sh);
    uint64_t want = h->data_offset + n * h->elem;
    if (want != file_bytes)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: header says shape %s of '%s' = %llu bytes with the header, file "
                         "has %llu bytes", path, sh, h->descr, (unsigned long long)want,
                         (unsigned long long)file_bytes);
    *count = n;
    return FGMM_OK;
}

static fgmm_status npy_read(const char *path, int max_ndim, double **data, int *ndim,
                            int64_t *shape, fgmm_error *err)
{
    *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno(err, path, "cannot open");
    struct stat sb;
    fgmm_npy_header h = {0};
    uint64_t count = 0;
    double *out = NULL;
    void *raw = NULL;
    fgmm_status st = FGMM_OK;
    if (fstat(fd, &sb)) st = fail_errno(err, path, "cannot stat");
    else if (!S_ISREG(sb.st_mode))
        st = fgmm_fail(err, FGMM_ERR_IO, "%s: not a regular file", path);
    if (!st) st = fgmm_npy_header_read(fd, (uint64_t)sb.st_size, path, &h, err);
    if (!st) st = check_readable(&h, (uint64_t)sb.st_size, path, max_ndim, &count, err);
    if (!st && count > SIZE_MAX / sizeof(double))
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: array too large", path);
    if (!st && (!(out = malloc(count ? count * sizeof(double) : 1)) ||
                !(raw = malloc(1 << 20))))
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    /* Read through a 1 MiB window rather than the whole array at once, so
     * peak memory is the doubles plus a little. */
    size_t per = (1u << 20) / (h.elem ? h.elem : 1);
    for (uint64_t at = 0; !st && at < count; at += per) {
        size_t n = count - at < per ? (size_t)(count - at) : per;
        st = fgmm_io_pread_all(fd, raw, n * h.elem, h.data_offset + at * h.elem, path,
                               "array data", err);
        if (!st) to_double(h.kind, raw, n, out + at);
    }
    close(fd);
    free(raw);
    if (st) {
        free(out);
        return st;
    }
    *data = out;
    *ndim = h.ndim;
    for (int i = 0; i < max_ndim; i++) shape[i] = i < h.ndim ? h.shape[i] : 1;
    return FGMM_OK;
}

fgmm_status fgmm_npy_read(const char *path, double **data, int *ndim, int64_t shape[2],
                          fgmm_error *err)
{
    return npy_read(path, 2, data, ndim, shape, err);
}

fgmm_status fgmm_npy_read3(const char *path, double **data, int *ndim, int64_t shape[3],
                           fgmm_error *err)
{
    return npy_read(path, 3, data, ndim, shape, err);
}
