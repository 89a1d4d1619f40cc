/*
 * dataset.c - dataset files (.fvecs .bvecs .fbin .u8bin .i8bin .npy) as
 * memory-mapped fgmm_sources.
 *
 * Probing reads only the header and checks it against the file size, so a
 * truncated download fails before any work. Rows are checked lazily, chunk
 * by chunk, the first time a chunk is produced (per-row dimension headers
 * of texmex files, NaN/Inf): a pass over a 100 GB file then costs one scan,
 * and later EM passes skip it.
 */
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/npy_header.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Rows per chunk: big enough that per-chunk costs vanish, small enough that
 * the validation scan is still in cache when the E-step reads the rows. */
#define CHUNK_ROWS 65536

#define SUPPORTED ".fvecs, .bvecs, .fbin, .u8bin, .i8bin or .npy"

/* ------------------------------------------------------------- helpers */

static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t rd_i32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* a * b, or 0 with *ovf set when it does not fit in 64 bits. */
static uint64_t mul_u64(uint64_t a, uint64_t b, int *ovf)
{
    if (a && b > UINT64_MAX / a) {
        *ovf = 1;
        return 0;
    }
    return a * b;
}

/* The extension after the last '.' of the file name, or "" when none. */
static const char *extension(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    return dot && dot != base ? dot + 1 : "";
}

/* ---------------------------------------------------------------- probe */

/* .fvecs / .bvecs: every row is int32 d then d values; d comes from row 0
 * and the size must be a whole number of rows. */
static fgmm_status probe_texmex(int fd, const char *path, fgmm_dataset_info *in, fgmm_error *err)
{
    const char *what = in->dtype == FGMM_F32 ? "float32" : "uint8";
    size_t elem = fgmm_dtype_size(in->dtype);
    unsigned char h[4];
    if (in->file_bytes < 4)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: file has %llu bytes, too short for a row (int32 dimension, then "
                         "that many %s values)", path, (unsigned long long)in->file_bytes, what);
    fgmm_status st = fgmm_io_pread_all(fd, h, 4, 0, path, "row 0's dimension", err);
    if (st) return st;
    int32_t d = rd_i32(h);
    if (d <= 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: row 0 has dimension %d; expected a positive dimension", path, d);
    uint64_t row = 4 + (uint64_t)d * elem;
    if (in->file_bytes % row)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: file has %llu bytes, not a multiple of the row size %llu bytes "
                         "(4-byte dimension + %d %s values, dimension from row 0); truncated?",
                         path, (unsigned long long)in->file_bytes, (unsigned long long)row, d,
                         what);
    in->rows = (int64_t)(in->file_bytes / row);
    in->dim = d;
    in->data_offset = 4;
    in->row_stride = row;
    return FGMM_OK;
}

/* Shared by .fbin-like and .npy: n and d sane, and the size exactly right. */
static fgmm_status check_extent(const char *path, fgmm_dataset_info *in, uint64_t n, uint64_t d,
                                uint64_t header, const char *found, fgmm_error *err)
{
    if (n == 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s 0 rows; expected at least one", path,
                         found);
    if (d == 0)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s 0 dims; expected at least one", path,
                         found);
    if (d > INT_MAX || n > INT64_MAX)
        return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: %s %llu rows x %llu dims; too large", path,
                         found, (unsigned long long)n, (unsigned long long)d);
    int ovf = 0;
    uint64_t elem = fgmm_dtype_size(in->dtype);
    uint64_t row = mul_u64(d, elem, &ovf);
    uint64_t want = mul_u64(n, row, &ovf);
    if (!ovf && want > UINT64_MAX - header) ovf = 1;
    want += header;
    if (ovf || want != in->file_bytes) {
        char need[32];
        if (ovf) snprintf(need, sizeof need, "more than 2^64");
        else snprintf(need, sizeof need, "%llu", (unsigned long long)want);
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: %s %llu rows x %llu dims = %s bytes, file has %llu bytes", path,
                         found, (unsigned long long)n, (unsigned long long)d, need,
                         (unsigned long long)in->file_bytes);
    }
    in->rows = (int64_t)n;
    in->dim = (int)d;
    in->data_offset = header;
    in->row_stride = row;
    return FGMM_OK;
}

/* .fbin / .u8bin / .i8bin: uint32 n, uint32 d, then n*d values. */
static fgmm_status probe_bin(int fd, const char *path, fgmm_dataset_info *in, fgmm_error *err)
{
    unsigned char h[8];
    if (in->file_bytes < 8)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: file has %llu bytes, too short for the 8-byte header (uint32 n, "
                         "uint32 d)", path, (unsigned long long)in->file_bytes);
    fgmm_status st = fgmm_io_pread_all(fd, h, 8, 0, path, "header", err);
    if (st) return st;
    return check_extent(path, in, rd_u32(h), rd_u32(h + 4), 8, "header says", err);
}

