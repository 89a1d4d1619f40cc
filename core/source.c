/*
 * source.c - the one interface every data path goes through (files, memory,
 * later shards), plus the in-memory implementation.
 */
#include "core/fgmm.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

struct fgmm_source {
    const fgmm_source_ops *ops;
    void *impl;
    int64_t n;
    int d;
    fgmm_dtype dtype;
    char *name;
    int64_t pass_first, pass_rows; /* the rows a pass yields */
};

fgmm_status fgmm_source_create(const fgmm_source_ops *ops, void *impl, int64_t n, int d,
                               fgmm_dtype dtype, const char *name, fgmm_source **out,
                               fgmm_error *err)
{
    *out = NULL;
    fgmm_source *s = calloc(1, sizeof *s);
    char *nm = strdup(name ? name : "(unnamed)");
    if (!s || !nm) {
        free(s);
        free(nm);
        ops->close(impl);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory creating source", name);
    }
    s->ops = ops;
    s->impl = impl;
    s->n = n;
    s->d = d;
    s->dtype = dtype;
    s->name = nm;
    s->pass_first = 0;
    s->pass_rows = n;
    *out = s;
    return FGMM_OK;
}

void fgmm_source_close(fgmm_source *s)
{
    if (!s) return;
    s->ops->close(s->impl);
    free(s->name);
    free(s);
}

const fgmm_source_ops *fgmm_source_ops_of(const fgmm_source *s) { return s->ops; }
void *fgmm_source_impl(const fgmm_source *s) { return s->impl; }

int64_t fgmm_source_rows(const fgmm_source *s) { return s->n; }
int fgmm_source_dim(const fgmm_source *s) { return s->d; }
fgmm_dtype fgmm_source_dtype(const fgmm_source *s) { return s->dtype; }
const char *fgmm_source_name(const fgmm_source *s) { return s->name; }

void fgmm_source_pass_range(const fgmm_source *s, int64_t *first, int64_t *rows)
{
    *first = s->pass_first;
    *rows = s->pass_rows;
}

fgmm_status fgmm_source_rewind(fgmm_source *s, fgmm_error *err)
{
    return s->ops->rewind(s->impl, err);
}

fgmm_status fgmm_source_next(fgmm_source *s, fgmm_chunk *chunk, fgmm_error *err)
{
    memset(chunk, 0, sizeof *chunk);
    return s->ops->next(s->impl, chunk, err);
}

fgmm_status fgmm_source_read_rows(fgmm_source *s, const int64_t *idx, int64_t n, float *out,
                                  fgmm_error *err)
{
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= s->n)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: row %lld out of range [0, %lld)",
                             s->name, (long long)idx[i], (long long)s->n);
    return s->ops->read_rows(s->impl, idx, n, out, err);
}

/* ---------------------------------------------------------------- memory */

/* Chunks of this many rows: large enough that per-chunk costs vanish, small
 * enough that the finiteness scan stays in cache ahead of the E-step. */
#define MEMORY_CHUNK_ROWS 65536

typedef struct {
    const char *data;
    fgmm_dtype dtype;
    int64_t n;
    int d;
    int64_t pos, end; /* the pass's next row and its end (n, or seek_chunks') */
    int64_t chunk_rows;
    unsigned char *checked; /* per chunk: scanned for NaN/Inf already */
    char name[256];
} memory_source;

static fgmm_status mem_rewind(void *impl, fgmm_error *err)
{
    (void)err;
    memory_source *m = impl;
    m->pos = 0;
    m->end = m->n;
    return FGMM_OK;
}

static fgmm_status mem_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    memory_source *m = impl;
    size_t row_bytes = (size_t)m->d * fgmm_dtype_size(m->dtype);
    int64_t left = m->end - m->pos;
    int64_t take = left < m->chunk_rows ? left : m->chunk_rows;
    c->rows = m->data + (size_t)m->pos * row_bytes;
    c->row_stride = row_bytes;
    c->first_row = m->pos;
    c->n_rows = take;
    c->dtype = m->dtype;
    if (take > 0) {
        int64_t ci = m->pos / m->chunk_rows;
        if (!m->checked[ci]) {
            fgmm_status st = fgmm_chunk_check_finite(c, m->d, m->name, err);
            if (st) return st;
            m->checked[ci] = 1;
        }
    }
    m->pos += take;
    return FGMM_OK;
}

