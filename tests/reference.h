// reference.h - float64 references that DO materialise N x K, for tests only.
#ifndef FGMM_TEST_REFERENCE_H
#define FGMM_TEST_REFERENCE_H

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/fgmm.h"

struct RefStats {
    std::vector<double> nk, sx, sxx;  // K, K*D, K*D (raw moments: unshifted)
    double loglik = 0;
    std::vector<double> row_ll;
};

// The log-joint l_k(x) = log w_k + log N(x | mu_k, var_k) of every row and
// component, in float64 (N x K, row-major).
inline std::vector<double> reference_logits(const fgmm_model *m, const std::vector<float> &x,
                                            int64_t n)
{
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    bool sph = fgmm_model_covariance(m) == FGMM_COV_SPHERICAL;
    const double *w = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m),
                 *var = fgmm_model_variances_c(m);
    std::vector<double> L((size_t)n * K);
    std::vector<double> logdet(K, 0.0);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) logdet[k] += std::log(sph ? var[k] : var[(size_t)k * D + j]);
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < K; k++) {
            double q = 0;
            for (int j = 0; j < D; j++) {
                double v = sph ? var[k] : var[(size_t)k * D + j];
                double t = x[(size_t)i * D + j] - mu[(size_t)k * D + j];
                q += t * t / v;
            }
            L[(size_t)i * K + k] = std::log(w[k]) - 0.5 * (D * std::log(2 * M_PI) + logdet[k] + q);
        }
    return L;
}

// Direct E-step in float64 on float rows x (N x D).
inline RefStats reference_estep(const fgmm_model *m, const std::vector<float> &x, int64_t n)
{
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    RefStats r;
    r.nk.assign(K, 0);
    r.sx.assign((size_t)K * D, 0);
    r.sxx.assign((size_t)K * D, 0);
    std::vector<double> L = reference_logits(m, x, n);  // the N x K matrix, on purpose
    for (int64_t i = 0; i < n; i++) {
        double mx = -INFINITY;
        for (int k = 0; k < K; k++) mx = std::max(mx, L[(size_t)i * K + k]);
        double s = 0;
        for (int k = 0; k < K; k++) s += std::exp(L[(size_t)i * K + k] - mx);
        double lse = mx + std::log(s);
        r.loglik += lse;
        r.row_ll.push_back(lse);
        for (int k = 0; k < K; k++) {
            double rk = std::exp(L[(size_t)i * K + k] - lse);
            /* Below 1e-250 a responsibility cannot move a sum of any row
             * that matters, and its products would be subnormal doubles,
             * ~100x slower: well-separated mixtures made this reference
             * take minutes. */
            if (rk < 1e-250) continue;
            r.nk[k] += rk;
            for (int j = 0; j < D; j++) {
                double xv = x[(size_t)i * D + j];
                r.sx[(size_t)k * D + j] += rk * xv;
                r.sxx[(size_t)k * D + j] += rk * xv * xv;
            }
        }
    }
    return r;
}

inline double rel_err(const std::vector<double> &a, const std::vector<double> &b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return std::sqrt(num) / (std::sqrt(den) + 1e-300);
}

// Raw moments from shifted statistics: sum r x = sx' + nk s; sum r x^2 =
// sxx' + 2 s sx' + nk s^2.
inline void unshift(fgmm_stats *s, std::vector<double> &nk, std::vector<double> &sx,
                    std::vector<double> &sxx)
{
    int K = fgmm_stats_k(s), D = fgmm_stats_d(s);
    const double *sh = fgmm_stats_shift(s);
    const double *n = fgmm_stats_nk(s), *sums = fgmm_stats_sums(s);
    nk.assign(n, n + K);
    sx.assign((size_t)K * D, 0);
    sxx.assign((size_t)K * D, 0);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) {
            double a = sums[(size_t)k * 2 * D + j], b = sums[(size_t)k * 2 * D + D + j];
            sx[(size_t)k * D + j] = a + n[k] * sh[j];
            sxx[(size_t)k * D + j] = b + 2 * sh[j] * a + n[k] * sh[j] * sh[j];
        }
}

