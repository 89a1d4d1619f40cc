// covariance_test.cc - full and tied covariances on the CPU engine against
// a float64 reference that materialises N x K: one EM step (statistics and
// M-step), scoring and assignment, odd sizes, K=1, D=1, ill-conditioned
// matrices; the layouts' reduction and serialisation; the errors a
// covariance that is not positive definite gets; model files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "backends/fgmm_backends.h"
#include "core/backend.h" /* the back-end interface */
}
#include "core/fgmm.h"
#include "io/fgmm_io.h"
#include "tests/reference.h"

namespace {

struct Case {
    fgmm_covariance cov;
    int64_t n;
    int K, D;
    double emin, emax, tol;
    double move = 0.3;  // the start's means moved by move * sqrt(emax)
};

// The truth with its means moved, so the step has work to do.
fgmm_model *perturbed(const fgmm_model *truth, fgmm_rng *rng, double by)
{
    fgmm_model *m = nullptr;
    fgmm_error err{};
    if (fgmm_model_clone(truth, &m, &err)) return nullptr;
    double *mu = fgmm_model_means(m);
    for (int i = 0; i < fgmm_model_k(m) * fgmm_model_d(m); i++) mu[i] += by * fgmm_rng_normal(rng);
    return m;
}

void one_step(const Case &c, uint64_t seed, int threads = 2, std::vector<double> *out_params = nullptr)
{
    SCOPED_TRACE(std::string(fgmm_covariance_name(c.cov)) + " n=" + std::to_string(c.n) +
                 " K=" + std::to_string(c.K) + " D=" + std::to_string(c.D) + " seed " +
                 std::to_string(seed));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    fgmm_model *truth = random_matrix_mixture(&rng, c.K, c.D, c.cov, 2.0, c.emin, c.emax, c.n, x);
    ASSERT_NE(truth, nullptr);
    fgmm_model *m = perturbed(truth, &rng, c.move * std::sqrt(c.emax));
    ASSERT_NE(m, nullptr);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, c.n, c.D, "rows", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, threads, &e, &err), FGMM_OK);
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create_cov(c.K, c.D, c.cov, nullptr, &s, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_stats_rows(s), c.n);
    const double reg = 1e-6;
    RefMatrixStep ref = reference_matrix_step(m, x, c.n, reg);
    ASSERT_FALSE(ref.w.empty());
    const double ll = fgmm_stats_loglik(s) / (double)c.n;
    EXPECT_NEAR(ll, ref.loglik, c.tol * std::fabs(ref.loglik)) << "log-likelihood";
    fgmm_model *next;
    ASSERT_EQ(fgmm_model_clone(m, &next, &err), FGMM_OK);
    int reseeded = -1;
    ASSERT_EQ(fgmm_stats_mstep(s, next, reg, 1e-9, &reseeded, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(reseeded, 0);
    const size_t vl = fgmm_covariance_len(c.cov, c.K, c.D);
    std::vector<double> a(fgmm_model_weights_c(next), fgmm_model_weights_c(next) + c.K);
    EXPECT_LE(rel_err(a, ref.w), c.tol) << "weights";
    a.assign(fgmm_model_means_c(next), fgmm_model_means_c(next) + (size_t)c.K * c.D);
    EXPECT_LE(rel_err(a, ref.mu), c.tol) << "means";
    a.assign(fgmm_model_variances_c(next), fgmm_model_variances_c(next) + vl);
    EXPECT_LE(rel_err(a, ref.cov), c.tol) << "covariances";
    EXPECT_EQ(fgmm_model_validate(next, "after the step", &err), FGMM_OK) << err.msg;
    if (out_params) {
        out_params->assign(fgmm_model_variances_c(next), fgmm_model_variances_c(next) + vl);
        out_params->insert(out_params->end(), fgmm_model_means_c(next),
                           fgmm_model_means_c(next) + (size_t)c.K * c.D);
    }

    // Scoring and top-1 assignment against the same reference logits.
    std::vector<double> L = reference_logits_matrix(m, x, c.n);
    double mean_ll;
    std::vector<float> per_row(c.n);
    ASSERT_EQ(fgmm_score(e, src, m, &mean_ll, per_row.data(), &err), FGMM_OK) << err.msg;
    EXPECT_NEAR(mean_ll, ref.loglik, c.tol * std::fabs(ref.loglik));
    // A near tie may go either way at double rounding.
    const int64_t wrong = assign_misses(e, src, m, 1, L, c.n, 1e-9, &err);
    ASSERT_GE(wrong, 0) << err.msg;
    EXPECT_EQ(wrong, 0) << "rows assigned to another component than the reference's best";

    fgmm_model_free(next);
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
    fgmm_model_free(truth);
}

uint64_t fresh_seed() { return (uint64_t)time(nullptr) * 2654435761u; }

// A component whose Nk fell below min_count restarts on a worst-explained
// row with the average of the surviving components' new covariances; the
// others get scatter/Nk - d d^T + reg_covar I.
TEST(FullCovariance, CollapsedComponentRestartsWithTheAverageCovariance)
{
    const int K = 3, D = 3;
    const double reg = 1e-6;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 17);
    std::vector<float> x;
    fgmm_model *m = random_matrix_mixture(&rng, K, D, FGMM_COV_FULL, 2.0, 0.5, 2.0, 10, x);
    ASSERT_NE(m, nullptr);
    fgmm_error err{};
    std::vector<double> shift(fgmm_model_means_c(m), fgmm_model_means_c(m) + K * D);
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create_cov(K, D, FGMM_COV_FULL, shift.data(), &s, &err), FGMM_OK);
    // Components 0 and 2: covariance C_k = diag(k + 1) + 0.25 off the
    // diagonal, mean offset d_k from the shift, over nk rows.
    const double nks[K] = {50, 0, 80};
    std::vector<double> want_cov((size_t)K * D * D);
    for (int k : {0, 2}) {
        const double nk = nks[k];
        fgmm_stats_nk(s)[k] = nk;
        double d[D];
        for (int j = 0; j < D; j++) d[j] = 0.1 * (j + 1) * (k + 1);
        for (int j = 0; j < D; j++) fgmm_stats_sums(s)[(size_t)k * 2 * D + j] = nk * d[j];
        for (int r = 0; r < D; r++)
            for (int c = 0; c <= r; c++) {
                const double cv = r == c ? k + 1.0 : 0.25;
                fgmm_stats_scatter(s)[((size_t)k * D + r) * D + c] = nk * (cv + d[r] * d[c]);
            }
    }
    fgmm_stats_add_loglik(s, -1.0, 130);
    const float row[D] = {7, 8, 9};
    fgmm_stats_offer_row(s, 4, -99.0, row, FGMM_F32);
    int reseeded = -1;
    ASSERT_EQ(fgmm_stats_mstep(s, m, reg, 1e-9, &reseeded, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(reseeded, 1);
    const double *cov = fgmm_model_variances_c(m), *mu = fgmm_model_means_c(m);
    for (int r = 0; r < D; r++)
        for (int c = 0; c < D; c++) {
            const size_t i = (size_t)r * D + c;
            for (int k : {0, 2})
                EXPECT_NEAR(cov[(size_t)k * D * D + i], (r == c ? k + 1.0 + reg : 0.25), 1e-12)
                    << k << " " << r << " " << c;
            EXPECT_EQ(cov[(size_t)D * D + i], (cov[i] + cov[2 * (size_t)D * D + i]) / 2)
                << r << " " << c;
        }
    for (int j = 0; j < D; j++) EXPECT_EQ(mu[D + j], (double)row[j]);
    fgmm_stats_free(s);
    fgmm_model_free(m);
}

TEST(FullCovariance, OneStepAgainstFloat64)
{
    one_step({FGMM_COV_FULL, 3001, 5, 7, 0.2, 3.0, 1e-9}, 1);
    one_step({FGMM_COV_FULL, 70001, 3, 4, 0.5, 2.0, 1e-9}, 2);  // crosses a chunk
    one_step({FGMM_COV_FULL, 999, 1, 1, 1.0, 1.0, 1e-9}, 3);
    one_step({FGMM_COV_FULL, 2000, 1, 6, 0.1, 1.0, 1e-9}, 4);
    one_step({FGMM_COV_FULL, 1500, 4, 1, 0.5, 0.5, 1e-9}, 5);
    one_step({FGMM_COV_FULL, 4000, 6, 33, 0.3, 3.0, 1e-9}, fresh_seed());
}

TEST(TiedCovariance, OneStepAgainstFloat64)
{
    one_step({FGMM_COV_TIED, 3001, 5, 7, 0.2, 3.0, 1e-9}, 11);
    one_step({FGMM_COV_TIED, 70001, 3, 4, 0.5, 2.0, 1e-9}, 12);
    one_step({FGMM_COV_TIED, 999, 1, 1, 1.0, 1.0, 1e-9}, 13);
    one_step({FGMM_COV_TIED, 1500, 4, 1, 0.5, 0.5, 1e-9}, 15);
    one_step({FGMM_COV_TIED, 4000, 6, 33, 0.3, 3.0, 1e-9}, fresh_seed());
}

TEST(MatrixCovariance, IllConditioned)
{
    // Eigenvalues from 1e-6 to 1e2: a condition number of 1e8.
    // The start's means move by 1e-4 (0.1 of the narrowest direction's
    // deviation): further, and every row goes to one component.
    one_step({FGMM_COV_FULL, 5000, 3, 12, 1e-6, 1e2, 1e-6, 1e-5}, 21);
    one_step({FGMM_COV_TIED, 5000, 3, 12, 1e-6, 1e2, 1e-6, 1e-5}, 22);
}

TEST(MatrixCovariance, ThreadCountDoesNotChangeBits)
{
    std::vector<double> one, two;
    one_step({FGMM_COV_FULL, 9000, 4, 9, 0.3, 2.0, 1e-9}, 31, 1, &one);
    one_step({FGMM_COV_FULL, 9000, 4, 9, 0.3, 2.0, 1e-9}, 31, 2, &two);
    ASSERT_EQ(one.size(), two.size());
    EXPECT_EQ(0, memcmp(one.data(), two.data(), sizeof(double) * one.size()));
}

// A fit from each initialisation ends near the truth's own log-likelihood
// (tied from random responsibilities left out: every mean starts at the
// data's centre under one shared covariance, a saddle EM leaves too slowly
// for its tolerance).
TEST(MatrixCovariance, FitsFromEachInitialisation)
{
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED})
        for (fgmm_init_kind init : {FGMM_INIT_KMEANSPP, FGMM_INIT_KMEANS, FGMM_INIT_RANDOM}) {
            if (cov == FGMM_COV_TIED && init == FGMM_INIT_RANDOM) continue;
            SCOPED_TRACE(std::string(fgmm_covariance_name(cov)) + " init " + std::to_string(init));
            fgmm_rng rng;
            fgmm_rng_seed(&rng, 41);
            std::vector<float> x;
            const int64_t n = 12000;
            fgmm_model *truth = random_matrix_mixture(&rng, 4, 6, cov, 6.0, 0.2, 2.0, n, x);
            ASSERT_NE(truth, nullptr);
            fgmm_error err{};
            fgmm_source *src;
            fgmm_engine *e;
            ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, 6, "rows", &src, &err), FGMM_OK);
            ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
            double truth_ll;
            ASSERT_EQ(fgmm_score(e, src, truth, &truth_ll, nullptr, &err), FGMM_OK) << err.msg;
            fgmm_fit_params p;
            fgmm_fit_params_default(&p);
            p.k = 4;
            p.covariance = cov;
            p.init = init;
            p.max_iter = 200;
            p.tol = 1e-6;
            fgmm_model *m;
            ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
            EXPECT_EQ(fgmm_model_covariance(m), cov);
            const double got = fgmm_model_loglik(m)[fgmm_model_loglik_count(m) - 1];
            EXPECT_GT(got, truth_ll - 0.02) << "truth " << truth_ll;
            EXPECT_EQ(fgmm_model_validate(m, "fit", &err), FGMM_OK) << err.msg;
            fgmm_model_free(m);
            fgmm_model_free(truth);
            fgmm_engine_free(e);
            fgmm_source_close(src);
        }
}