static fgmm_status mem_read_rows(void *impl, const int64_t *idx, int64_t n, float *out,
                                 fgmm_error *err)
{
    (void)err;
    memory_source *m = impl;
    size_t row_bytes = (size_t)m->d * fgmm_dtype_size(m->dtype);
    for (int64_t i = 0; i < n; i++)
        fgmm_convert_row(m->dtype, m->data + (size_t)idx[i] * row_bytes, (size_t)m->d,
                         out + (size_t)i * m->d);
    return FGMM_OK;
}

static void mem_close(void *impl)
{
    memory_source *m = impl;
    if (m) free(m->checked);
    free(m);
}

static fgmm_status mem_chunk_layout(void *impl, int64_t *n_chunks, int64_t *first_rows,
                                    fgmm_error *err)
{
    (void)err;
    memory_source *m = impl;
    int64_t c = (m->n + m->chunk_rows - 1) / m->chunk_rows;
    *n_chunks = c;
    if (first_rows)
        for (int64_t i = 0; i <= c; i++)
            first_rows[i] = i < c ? i * m->chunk_rows : m->n;
    return FGMM_OK;
}

static fgmm_status mem_seek_chunks(void *impl, int64_t c0, int64_t c1, fgmm_error *err)
{
    memory_source *m = impl;
    if (c0 < 0 || c1 <= c0 || (c1 - 1) * m->chunk_rows >= m->n)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: no chunks [%lld, %lld)", m->name,
                         (long long)c0, (long long)c1);
    m->pos = c0 * m->chunk_rows;
    m->end = c1 * m->chunk_rows < m->n ? c1 * m->chunk_rows : m->n;
    return FGMM_OK;
}

static const fgmm_source_ops memory_ops = {mem_rewind,    mem_next,        mem_read_rows,
                                           mem_close,     mem_chunk_layout, mem_seek_chunks};

fgmm_status fgmm_source_memory_chunked(const void *data, fgmm_dtype dtype, int64_t n, int d,
                                       int64_t chunk_rows, const char *name, fgmm_source **out,
                                       fgmm_error *err)
{
    *out = NULL;
    if (n <= 0 || d <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: need n > 0 and d > 0 (got n=%lld, d=%d)",
                         name, (long long)n, d);
    if (chunk_rows <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: chunks need > 0 rows (got %lld)", name,
                         (long long)chunk_rows);
    memory_source *m = calloc(1, sizeof *m);
    if (!m) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", name);
    m->checked = calloc((size_t)((n + chunk_rows - 1) / chunk_rows), 1);
    if (!m->checked) {
        free(m);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", name);
    }
    m->data = data;
    m->dtype = dtype;
    m->n = n;
    m->end = n;
    m->d = d;
    m->chunk_rows = chunk_rows;
    snprintf(m->name, sizeof m->name, "%s", name ? name : "(memory)");
    return fgmm_source_create(&memory_ops, m, n, d, dtype, name, out, err);
}

fgmm_status fgmm_source_memory(const void *data, fgmm_dtype dtype, int64_t n, int d,
                               const char *name, fgmm_source **out, fgmm_error *err)
{
    return fgmm_source_memory_chunked(data, dtype, n, d, MEMORY_CHUNK_ROWS, name, out, err);
}

/* ------------------------------------------------------------- partition */

typedef struct {
    fgmm_source *parent;
    int64_t c0, c1; /* this view's chunks [c0, c1) of the parent's pass */
    int64_t next_c; /* chunk index next() reads next */
} partition_source;

static fgmm_status part_rewind(void *impl, fgmm_error *err)
{
    partition_source *p = impl;
    fgmm_status st = fgmm_source_rewind(p->parent, err);
    if (st) return st;
    p->next_c = 0;
    if (p->parent->ops->seek_chunks) {
        if ((st = p->parent->ops->seek_chunks(p->parent->impl, p->c0, p->c1, err))) return st;
        p->next_c = p->c0;
    }
    return FGMM_OK;
}

static fgmm_status part_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    partition_source *p = impl;
    for (;;) {
        if (p->next_c >= p->c1) {
            memset(c, 0, sizeof *c);
            return FGMM_OK;
        }
        fgmm_status st = fgmm_source_next(p->parent, c, err);
        if (st) return st;
        if (c->n_rows == 0)
            return fgmm_fail(err, FGMM_ERR_DATA, "%s: ended at chunk %lld; its layout said %lld",
                             p->parent->name, (long long)p->next_c, (long long)p->c1);
        if (p->next_c++ >= p->c0) return FGMM_OK;
    }
}

static fgmm_status part_read_rows(void *impl, const int64_t *idx, int64_t n, float *out,
                                  fgmm_error *err)
{
    return fgmm_source_read_rows(((partition_source *)impl)->parent, idx, n, out, err);
}

