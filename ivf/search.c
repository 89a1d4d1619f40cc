/*
 * search.c - IVF-Flat search over an nprobe sweep: rank the lists, scan
 * them in order with exact distances, score the results at each nprobe.
 *
 * One scan per query serves the whole sweep: the lists probed at nprobe p
 * are the first p of the ranking, so the results at p are those of the
 * scan's prefix. Counts and recalls are kept per query and averaged in
 * query order at the end: the output does not depend on the threads.
 */
#include "ivf/fgmm_ivf.h"
#include "ivf/internal.h"

#include <stdlib.h>
#include <string.h>

/* (distance, id) order: a total order, so the top set is unique. */
static int worse(float da, int32_t ia, float db, int32_t ib)
{
    return da > db || (da == db && ia > ib);
}

/* A max-heap of the best rows so far: the root is the worst kept. */
typedef struct {
    float d[FGMM_IVF_TOPK];
    int32_t id[FGMM_IVF_TOPK];
    int n;
} topk_heap;

static void heap_offer(topk_heap *h, float d, int32_t id)
{
    int i;
    if (h->n < FGMM_IVF_TOPK) {
        i = h->n++;
        while (i > 0) {
            int p = (i - 1) / 2;
            if (!worse(d, id, h->d[p], h->id[p])) break;
            h->d[i] = h->d[p];
            h->id[i] = h->id[p];
            i = p;
        }
        h->d[i] = d;
        h->id[i] = id;
        return;
    }
    if (!worse(h->d[0], h->id[0], d, id)) return;
    i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        float md = d;
        int32_t mid = id;
        if (l < h->n && worse(h->d[l], h->id[l], md, mid)) m = l, md = h->d[l], mid = h->id[l];
        if (r < h->n && worse(h->d[r], h->id[r], md, mid)) m = r;
        if (m == i) break;
        h->d[i] = h->d[m];
        h->id[i] = h->id[m];
        i = m;
    }
    h->d[i] = d;
    h->id[i] = id;
}

/* The heap's rows best first into ids; returns their count. */
static int heap_sorted(const topk_heap *h, int32_t *ids)
{
    float d[FGMM_IVF_TOPK];
    for (int i = 0; i < h->n; i++) {
        float v = h->d[i];
        int32_t vi = h->id[i];
        int j = i;
        for (; j > 0 && worse(d[j - 1], ids[j - 1], v, vi); j--) {
            d[j] = d[j - 1];
            ids[j] = ids[j - 1];
        }
        d[j] = v;
        ids[j] = vi;
    }
    return h->n;
}

typedef struct {
    const fgmm_ivf_lists *lists;
    const fgmm_ivf_coarse *c;
    fgmm_ivf_probe how;
    const float *base, *queries;
    int64_t nq;
    const int32_t *gt;
    int gt_k;
    const int *nprobe;
    int n_nprobe, nt;
    int64_t *dist, *dedup; /* nq * n_nprobe */
    double *recall;        /* nq * n_nprobe * 3 */
    fgmm_status *st;       /* per thread */
    fgmm_error *errs;      /* per thread */
} sweep_job;

static void sweep_part(int t, void *arg)
{
    const sweep_job *j = arg;
    const int k = j->c->k, d = j->c->d;
    const int64_t n = j->lists->n_rows;
    uint32_t *stamp = calloc((size_t)n + 1, sizeof(uint32_t));
    double *scratch = malloc(sizeof(double) * 2 * (size_t)k);
    int32_t *order = malloc(sizeof(int32_t) * (size_t)k);
    topk_heap *h = malloc(sizeof *h);
    if (!stamp || !scratch || !order || !h) {
        j->st[t] = fgmm_fail(&j->errs[t], FGMM_ERR_NO_MEMORY, "out of memory for the search");
        goto done;
    }
    int64_t lo, hi;
    ivf_block(j->nq, t, j->nt, &lo, &hi);
    const int max_probe = j->nprobe[j->n_nprobe - 1];
    for (int64_t qi = lo; qi < hi; qi++) {
        const float *q = j->queries + (size_t)qi * d;
        /* Each query marks the rows it has met with its own stamp, so the
         * array is never cleared (query numbers are below 2^32 - 1). */
        const uint32_t s = (uint32_t)(qi + 1);
        fgmm_ivf_rank_lists(j->c, j->how, q, scratch, order);
        int64_t dist = k, dedup = k;
        h->n = 0;
        int pi = 0;
        for (int p = 0; p < max_probe; p++) {
            const int l = order[p];
            for (int64_t e = j->lists->offsets[l]; e < j->lists->offsets[l + 1]; e++) {
                const int32_t row = j->lists->ids[e];
                /* Computed and counted even when met before: an IVF scan
                 * does not know a row's other lists. */
                float dd = fgmm_ivf_l2(q, j->base + (size_t)row * d, d);
                dist++;
                if (stamp[row] == s) continue;
                stamp[row] = s;
                dedup++;
                heap_offer(h, dd, row);
            }
            if (p + 1 == j->nprobe[pi]) {
                int32_t got[FGMM_IVF_TOPK];
                int ng = heap_sorted(h, got);
                const size_t at = (size_t)qi * j->n_nprobe + pi;
                const int32_t *truth = j->gt + (size_t)qi * j->gt_k;
                j->dist[at] = dist;
                j->dedup[at] = dedup;
                j->recall[at * 3 + 0] = fgmm_ivf_recall(got, ng, truth, j->gt_k, 1);
                j->recall[at * 3 + 1] = fgmm_ivf_recall(got, ng, truth, j->gt_k, 10);
                j->recall[at * 3 + 2] = fgmm_ivf_recall(got, ng, truth, j->gt_k, 100);
                pi++;
            }
        }
    }
done:
    free(stamp);
    free(scratch);
    free(order);
    free(h);
}

