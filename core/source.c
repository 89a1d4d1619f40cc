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
    int64_t pos;
    unsigned char *checked; /* per chunk: scanned for NaN/Inf already */
    char name[256];
} memory_source;

static fgmm_status mem_rewind(void *impl, fgmm_error *err)
{
    (void)err;
    ((memory_source *)impl)->pos = 0;
    return FGMM_OK;
}

static fgmm_status mem_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    memory_source *m = impl;
    size_t row_bytes = (size_t)m->d * fgmm_dtype_size(m->dtype);
    int64_t left = m->n - m->pos;
    int64_t take = left < MEMORY_CHUNK_ROWS ? left : MEMORY_CHUNK_ROWS;
    c->rows = m->data + (size_t)m->pos * row_bytes;
    c->row_stride = row_bytes;
    c->first_row = m->pos;
    c->n_rows = take;
    c->dtype = m->dtype;
    if (take > 0) {
        int64_t ci = m->pos / MEMORY_CHUNK_ROWS;
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

static const fgmm_source_ops memory_ops = {mem_rewind, mem_next, mem_read_rows, mem_close};

fgmm_status fgmm_source_memory(const void *data, fgmm_dtype dtype, int64_t n, int d,
                               const char *name, fgmm_source **out, fgmm_error *err)
{
    *out = NULL;
    if (n <= 0 || d <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: need n > 0 and d > 0 (got n=%lld, d=%d)",
                         name, (long long)n, d);
    memory_source *m = calloc(1, sizeof *m);
    if (!m) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", name);
    m->checked = calloc((size_t)((n + MEMORY_CHUNK_ROWS - 1) / MEMORY_CHUNK_ROWS), 1);
    if (!m->checked) {
        free(m);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory", name);
    }
    m->data = data;
    m->dtype = dtype;
    m->n = n;
    m->d = d;
    snprintf(m->name, sizeof m->name, "%s", name ? name : "(memory)");
    return fgmm_source_create(&memory_ops, m, n, d, dtype, name, out, err);
}
