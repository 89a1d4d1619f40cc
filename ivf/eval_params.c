/*
 * eval_params.c - the evaluator's defaults and the parsers of its list
 * flags (methods, nprobe).
 */
#include "ivf/fgmm_ivf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void fgmm_ivf_eval_params_default(fgmm_ivf_eval_params *p)
{
    memset(p, 0, sizeof *p);
    p->nlist = 0;
    p->methods = FGMM_IVF_KMEANS | FGMM_IVF_KMEANS_SOAR | FGMM_IVF_GMM | FGMM_IVF_GMM_MULTI;
    p->cov = FGMM_COV_DIAG;
    fgmm_list_rule_default(&p->rule);
    p->budget = -1;
    p->kmeans_iter = 20;
    p->max_iter = 100;
    p->tol = 1e-3;
}

static const struct {
    const char *name;
    unsigned bit;
} METHODS[] = {
    {"kmeans", FGMM_IVF_KMEANS},
    {"kmeans-soar", FGMM_IVF_KMEANS_SOAR},
    {"gmm", FGMM_IVF_GMM},
    {"gmm-multi", FGMM_IVF_GMM_MULTI},
};

fgmm_status fgmm_ivf_methods_parse(const char *s, unsigned *out, fgmm_error *err)
{
    unsigned bits = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
            if (strlen(METHODS[i].name) == len && !strncmp(METHODS[i].name, p, len))
                bit = METHODS[i].bit;
        if (!bit)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "--methods: unknown method '%.*s' (kmeans, kmeans-soar, gmm, "
                             "gmm-multi)",
                             (int)len, p);
        if (bits & bit)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--methods: '%.*s' given twice", (int)len,
                             p);
        bits |= bit;
        if (!comma) break;
        p = comma + 1;
    }
    *out = bits;
    return FGMM_OK;
}

fgmm_status fgmm_ivf_nprobe_parse(const char *s, int *nprobe, int *n, fgmm_error *err)
{
    int c = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || v < 1 || v > 1 << 30)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "--nprobe expects increasing positive integers separated by "
                             "commas, got '%s'",
                             s);
        if (c == FGMM_IVF_MAX_SWEEP)
            return fgmm_fail(err, FGMM_ERR_ARGUMENT, "--nprobe: more than %d values in '%s'",
                             FGMM_IVF_MAX_SWEEP, s);
        if (c > 0 && v <= nprobe[c - 1])
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "--nprobe values must increase, got %ld after %d in '%s'", v,
                             nprobe[c - 1], s);
        nprobe[c++] = (int)v;
        if (!*end) break;
        p = end + 1;
    }
    *n = c;
    return FGMM_OK;
}