// A random diagonal mixture and n rows drawn from it (float32).
inline fgmm_model *random_mixture(fgmm_rng *rng, int K, int D, fgmm_covariance cov,
                                  double spread, int64_t n, std::vector<float> &x)
{
    fgmm_model *m = nullptr;
    fgmm_error err{};
    if (fgmm_model_create(K, D, cov, &m, &err)) return nullptr;
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *var = fgmm_model_variances(m);
    double tot = 0;
    for (int k = 0; k < K; k++) tot += w[k] = 0.3 + fgmm_rng_uniform(rng);
    for (int k = 0; k < K; k++) w[k] /= tot;
    for (int i = 0; i < K * D; i++) mu[i] = 3.0 + spread * fgmm_rng_normal(rng);
    size_t vl = fgmm_covariance_len(cov, K, D);
    for (size_t i = 0; i < vl; i++) var[i] = 0.3 + 2.0 * fgmm_rng_uniform(rng);
    x.resize((size_t)n * D);
    for (int64_t i = 0; i < n; i++) {
        double u = fgmm_rng_uniform(rng), cum = 0;
        int k = K - 1;
        for (int c = 0; c < K; c++)
            if ((cum += w[c]) > u) { k = c; break; }
        for (int j = 0; j < D; j++) {
            double v = cov == FGMM_COV_SPHERICAL ? var[k] : var[(size_t)k * D + j];
            x[(size_t)i * D + j] = (float)(mu[(size_t)k * D + j] + std::sqrt(v) * fgmm_rng_normal(rng));
        }
    }
    return m;
}

// A model whose logits cancel catastrophically in their expanded form, as
// MNIST's do: pixel-like rows (values 0..255, integers) where each
// component's block of `blank` dimensions is exactly 0 and the rest around
// 100 + 20 k; the model is the truth with variance 1e-6 (the default
// reg_covar) on the blank dimensions. Terms |y w1| there are ~2500 / 1e-6.
inline fgmm_model *blank_pixel_mixture(int64_t n, int K, int blank, int D, std::vector<float> &x)
{
    fgmm_error err{};
    fgmm_model *m = nullptr;
    if (fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err) != FGMM_OK) return nullptr;
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *var = fgmm_model_variances(m);
    for (int k = 0; k < K; k++) {
        w[k] = 1.0 / K;
        for (int j = 0; j < D; j++) {
            bool is_blank = j >= k * blank && j < (k + 1) * blank;
            mu[(size_t)k * D + j] = is_blank ? 0.0 : 100.0 + 20.0 * k;
            var[(size_t)k * D + j] = is_blank ? 1e-6 : 225.0;
        }
    }
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 99);
    x.assign((size_t)n * D, 0.f);
    for (int64_t i = 0; i < n; i++) {
        int k = (int)(i % K);
        for (int j = 0; j < D; j++) {
            double v = mu[(size_t)k * D + j];
            if (v != 0.0) {
                double u1 = fgmm_rng_uniform(&rng) + 1e-12, u2 = fgmm_rng_uniform(&rng);
                v += 15.0 * std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
                v = std::round(std::fmin(255.0, std::fmax(1.0, v)));
            }
            x[(size_t)i * D + j] = (float)v;
        }
    }
    return m;
}

// ---------------------------------------------------------------- full, tied

// Textbook Cholesky (a = L L^T, lower, row-major), independent of the
// product's LAPACK path. Returns false when a is not positive definite.
inline bool ref_cholesky(const double *a, int D, std::vector<double> &l)
{
    l.assign((size_t)D * D, 0.0);
    for (int i = 0; i < D; i++)
        for (int j = 0; j <= i; j++) {
            long double s = a[(size_t)i * D + j];
            for (int p = 0; p < j; p++) s -= (long double)l[(size_t)i * D + p] * l[(size_t)j * D + p];
            if (i == j) {
                if (!(s > 0)) return false;
                l[(size_t)i * D + i] = std::sqrt((double)s);
            } else {
                l[(size_t)i * D + j] = (double)(s / l[(size_t)j * D + j]);
            }
        }
    return true;
}

// The covariance matrix of component k (tied: the shared one).
inline const double *ref_cov(const fgmm_model *m, int k)
{
    const int D = fgmm_model_d(m);
    const bool full = fgmm_model_covariance(m) == FGMM_COV_FULL;
    return fgmm_model_variances_c(m) + (full ? (size_t)k * D * D : 0);
}