static fgmm_status probe_npy(int fd, const char *path, fgmm_dataset_info *in, fgmm_error *err)
{
    fgmm_npy_header h;
    fgmm_status st = fgmm_npy_header_read(fd, in->file_bytes, path, &h, err);
    if (st) return st;
    switch (h.kind) {
    case FGMM_NPY_K_F32: in->dtype = FGMM_F32; break;
    case FGMM_NPY_K_F16: in->dtype = FGMM_F16; break;
    case FGMM_NPY_K_U8: in->dtype = FGMM_U8; break;
    case FGMM_NPY_K_I8: in->dtype = FGMM_I8; break;
    default:
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: dtype '%s' is not supported; expected '<f4' (float32), '<f2' "
                         "(float16), '|u1' (uint8) or '|i1' (int8)", path, h.descr);
    }
    char sh[128];
    fgmm_npy_shape_str(h.shape, h.ndim, sh, sizeof sh);
    if (h.ndim != 2)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: array has %d dimension%s (shape %s); expected 2 (rows, dims)",
                         path, h.ndim, h.ndim == 1 ? "" : "s", sh);
    if (h.fortran_order)
        return fgmm_fail(err, FGMM_ERR_FORMAT,
                         "%s: array is in Fortran order; expected C order (fortran_order "
                         "False; np.ascontiguousarray fixes it)", path);
    char found[192];
    snprintf(found, sizeof found, "shape %s of '%s' is", sh, h.descr);
    return check_extent(path, in, (uint64_t)h.shape[0], (uint64_t)h.shape[1], h.data_offset,
                        found, err);
}

/* Probes an already open fd; shared by fgmm_dataset_probe and _open. */
static fgmm_status probe_fd(int fd, const char *path, fgmm_dataset_info *in, fgmm_error *err)
{
    static const struct {
        const char *ext;
        fgmm_dtype dtype;
        int kind; /* 0 texmex, 1 bin, 2 npy */
    } formats[] = {
        {"fvecs", FGMM_F32, 0}, {"bvecs", FGMM_U8, 0}, {"fbin", FGMM_F32, 1},
        {"u8bin", FGMM_U8, 1},  {"i8bin", FGMM_I8, 1}, {"npy", FGMM_F32, 2},
    };
    const char *ext = extension(path);
    struct stat sb;
    memset(in, 0, sizeof *in);
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        if (strcasecmp(ext, formats[i].ext)) continue;
        snprintf(in->format, sizeof in->format, "%s", formats[i].ext);
        in->dtype = formats[i].dtype;
        if (fstat(fd, &sb))
            return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        if (S_ISDIR(sb.st_mode))
            return fgmm_fail(err, FGMM_ERR_IO, "%s: is a directory; expected a dataset file",
                             path);
        if (!S_ISREG(sb.st_mode))
            return fgmm_fail(err, FGMM_ERR_IO, "%s: not a regular file", path);
        in->file_bytes = (uint64_t)sb.st_size;
        if (in->file_bytes == 0)
            return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: file is empty; expected a .%s dataset",
                             path, formats[i].ext);
        switch (formats[i].kind) {
        case 0: return probe_texmex(fd, path, in, err);
        case 1: return probe_bin(fd, path, in, err);
        default: return probe_npy(fd, path, in, err);
        }
    }
    /* open_checked() let only known extensions through. */
    return fgmm_fail(err, FGMM_ERR_INTERNAL, "%s: extension '%s' passed the check", path, ext);
}

/* Checks the extension before opening: a typo in it is a usage error
 * whether or not the file exists. */
static fgmm_status open_checked(const char *path, int *fd, fgmm_error *err)
{
    static const char *const exts[] = {"fvecs", "bvecs", "fbin", "u8bin", "i8bin", "npy"};
    const char *ext = extension(path);
    size_t i = 0;
    while (i < sizeof exts / sizeof exts[0] && strcasecmp(ext, exts[i])) i++;
    if (i == sizeof exts / sizeof exts[0] && !*ext)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "%s: no file extension, so the dataset format is unknown; expected %s",
                         path, SUPPORTED);
    if (i == sizeof exts / sizeof exts[0])
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: unknown dataset extension '.%s'; expected %s",
                         path, ext, SUPPORTED);
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return FGMM_OK;
}

fgmm_status fgmm_dataset_probe(const char *path, fgmm_dataset_info *info, fgmm_error *err)
{
    int fd;
    memset(info, 0, sizeof *info);
    fgmm_status st = open_checked(path, &fd, err);
    if (st) return st;
    st = probe_fd(fd, path, info, err);
    close(fd);
    return st;
}

/* --------------------------------------------------------------- source */

typedef struct {
    char *path;
    const unsigned char *map;
    size_t map_len;
    fgmm_dataset_info info;
    int texmex;             /* rows carry an int32 dimension header */
    int64_t pos;            /* next row of the current pass */
    unsigned char *checked; /* per chunk: validated already */
} file_source;

