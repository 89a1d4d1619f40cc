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
 *
 * The list rule, the shard's assembly and its compression run on a writer
 * thread of their own, fed through a queue of chunks' results: the
 * caller's thread only copies each chunk's results in, so it goes straight
 * back to feeding the GPU, and writing the lists overlaps computing them.
 */
#include "io/assign_format.h"
#include "io/fgmm_io.h"
#include "io/file.h"
#include "io/json_file.h"
#include "core/backend.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

/* zstd level 1: the lists compress about as well as at the default level
 * 3 (shards within 1% of its size) in half the time, and writing must not
 * be slower than assigning. */
#define ASSIGN_ZSTD_LEVEL 1
/* Input per zstd worker job: a shard of a million rows is 13 MB at one
 * list per row, so jobs of 1 MiB keep every worker busy on it (zstd's own
 * default, several times the window, would give two). */
#define ASSIGN_ZSTD_JOB_BYTES (1 << 20)
/* Chunks' results queued for the writer thread: enough to ride out a
 * shard's compression without stopping the caller for long. */
#define QUEUE_CHUNKS 4

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

/* One chunk's results, copied for the writer thread. */
typedef struct {
    int64_t first, n;
    int m;
    fgmm_assign_rows r;
} queued_chunk;

/* Chunks q[head], q[head + 1], ... (count of them, modulo QUEUE_CHUNKS)
 * wait for the writer thread; the caller fills q[head + count] outside the
 * lock (the writer never touches a slot not yet queued). Once the writer
 * fails it takes no more rows: st and err say why, and the caller stops. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t changed;
    queued_chunk q[QUEUE_CHUNKS];
    int head, count;
    int closing; /* no more chunks: the writer ends when the queue is empty */
    fgmm_status st;
    fgmm_error err;
} chunk_queue;

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
    unsigned char *frame;
    size_t frame_cap;
    ZSTD_CCtx *cctx;
    chunk_queue queue;
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
    if (grow_bytes(&w->frame, &w->frame_cap, bound))
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for an assignment shard of "
                         "%zu rows", R);
    /* The body's four arrays go into one frame as they lie, without
     * gathering them first. */
    const struct {
        const void *p;
        size_t n;
    } parts[4] = {{w->counts, R}, {w->loglik, R * 4}, {w->lists, E * 4}, {w->weights, E * 4}};
    ZSTD_outBuffer out = {w->frame, bound, 0};
    for (int i = 0; i < 4; i++) {
        ZSTD_inBuffer in = {parts[i].p, parts[i].n, 0};
        const ZSTD_EndDirective mode = i == 3 ? ZSTD_e_end : ZSTD_e_continue;
        size_t left;
        do {
            left = ZSTD_compressStream2(w->cctx, &out, &in, mode);
            if (ZSTD_isError(left))
                return fgmm_fail(err, FGMM_ERR_INTERNAL, "zstd: %s", ZSTD_getErrorName(left));
        } while (mode == ZSTD_e_end ? left != 0 : in.pos < in.size);
    }
    const size_t stored = out.pos;

    assign_header h = {ASSIGN_VERSION, (uint32_t)w->k, (uint64_t)w->first, (uint64_t)R,
                       (uint64_t)E, (uint64_t)raw, (uint64_t)stored,
                       XXH3_64bits(w->frame, stored), 0};
    unsigned char hb[ASSIGN_HEADER_BYTES];
    assign_header_pack(&h, hb);
    h.header_checksum = XXH3_64bits(hb, ASSIGN_HEADER_SUMMED);
    assign_header_pack(&h, hb);

    /* Named by first row: ranks writing their parts into one directory
     * need no agreement on names, and names sort in row order. */
    char name[40];
    snprintf(name, sizeof name, "assign-%012lld.fga", (long long)w->first);
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

    w->first += w->rows;
    w->rows = w->entries = 0;
    return FGMM_OK;
}

/* The list rule on a chunk's candidates, into the shard being filled (or,
 * in a budget's counting pass, into its counts). On the writer thread. */
