/*
 * assign_write.c - fgmm_assignments_write: IVF lists of every row of a
 * source, into an assignment directory (assign_format.h).
 *
 * The rows arrive from fgmm_assign in row order, one chunk at a time; a
 * shard is cut at the first chunk end at or past shard_rows rows, so
 * memory is one shard's lists whatever N is. With a budget the data is
 * read twice (fgmm_list_budget: the first pass counts, the second
 * writes); assignment is deterministic, so both passes see the same
 * candidates.
 */
#include "io/assign_format.h"
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/json_file.h"

#include <math.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

/* zstd's default level: the lists compress about 2x, and writing must not
 * be slower than assigning. */
#define ASSIGN_ZSTD_LEVEL 3

void fgmm_assign_options_default(fgmm_assign_options *o)
{
    memset(o, 0, sizeof *o);
    fgmm_list_rule_default(&o->rule);
    o->budget = -1;
    o->shard_rows = (int64_t)1 << 22;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    const fgmm_assign_options *o;
    double select_s, write_s;
    int k;
    const char *dir; /* the temporary directory */
    fgmm_list_budget *budget;
    int writing; /* 0: the budget's counting pass */
    /* The shard being filled. */
    int64_t first, rows, entries;
    int64_t row_cap, entry_cap;
    uint8_t *counts;
    float *loglik;
    int32_t *lists;
    float *weights;
    /* The whole assignment. */
    int64_t next_row; /* rows must arrive contiguous */
    int64_t total_rows, total_entries, multi_rows;
    int64_t *list_sizes;
    json_t *shards;
    unsigned char *raw, *frame;
    size_t raw_cap, frame_cap;
    ZSTD_CCtx *cctx;
} assign_writer;

static int grow(void **p, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int grow_bytes(unsigned char **p, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    unsigned char *q = realloc(*p, need);
    if (!q) return -1;
    *p = q;
    *cap = need;
    return 0;
}

static fgmm_status write_shard(assign_writer *w, fgmm_error *err);

static fgmm_status flush_shard(assign_writer *w, fgmm_error *err)
{
    if (w->rows == 0) return FGMM_OK;
    double t0 = now();
    fgmm_status st = write_shard(w, err);
    w->write_s += now() - t0;
    return st;
}

static fgmm_status write_shard(assign_writer *w, fgmm_error *err)
{
    const size_t R = (size_t)w->rows, E = (size_t)w->entries;
    const size_t raw = R * ASSIGN_ROW_BYTES + E * ASSIGN_ENTRY_BYTES;
    const size_t bound = ZSTD_compressBound(raw);
    if (grow_bytes(&w->raw, &w->raw_cap, raw) || grow_bytes(&w->frame, &w->frame_cap, bound))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for an assignment shard of "
                         "%zu rows", R);
    unsigned char *p = w->raw;
    memcpy(p, w->counts, R);
    p += R;
    memcpy(p, w->loglik, R * 4);
    p += R * 4;
    memcpy(p, w->lists, E * 4);
    p += E * 4;
    memcpy(p, w->weights, E * 4);
    size_t stored = ZSTD_compress2(w->cctx, w->frame, bound, w->raw, raw);
    if (ZSTD_isError(stored))
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "zstd: %s", ZSTD_getErrorName(stored));

    assign_header h = {ASSIGN_VERSION, (uint32_t)w->k, (uint64_t)w->first, (uint64_t)R,
                       (uint64_t)E, (uint64_t)raw, (uint64_t)stored,
                       XXH3_64bits(w->frame, stored), 0};
    unsigned char hb[ASSIGN_HEADER_BYTES];
    assign_header_pack(&h, hb);
    h.header_checksum = XXH3_64bits(hb, ASSIGN_HEADER_SUMMED);
    assign_header_pack(&h, hb);

    char name[32];
    snprintf(name, sizeof name, "assign-%05zu.fga", json_array_size(w->shards));
    char *path = fgmm_io_join(w->dir, name);
    if (!path) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_io_tmpfile t;
    fgmm_status st = fgmm_io_tmp_create(&t, path, NULL, err);
    free(path);
    if (st) return st;
    if ((st = fgmm_io_pwrite_all(t.fd, hb, sizeof hb, 0, t.tmp, err)) ||
        (st = fgmm_io_pwrite_all(t.fd, w->frame, stored, sizeof hb, t.tmp, err))) {
        fgmm_io_tmp_abort(&t);
        return st;
    }
    if ((st = fgmm_io_tmp_commit(&t, err))) return st;

    json_t *s = json_object();
    if (!s || json_object_set_new(s, "file", json_string(name)) ||
        json_object_set_new(s, "first_row", fgmm_json_u64(h.first_row)) ||
        json_object_set_new(s, "rows", fgmm_json_u64(h.rows)) ||
        json_object_set_new(s, "entries", fgmm_json_u64(h.entries)) ||
        json_array_append_new(w->shards, s))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    w->first += w->rows;
    w->rows = w->entries = 0;
    return FGMM_OK;
}