static const unsigned char *row_ptr(const file_source *f, int64_t row)
{
    return f->map + f->info.data_offset + (uint64_t)row * f->info.row_stride;
}

/* Texmex rows repeat their dimension in front of every row; a row that
 * disagrees means the file is not what row 0 says it is. */
static fgmm_status check_dims(const file_source *f, int64_t first, int64_t n, fgmm_error *err)
{
    for (int64_t i = first; i < first + n; i++) {
        int32_t d = rd_i32(row_ptr(f, i) - 4);
        if (d != f->info.dim)
            return fgmm_fail(err, FGMM_ERR_DATA,
                             "%s: row %lld has dimension %d, expected %d (from row 0)", f->path,
                             (long long)i, d, f->info.dim);
    }
    return FGMM_OK;
}

static fgmm_status fs_rewind(void *impl, fgmm_error *err)
{
    (void)err;
    ((file_source *)impl)->pos = 0;
    return FGMM_OK;
}

static fgmm_status fs_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    file_source *f = impl;
    int64_t left = f->info.rows - f->pos;
    int64_t take = left < CHUNK_ROWS ? left : CHUNK_ROWS;
    c->dtype = f->info.dtype;
    c->row_stride = (size_t)f->info.row_stride;
    c->first_row = f->pos;
    c->n_rows = take;
    c->rows = take > 0 ? row_ptr(f, f->pos) : NULL;
    if (take <= 0) {
        c->n_rows = 0;
        return FGMM_OK;
    }
    /* Chunks always start at multiples of CHUNK_ROWS (passes start at 0). */
    int64_t ci = f->pos / CHUNK_ROWS;
    if (!f->checked[ci]) {
        fgmm_status st;
        if (f->texmex && (st = check_dims(f, f->pos, take, err))) return st;
        if ((st = fgmm_chunk_check_finite(c, f->info.dim, f->path, err))) return st;
        f->checked[ci] = 1;
    }
    f->pos += take;
    return FGMM_OK;
}

/* Random rows may come before any pass (initialisation samples them), so
 * each is checked here as well: its dimension header and its values. */
static fgmm_status fs_read_rows(void *impl, const int64_t *idx, int64_t n, float *out,
                                fgmm_error *err)
{
    file_source *f = impl;
    int d = f->info.dim;
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= f->info.rows)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: row %lld out of range [0, %lld)",
                             f->path, (long long)idx[i], (long long)f->info.rows);
        fgmm_status st;
        if (f->texmex && (st = check_dims(f, idx[i], 1, err))) return st;
        float *o = out + (size_t)i * (size_t)d;
        fgmm_convert_row(f->info.dtype, row_ptr(f, idx[i]), (size_t)d, o);
        if (f->info.dtype == FGMM_F32 || f->info.dtype == FGMM_F16)
            for (int j = 0; j < d; j++)
                if (!isfinite(o[j]))
                    return fgmm_fail(err, FGMM_ERR_DATA,
                                     "%s: row %lld column %d is %s; data must be finite",
                                     f->path, (long long)idx[i], j, isnan(o[j]) ? "NaN" : "inf");
    }
    return FGMM_OK;
}

static void fs_close(void *impl)
{
    file_source *f = impl;
    if (!f) return;
    if (f->map) munmap((void *)f->map, f->map_len);
    free(f->checked);
    free(f->path);
    free(f);
}

static const fgmm_source_ops file_ops = {
    .rewind = fs_rewind, .next = fs_next, .read_rows = fs_read_rows, .close = fs_close};

fgmm_status fgmm_dataset_open(const char *path, fgmm_source **out, fgmm_error *err)
{
    int fd;
    *out = NULL;
    fgmm_status st = open_checked(path, &fd, err);
    if (st) return st;
    file_source *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    st = probe_fd(fd, path, &f->info, err);
    if (!st && f->info.file_bytes > SIZE_MAX)
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: too large to map", path);
    if (!st) {
        f->path = strdup(path);
        uint64_t chunks = ((uint64_t)f->info.rows + CHUNK_ROWS - 1) / CHUNK_ROWS;
        f->checked = calloc((size_t)chunks, 1);
        if (!f->path || !f->checked)
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    if (!st) {
        f->map_len = (size_t)f->info.file_bytes;
        void *p = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            st = fgmm_fail(err, FGMM_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        else f->map = p;
    }
    /* The mapping keeps the file's pages; the descriptor is not needed. */
    close(fd);
    if (st) {
        fs_close(f);
        return st;
    }
    f->texmex = strstr(f->info.format, "vecs") != NULL;
    return fgmm_source_create(&file_ops, f, f->info.rows, f->info.dim, f->info.dtype, path, out,
                              err);
}