static fgmm_status take_rows(assign_writer *w, int64_t first_row, int64_t n, int m,
                             const int32_t *idx, const float *lresp, const float *ll,
                             fgmm_error *err)
{
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

static void *writer_main(void *arg)
{
    assign_writer *w = arg;
    chunk_queue *cq = &w->queue;
    pthread_mutex_lock(&cq->mu);
    for (;;) {
        while (cq->count == 0 && !cq->closing) pthread_cond_wait(&cq->changed, &cq->mu);
        if (cq->count == 0) break;
        queued_chunk *c = &cq->q[cq->head];
        pthread_mutex_unlock(&cq->mu);
        fgmm_error e = {0};
        fgmm_status st = take_rows(w, c->first, c->n, c->m, c->r.idx, c->r.lresp, c->r.ll, &e);
        pthread_mutex_lock(&cq->mu);
        cq->head = (cq->head + 1) % QUEUE_CHUNKS;
        cq->count--;
        if (st) {
            cq->st = st;
            cq->err = e;
            /* What is still queued is dropped: the caller stops at its
             * next chunk. */
            cq->count = 0;
        }
        pthread_cond_broadcast(&cq->changed);
        if (st) break;
    }
    pthread_mutex_unlock(&cq->mu);
    return NULL;
}

/* fgmm_assign's sink: queues a copy of the chunk's results for the writer
 * thread, waiting while the queue is full. */
static fgmm_status on_rows(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                           const float *lresp, const float *ll, fgmm_error *err)
{
    assign_writer *w = user;
    chunk_queue *cq = &w->queue;
    pthread_mutex_lock(&cq->mu);
    while (cq->count == QUEUE_CHUNKS && !cq->st) pthread_cond_wait(&cq->changed, &cq->mu);
    fgmm_status st = cq->st;
    if (st) *err = cq->err;
    queued_chunk *c = &cq->q[(cq->head + cq->count) % QUEUE_CHUNKS];
    pthread_mutex_unlock(&cq->mu);
    if (st) return st;
    if ((st = fgmm_assign_rows_reserve(&c->r, n, m, err))) return st;
    c->first = first_row;
    c->n = n;
    c->m = m;
    if (m > 0) {
        memcpy(c->r.idx, idx, sizeof(int32_t) * (size_t)n * (size_t)m);
        memcpy(c->r.lresp, lresp, sizeof(float) * (size_t)n * (size_t)m);
    }
    memcpy(c->r.ll, ll, sizeof(float) * (size_t)n);
    pthread_mutex_lock(&cq->mu);
    cq->count++;
    pthread_cond_broadcast(&cq->changed);
    pthread_mutex_unlock(&cq->mu);
    return FGMM_OK;
}

/* One pass of fgmm_assign with the rule and the shard on the writer
 * thread; returns once the writer has taken every chunk. */
static fgmm_status assign_pass(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, int top,
                               assign_writer *w, fgmm_error *err)
{
    chunk_queue *cq = &w->queue;
    cq->head = cq->count = 0;
    cq->closing = 0;
    cq->st = FGMM_OK;
    pthread_t th;
    int rc = pthread_create(&th, NULL, writer_main, w);
    if (rc)
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "cannot start the assignment writer: %s",
                         strerror(rc));
    fgmm_status st = fgmm_assign(e, src, m, top, on_rows, w, err);
    pthread_mutex_lock(&cq->mu);
    cq->closing = 1;
    if (st) cq->count = 0; /* the rows stopped: nothing queued is written */
    pthread_cond_broadcast(&cq->changed);
    pthread_mutex_unlock(&cq->mu);
    pthread_join(th, NULL);
    if (!st && cq->st) {
        st = cq->st;
        *err = cq->err;
    }
    return st;
}

/* The shards in the staged directory, from their headers, in row order
 * (their names sort so): what every rank wrote. */
