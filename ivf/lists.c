/*
 * lists.c - inverted lists in CSR form from each row's list numbers, and
 * the sizes methods.csv reports.
 */
#include "ivf/fgmm_ivf.h"

#include <stdlib.h>
#include <string.h>

fgmm_status fgmm_ivf_lists_build(int k, int64_t n, int m, const int32_t *assign,
                                 fgmm_ivf_lists *out, fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    if (k < 1 || m < 1 || n < 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "lists: k = %d, m = %d, n = %lld", k, m,
                         (long long)n);
    int64_t *off = calloc((size_t)k + 1, sizeof(int64_t));
    if (!off) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d lists", k);
    int64_t multi = 0;
    /* First pass: validate and count, so the second can place every entry
     * at its final position (rows ascending within a list). */
    for (int64_t i = 0; i < n; i++) {
        const int32_t *a = assign + (size_t)i * m;
        int used = 0;
        for (int j = 0; j < m; j++) {
            if (a[j] < 0) continue;
            if (a[j] >= k) {
                free(off);
                return fgmm_fail(err, FGMM_ERR_ARGUMENT, "lists: row %lld names list %d of %d",
                                 (long long)i, a[j], k);
            }
            for (int l = 0; l < j; l++)
                if (a[l] == a[j]) {
                    free(off);
                    return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                                     "lists: row %lld names list %d twice", (long long)i, a[j]);
                }
            off[a[j] + 1]++;
            used++;
        }
        if (used == 0) {
            free(off);
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "lists: row %lld is in no list",
                             (long long)i);
        }
        multi += used > 1;
    }
    for (int j = 0; j < k; j++) off[j + 1] += off[j];
    if (off[k] > INT64_MAX / 4) {
        free(off);
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "lists: too many entries");
    }
    int32_t *ids = malloc(sizeof(int32_t) * ((size_t)off[k] + 1));
    int64_t *fill = malloc(sizeof(int64_t) * (size_t)k);
    if (!ids || !fill) {
        const long long entries = (long long)off[k];
        free(off);
        free(ids);
        free(fill);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld list entries",
                         entries);
    }
    memcpy(fill, off, sizeof(int64_t) * (size_t)k);
    for (int64_t i = 0; i < n; i++) {
        const int32_t *a = assign + (size_t)i * m;
        for (int j = 0; j < m; j++)
            if (a[j] >= 0) ids[fill[a[j]]++] = (int32_t)i;
    }
    free(fill);
    out->k = k;
    out->n_rows = n;
    out->offsets = off;
    out->ids = ids;
    out->rows_multi = multi;
    return FGMM_OK;
}

void fgmm_ivf_lists_free(fgmm_ivf_lists *l)
{
    if (!l) return;
    free(l->offsets);
    free(l->ids);
    memset(l, 0, sizeof *l);
}

fgmm_status fgmm_ivf_lists_stats(const fgmm_ivf_lists *l, fgmm_ivf_list_stats *out,
                                 fgmm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!l->offsets || l->k < 1) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "lists: empty index");
    int64_t *sizes = malloc(sizeof(int64_t) * (size_t)l->k);
    if (!sizes) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %d list sizes", l->k);
    int64_t mx = 0;
    for (int j = 0; j < l->k; j++) {
        sizes[j] = l->offsets[j + 1] - l->offsets[j];
        if (sizes[j] > mx) mx = sizes[j];
    }
    out->entries = l->offsets[l->k];
    out->multi_list_share = l->n_rows > 0 ? (double)l->rows_multi / (double)l->n_rows : 0;
    double mean = (double)out->entries / l->k;
    out->size_max_over_mean = mean > 0 ? (double)mx / mean : 0;
    out->gini = fgmm_ivf_gini(sizes, l->k);
    free(sizes);
    return FGMM_OK;
}
