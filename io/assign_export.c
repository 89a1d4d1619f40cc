/*
 * assign_export.c - an assignment directory as numpy files, for FAISS and
 * anything else that reads .npy: written in one streaming read of the
 * shards into a staged directory, so memory is one shard's lists.
 */
#include "io/fgmm_io.h"
#include "io/file.h"

#include <stdlib.h>
#include <string.h>

enum { OUT_PRIMARY, OUT_OFFSETS, OUT_LISTS, OUT_WEIGHTS, OUT_LOGLIK, OUT_COUNT };
static const char *const OUT_NAMES[OUT_COUNT] = {"primary.npy", "offsets.npy", "lists.npy",
                                                 "weights.npy", "loglik.npy"};

typedef struct {
    fgmm_npy_stream *s[OUT_COUNT];
    int64_t offset; /* entries so far: the next row's offset */
    int32_t *primary;
    int64_t *offsets;
    int64_t cap;
} exporter;

static fgmm_status on_shard(void *user, int64_t first_row, int64_t rows, const uint8_t *counts,
                            const float *loglik, const int32_t *lists, const float *weights,
                            fgmm_error *err)
{
    (void)first_row;
    exporter *x = user;
    if (rows > x->cap) {
        free(x->primary);
        free(x->offsets);
        x->primary = malloc(sizeof(int32_t) * (size_t)rows);
        x->offsets = malloc(sizeof(int64_t) * (size_t)rows);
        x->cap = x->primary && x->offsets ? rows : 0;
        if (!x->cap) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for the export");
    }
    int64_t e = 0;
    for (int64_t i = 0; i < rows; i++) {
        x->primary[i] = lists[e];
        e += counts[i];
        x->offsets[i] = x->offset + e; /* offsets[0] = 0 is written first */
    }
    x->offset += e;
    fgmm_status st;
    if ((st = fgmm_npy_stream_append(x->s[OUT_PRIMARY], x->primary, rows, err)) ||
        (st = fgmm_npy_stream_append(x->s[OUT_OFFSETS], x->offsets, rows, err)) ||
        (st = fgmm_npy_stream_append(x->s[OUT_LISTS], lists, e, err)) ||
        (st = fgmm_npy_stream_append(x->s[OUT_WEIGHTS], weights, e, err)) ||
        (st = fgmm_npy_stream_append(x->s[OUT_LOGLIK], loglik, rows, err)))
        return st;
    return FGMM_OK;
}

fgmm_status fgmm_assignments_export(const char *dir, const fgmm_model *m, const char *out,
                                    fgmm_error *err)
{
    fgmm_assignments *a;
    fgmm_status st = fgmm_assignments_open(dir, &a, err);
    if (st) return st;
    if (m && (fgmm_model_k(m) != fgmm_assignments_k(a) ||
              fgmm_model_d(m) != fgmm_assignments_dim(a))) {
        st = fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: assignments of K=%d, D=%d; the model has "
                       "K=%d, D=%d", dir, fgmm_assignments_k(a), fgmm_assignments_dim(a),
                       fgmm_model_k(m), fgmm_model_d(m));
        fgmm_assignments_close(a);
        return st;
    }
    fgmm_io_tmpdir t;
    if ((st = fgmm_io_tmpdir_create(&t, out, err))) {
        fgmm_assignments_close(a);
        return st;
    }
    exporter x = {0};
    const int64_t N = fgmm_assignments_rows(a), E = fgmm_assignments_entries(a);
    const int64_t shapes[OUT_COUNT] = {N, N + 1, E, E, N};
    const fgmm_npy_type types[OUT_COUNT] = {FGMM_NPY_I32, FGMM_NPY_I64, FGMM_NPY_I32,
                                            FGMM_NPY_F32, FGMM_NPY_F32};
    for (int i = 0; i < OUT_COUNT && !st; i++) {
        char *p = fgmm_io_join(t.tmp, OUT_NAMES[i]);
        st = p ? fgmm_npy_stream_open(p, types[i], 1, &shapes[i], &x.s[i], err)
               : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        free(p);
    }
    const int64_t zero = 0;
    if (!st) st = fgmm_npy_stream_append(x.s[OUT_OFFSETS], &zero, 1, err);
    if (!st) st = fgmm_assignments_read(a, on_shard, &x, err);
    for (int i = 0; i < OUT_COUNT; i++) {
        if (!x.s[i]) continue;
        if (st) fgmm_npy_stream_abort(x.s[i]);
        else st = fgmm_npy_stream_commit(x.s[i], err);
        x.s[i] = NULL;
    }
    if (!st && m) {
        /* The means as float32 (K, D): what faiss takes as the coarse
         * quantizer's centroids. */
        char *p = fgmm_io_join(t.tmp, "means.npy");
        int64_t shape[2] = {fgmm_model_k(m), fgmm_model_d(m)};
        st = p ? fgmm_npy_write(p, FGMM_NPY_F32, fgmm_model_means_c(m), 2, shape, err)
               : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        free(p);
    }
    free(x.primary);
    free(x.offsets);
    fgmm_assignments_close(a);
    if (st) {
        fgmm_io_tmpdir_abort(&t);
        return st;
    }
    return fgmm_io_tmpdir_commit(&t, err);
}