static fgmm_status list_shards(const char *dir, json_t *shards, int64_t *rows, int64_t *entries,
                               fgmm_error *err)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    fgmm_status st = FGMM_OK;
    *rows = *entries = 0;
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        size_t l = strlen(nm);
        if (!st && !strncmp(nm, "assign-", 7) && l > 4 && !strcmp(nm + l - 4, ".fga")) {
            char *path = fgmm_io_join(dir, nm);
            unsigned char b[ASSIGN_HEADER_BYTES];
            int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
            if (fd < 0) {
                st = fgmm_fail(err, FGMM_ERR_IO, "%s: cannot open: %s", path ? path : nm,
                               strerror(errno));
            } else {
                st = fgmm_io_pread_all(fd, b, sizeof b, 0, path, "header", err);
                close(fd);
            }
            assign_header h;
            if (!st) {
                assign_header_unpack(b, &h);
                json_t *s = json_object();
                if (!s || json_object_set_new(s, "file", json_string(nm)) ||
                    json_object_set_new(s, "first_row", fgmm_json_u64(h.first_row)) ||
                    json_object_set_new(s, "rows", fgmm_json_u64(h.rows)) ||
                    json_object_set_new(s, "entries", fgmm_json_u64(h.entries)) ||
                    json_array_append_new(shards, s))
                    st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
                *rows += (int64_t)h.rows;
                *entries += (int64_t)h.entries;
            }
            free(path);
        }
        free(names[i]);
    }
    free(names);
    return st;
}

static fgmm_status write_manifest(const fgmm_assign_options *o, const fgmm_model *m,
                                  const char *dir, const int64_t *list_sizes, int64_t rows,
                                  int64_t multi_rows, fgmm_error *err)
{
    const int K = fgmm_model_k(m);
    json_t *root = json_object(), *rule = json_object(), *sizes = json_array();
    json_t *shards = json_array();
    int64_t shard_rows = 0, entries = 0, sum = 0;
    fgmm_status st = root && rule && sizes && shards
                         ? list_shards(dir, shards, &shard_rows, &entries, err)
                         : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int k = 0; k < K && !st; k++) {
        sum += list_sizes[k];
        if (json_array_append_new(sizes, fgmm_json_u64((uint64_t)list_sizes[k])))
            st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    if (!st && (shard_rows != rows || sum != entries))
        st = fgmm_fail(err, FGMM_ERR_INTERNAL, "%s: the shards hold %lld rows and %lld entries, "
                       "the ranks counted %lld and %lld", dir, (long long)shard_rows,
                       (long long)entries, (long long)rows, (long long)sum);
    if (!st &&
        (json_object_set_new(rule, "max_lists", json_integer(o->rule.max_lists)) ||
         json_object_set_new(rule, "min_resp", json_real(o->rule.min_resp)) ||
         json_object_set_new(rule, "ratio", json_real(o->rule.ratio)) ||
         json_object_set_new(rule, "temperature", json_real(o->rule.temperature)) ||
         json_object_set_new(rule, "budget", o->budget >= 0 ? json_real(o->budget)
                                                            : json_null()) ||
         json_object_set_new(root, "format", json_string(ASSIGN_FORMAT_NAME)) ||
         json_object_set_new(root, "version", json_integer(ASSIGN_VERSION)) ||
         json_object_set_new(root, "k", json_integer(K)) ||
         json_object_set_new(root, "dim", json_integer(fgmm_model_d(m))) ||
         json_object_set_new(root, "rows", fgmm_json_u64((uint64_t)rows)) ||
         json_object_set_new(root, "entries", fgmm_json_u64((uint64_t)entries)) ||
         json_object_set_new(root, "multi_list_rows", fgmm_json_u64((uint64_t)multi_rows)) ||
         json_object_set_new(root, "model", o->model ? json_string(o->model) : json_null()) ||
         json_object_set_new(root, "data", o->data ? json_string(o->data) : json_null()) ||
         json_object_set(root, "rule", rule) || json_object_set(root, "list_sizes", sizes) ||
         json_object_set(root, "shards", shards)))
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (!st) {
        char *path = fgmm_io_join(dir, ASSIGN_MANIFEST);
        st = path ? fgmm_json_write_file(path, root, err)
                  : fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        free(path);
    }
    json_decref(rule);
    json_decref(sizes);
    json_decref(shards);
    json_decref(root);
    return st;
}

