/*
 * shards.c - fuzz targets of shard directories (io/shard_*.c): the
 * manifest, each shard's header, chunk index, zstd frames and checksums
 * (target "shards"); and the conversion journal with the shards of an
 * interrupted conversion, resumed by the writer (target "journal",
 * FUZZ_JOURNAL). An input is a byte choosing a file of a valid directory,
 * then that file's bytes.
 *
 * The property of a checksummed format: whatever is accepted yields
 * exactly the original rows. A pass that completes, a verifying probe that
 * succeeds and a resumed conversion that finishes must all give the
 * template's 200 rows, bit for bit.
 */
#include "fuzz/fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/fgmm_io.h"

#ifdef FUZZ_JOURNAL
const char fuzz_target_name[] = "journal";
#else
const char fuzz_target_name[] = "shards";
#endif

enum { ROWS = 200, DIM = 6 };
static float rows[ROWS * DIM];
static fuzz_dir_template tmpl;

static void write_options(fgmm_shard_write_options *o, int max_shards)
{
    fgmm_shard_write_options_default(o);
    o->rows_per_chunk = 40;
    o->chunks_per_shard = 3;
    o->threads = 1;
    o->level = 1;
    o->max_shards = max_shards;
}

/* Writes the rows into dir; max_shards 1 leaves an interrupted conversion. */
static void convert(const char *dir, int max_shards)
{
    fgmm_shard_write_options o;
    write_options(&o, max_shards);
    fgmm_shard_writer *w = NULL;
    int64_t resume = 0;
    int stopped = 0;
    fgmm_error err = {0};
    if (fgmm_shard_writer_create(dir, DIM, FGMM_F32, &o, "fuzz rows", &w, &resume, &err) ||
        fgmm_shard_writer_append(w, rows, ROWS, &stopped, &err) ||
        (!stopped && fgmm_shard_writer_finish(w, "fuzz rows", NULL, &err)))
        fuzz_fail("writing the template: %s", err.msg);
    fgmm_shard_writer_free(w);
}

static void make_template(void)
{
    static int done;
    if (done) return;
    done = 1;
    for (int i = 0; i < ROWS * DIM; i++) rows[i] = (float)((i * 37) % 101) * 0.125f - 6.0f;
    char dir[600];
    fuzz_path(dir, sizeof dir, "template");
#ifdef FUZZ_JOURNAL
    convert(dir, 1);
#else
    convert(dir, 0);
#endif
    fuzz_template_load(&tmpl, dir);
}

/* Opens dir as a source and reads a whole pass, which must give the
 * original rows if it completes. */
static void read_back(const char *dir)
{
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.threads = 1;
    o.cache_budget = 0;
    o.buffered = 1;
    fgmm_source *src = NULL;
    fgmm_error err = {0};
    fgmm_status st = fgmm_shards_open(dir, &o, &src, &err);
    fuzz_check_refusal(st, &err, dir);
    if (st) return;
    if (fgmm_source_rows(src) != ROWS || fgmm_source_dim(src) != DIM)
        fuzz_fail("accepted a directory of %lld x %d rows, the original has %d x %d",
                  (long long)fgmm_source_rows(src), fgmm_source_dim(src), ROWS, DIM);
    int64_t seen = 0;
    fgmm_chunk c;
    st = fgmm_source_rewind(src, &err);
    while (!st && !(st = fgmm_source_next(src, &c, &err)) && c.n_rows > 0) {
        if (c.dtype != FGMM_F32 || c.first_row != seen || seen + c.n_rows > ROWS)
            fuzz_fail("chunk at row %lld of %lld rows breaks the layout",
                      (long long)c.first_row, (long long)c.n_rows);
        for (int64_t i = 0; i < c.n_rows; i++)
            if (memcmp((const char *)c.rows + (size_t)i * c.row_stride,
                       rows + (size_t)(seen + i) * DIM, sizeof(float) * DIM))
                fuzz_fail("accepted row %lld differs from the original", (long long)(seen + i));
        seen += c.n_rows;
    }
    fuzz_check_refusal(st, &err, dir);
    if (!st && seen != ROWS) fuzz_fail("a pass gave %lld rows of %d", (long long)seen, ROWS);
    fgmm_source_close(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    make_template();
    char dir[600];
    fuzz_path(dir, sizeof dir, "shards");
    fuzz_template_write(&tmpl, dir, data[0] % tmpl.n, data + 1, size - 1);
#ifdef FUZZ_JOURNAL
    /* Resume the interrupted conversion with the same rows and options. */
    fgmm_shard_write_options o;
    write_options(&o, 0);
    fgmm_shard_writer *w = NULL;
    int64_t resume = -1;
    fgmm_error err = {0};
    fgmm_status st = fgmm_shard_writer_create(dir, DIM, FGMM_F32, &o, "fuzz rows", &w, &resume,
                                              &err);
    fuzz_check_refusal(st, &err, dir);
    if (st) return 0;
    if (resume < 0 || resume > ROWS) fuzz_fail("resumes at row %lld", (long long)resume);
    if (!(st = fgmm_shard_writer_append(w, rows + resume * DIM, ROWS - resume, NULL, &err)))
        st = fgmm_shard_writer_finish(w, "fuzz rows", NULL, &err);
    fgmm_shard_writer_free(w);
    fuzz_check_refusal(st, &err, dir);
    if (st) return 0;
    read_back(dir);
#else
    fgmm_shards_info info;
    fgmm_error err = {0};
    fgmm_status st = fgmm_shards_probe(dir, 1, 1, &info, &err);
    fuzz_check_refusal(st, &err, dir);
    if (!st && (info.rows != ROWS || info.dim != DIM))
        fuzz_fail("verified a directory of %lld x %d rows", (long long)info.rows, info.dim);
    read_back(dir);
#endif
    return 0;
}

int fuzz_write_seeds(const char *dir)
{
    make_template();
    return fuzz_template_seeds(&tmpl, dir);
}