// log w_k + log N(x | mu_k, S_k) for every row and component, float64,
// N x K: forward substitution L t = x - mu, q = |t|^2.
inline std::vector<double> reference_logits_matrix(const fgmm_model *m,
                                                   const std::vector<float> &x, int64_t n)
{
    const int K = fgmm_model_k(m), D = fgmm_model_d(m);
    const double *w = fgmm_model_weights_c(m), *mu = fgmm_model_means_c(m);
    std::vector<double> L((size_t)n * K), t(D);
    for (int k = 0; k < K; k++) {
        std::vector<double> l;
        if (!ref_cholesky(ref_cov(m, k), D, l)) return {};
        double logdet = 0;
        for (int j = 0; j < D; j++) logdet += 2 * std::log(l[(size_t)j * D + j]);
        for (int64_t i = 0; i < n; i++) {
            double q = 0;
            for (int a = 0; a < D; a++) {
                double s = x[(size_t)i * D + a] - mu[(size_t)k * D + a];
                for (int b = 0; b < a; b++) s -= l[(size_t)a * D + b] * t[b];
                t[a] = s / l[(size_t)a * D + a];
                q += t[a] * t[a];
            }
            L[(size_t)i * K + k] = std::log(w[k]) - 0.5 * (D * std::log(2 * M_PI) + logdet + q);
        }
    }
    return L;
}

// One float64 EM step of a full or tied model, materialising the N x K
// responsibilities: the log-likelihood and the M-step's parameters (two
// passes: the new means, then the scatter about them; reg_covar added).
struct RefMatrixStep {
    double loglik = 0;
    std::vector<double> w, mu, cov;
};

inline RefMatrixStep reference_matrix_step(const fgmm_model *m, const std::vector<float> &x,
                                           int64_t n, double reg_covar)
{
    const int K = fgmm_model_k(m), D = fgmm_model_d(m);
    const bool full = fgmm_model_covariance(m) == FGMM_COV_FULL;
    RefMatrixStep r;
    std::vector<double> L = reference_logits_matrix(m, x, n);
    if (L.empty()) return r;
    std::vector<double> nk(K, 0.0);
    for (int64_t i = 0; i < n; i++) {
        double mx = -INFINITY, s = 0;
        for (int k = 0; k < K; k++) mx = std::max(mx, L[(size_t)i * K + k]);
        for (int k = 0; k < K; k++) s += std::exp(L[(size_t)i * K + k] - mx);
        const double lse = mx + std::log(s);
        r.loglik += lse;
        for (int k = 0; k < K; k++) nk[k] += L[(size_t)i * K + k] = std::exp(L[(size_t)i * K + k] - lse);
    }
    r.w.resize(K);
    r.mu.assign((size_t)K * D, 0.0);
    for (int k = 0; k < K; k++) r.w[k] = nk[k] / (double)n;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < K; k++)
            for (int j = 0; j < D; j++)
                r.mu[(size_t)k * D + j] += L[(size_t)i * K + k] * x[(size_t)i * D + j] / nk[k];
    const size_t DD = (size_t)D * D;
    r.cov.assign(full ? K * DD : DD, 0.0);
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < K; k++) {
            const double rk = L[(size_t)i * K + k];
            if (rk < 1e-250) continue;
            double *c = r.cov.data() + (full ? k * DD : 0);
            const double sc = full ? rk / nk[k] : rk / (double)n;
            for (int a = 0; a < D; a++) {
                const double da = x[(size_t)i * D + a] - r.mu[(size_t)k * D + a];
                for (int b = 0; b < D; b++)
                    c[(size_t)a * D + b] += sc * da * (x[(size_t)i * D + b] - r.mu[(size_t)k * D + b]);
            }
        }
    for (int k = 0; k < (full ? K : 1); k++)
        for (int j = 0; j < D; j++) r.cov[k * DD + (size_t)j * D + j] += reg_covar;
    r.loglik /= (double)n;
    return r;
}

