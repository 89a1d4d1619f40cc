/*
 * metrics.c - recall of one query's results and the Gini coefficient of
 * list sizes.
 */
#include "ivf/fgmm_ivf.h"

#include <stdlib.h>

double fgmm_ivf_recall(const int32_t *retrieved, int n_ret, const int32_t *truth, int n_truth,
                       int k)
{
    int kk = k < n_truth ? k : n_truth;
    if (kk <= 0) return 0;
    int kr = k < n_ret ? k : n_ret;
    /* kk is at most FGMM_IVF_TOPK in use: the quadratic count is cheaper
     * than sorting copies. */
    int hit = 0;
    for (int i = 0; i < kr; i++)
        for (int j = 0; j < kk; j++)
            if (retrieved[i] == truth[j]) {
                hit++;
                break;
            }
    return (double)hit / kk;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

double fgmm_ivf_gini(const int64_t *sizes, int k)
{
    if (k <= 0) return 0;
    int64_t *s = malloc(sizeof(int64_t) * (size_t)k);
    if (!s) {
        /* Without scratch: the mean absolute difference directly, O(k^2). */
        double num = 0, tot = 0;
        for (int i = 0; i < k; i++) {
            tot += (double)sizes[i];
            for (int j = 0; j < k; j++) num += llabs(sizes[i] - sizes[j]);
        }
        return tot > 0 ? num / (2.0 * k * tot) : 0;
    }
    for (int i = 0; i < k; i++) s[i] = sizes[i];
    qsort(s, (size_t)k, sizeof *s, cmp_i64);
    /* G = sum_i (2i - k - 1) s_(i) / (k sum s), i = 1..k ascending: the
     * mean absolute difference over twice the mean. */
    double num = 0, tot = 0;
    for (int i = 0; i < k; i++) {
        num += (double)(2 * (i + 1) - k - 1) * (double)s[i];
        tot += (double)s[i];
    }
    free(s);
    return tot > 0 ? num / ((double)k * tot) : 0;
}