static void part_close(void *impl) { free(impl); }

static const fgmm_source_ops partition_ops = {part_rewind, part_next, part_read_rows,
                                              part_close,  NULL,      NULL};

/* The parent's chunk boundaries: from its layout operation, else from a
 * counting pass. *first_rows is malloc'ed, n_chunks + 1 entries. */
static fgmm_status chunk_layout(fgmm_source *src, int64_t *n_chunks, int64_t **first_rows,
                                fgmm_error *err)
{
    fgmm_status st;
    *first_rows = NULL;
    if (src->ops->chunk_layout) {
        if ((st = src->ops->chunk_layout(src->impl, n_chunks, NULL, err))) return st;
        if (!(*first_rows = malloc(sizeof(int64_t) * (size_t)(*n_chunks + 1))))
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        if ((st = src->ops->chunk_layout(src->impl, n_chunks, *first_rows, err))) {
            free(*first_rows);
            *first_rows = NULL;
        }
        return st;
    }
    int64_t n = 0, cap = 64;
    int64_t *f = malloc(sizeof(int64_t) * (size_t)cap);
    if (!f) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if ((st = fgmm_source_rewind(src, err))) goto fail;
    for (;;) {
        fgmm_chunk c;
        if ((st = fgmm_source_next(src, &c, err))) goto fail;
        if (n + 1 >= cap) {
            int64_t *g = realloc(f, sizeof(int64_t) * (size_t)(cap *= 2));
            if (!g) {
                st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
                goto fail;
            }
            f = g;
        }
        if (c.n_rows == 0) {
            f[n] = src->n;
            break;
        }
        f[n++] = c.first_row;
    }
    *n_chunks = n;
    *first_rows = f;
    return FGMM_OK;
fail:
    free(f);
    return st;
}

fgmm_status fgmm_source_partition(fgmm_source *src, int rank, int size, fgmm_source **view,
                                  fgmm_error *err)
{
    *view = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "rank %d of %d ranks", rank, size);
    int64_t C, *f;
    fgmm_status st = chunk_layout(src, &C, &f, err);
    if (st) return st;
    if (C < size) {
        free(f);
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "%s has %lld chunk%s of rows, fewer than the %d ranks: every rank needs "
                         "at least one (use fewer ranks or smaller chunks)",
                         src->name, (long long)C, C == 1 ? "" : "s", size);
    }
    /* Boundary b_r: the first chunk starting at or after r*N/R rows (so
     * ranks hold about N/R rows each), kept at least one chunk past b_{r-1}
     * and leaving a chunk for each later rank. Every rank computes all
     * boundaries the same way, so they tile the chunks exactly. */
    int64_t b_prev = 0, c0 = 0, c1 = C;
    for (int r = 1; r <= size; r++) {
        int64_t b = C;
        if (r < size) {
            int64_t target = (int64_t)((double)src->n * r / size);
            b = 0;
            while (b < C && f[b] < target) b++;
            if (b < b_prev + 1) b = b_prev + 1;
            if (b > C - (size - r)) b = C - (size - r);
        }
        if (r == rank + 1) {
            c0 = b_prev;
            c1 = b;
        }
        b_prev = b;
    }
    partition_source *p = calloc(1, sizeof *p);
    if (!p) {
        free(f);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    p->parent = src;
    p->c0 = c0;
    p->c1 = c1;
    int64_t first = f[c0], rows = f[c1] - f[c0];
    free(f);
    if ((st = fgmm_source_create(&partition_ops, p, src->n, src->d, src->dtype, src->name, view,
                                 err)))
        return st;
    (*view)->pass_first = first;
    (*view)->pass_rows = rows;
    return FGMM_OK;
}

/* ----------------------------------------------------------- fingerprint */

fgmm_status fgmm_source_fingerprint(fgmm_source *s, fgmm_fingerprint *out,
                                    fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    out->rows = s->n;
    out->dim = s->d;
    out->dtype = (int32_t)s->dtype;
    float *x = malloc(sizeof(float) * 2 * (size_t)s->d);
    if (!x) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    int64_t idx[2] = {0, s->n - 1};
    fgmm_status st = fgmm_source_read_rows(s, idx, 2, x, err);
    if (!st) {
        uint64_t h = 1469598103934665603ull; /* FNV-1a */
        const unsigned char *b = (const unsigned char *)x;
        for (size_t i = 0; i < sizeof(float) * 2 * (size_t)s->d; i++) {
            h ^= b[i];
            h *= 1099511628211ull;
        }
        out->hash = h;
    }
    free(x);
    return st;
}