static fgmm_status on_rows(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                           const float *lresp, const float *ll, fgmm_error *err)
{
    assign_writer *w = user;
    const fgmm_list_rule *rule = &w->o->rule;
    const double t0 = now();
    if (first_row != w->next_row)
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "assignment: rows from %lld arrived, expected "
                         "%lld", (long long)first_row, (long long)w->next_row);
    w->next_row = first_row + n;
    int32_t lists[FGMM_MAX_TOP_M];
    float weights[FGMM_MAX_TOP_M];
    if (!w->writing) {
        for (int64_t i = 0; i < n; i++) {
            double amb;
            int c = fgmm_list_select(rule, idx + i * m, lresp + i * m, lists, weights, &amb);
            fgmm_list_budget_count(w->budget, amb, c - 1);
        }
        w->select_s += now() - t0;
        return FGMM_OK;
    }
    if (w->rows == 0) w->first = first_row;
    if (w->rows + n > w->row_cap) {
        int64_t cap = w->row_cap;
        if (grow((void **)&w->counts, &cap, w->rows + n, 1))
            return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        float *nl = realloc(w->loglik, sizeof(float) * (size_t)cap);
        if (!nl) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        w->loglik = nl;
        w->row_cap = cap;
    }
    for (int64_t i = 0; i < n; i++) {
        double amb;
        int c = fgmm_list_select(rule, idx + i * m, lresp + i * m, lists, weights, &amb);
        if (c < 1)
            return fgmm_fail(err, FGMM_ERR_INTERNAL, "row %lld has no component",
                             (long long)(first_row + i));
        if (w->budget) c = 1 + fgmm_list_budget_admit(w->budget, amb, c - 1);
        if (w->entries + c > w->entry_cap) {
            int64_t cap = w->entry_cap;
            if (grow((void **)&w->lists, &cap, w->entries + c, sizeof(int32_t)))
                return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            float *nw = realloc(w->weights, sizeof(float) * (size_t)cap);
            if (!nw) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
            w->weights = nw;
            w->entry_cap = cap;
        }
        w->counts[w->rows] = (uint8_t)c;
        w->loglik[w->rows] = ll[i];
        w->rows++;
        memcpy(w->lists + w->entries, lists, sizeof(int32_t) * (size_t)c);
        memcpy(w->weights + w->entries, weights, sizeof(float) * (size_t)c);
        w->entries += c;
        for (int j = 0; j < c; j++) w->list_sizes[lists[j]]++;
        w->total_entries += c;
        w->multi_rows += c > 1;
    }
    w->total_rows += n;
    w->select_s += now() - t0;
    if (w->rows >= w->o->shard_rows) return flush_shard(w, err);
    return FGMM_OK;
}

