/*
 * assignments.c - fuzz target of assignment directories (io/assign_read.c):
 * the manifest and each assign-*.fga shard's header, zstd frame and
 * checksums. An input is a byte choosing a file of a valid directory (three
 * shards of 100 rows from a CPU engine), then that file's bytes. What is
 * accepted must read back as the original: the same counts, lists,
 * weights and log-likelihoods, bit for bit.
 */
#include "fuzz/fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/fgmm_backends.h"
#include "io/fgmm_io.h"

const char fuzz_target_name[] = "assignments";

enum { ROWS = 300, DIM = 4, K = 3 };
static fuzz_dir_template tmpl;

/* Everything a read gives, in row order. */
typedef struct {
    int64_t rows, entries;
    uint8_t counts[ROWS];
    float loglik[ROWS];
    int32_t lists[ROWS * K];
    float weights[ROWS * K];
} contents;
static contents original;

static fgmm_status collect(void *user, int64_t first_row, int64_t rows, const uint8_t *counts,
                           const float *loglik, const int32_t *lists, const float *weights,
                           fgmm_error *err)
{
    contents *c = user;
    if (first_row != c->rows || c->rows + rows > ROWS)
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "rows %lld..%lld out of order or range",
                         (long long)first_row, (long long)(first_row + rows));
    int64_t e = 0;
    for (int64_t i = 0; i < rows; i++) e += counts[i];
    if (c->entries + e > ROWS * K)
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "%lld entries for %lld rows", (long long)e,
                         (long long)rows);
    memcpy(c->counts + first_row, counts, (size_t)rows);
    memcpy(c->loglik + first_row, loglik, sizeof(float) * (size_t)rows);
    memcpy(c->lists + c->entries, lists, sizeof(int32_t) * (size_t)e);
    memcpy(c->weights + c->entries, weights, sizeof(float) * (size_t)e);
    c->rows += rows;
    c->entries += e;
    return FGMM_OK;
}

static fgmm_status read_dir(const char *dir, contents *c, fgmm_error *err)
{
    memset(c, 0, sizeof *c);
    fgmm_assignments *a = NULL;
    fgmm_status st = fgmm_assignments_open(dir, &a, err);
    if (!st) st = fgmm_assignments_read(a, collect, c, err);
    fgmm_assignments_close(a);
    return st;
}

static void make_template(void)
{
    static int done;
    if (done) return;
    done = 1;
    static float x[ROWS * DIM];
    fgmm_rng r;
    fgmm_rng_seed(&r, 5);
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < DIM; j++) x[i * DIM + j] = (float)(2.0 * (i % K) + fgmm_rng_normal(&r));
    fgmm_error err = {0};
    fgmm_model *m = NULL;
    if (fgmm_model_create(K, DIM, FGMM_COV_DIAG, &m, &err)) fuzz_fail("%s", err.msg);
    for (int k = 0; k < K; k++) {
        fgmm_model_weights(m)[k] = 1.0 / K;
        for (int j = 0; j < DIM; j++) {
            fgmm_model_means(m)[k * DIM + j] = 2.0 * k;
            fgmm_model_variances(m)[k * DIM + j] = 1.0;
        }
    }
    fgmm_engine *e = NULL;
    fgmm_source *src = NULL;
    fgmm_assign_options o;
    fgmm_assign_options_default(&o);
    o.rule.max_lists = K;
    o.rule.temperature = 4.0;
    o.rule.min_resp = 0.05;
    o.shard_rows = 100;
    char dir[600];
    fuzz_path(dir, sizeof dir, "template");
    if (fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err) ||
        fgmm_source_memory_chunked(x, FGMM_F32, ROWS, DIM, 50, "rows", &src, &err) ||
        fgmm_assignments_write(e, src, m, &o, dir, NULL, &err))
        fuzz_fail("writing the template: %s", err.msg);
    fgmm_source_close(src);
    fgmm_engine_free(e);
    fgmm_model_free(m);
    if (read_dir(dir, &original, &err)) fuzz_fail("reading the template: %s", err.msg);
    if (original.entries <= ROWS) fuzz_fail("the template has no row in several lists");
    fuzz_template_load(&tmpl, dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    make_template();
    char dir[600];
    fuzz_path(dir, sizeof dir, "lists");
    fuzz_template_write(&tmpl, dir, data[0] % tmpl.n, data + 1, size - 1);
    static contents got;
    fgmm_error err = {0};
    fgmm_status st = read_dir(dir, &got, &err);
    fuzz_check_refusal(st, &err, dir);
    if (st) return 0;
    if (got.rows != original.rows || got.entries != original.entries ||
        memcmp(got.counts, original.counts, sizeof got.counts) ||
        memcmp(got.loglik, original.loglik, sizeof got.loglik) ||
        memcmp(got.lists, original.lists, sizeof(int32_t) * (size_t)got.entries) ||
        memcmp(got.weights, original.weights, sizeof(float) * (size_t)got.entries))
        fuzz_fail("accepted assignments differ from the original");
    return 0;
}

int fuzz_write_seeds(const char *dir)
{
    make_template();
    return fuzz_template_seeds(&tmpl, dir);
}
