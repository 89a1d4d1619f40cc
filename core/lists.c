/*
 * lists.c - which inverted lists a row goes to (fgmm_list_select) and the
 * cap on extra copies over a whole assignment (fgmm_list_budget).
 */
#include "core/fgmm.h"
#include "core/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void fgmm_list_rule_default(fgmm_list_rule *r)
{
    r->max_lists = 2;
    r->min_resp = 0.1;
    r->ratio = 0;
    r->temperature = 1;
}

fgmm_status fgmm_list_rule_check(const fgmm_list_rule *r, fgmm_error *err)
{
    if (r->max_lists < 1 || r->max_lists > FGMM_MAX_TOP_M)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "max lists must be in 1..%d (got %d)",
                         FGMM_MAX_TOP_M, r->max_lists);
    if (!(r->min_resp > 0 && r->min_resp <= 1))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "minimum responsibility must be in (0, 1] (got %g)", r->min_resp);
    if (!(r->ratio >= 0 && r->ratio <= 1))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "ratio must be in [0, 1] (got %g)", r->ratio);
    if (!(r->temperature > 0 && isfinite(r->temperature)))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "temperature must be finite and > 0 (got %g)",
                         r->temperature);
    return FGMM_OK;
}

int fgmm_list_select(const fgmm_list_rule *r, const int32_t *idx, const float *lresp,
                     int32_t *lists, float *weights, double *ambiguity)
{
    const int m = r->max_lists;
    const double inv_t = 1.0 / r->temperature;
    /* Candidates arrive best first, so the first is the largest: the
     * normalising sum is taken relative to it and never overflows. */
    double w[FGMM_MAX_TOP_M];
    double sum = 0;
    int c = 0;
    for (; c < m && idx[c] >= 0; c++) {
        w[c] = exp(((double)lresp[c] - (double)lresp[0]) * inv_t);
        sum += w[c];
    }
    if (ambiguity) *ambiguity = c > 1 ? w[1] / sum : 0;
    if (c == 0) return 0;
    int kept = 0;
    const double w1 = w[0] / sum;
    lists[kept] = idx[0];
    weights[kept++] = (float)w1;
    for (int j = 1; j < c; j++) {
        double wj = w[j] / sum;
        if (!(wj >= r->min_resp || (r->ratio > 0 && wj >= r->ratio * w1))) break;
        lists[kept] = idx[j];
        weights[kept++] = (float)wj;
    }
    return kept;
}

/* w_2 is at most 1/2, so the bins cover [0, 1/2]; a row's bin only
 * orders it against others, so the width limits how finely the cap is
 * met (rows of the threshold bin are taken in row order). */
#define BUDGET_BINS 4096

struct fgmm_list_budget {
    double beta;
    int64_t rows;
    int64_t extras[BUDGET_BINS]; /* first pass: extra copies per bin */
    int cut;                     /* bins above keep all, this one in order */
    int64_t cap, left_in_cut;    /* the cap; what the cut bin may still take */
};

static int budget_bin(double a)
{
    int b = (int)(a * (2.0 * BUDGET_BINS));
    return b < 0 ? 0 : b >= BUDGET_BINS ? BUDGET_BINS - 1 : b;
}

fgmm_status fgmm_list_budget_create(double beta, fgmm_list_budget **out, fgmm_error *err)
{
    *out = NULL;
    if (!(beta >= 0 && isfinite(beta)))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "budget must be finite and >= 0 (got %g)", beta);
    fgmm_list_budget *b = calloc(1, sizeof *b);
    if (!b) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    b->beta = beta;
    *out = b;
    return FGMM_OK;
}

void fgmm_list_budget_free(fgmm_list_budget *b) { free(b); }

void fgmm_list_budget_count(fgmm_list_budget *b, double ambiguity, int extras)
{
    b->rows++;
    if (extras > 0) b->extras[budget_bin(ambiguity)] += extras;
}

int64_t fgmm_list_budget_plan(fgmm_list_budget *b)
{
    b->cap = (int64_t)floor(b->beta * (double)b->rows);
    int64_t taken = 0;
    int cut = BUDGET_BINS - 1;
    /* Walk down from the most ambiguous bin: every bin that fits whole is
     * kept whole; the first that does not becomes the cut. */
    while (cut >= 0 && taken + b->extras[cut] <= b->cap) taken += b->extras[cut--];
    b->cut = cut; /* -1: everything fits */
    b->left_in_cut = b->cap - taken;
    return b->cap;
}

int fgmm_list_budget_admit(fgmm_list_budget *b, double ambiguity, int extras)
{
    if (extras <= 0) return 0;
    int bin = budget_bin(ambiguity);
    if (bin > b->cut) return extras;
    if (bin < b->cut) return 0;
    int keep = extras <= b->left_in_cut ? extras : (int)b->left_in_cut;
    b->left_in_cut -= keep;
    return keep;
}

void fgmm_list_budget_counts(const fgmm_list_budget *b, void *out)
{
    memcpy(out, &b->rows, 8);
    memcpy((char *)out + 8, b->extras, sizeof b->extras);
}

int64_t fgmm_list_budget_plan_ranks(fgmm_list_budget *b, const void *all_counts, int size,
                                    int rank)
{
    /* The cut bin's rows are admitted in row order: ranks before this one
     * take theirs first. */
    int64_t mine_in = 0, before = 0;
    fgmm_list_budget total = {.beta = b->beta};
    for (int r = 0; r < size; r++) {
        const char *c = (const char *)all_counts + (size_t)r * FGMM_LIST_BUDGET_COUNTS_BYTES;
        int64_t rows, e[BUDGET_BINS];
        memcpy(&rows, c, 8);
        memcpy(e, c + 8, sizeof e);
        total.rows += rows;
        for (int i = 0; i < BUDGET_BINS; i++) total.extras[i] += e[i];
    }
    fgmm_list_budget_plan(&total);
    for (int r = 0; r < size && total.cut >= 0; r++) {
        const char *c = (const char *)all_counts + (size_t)r * FGMM_LIST_BUDGET_COUNTS_BYTES;
        int64_t e;
        memcpy(&e, c + 8 + 8 * (size_t)total.cut, 8);
        if (r < rank) before += e;
        if (r == rank) mine_in = e;
    }
    int64_t left = total.left_in_cut - before;
    b->cap = total.cap;
    b->cut = total.cut;
    b->left_in_cut = left < 0 ? 0 : left < mine_in ? left : mine_in;
    return total.cap;
}