TEST(MatrixCovariance, ValidateNamesTheComponent)
{
    fgmm_model *m;
    fgmm_error err{};
    ASSERT_EQ(fgmm_model_create(3, 2, FGMM_COV_FULL, &m, &err), FGMM_OK);
    EXPECT_EQ(fgmm_model_validate(m, "model", &err), FGMM_OK) << err.msg;  // identities
    double *c = fgmm_model_variances(m) + 4;                                // component 1
    c[1] = c[2] = 2.0;  // [[1, 2], [2, 1]]: eigenvalues 3 and -1
    ASSERT_EQ(fgmm_model_validate(m, "model", &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("component 1"), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("positive definite"), std::string::npos) << err.msg;
    // A pass refuses the same matrix (its factor does not exist), naming it.
    std::vector<float> x(10 * 2, 1.0f);
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 10, 2, "rows", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    double ll;
    EXPECT_EQ(fgmm_score(e, src, m, &ll, nullptr, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("component 1"), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("positive definite"), std::string::npos) << err.msg;
    fgmm_engine_free(e);
    fgmm_source_close(src);
    c[1] = 0.5;  // not symmetric
    ASSERT_EQ(fgmm_model_validate(m, "model", &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("symmetric"), std::string::npos) << err.msg;
    fgmm_model_free(m);
}

// Two rows in three dimensions: a scatter of rank 1, which no reg_covar
// of 0 can make positive definite. scikit-learn refuses it too.
TEST(MatrixCovariance, SingularComponentFailsTheMStep)
{
    fgmm_error err{};
    fgmm_stats *s;
    fgmm_model *m;
    ASSERT_EQ(fgmm_stats_create_cov(2, 3, FGMM_COV_FULL, nullptr, &s, &err), FGMM_OK);
    ASSERT_EQ(fgmm_model_create(2, 3, FGMM_COV_FULL, &m, &err), FGMM_OK);
    double *nk = fgmm_stats_nk(s), *sums = fgmm_stats_sums(s), *sc = fgmm_stats_scatter(s);
    nk[0] = nk[1] = 2;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 3; i++) {
            sums[k * 6 + i] = 2.0 * (i + 1);
            for (int j = 0; j <= i; j++)
                sc[k * 9 + i * 3 + j] = (k == 1 ? 2.0 * (i + 1) * (j + 1) : 0) + (i == j) * 4.0;
        }
    fgmm_stats_add_loglik(s, -1.0, 4);
    // Component 0: scatter 4 I about a mean 1, 2, 3 away: covariance 2 I - d d^T, not definite.
    ASSERT_EQ(fgmm_stats_mstep(s, m, 0.0, 1e-9, nullptr, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("component 0"), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("reg_covar"), std::string::npos) << err.msg;
    // A layout that is not the model's.
    fgmm_model *diag;
    ASSERT_EQ(fgmm_model_create(2, 3, FGMM_COV_TIED, &diag, &err), FGMM_OK);
    EXPECT_EQ(fgmm_stats_mstep(s, diag, 1e-6, 1e-9, nullptr, &err), FGMM_ERR_ARGUMENT);
    fgmm_model_free(diag);
    fgmm_model_free(m);
    fgmm_stats_free(s);
}

// What a reduction across ranks carries: an image read back adds like the
// original, and layouts that differ do not add.
// The CPU back end sums a full-covariance pass straight into the
// statistics the pass began with (fgmm_estep_params.out): a pass without
// them, or one ended into others, is refused, and the back end stays
// usable.
TEST(MatrixCovariance, FullPassKeepsItsOutputStatistics)
{
    const int K = 2, D = 3;
    fgmm_error err{};
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
    const fgmm_backend_ops *ops;
    void *be;
    fgmm_engine_backend(e, &ops, &be);
    std::vector<double> factor((size_t)K * D * D, 0.0), means((size_t)K * D, 0.0), c(K, 0.0);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) factor[(size_t)k * D * D + (size_t)j * (D + 1)] = 1.0;
    fgmm_estep_params p{};
    p.k = K;
    p.d = D;
    p.c = c.data();
    p.shift = means.data();
    p.cov = FGMM_COV_FULL;
    p.factor = factor.data();
    p.means = means.data();
    EXPECT_EQ(ops->begin_pass(be, &p, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("needs its output statistics"), std::string::npos)
        << err.msg;
    fgmm_stats *s, *other;
    ASSERT_EQ(fgmm_stats_create_cov(K, D, FGMM_COV_FULL, means.data(), &s, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create_cov(K, D, FGMM_COV_FULL, means.data(), &other, &err), FGMM_OK);
    p.out = s;
    ASSERT_EQ(ops->begin_pass(be, &p, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(ops->end_pass(be, other, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("not the statistics the pass began with"),
              std::string::npos)
        << err.msg;
    ASSERT_EQ(ops->begin_pass(be, &p, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(ops->end_pass(be, s, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_stats_rows(s), 0);
    fgmm_stats_free(s);
    fgmm_stats_free(other);
    fgmm_engine_free(e);
}

// A component that no row comes near gets responsibilities of about
// exp(-708) (the exponential's floor) from every row: the CPU back end
// drops such responsibilities, so its statistics are exactly zero rather
// than sums of subnormal numbers (which cost the full covariance's
// products tens of times their time), and the near component's nk is N.
TEST(MatrixCovariance, NegligibleResponsibilitiesAddNothing)
{
    const int n = 300, K = 2, D = 5;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 11);
    std::vector<float> x((size_t)n * D);
    for (auto &v : x) v = (float)fgmm_rng_normal(&rng);
    for (fgmm_covariance cov : {FGMM_COV_DIAG, FGMM_COV_FULL, FGMM_COV_TIED}) {
        SCOPED_TRACE(fgmm_covariance_name(cov));
        fgmm_error err{};
        fgmm_model *m;
        ASSERT_EQ(fgmm_model_create(K, D, cov, &m, &err), FGMM_OK);
        fgmm_model_weights(m)[0] = fgmm_model_weights(m)[1] = 0.5;
        for (int j = 0; j < D; j++) fgmm_model_means(m)[D + j] = 1e3;
        double *v = fgmm_model_variances(m);
        const size_t vl = fgmm_covariance_len(cov, K, D);
        for (size_t i = 0; i < vl; i++) v[i] = 0.0;
        if (cov == FGMM_COV_DIAG)
            for (size_t i = 0; i < vl; i++) v[i] = 1.0;
        else
            for (size_t f = 0; f < vl / ((size_t)D * D); f++)
                for (int j = 0; j < D; j++) v[f * D * D + (size_t)j * (D + 1)] = 1.0;
        fgmm_source *src;
        ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "rows", &src, &err), FGMM_OK);
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
        fgmm_stats *s;
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, nullptr, &s, &err), FGMM_OK);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_stats_nk(s)[0], (double)n);
        EXPECT_EQ(fgmm_stats_nk(s)[1], 0.0);
        const double *sums = fgmm_stats_sums(s);
        for (int j = 0; j < 2 * D; j++) EXPECT_EQ(sums[2 * D + j], 0.0) << "sum " << j;
        if (cov == FGMM_COV_FULL) {
            const double *sc = fgmm_stats_scatter(s) + (size_t)D * D;
            for (int i = 0; i < D * D; i++) EXPECT_EQ(sc[i], 0.0) << "scatter " << i;
        }
        fgmm_stats_free(s);
        fgmm_engine_free(e);
        fgmm_source_close(src);
        fgmm_model_free(m);
    }
}

TEST(MatrixCovariance, StatisticsSerialiseAndAdd)
{
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED}) {
        const int K = 3, D = 4;
        fgmm_error err{};
        fgmm_rng rng;
        fgmm_rng_seed(&rng, 51);
        std::vector<double> shift(cov == FGMM_COV_FULL ? K * D : D);
        for (double &v : shift) v = fgmm_rng_normal(&rng);
        fgmm_stats *a, *b, *sum1, *sum2, *diag;
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &a, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, nullptr, &b, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &sum1, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &sum2, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &diag, &err), FGMM_OK);
        EXPECT_EQ(fgmm_stats_shift_len(a), shift.size());
        const size_t ns = cov == FGMM_COV_FULL ? (size_t)K * D * D : (size_t)D * D;
        for (int k = 0; k < K; k++) fgmm_stats_nk(a)[k] = fgmm_rng_uniform(&rng);
        for (int i = 0; i < K * 2 * D; i++) fgmm_stats_sums(a)[i] = fgmm_rng_normal(&rng);
        for (size_t i = 0; i < ns; i++) fgmm_stats_scatter(a)[i] = fgmm_rng_normal(&rng);
        fgmm_stats_add_loglik(a, -5.5, 10);
        std::vector<char> img(fgmm_stats_serial_size(a));
        fgmm_stats_serialize(a, img.data());
        ASSERT_EQ(fgmm_stats_deserialize(b, img.data(), img.size(), &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_stats_add(sum1, a, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_add(sum2, b, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(0, memcmp(fgmm_stats_scatter(sum1), fgmm_stats_scatter(sum2), 8 * ns));
        EXPECT_EQ(0, memcmp(fgmm_stats_sums(sum1), fgmm_stats_sums(sum2), 8 * K * 2 * D));
        // Only the lower triangles are added (and zeroed): the upper ones
        // are neither accumulated nor read.
        const size_t nm = ns / ((size_t)D * D);
        for (size_t f = 0; f < nm; f++)
            for (int r = 0; r < D; r++)
                for (int c = 0; c < D; c++) {
                    const size_t i = (f * D + r) * D + c;
                    EXPECT_EQ(fgmm_stats_scatter(sum1)[i], c <= r ? fgmm_stats_scatter(a)[i] : 0.0)
                        << f << " " << r << " " << c;
                }
        // Zeroing, on this thread or on a pool's workers, clears the lower
        // triangles and takes the new shift.
        fgmm_pool *pool;
        ASSERT_EQ(fgmm_pool_create(3, &pool, &err), FGMM_OK);
        std::vector<double> shift2(shift.size(), 0.25);
        fgmm_stats_reset_pool(b, shift2.data(), pool);
        EXPECT_EQ(0, memcmp(fgmm_stats_shift(b), shift2.data(), 8 * shift2.size()));
        fgmm_stats_zero(a);
        for (fgmm_stats *z : {a, b}) {
            EXPECT_EQ(fgmm_stats_rows(z), 0);
            EXPECT_EQ(fgmm_stats_nk(z)[K - 1], 0.0);
            for (size_t f = 0; f < nm; f++)
                for (int r = 0; r < D; r++)
                    for (int c = 0; c <= r; c++)
                        EXPECT_EQ(fgmm_stats_scatter(z)[(f * D + r) * D + c], 0.0);
        }
        fgmm_pool_free(pool);
        EXPECT_EQ(fgmm_stats_add(diag, a, &err), FGMM_ERR_ARGUMENT);
        std::vector<char> dimg(fgmm_stats_serial_size(diag));
        fgmm_stats_serialize(diag, dimg.data());
        EXPECT_EQ(fgmm_stats_deserialize(a, dimg.data(), dimg.size(), &err), FGMM_ERR_FORMAT);
        for (fgmm_stats *s : {a, b, sum1, sum2, diag}) fgmm_stats_free(s);
    }
}

// A matrix pass's statistics given as a diagonal-layout part (counts, sums,
// log-likelihood, rows, candidates) and packed lower triangles add to the
// same bits as the matrix-layout statistics holding them.
TEST(MatrixCovariance, StatisticsAddPackedTriangles)
{
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED}) {
        const int K = 3, D = 5;
        fgmm_error err{};
        fgmm_rng rng;
        fgmm_rng_seed(&rng, 52);
        fgmm_pool *pool;
        ASSERT_EQ(fgmm_pool_create(3, &pool, &err), FGMM_OK);
        std::vector<double> shift(cov == FGMM_COV_FULL ? K * D : D);
        for (double &v : shift) v = fgmm_rng_normal(&rng);
        fgmm_stats *whole, *part, *sum1, *sum2;
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &whole, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &part, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &sum1, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, shift.data(), &sum2, &err), FGMM_OK);
        const size_t nm = cov == FGMM_COV_FULL ? K : 1, ntri = (size_t)D * (D + 1) / 2;
        std::vector<double> tri(nm * ntri);
        for (int k = 0; k < K; k++)
            fgmm_stats_nk(whole)[k] = fgmm_stats_nk(part)[k] = fgmm_rng_uniform(&rng);
        for (int i = 0; i < K * 2 * D; i++)
            fgmm_stats_sums(whole)[i] = fgmm_stats_sums(part)[i] = fgmm_rng_normal(&rng);
        for (size_t f = 0; f < nm; f++)
            for (int r = 0; r < D; r++)
                for (int c = 0; c <= r; c++)
                    fgmm_stats_scatter(whole)[(f * D + r) * D + c] =
                        tri[f * ntri + (size_t)r * (r + 1) / 2 + c] = fgmm_rng_normal(&rng);
        fgmm_stats_add_loglik(whole, -7.25, 12);
        fgmm_stats_add_loglik(part, -7.25, 12);
        const float x[D] = {1, 2, 3, 4, 5};
        fgmm_stats_offer_row(whole, 9, -40.0, x, FGMM_F32);
        fgmm_stats_offer_row(part, 9, -40.0, x, FGMM_F32);
        // Into zero on this thread, then onto what is there on a pool's
        // workers: the same bits.
        for (fgmm_pool *with : {(fgmm_pool *)nullptr, pool}) {
            ASSERT_EQ(fgmm_stats_add(sum1, whole, &err), FGMM_OK) << err.msg;
            ASSERT_EQ(fgmm_stats_add_packed(sum2, part, tri.data(), with, &err), FGMM_OK)
                << err.msg;
        }
        EXPECT_EQ(0, memcmp(fgmm_stats_scatter(sum1), fgmm_stats_scatter(sum2), 8 * nm * D * D));
        EXPECT_EQ(0, memcmp(fgmm_stats_sums(sum1), fgmm_stats_sums(sum2), 8 * K * 2 * D));
        EXPECT_EQ(0, memcmp(fgmm_stats_nk(sum1), fgmm_stats_nk(sum2), 8 * K));
        EXPECT_EQ(fgmm_stats_loglik(sum1), fgmm_stats_loglik(sum2));
        EXPECT_EQ(fgmm_stats_rows(sum2), 24);
        int64_t rows1[4], rows2[4];
        double ll1[4], ll2[4];
        float xs1[4 * D], xs2[4 * D];
        const int nw = fgmm_stats_worst_rows(sum1, rows1, ll1, xs1, 4);
        ASSERT_EQ(fgmm_stats_worst_rows(sum2, rows2, ll2, xs2, 4), nw);
        ASSERT_GT(nw, 0);
        for (int i = 0; i < nw; i++) {
            EXPECT_EQ(rows2[i], 9);
            EXPECT_EQ(ll2[i], ll1[i]);
            EXPECT_EQ(0, memcmp(xs1 + i * D, xs2 + i * D, sizeof(float) * D));
        }
        // The part must be diagonal and the target a matrix layout.
        EXPECT_EQ(fgmm_stats_add_packed(sum2, whole, tri.data(), nullptr, &err), FGMM_ERR_ARGUMENT);
        EXPECT_EQ(fgmm_stats_add_packed(part, part, tri.data(), nullptr, &err), FGMM_ERR_ARGUMENT);
        for (fgmm_stats *s : {whole, part, sum1, sum2}) fgmm_stats_free(s);
        fgmm_pool_free(pool);
    }
}

