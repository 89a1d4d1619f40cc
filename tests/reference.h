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

#endif
