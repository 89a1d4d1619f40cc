/*
 * model.c - the Gaussian mixture model: parameters in double, plus the
 * metadata of the fit that produced it.
 */
#include "core/backend.h"
#include "core/init.h"

#include <stdio.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fgmm_model {
    int k, d;
    fgmm_covariance cov;
    double *weights;   /* K */
    double *means;     /* K*D */
    double *variances; /* fgmm_covariance_len */
    fgmm_model_meta meta;
    char *text[3];     /* owned strings behind meta.source/init/device */
    double *loglik;
    int n_loglik, cap_loglik;
};

int fgmm_covariance_is_matrix(fgmm_covariance c)
{
    return c == FGMM_COV_FULL || c == FGMM_COV_TIED;
}

const char *fgmm_covariance_name(fgmm_covariance c)
{
    switch (c) {
    case FGMM_COV_DIAG: return "diag";
    case FGMM_COV_SPHERICAL: return "spherical";
    case FGMM_COV_FULL: return "full";
    case FGMM_COV_TIED: return "tied";
    }
    return "unknown";
}

fgmm_status fgmm_covariance_parse(const char *s, fgmm_covariance *out, fgmm_error *err)
{
    if (!strcmp(s, "diag")) *out = FGMM_COV_DIAG;
    else if (!strcmp(s, "spherical")) *out = FGMM_COV_SPHERICAL;
    else if (!strcmp(s, "full")) *out = FGMM_COV_FULL;
    else if (!strcmp(s, "tied")) *out = FGMM_COV_TIED;
    else
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "unknown covariance '%s'; expected diag, spherical, full or tied", s);
    return FGMM_OK;
}

size_t fgmm_covariance_len(fgmm_covariance c, int k, int d)
{
    switch (c) {
    case FGMM_COV_DIAG: return (size_t)k * d;
    case FGMM_COV_SPHERICAL: return (size_t)k;
    case FGMM_COV_FULL: return (size_t)k * d * d;
    case FGMM_COV_TIED: return (size_t)d * d;
    }
    return 0;
}

fgmm_status fgmm_model_create(int k, int d, fgmm_covariance cov, fgmm_model **out,
                              fgmm_error *err)
{
    *out = NULL;
    if (k <= 0 || d <= 0)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "model needs K > 0 and D > 0 (got K=%d, D=%d)",
                         k, d);
    if (cov != FGMM_COV_DIAG && cov != FGMM_COV_SPHERICAL && !fgmm_covariance_is_matrix(cov))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "unknown covariance type %d", (int)cov);
    if (fgmm_covariance_is_matrix(cov) && (double)d * d * (cov == FGMM_COV_FULL ? k : 1) > 1e11)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "a '%s' covariance of K=%d, D=%d would hold %.3g doubles",
                         fgmm_covariance_name(cov), k, d,
                         (double)d * d * (cov == FGMM_COV_FULL ? k : 1));
    fgmm_model *m = calloc(1, sizeof *m);
    if (!m) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory creating model");
    size_t vl = fgmm_covariance_len(cov, k, d);
    m->k = k;
    m->d = d;
    m->cov = cov;
    m->weights = malloc(sizeof(double) * (size_t)k);
    m->means = calloc((size_t)k * d, sizeof(double));
    m->variances = malloc(sizeof(double) * vl);
    if (!m->weights || !m->means || !m->variances) {
        fgmm_model_free(m);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for a model of K=%d, D=%d", k,
                         d);
    }
    for (int i = 0; i < k; i++) m->weights[i] = 1.0 / k;
    if (fgmm_covariance_is_matrix(cov)) {
        memset(m->variances, 0, sizeof(double) * vl);
        for (size_t b = 0; b < vl; b += (size_t)d * d)
            for (int j = 0; j < d; j++) m->variances[b + (size_t)j * (d + 1)] = 1.0;
    } else {
        for (size_t i = 0; i < vl; i++) m->variances[i] = 1.0;
    }
    m->meta.reg_covar = 1e-6;
    m->meta.source = m->meta.init = m->meta.device = "";
    *out = m;
    return FGMM_OK;
}

void fgmm_model_swap_values(fgmm_model *a, fgmm_model *b)
{
    double *w = a->weights, *mu = a->means, *v = a->variances;
    a->weights = b->weights;
    a->means = b->means;
    a->variances = b->variances;
    b->weights = w;
    b->means = mu;
    b->variances = v;
}

void fgmm_model_free(fgmm_model *m)
{
    if (!m) return;
    free(m->weights);
    free(m->means);
    free(m->variances);
    for (int i = 0; i < 3; i++) free(m->text[i]);
    free(m->loglik);
    free(m);
}

fgmm_status fgmm_model_clone(const fgmm_model *m, fgmm_model **out, fgmm_error *err)
{
    fgmm_model *c;
    fgmm_status st = fgmm_model_create(m->k, m->d, m->cov, &c, err);
    if (st) return st;
    memcpy(c->weights, m->weights, sizeof(double) * (size_t)m->k);
    memcpy(c->means, m->means, sizeof(double) * (size_t)m->k * m->d);
    memcpy(c->variances, m->variances, sizeof(double) * fgmm_covariance_len(m->cov, m->k, m->d));
    c->meta = m->meta;
    c->meta.source = c->meta.init = c->meta.device = "";
    if ((st = fgmm_model_set_text(c, FGMM_TEXT_SOURCE, m->meta.source, err)) ||
        (st = fgmm_model_set_text(c, FGMM_TEXT_INIT, m->meta.init, err)) ||
        (st = fgmm_model_set_text(c, FGMM_TEXT_DEVICE, m->meta.device, err))) {
        fgmm_model_free(c);
        return st;
    }
    for (int i = 0; i < m->n_loglik; i++)
        if ((st = fgmm_model_push_loglik(c, m->loglik[i], err))) {
            fgmm_model_free(c);
            return st;
        }
    *out = c;
    return FGMM_OK;
}