// A random full (or tied) mixture and n rows drawn from it: covariances
// Q diag(e) Q^T with Q a random rotation (Gram-Schmidt) and eigenvalues
// log-uniform in [emin, emax], so cond = emax / emin.
inline fgmm_model *random_matrix_mixture(fgmm_rng *rng, int K, int D, fgmm_covariance cov,
                                         double spread, double emin, double emax, int64_t n,
                                         std::vector<float> &x)
{
    fgmm_model *m = nullptr;
    fgmm_error err{};
    if (fgmm_model_create(K, D, cov, &m, &err)) return nullptr;
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *c = fgmm_model_variances(m);
    double tot = 0;
    for (int k = 0; k < K; k++) tot += w[k] = 0.3 + fgmm_rng_uniform(rng);
    for (int k = 0; k < K; k++) w[k] /= tot;
    for (int i = 0; i < K * D; i++) mu[i] = 3.0 + spread * fgmm_rng_normal(rng);
    const int nm = cov == FGMM_COV_FULL ? K : 1;
    const size_t DD = (size_t)D * D;
    std::vector<std::vector<double>> chol(nm);
    for (int f = 0; f < nm; f++) {
        std::vector<double> q(DD), e(D);
        for (size_t i = 0; i < DD; i++) q[i] = fgmm_rng_normal(rng);
        for (int a = 0; a < D; a++) {  // rows of q orthonormal
            for (int b = 0; b < a; b++) {
                double dot = 0;
                for (int j = 0; j < D; j++) dot += q[(size_t)a * D + j] * q[(size_t)b * D + j];
                for (int j = 0; j < D; j++) q[(size_t)a * D + j] -= dot * q[(size_t)b * D + j];
            }
            double nr = 0;
            for (int j = 0; j < D; j++) nr += q[(size_t)a * D + j] * q[(size_t)a * D + j];
            for (int j = 0; j < D; j++) q[(size_t)a * D + j] /= std::sqrt(nr);
        }
        for (int j = 0; j < D; j++)
            e[j] = D == 1 ? emax : emin * std::pow(emax / emin, (double)j / (D - 1));
        double *cf = c + f * DD;
        for (int a = 0; a < D; a++)
            for (int b = 0; b < D; b++) {
                double s = 0;
                for (int j = 0; j < D; j++) s += q[(size_t)j * D + a] * e[j] * q[(size_t)j * D + b];
                cf[(size_t)a * D + b] = s;
            }
        for (int a = 0; a < D; a++)  // exactly symmetric
            for (int b = 0; b < a; b++) cf[(size_t)b * D + a] = cf[(size_t)a * D + b];
        if (!ref_cholesky(cf, D, chol[f])) {
            fgmm_model_free(m);
            return nullptr;
        }
    }
    x.resize((size_t)n * D);
    std::vector<double> z(D);
    for (int64_t i = 0; i < n; i++) {
        double u = fgmm_rng_uniform(rng), cum = 0;
        int k = K - 1;
        for (int c2 = 0; c2 < K; c2++)
            if ((cum += w[c2]) > u) { k = c2; break; }
        const std::vector<double> &l = chol[cov == FGMM_COV_FULL ? k : 0];
        for (int j = 0; j < D; j++) z[j] = fgmm_rng_normal(rng);
        for (int a = 0; a < D; a++) {
            double s = mu[(size_t)k * D + a];
            for (int b = 0; b <= a; b++) s += l[(size_t)a * D + b] * z[b];
            x[(size_t)i * D + a] = (float)s;
        }
    }
    return m;
}

// Rows whose best component by fgmm_assign (top_m candidates, the first of
// each row) is not the best of the reference logits L (N x K), past a near
// tie: a row counts only when the two logits differ by more than
// tie * (1 + |best|). -1 when fgmm_assign fails (err says why).
inline int64_t assign_misses(fgmm_engine *e, fgmm_source *src, const fgmm_model *m, int top_m,
                             const std::vector<double> &L, int64_t n, double tie,
                             fgmm_error *err)
{
    const int K = fgmm_model_k(m);
    std::vector<int32_t> first((size_t)n, -2);
    auto sink = [](void *u, int64_t row0, int64_t cnt, int mm, const int32_t *idx, const float *,
                   const float *, fgmm_error *) -> fgmm_status {
        std::vector<int32_t> &f = *static_cast<std::vector<int32_t> *>(u);
        for (int64_t i = 0; i < cnt; i++) f[(size_t)(row0 + i)] = idx[i * mm];
        return FGMM_OK;
    };
    if (fgmm_assign(e, src, m, top_m, sink, &first, err) != FGMM_OK) return -1;
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *l = L.data() + (size_t)i * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (l[k] > l[best]) best = k;
        const int got = first[(size_t)i];
        wrong += got != best &&
                 (got < 0 || got >= K || l[best] - l[got] > tie * (1 + std::fabs(l[best])));
    }
    return wrong;
}

#endif