/* An all-gather of bytes per rank that agrees on failure
 * (fgmm_reducer_allgather_checked); one process gathers its own. */
static fgmm_status gather(const fgmm_reducer_ops *ops, void *red, int size, fgmm_status local,
                          const void *send, size_t bytes, void *recv, fgmm_error *err)
{
    if (size == 1) {
        if (local) return local;
        memcpy(recv, send, bytes);
        return FGMM_OK;
    }
    return fgmm_reducer_allgather_checked(ops, red, local, send, bytes, recv, err);
}

/* What each rank reports after its pass: its counts, then K list sizes. */
enum { PART_ROWS, PART_ENTRIES, PART_MULTI, PART_HEAD };
enum { STAGED_PATH_BYTES = 4096 };

fgmm_status fgmm_assignments_write_ranks(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                         const fgmm_assign_options *o, const char *dir,
                                         const fgmm_reducer_ops *ops, void *red,
                                         fgmm_assign_summary *sum, fgmm_error *err)
{
    const int rank = ops ? ops->rank(red) : 0, size = ops ? ops->size(red) : 1;
    const double t_start = now();
    const int K = fgmm_model_k(m);
    const size_t part_len = PART_HEAD + (size_t)K;
    /* Every buffer of the collectives first: a rank without them cannot
     * take part (the others' collectives then time out naming it). */
    char *paths = malloc((size_t)size * STAGED_PATH_BYTES);
    unsigned char *counts = calloc((size_t)size + 1, FGMM_LIST_BUDGET_COUNTS_BYTES);
    int64_t *parts = calloc((size_t)size + 1, sizeof(int64_t) * part_len);
    char *mine = calloc(1, STAGED_PATH_BYTES);
    if (!paths || !counts || !parts || !mine) {
        free(paths);
        free(counts);
        free(parts);
        free(mine);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    }
    int64_t *part = parts + (size_t)size * part_len;
    unsigned char *my_counts = counts + (size_t)size * FGMM_LIST_BUDGET_COUNTS_BYTES;

    fgmm_status st = fgmm_list_rule_check(&o->rule, err), gst;
    if (!st && o->shard_rows < 1)
        st = fgmm_fail(err, FGMM_ERR_ARGUMENT, "rows per assignment shard must be >= 1 (got "
                       "%lld)", (long long)o->shard_rows);
    if (!st && fgmm_source_dim(src) != fgmm_model_d(m))
        st = fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s has dimension %d but the model has D=%d",
                       fgmm_source_name(src), fgmm_source_dim(src), fgmm_model_d(m));

    /* Rank 0 stages the directory and tells the others where it is. */
    fgmm_io_tmpdir t = {0};
    assign_writer w = {0};
    pthread_mutex_init(&w.queue.mu, NULL);
    pthread_cond_init(&w.queue.changed, NULL);
    fgmm_source *view = NULL;
    int passes = 1;
    if (!st && rank == 0 && !(st = fgmm_io_tmpdir_create(&t, dir, err))) {
        if (strlen(t.tmp) >= STAGED_PATH_BYTES)
            st = fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: path too long", dir);
        else
            strcpy(mine, t.tmp);
    }
    if ((st = gather(ops, red, size, st, mine, STAGED_PATH_BYTES, paths, err))) goto done;

    w.o = o;
    w.k = K;
    w.dir = paths; /* rank 0's */
    w.list_sizes = calloc((size_t)K, sizeof(int64_t));
    w.cctx = ZSTD_createCCtx();
    if (!w.list_sizes || !w.cctx) st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    if (w.cctx) {
        /* zstd's own worker threads compress a shard in parallel (the
         * frame is the same kind of frame); a library built without them
         * ignores the request and compresses on this thread. */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_compressionLevel, ASSIGN_ZSTD_LEVEL);
        ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_nbWorkers,
                               (int)(cores > 8 ? 8 : cores > 1 ? cores : 0));
        ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_jobSize, ASSIGN_ZSTD_JOB_BYTES);
    }
    if (!st && size > 1) st = fgmm_source_partition(src, rank, size, &view, err);
    fgmm_source *mysrc = view ? view : src;
    int64_t first = 0, rows = 0;
    fgmm_source_pass_range(mysrc, &first, &rows);
    const int top = o->rule.max_lists;
    if (o->budget >= 0) {
        /* First pass: count; then one plan over every rank's counts. */
        if (!st) st = fgmm_list_budget_create(o->budget, &w.budget, err);
        w.next_row = first;
        if (!st) st = assign_pass(e, mysrc, m, top, &w, err);
        if (!st) fgmm_list_budget_counts(w.budget, my_counts);
        if ((st = gather(ops, red, size, st, my_counts, FGMM_LIST_BUDGET_COUNTS_BYTES, counts,
                         err)))
            goto done;
        fgmm_list_budget_plan_ranks(w.budget, counts, size, rank);
        passes = 2;
    }
    w.writing = 1;
    w.next_row = first;
    if (!st) st = assign_pass(e, mysrc, m, top, &w, err);
    if (!st) st = flush_shard(&w, err);

    /* Every rank's counts and list sizes to every rank, in rank order. */
    part[PART_ROWS] = w.total_rows;
    part[PART_ENTRIES] = w.total_entries;
    part[PART_MULTI] = w.multi_rows;
    if (w.list_sizes) memcpy(part + PART_HEAD, w.list_sizes, sizeof(int64_t) * (size_t)K);
    if ((st = gather(ops, red, size, st, part, sizeof(int64_t) * part_len, parts, err)))
        goto done;
    for (int r = 1; r < size; r++)
        for (size_t i = 0; i < part_len; i++) parts[i] += parts[(size_t)r * part_len + i];
    /* Rank 0 writes the manifest and moves the directory into place; the
     * others learn how that went. */
    if (rank == 0) {
        st = write_manifest(o, m, t.tmp, parts + PART_HEAD, parts[PART_ROWS], parts[PART_MULTI],
                            err);
        if (!st) st = fgmm_io_tmpdir_commit(&t, err); /* releases t either way */
    }
    if (size > 1 && (gst = gather(ops, red, size, st, mine, 1, paths, err))) st = gst;
    if (!st && sum) {
        sum->rows = parts[PART_ROWS];
        sum->entries = parts[PART_ENTRIES];
        sum->multi_rows = parts[PART_MULTI];
        sum->budget_cap = w.budget ? (int64_t)floor(o->budget * (double)sum->rows) : -1;
        sum->passes = passes;
        sum->seconds = now() - t_start;
        sum->select_s = w.select_s;
        sum->write_s = w.write_s;
        sum->shards = -1;
        fgmm_assignments *a;
        fgmm_error ignore;
        if (!fgmm_assignments_open(dir, &a, &ignore)) {
            sum->shards = fgmm_assignments_shards(a);
            fgmm_assignments_close(a);
        }
    }
done:
    if (t.tmp) fgmm_io_tmpdir_abort(&t);
    fgmm_source_close(view);
    fgmm_list_budget_free(w.budget);
    free(w.counts);
    free(w.loglik);
    free(w.lists);
    free(w.weights);
    free(w.frame);
    free(w.list_sizes);
    ZSTD_freeCCtx(w.cctx);
    for (int i = 0; i < QUEUE_CHUNKS; i++) fgmm_assign_rows_free(&w.queue.q[i].r);
    pthread_mutex_destroy(&w.queue.mu);
    pthread_cond_destroy(&w.queue.changed);
    free(counts);
    free(parts);
    free(paths);
    free(mine);
    return st;
}

fgmm_status fgmm_assignments_write(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                   const fgmm_assign_options *o, const char *dir,
                                   fgmm_assign_summary *sum, fgmm_error *err)
{
    return fgmm_assignments_write_ranks(e, src, m, o, dir, NULL, NULL, sum, err);
}