int fgmm_model_k(const fgmm_model *m) { return m->k; }
int fgmm_model_d(const fgmm_model *m) { return m->d; }
fgmm_covariance fgmm_model_covariance(const fgmm_model *m) { return m->cov; }
double *fgmm_model_weights(fgmm_model *m) { return m->weights; }
double *fgmm_model_means(fgmm_model *m) { return m->means; }
double *fgmm_model_variances(fgmm_model *m) { return m->variances; }
const double *fgmm_model_weights_c(const fgmm_model *m) { return m->weights; }
const double *fgmm_model_means_c(const fgmm_model *m) { return m->means; }
const double *fgmm_model_variances_c(const fgmm_model *m) { return m->variances; }
fgmm_model_meta *fgmm_model_meta_get(fgmm_model *m) { return &m->meta; }
const fgmm_model_meta *fgmm_model_meta_c(const fgmm_model *m) { return &m->meta; }

fgmm_status fgmm_model_set_text(fgmm_model *m, fgmm_text_field f, const char *s, fgmm_error *err)
{
    if ((int)f < 0 || (int)f > 2) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "bad text field");
    char *c = strdup(s ? s : "");
    if (!c) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    free(m->text[f]);
    m->text[f] = c;
    if (f == FGMM_TEXT_SOURCE) m->meta.source = c;
    else if (f == FGMM_TEXT_INIT) m->meta.init = c;
    else m->meta.device = c;
    return FGMM_OK;
}

fgmm_status fgmm_model_push_loglik(fgmm_model *m, double ll, fgmm_error *err)
{
    if (m->n_loglik == m->cap_loglik) {
        int cap = m->cap_loglik ? 2 * m->cap_loglik : 16;
        double *p = realloc(m->loglik, sizeof(double) * (size_t)cap);
        if (!p) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        m->loglik = p;
        m->cap_loglik = cap;
    }
    m->loglik[m->n_loglik++] = ll;
    return FGMM_OK;
}

int fgmm_model_loglik_count(const fgmm_model *m) { return m->n_loglik; }
const double *fgmm_model_loglik(const fgmm_model *m) { return m->loglik; }

/* Full and tied: each matrix finite, symmetric and positive definite. */
static fgmm_status validate_matrices(const fgmm_model *m, const char *what, fgmm_error *err)
{
    const int D = m->d, n = m->cov == FGMM_COV_FULL ? m->k : 1;
    const size_t DD = (size_t)D * D;
    double *l = malloc(sizeof(double) * DD);
    if (!l) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    fgmm_status st = FGMM_OK;
    char who[40] = "the tied covariance";
    for (int k = 0; k < n && !st; k++) {
        const double *c = m->variances + (size_t)k * DD;
        if (m->cov == FGMM_COV_FULL) snprintf(who, sizeof who, "covariance of component %d", k);
        for (int i = 0; i < D && !st; i++)
            for (int j = 0; j <= i && !st; j++) {
                double a = c[(size_t)i * D + j], b = c[(size_t)j * D + i];
                if (!isfinite(a) || !isfinite(b))
                    st = fgmm_fail(err, FGMM_ERR_DATA, "%s: %s has %g at (%d, %d)", what, who,
                                   isfinite(a) ? b : a, i, j);
                else if (fabs(a - b) > 1e-6 * (fabs(a) + fabs(b)))
                    st = fgmm_fail(err, FGMM_ERR_DATA,
                                   "%s: %s is not symmetric: %g at (%d, %d), %g at (%d, %d)", what,
                                   who, a, i, j, b, j, i);
            }
        int minor = st ? 0 : fgmm_cholesky(c, D, l);
        if (minor)
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "%s: %s is not positive definite (leading minor of order %d)", what,
                           who, minor);
    }
    free(l);
    return st;
}

fgmm_status fgmm_model_validate(const fgmm_model *m, const char *what, fgmm_error *err)
{
    double sum = 0;
    for (int k = 0; k < m->k; k++) {
        if (!(m->weights[k] > 0) || !isfinite(m->weights[k]))
            return fgmm_fail(err, FGMM_ERR_DATA, "%s: weight %d is %g; weights must be > 0", what,
                             k, m->weights[k]);
        sum += m->weights[k];
    }
    if (fabs(sum - 1.0) > 1e-6)
        return fgmm_fail(err, FGMM_ERR_DATA, "%s: weights sum to %.9g; expected 1", what, sum);
    for (size_t i = 0; i < (size_t)m->k * m->d; i++)
        if (!isfinite(m->means[i]))
            return fgmm_fail(err, FGMM_ERR_DATA, "%s: mean of component %zu, dim %zu is %g", what,
                             i / m->d, i % m->d, m->means[i]);
    size_t vl = fgmm_covariance_len(m->cov, m->k, m->d);
    if (fgmm_covariance_is_matrix(m->cov)) return validate_matrices(m, what, err);
    for (size_t i = 0; i < vl; i++)
        if (!(m->variances[i] > 0) || !isfinite(m->variances[i]))
            return fgmm_fail(err, FGMM_ERR_DATA,
                             "%s: variance %zu is %g; variances must be finite and > 0", what, i,
                             m->variances[i]);
    return FGMM_OK;
}

void fgmm_model_shift(const fgmm_model *m, double *out)
{
    for (int j = 0; j < m->d; j++) out[j] = 0;
    for (int k = 0; k < m->k; k++)
        for (int j = 0; j < m->d; j++) out[j] += m->weights[k] * m->means[(size_t)k * m->d + j];
}
