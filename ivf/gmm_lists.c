/*
 * gmm_lists.c - a mixture's inverted lists: one fgmm_assign pass, the top
 * component as the row's primary list and fgmm_list_select's lists for the
 * multi-list index.
 */
#include "ivf/fgmm_ivf.h"

#include <string.h>

typedef struct {
    const fgmm_list_rule *rule;
    fgmm_list_budget *budget; /* NULL: no cap */
    int counting;             /* the budget's first pass */
    int32_t *primary, *multi;
    int64_t rows; /* rows received so far: the sink sees them in order */
} gmm_sink_state;

/* lresp holds log-responsibilities (fgmm_assign's contract), which is what
 * fgmm_list_select reads. */
static fgmm_status gmm_sink(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                            const float *lresp, const float *ll, fgmm_error *err)
{
    (void)ll;
    gmm_sink_state *s = user;
    if (first_row != s->rows || m < s->rule->max_lists)
        return fgmm_fail(err, FGMM_ERR_INTERNAL,
                         "assignment: chunk at row %lld (expected %lld), %d candidates",
                         (long long)first_row, (long long)s->rows, m);
    const int ml = s->rule->max_lists;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *ix = idx + (size_t)i * m;
        const float *lr = lresp + (size_t)i * m;
        const int64_t row = first_row + i;
        if (ix[0] < 0)
            return fgmm_fail(err, FGMM_ERR_INTERNAL, "assignment: row %lld has no component",
                             (long long)row);
        if (s->counting) {
            int32_t l[FGMM_MAX_TOP_M];
            float w[FGMM_MAX_TOP_M];
            double amb;
            int c = fgmm_list_select(s->rule, ix, lr, l, w, &amb);
            fgmm_list_budget_count(s->budget, amb, c - 1);
            continue;
        }
        if (s->primary) s->primary[row] = ix[0];
        if (s->multi) {
            int32_t *out = s->multi + (size_t)row * ml;
            float w[FGMM_MAX_TOP_M];
            double amb;
            int kept = fgmm_list_select(s->rule, ix, lr, out, w, &amb);
            if (s->budget) kept = 1 + fgmm_list_budget_admit(s->budget, amb, kept - 1);
            for (int j = kept; j < ml; j++) out[j] = -1;
        }
    }
    s->rows += n;
    return FGMM_OK;
}

fgmm_status fgmm_ivf_gmm_lists(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                               const fgmm_list_rule *rule, double budget, int32_t *primary,
                               int32_t *multi, fgmm_error *err)
{
    fgmm_status st = fgmm_list_rule_check(rule, err);
    if (st) return st;
    /* max_lists may exceed K: fgmm_assign pads with -1, where
     * fgmm_list_select stops. */
    gmm_sink_state s = {rule, NULL, 0, primary, multi, 0};
    if (budget >= 0 && multi) {
        /* Two passes, as flashgmm assign makes them (fgmm_list_budget). */
        if ((st = fgmm_list_budget_create(budget, &s.budget, err))) return st;
        s.counting = 1;
        st = fgmm_assign(e, src, m, rule->max_lists, gmm_sink, &s, err);
        if (st) {
            fgmm_list_budget_free(s.budget);
            return st;
        }
        fgmm_list_budget_plan(s.budget);
        s.counting = 0;
        s.rows = 0;
    }
    st = fgmm_assign(e, src, m, rule->max_lists, gmm_sink, &s, err);
    fgmm_list_budget_free(s.budget);
    if (st) return st;
    if (s.rows != fgmm_source_rows(src))
        return fgmm_fail(err, FGMM_ERR_INTERNAL, "assignment covered %lld of %lld rows",
                         (long long)s.rows, (long long)fgmm_source_rows(src));
    return FGMM_OK;
}