static fgmm_status write_manifest(assign_writer *w, const fgmm_model *m, fgmm_error *err)
{
    const fgmm_assign_options *o = w->o;
    json_t *root = json_object(), *rule = json_object(), *sizes = json_array();
    int bad = !root || !rule || !sizes;
    for (int k = 0; k < w->k && !bad; k++)
        bad = json_array_append_new(sizes, fgmm_json_u64((uint64_t)w->list_sizes[k]));
    if (!bad) {
        bad = json_object_set_new(rule, "max_lists", json_integer(o->rule.max_lists)) ||
              json_object_set_new(rule, "min_resp", json_real(o->rule.min_resp)) ||
              json_object_set_new(rule, "ratio", json_real(o->rule.ratio)) ||
              json_object_set_new(rule, "temperature", json_real(o->rule.temperature)) ||
              json_object_set_new(rule, "budget", o->budget >= 0 ? json_real(o->budget)
                                                                 : json_null());
        bad = bad || json_object_set_new(root, "format", json_string(ASSIGN_FORMAT_NAME)) ||
              json_object_set_new(root, "version", json_integer(ASSIGN_VERSION)) ||
              json_object_set_new(root, "k", json_integer(w->k)) ||
              json_object_set_new(root, "dim", json_integer(fgmm_model_d(m))) ||
              json_object_set_new(root, "rows", fgmm_json_u64((uint64_t)w->total_rows)) ||
              json_object_set_new(root, "entries", fgmm_json_u64((uint64_t)w->total_entries)) ||
              json_object_set_new(root, "multi_list_rows",
                                  fgmm_json_u64((uint64_t)w->multi_rows)) ||
              json_object_set_new(root, "model", o->model ? json_string(o->model) : json_null()) ||
              json_object_set_new(root, "data", o->data ? json_string(o->data) : json_null()) ||
              json_object_set(root, "rule", rule) ||
              json_object_set(root, "list_sizes", sizes) ||
              json_object_set(root, "shards", w->shards);
    }
    json_decref(rule);
    json_decref(sizes);
    fgmm_status st;
    if (bad) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    } else {
        char *path = fgmm_io_join(w->dir, ASSIGN_MANIFEST);
        st = path ? fgmm_json_write_file(path, root, err)
                  : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        free(path);
    }
    json_decref(root);
    return st;
}

fgmm_status fgmm_assignments_write(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                   const fgmm_assign_options *o, const char *dir,
                                   fgmm_assign_summary *sum, fgmm_error *err)
{
    fgmm_status st = fgmm_list_rule_check(&o->rule, err);
    if (st) return st;
    if (o->shard_rows < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "rows per assignment shard must be >= 1 (got "
                         "%lld)", (long long)o->shard_rows);
    if (fgmm_source_dim(src) != fgmm_model_d(m))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s has dimension %d but the model has D=%d",
                         fgmm_source_name(src), fgmm_source_dim(src), fgmm_model_d(m));
    assign_writer w = {0};
    w.o = o;
    w.k = fgmm_model_k(m);
    fgmm_io_tmpdir t = {0};
    int64_t first = 0, rows = 0;
    fgmm_source_pass_range(src, &first, &rows);
    w.list_sizes = calloc((size_t)w.k, sizeof(int64_t));
    w.shards = json_array();
    w.cctx = ZSTD_createCCtx();
    if (!w.list_sizes || !w.shards || !w.cctx) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    /* zstd's own worker threads compress a shard in parallel (the frame is
     * the same kind of frame); a library built without them ignores the
     * request and compresses on this thread. */
    ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_compressionLevel, ASSIGN_ZSTD_LEVEL);
    {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_nbWorkers, (int)(cores > 8 ? 8 : cores > 1 ? cores : 0));
    }
    if (o->budget >= 0 && (st = fgmm_list_budget_create(o->budget, &w.budget, err))) goto done;
    if ((st = fgmm_io_tmpdir_create(&t, dir, err))) goto done;
    w.dir = t.tmp;
    const int top = o->rule.max_lists;
    int passes = 1;
    const double t_start = now();
    if (w.budget) {
        w.next_row = first;
        if ((st = fgmm_assign(e, src, m, top, on_rows, &w, err))) goto done;
        fgmm_list_budget_plan(w.budget);
        passes = 2;
    }
    w.writing = 1;
    w.next_row = first;
    if ((st = fgmm_assign(e, src, m, top, on_rows, &w, err)) || (st = flush_shard(&w, err)) ||
        (st = write_manifest(&w, m, err)))
        goto done;
    st = fgmm_io_tmpdir_commit(&t, err);
    if (!st && sum) {
        sum->rows = w.total_rows;
        sum->entries = w.total_entries;
        sum->multi_rows = w.multi_rows;
        sum->shards = (int64_t)json_array_size(w.shards);
        sum->budget_cap = w.budget ? (int64_t)floor(o->budget * (double)w.total_rows) : -1;
        sum->passes = passes;
        sum->seconds = now() - t_start;
        sum->select_s = w.select_s;
        sum->write_s = w.write_s;
    }
done:
    if (st && t.tmp) fgmm_io_tmpdir_abort(&t);
    fgmm_list_budget_free(w.budget);
    free(w.counts);
    free(w.loglik);
    free(w.lists);
    free(w.weights);
    free(w.raw);
    free(w.frame);
    free(w.list_sizes);
    json_decref(w.shards);
    ZSTD_freeCCtx(w.cctx);
    return st;
}
