// sklearn_peer_test.cc - the same data and initial model through flashgmm
// and scikit-learn's GaussianMixture: the log-likelihood after a fixed
// number of EM steps must agree to 1e-5 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "tests/reference.h"

namespace {

std::string runfile(const char *rel)
{
    const char *srcdir = getenv("TEST_SRCDIR"), *ws = getenv("TEST_WORKSPACE");
    if (srcdir && ws) return std::string(srcdir) + "/" + ws + "/" + rel;
    return rel;
}

void write_raw(const std::string &path, const void *p, size_t bytes)
{
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr) << path;
    ASSERT_EQ(fwrite(p, 1, bytes, f), bytes);
    fclose(f);
}

void peer(fgmm_covariance cov, int n, int D, int K, int iters, uint64_t seed)
{
    SCOPED_TRACE(std::string(fgmm_covariance_name(cov)) + " seed " + std::to_string(seed));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    const bool matrix = fgmm_covariance_is_matrix(cov);
    fgmm_model *truth = matrix ? random_matrix_mixture(&rng, K, D, cov, 1.2, 0.1, 2.0, n, x)
                               : random_mixture(&rng, K, D, cov, 1.2, n, x);
    // Full and tied run in float64 throughout: 1e-6 (scikit-learn's other
    // types against the float32 statistics product: 1e-5).
    const double tol = matrix ? 1e-6 : 1e-5;
    ASSERT_NE(truth, nullptr);
    // Initial model: the truth, perturbed, so EM has work to do.
    fgmm_model *init;
    fgmm_error err{};
    ASSERT_EQ(fgmm_model_clone(truth, &init, &err), FGMM_OK);
    double *mu = fgmm_model_means(init);
    for (int i = 0; i < K * D; i++) mu[i] += 0.5 * fgmm_rng_normal(&rng);
    char tmpl[] = "/tmp/fgmm_peer_XXXXXX";
    const char *tmp = getenv("TEST_TMPDIR");
    std::string dir = tmp ? std::string(tmp) + "/peer" : std::string(mkdtemp(tmpl));
    std::string mk = "mkdir -p '" + dir + "'";
    ASSERT_EQ(system(mk.c_str()), 0);
    write_raw(dir + "/x.f32", x.data(), x.size() * 4);
    write_raw(dir + "/w.f64", fgmm_model_weights_c(init), K * 8);
    write_raw(dir + "/mu.f64", fgmm_model_means_c(init), (size_t)K * D * 8);
    write_raw(dir + "/var.f64", fgmm_model_variances_c(init),
              fgmm_covariance_len(cov, K, D) * 8);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' %d %d %d %s %d",
             runfile("tests/sklearn_peer.py").c_str(), dir.c_str(), n, D, K,
             fgmm_covariance_name(cov), iters);
    FILE *p = popen(cmd, "r");
    ASSERT_NE(p, nullptr);
    std::vector<double> out;
    double v;
    while (fscanf(p, "%lf", &v) == 1) out.push_back(v);
    ASSERT_EQ(pclose(p), 0) << "scikit-learn failed: " << cmd;
    size_t vl = fgmm_covariance_len(cov, K, D);
    ASSERT_EQ(out.size(), 1 + K + (size_t)K * D + vl);

    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "peer", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    fgmm_fit_params prm;
    fgmm_fit_params_default(&prm);
    prm.k = K;
    prm.covariance = cov;
    prm.init = FGMM_INIT_MODEL;
    prm.init_model = init;
    prm.max_iter = iters;
    prm.tol = 0;
    fgmm_model *m;
    ASSERT_EQ(fgmm_fit(e, src, &prm, &m, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_model_loglik_count(m), iters);
    double ours = fgmm_model_loglik(m)[iters - 1], theirs = out[0];
    double rel = std::fabs(ours - theirs) / std::fabs(theirs);
    printf("  %s: flashgmm %.12f  scikit-learn %.12f  rel diff %.2e\n", fgmm_covariance_name(cov),
           ours, theirs, rel);
    EXPECT_LE(rel, tol);
    // The parameters after the last M-step agree too.
    const double *w = fgmm_model_weights_c(m), *fm = fgmm_model_means_c(m),
                 *fv = fgmm_model_variances_c(m);
    std::vector<double> a, b;
    for (int k = 0; k < K; k++) a.push_back(w[k]), b.push_back(out[1 + k]);
    EXPECT_LE(rel_err(a, b), tol) << "weights";
    a.assign(fm, fm + K * D);
    b.assign(out.begin() + 1 + K, out.begin() + 1 + K + K * D);
    EXPECT_LE(rel_err(a, b), tol) << "means";
    a.assign(fv, fv + vl);
    b.assign(out.begin() + 1 + K + K * D, out.end());
    EXPECT_LE(rel_err(a, b), tol) << "variances";
    fgmm_model_free(m);
    fgmm_model_free(init);
    fgmm_model_free(truth);
    fgmm_engine_free(e);
    fgmm_source_close(src);
}

TEST(ScikitLearnPeer, DiagAfterTenIterations) { peer(FGMM_COV_DIAG, 4000, 7, 5, 10, 11); }
TEST(ScikitLearnPeer, SphericalAfterTenIterations) { peer(FGMM_COV_SPHERICAL, 3000, 5, 4, 10, 12); }
TEST(ScikitLearnPeer, FullAfterTenIterations) { peer(FGMM_COV_FULL, 4000, 6, 4, 10, 13); }
TEST(ScikitLearnPeer, TiedAfterTenIterations) { peer(FGMM_COV_TIED, 4000, 6, 4, 10, 14); }
TEST(ScikitLearnPeer, FullFreshProblem) { peer(FGMM_COV_FULL, 3000, 9, 5, 10, (uint64_t)time(nullptr)); }
TEST(ScikitLearnPeer, DiagFreshProblem) { peer(FGMM_COV_DIAG, 2500, 12, 9, 6, (uint64_t)time(nullptr)); }

}  // namespace