fgmm_status fgmm_ivf_search_sweep(const fgmm_ivf_lists *lists, const fgmm_ivf_coarse *c,
                                  fgmm_ivf_probe how, const float *base, const float *queries,
                                  int64_t nq, const int32_t *gt, int gt_k, const int *nprobe,
                                  int n_nprobe, int threads, fgmm_ivf_sweep *out,
                                  fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    if (lists->k != c->k)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "search: %d lists but %d means", lists->k,
                         c->k);
    if (n_nprobe < 1 || n_nprobe > FGMM_IVF_MAX_SWEEP)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "search: %d nprobe values (1..%d)", n_nprobe,
                         FGMM_IVF_MAX_SWEEP);
    for (int i = 0; i < n_nprobe; i++)
        if (nprobe[i] < 1 || nprobe[i] > c->k || (i > 0 && nprobe[i] <= nprobe[i - 1]))
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "search: nprobe values must increase within 1..%d (got %d)", c->k,
                             nprobe[i]);
    if (nq < 1 || nq >= (int64_t)UINT32_MAX || gt_k < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "search: %lld queries, truth depth %d",
                         (long long)nq, gt_k);
    if (how == FGMM_IVF_PROBE_POSTERIOR && !c->log_const)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "search: posterior order without a mixture");
    sweep_job j = {lists, c, how, base, queries, nq, gt, gt_k, nprobe, n_nprobe,
                   ivf_threads(threads, nq), NULL, NULL, NULL, NULL, NULL};
    const size_t cells = (size_t)nq * n_nprobe;
    j.dist = malloc(sizeof(int64_t) * cells);
    j.dedup = malloc(sizeof(int64_t) * cells);
    j.recall = malloc(sizeof(double) * cells * 3);
    j.st = calloc((size_t)j.nt, sizeof(fgmm_status));
    j.errs = calloc((size_t)j.nt, sizeof(fgmm_error));
    fgmm_status st = FGMM_OK;
    if (!j.dist || !j.dedup || !j.recall || !j.st || !j.errs) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld queries' results",
                       (long long)nq);
        goto done;
    }
    if ((st = fgmm_parallel_run(j.nt, sweep_part, &j, err))) goto done;
    for (int t = 0; t < j.nt; t++)
        if (j.st[t]) {
            *err = j.errs[t];
            st = j.st[t];
            goto done;
        }
    for (int pi = 0; pi < n_nprobe; pi++) {
        double sd = 0, su = 0, r[3] = {0, 0, 0};
        for (int64_t qi = 0; qi < nq; qi++) {
            const size_t at = (size_t)qi * n_nprobe + pi;
            sd += (double)j.dist[at];
            su += (double)j.dedup[at];
            for (int m = 0; m < 3; m++) r[m] += j.recall[at * 3 + m];
        }
        out->dist[pi] = sd / (double)nq;
        out->dist_dedup[pi] = su / (double)nq;
        for (int m = 0; m < 3; m++) out->recall[m][pi] = r[m] / (double)nq;
    }
done:
    free(j.dist);
    free(j.dedup);
    free(j.recall);
    free(j.st);
    free(j.errs);
    return st;
}