TEST(MatrixCovariance, ModelFilesRoundTrip)
{
    const char *tmp = getenv("TEST_TMPDIR");
    std::string base = tmp ? tmp : "/tmp";
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED}) {
        fgmm_rng rng;
        fgmm_rng_seed(&rng, 61);
        std::vector<float> x;
        fgmm_model *m = random_matrix_mixture(&rng, 3, 5, cov, 1.0, 0.1, 2.0, 10, x), *back;
        ASSERT_NE(m, nullptr);
        fgmm_error err{};
        std::string dir = base + "/model_" + fgmm_covariance_name(cov);
        ASSERT_EQ(fgmm_model_save(m, dir.c_str(), &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_model_load(dir.c_str(), &back, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_model_covariance(back), cov);
        const size_t vl = fgmm_covariance_len(cov, 3, 5);
        EXPECT_EQ(0, memcmp(fgmm_model_variances_c(m), fgmm_model_variances_c(back), 8 * vl))
            << "covariances are kept in float64";
        fgmm_model_free(back);
        // A covariances.npy of the wrong shape is named with what was expected.
        std::string wrong = base + "/wrong_" + fgmm_covariance_name(cov);
        ASSERT_EQ(fgmm_model_save(m, wrong.c_str(), &err), FGMM_OK);
        int64_t shape[2] = {5, 5};
        std::vector<double> eye(25, 0.0);
        for (int i = 0; i < 5; i++) eye[i * 6] = 1;
        if (cov == FGMM_COV_FULL) {  // (D, D) where (K, D, D) belongs
            ASSERT_EQ(fgmm_npy_write((wrong + "/covariances.npy").c_str(), FGMM_NPY_F64,
                                     eye.data(), 2, shape, &err), FGMM_OK);
        } else {  // (K, D, D) where (D, D) belongs
            std::vector<double> three(75, 0.0);
            int64_t s3[3] = {3, 5, 5};
            ASSERT_EQ(fgmm_npy_write((wrong + "/covariances.npy").c_str(), FGMM_NPY_F64,
                                     three.data(), 3, s3, &err), FGMM_OK);
        }
        EXPECT_EQ(fgmm_model_load(wrong.c_str(), &back, &err), FGMM_ERR_FORMAT);
        EXPECT_NE(std::string(err.msg).find("covariances.npy"), std::string::npos) << err.msg;
        EXPECT_NE(std::string(err.msg).find("expected"), std::string::npos) << err.msg;
        fgmm_model_free(m);
    }
}

}  // namespace
