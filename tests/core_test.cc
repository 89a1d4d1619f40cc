// core_test.cc - the CPU engine against a float64 reference that
// materialises N x K, EM's invariants, recovery, and core's error paths.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

extern "C" {
#include "backends/fgmm_backends.h"
#include "core/backend.h" /* the pool */
}
#include "core/fgmm.h"
#include "tests/reference.h"

namespace {

struct Fixture {
    fgmm_engine *e = nullptr;
    fgmm_source *src = nullptr;
    fgmm_model *m = nullptr;
    fgmm_stats *s = nullptr;
    std::vector<float> x;
    ~Fixture()
    {
        fgmm_stats_free(s);
        fgmm_model_free(m);
        fgmm_source_close(src);
        fgmm_engine_free(e);
    }
};

uint64_t fresh_seed()
{
    // Fresh problems each run (the seed is printed so a failure reproduces).
    static uint64_t counter = 0;
    return (uint64_t)time(nullptr) * 1000003u + counter++;
}

void check_estep(fgmm_covariance cov, int64_t n, int K, int D, int threads, double spread,
                 fgmm_precision prec = FGMM_PRECISION_DEFAULT)
{
    uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    Fixture f;
    fgmm_error err{};
    f.m = random_mixture(&rng, K, D, cov, spread, n, f.x);
    ASSERT_NE(f.m, nullptr);
    ASSERT_EQ(fgmm_source_memory(f.x.data(), FGMM_F32, n, D, "mem", &f.src, &err), FGMM_OK)
        << err.msg;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, threads, &f.e, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_engine_set_precision(f.e, prec, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &f.s, &err), FGMM_OK);
    std::vector<float> per_row(n, NAN);
    ASSERT_EQ(fgmm_engine_estep(f.e, f.src, f.m, f.s, per_row.data(), &err), FGMM_OK) << err.msg;
    RefStats ref = reference_estep(f.m, f.x, n);
    std::vector<double> nk, sx, sxx;
    unshift(f.s, nk, sx, sxx);
    double e_nk = rel_err(nk, ref.nk), e_sx = rel_err(sx, ref.sx), e_sxx = rel_err(sxx, ref.sxx);
    double e_ll = std::fabs(fgmm_stats_loglik(f.s) - ref.loglik) / std::fabs(ref.loglik);
    // fp64: the statistics product in double too, so only summation order
    // separates it from the reference.
    const double tol = prec == FGMM_PRECISION_FP64 ? 1e-12 : 1e-6;
    EXPECT_LE(e_nk, tol);
    EXPECT_LE(e_sx, tol);
    EXPECT_LE(e_sxx, tol);
    EXPECT_LE(e_ll, tol);
    EXPECT_EQ(fgmm_stats_rows(f.s), n);
    for (int64_t i = 0; i < n; i++) {
        ASSERT_FALSE(std::isnan(per_row[i])) << "row " << i << " not written";
        ASSERT_NEAR(per_row[i], ref.row_ll[i], 1e-5 * std::fabs(ref.row_ll[i]) + 1e-5);
    }
    // The responsibilities are really soft here, not one-hot (else the
    // comparison would be weak).
    double maxnk = 0;
    for (double v : nk) maxnk = std::max(maxnk, v);
    if (K > 1) {
        EXPECT_LT(maxnk, (double)n);
    }
    printf("  N=%lld K=%d D=%d %s threads=%d%s: rel err nk %.2e sx %.2e sxx %.2e ll %.2e\n",
           (long long)n, K, D, fgmm_covariance_name(cov), threads,
           prec == FGMM_PRECISION_FP64 ? " fp64" : "", e_nk, e_sx, e_sxx, e_ll);
}

TEST(Estep, DiagMatchesFloat64Reference)
{
    check_estep(FGMM_COV_DIAG, 3001, 17, 24, 2, 1.0);
    check_estep(FGMM_COV_DIAG, 70001, 8, 5, 2, 0.7);  // crosses a 65536-row chunk
    check_estep(FGMM_COV_DIAG, 257, 1, 1, 1, 1.0);
    check_estep(FGMM_COV_DIAG, 500, 300, 3, 2, 1.0);
}

TEST(Estep, CpuFp64StatisticsMatchFloat64Reference)
{
    check_estep(FGMM_COV_DIAG, 3001, 17, 24, 2, 1.0, FGMM_PRECISION_FP64);
    check_estep(FGMM_COV_DIAG, 70001, 8, 5, 2, 0.7, FGMM_PRECISION_FP64);
    check_estep(FGMM_COV_SPHERICAL, 500, 300, 3, 2, 1.0, FGMM_PRECISION_FP64);
    check_estep(FGMM_COV_DIAG, 257, 1, 1, 1, 1.0, FGMM_PRECISION_FP64);
}

// The size of the terms that cancel in a logit (what decides whether the
// GPU's arithmetic can be trusted with a model): by hand for K=2, D=2.
TEST(Estep, LogitMagnitudeByHand)
{
    fgmm_error err{};
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(2, 2, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    const double mu[4] = {1, -2, 3, 4}, var[4] = {0.5, 2, 1e-6, 1};
    for (int i = 0; i < 4; i++) {
        fgmm_model_means(m)[i] = mu[i];
        fgmm_model_variances(m)[i] = var[i];
    }
    fgmm_model_weights(m)[0] = 0.25;
    fgmm_model_weights(m)[1] = 0.75;
    std::vector<double> w(8), c(2), shift(2);
    fgmm_estep_params_fill(m, w.data(), c.data(), shift.data());
    fgmm_estep_params p = {2,       2,       w.data(), c.data(), shift.data(), 0, nullptr, 0,
                           FGMM_COV_DIAG, nullptr, nullptr, nullptr, nullptr};
    // Per component: D + sum_j 1.5 (mu - shift)^2 / var.
    double best = 0;
    for (int k = 0; k < 2; k++) {
        double s = 2;
        for (int j = 0; j < 2; j++) {
            double d = mu[k * 2 + j] - shift[j];
            s += 1.5 * d * d / var[k * 2 + j];
        }
        best = std::max(best, s);
    }
    EXPECT_NEAR(fgmm_estep_params_magnitude(&p), best, 1e-9 * best);
    EXPECT_GT(best, 3e5);  // component 1: 1.5 * 0.5^2 / 1e-6 on dimension 0
    fgmm_model_free(m);
}

// The stiff pairs for a limit: only components whose terms add up past it,
// and in them the pairs whose own term is past limit / (2D), so that what
// is left stays within the limit.
TEST(Estep, StiffPairsByHand)
{
    fgmm_error err{};
    fgmm_model *m;
    const int K = 3, D = 4;
    ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    // Component 0 broad; 1 tight in dimensions 0 and 2, far from the
    // shift; 2 tight in dimension 3 at the shift's value.
    for (int k = 0; k < K; k++) {
        fgmm_model_weights(m)[k] = 1.0 / K;
        for (int j = 0; j < D; j++) {
            fgmm_model_means(m)[k * D + j] = k == 1 ? 10.0 + j : 0.0;
            fgmm_model_variances(m)[k * D + j] = 4.0;
        }
    }
    fgmm_model_variances(m)[1 * D + 0] = 1e-6;
    fgmm_model_variances(m)[1 * D + 2] = 1e-6;
    fgmm_model_variances(m)[2 * D + 3] = 1e-6;
    std::vector<double> w(2 * D * K), c(K), shift(D);
    fgmm_estep_params_fill(m, w.data(), c.data(), shift.data());
    fgmm_estep_params p = {K, D, w.data(), c.data(), shift.data(), 0, nullptr, 0, FGMM_COV_DIAG, nullptr, nullptr, nullptr, nullptr};
    const double limit = 1e5;
    std::vector<unsigned char> flags(K * D, 9);
    ASSERT_EQ(fgmm_estep_params_mark_stiff(&p, limit, flags.data()), 3);
    for (int k = 0; k < K; k++) {
        double t[D], rest = D;
        for (int j = 0; j < D; j++) {
            const double d = fgmm_model_means(m)[k * D + j] - shift[j];
            t[j] = 1.5 * d * d / fgmm_model_variances(m)[k * D + j];
        }
        for (int j = 0; j < D; j++) {
            // Dimension 3 of component 2: its mean is 10/3 from the shift.
            const bool want = (k == 1 && (j == 0 || j == 2)) || (k == 2 && j == 3);
            EXPECT_EQ(flags[k * D + j], want ? 1 : 0) << k << "," << j << " term " << t[j];
            if (!want) rest += t[j];
        }
        EXPECT_LE(rest, limit / 2 + D) << "component " << k;
    }
    // A limit above every component's sum: nothing is stiff.
    EXPECT_EQ(fgmm_estep_params_mark_stiff(&p, 1e20, flags.data()), 0);
    fgmm_model_free(m);
}

// A back end that records the terms the engine hands to begin_pass, with
// the GPU's precision policy and stiff pairs, computing nothing; its pool
// (the engine's host pool) has `threads` workers.
struct TermsProbe {
    fgmm_pool *pool = nullptr;
    std::vector<double> w, c, shift;
    std::vector<unsigned char> stiff;
    int64_t n_stiff = -1;
};

fgmm_backend_ops terms_probe_ops()
{
    fgmm_backend_ops o{};
    o.name = "probe";
    o.device = FGMM_DEVICE_CUDA;
    o.stiff_pairs = 1;
    o.begin_pass = [](void *self, const fgmm_estep_params *p, fgmm_error *) {
        TermsProbe *t = (TermsProbe *)self;
        t->w.assign(p->w, p->w + 2 * p->d * p->k);
        t->c.assign(p->c, p->c + p->k);
        t->shift.assign(p->shift, p->shift + p->d);
        t->stiff.assign(p->k * p->d, 0);
        if (p->stiff) t->stiff.assign(p->stiff, p->stiff + p->k * p->d);
        t->n_stiff = p->stiff ? p->n_stiff : 0;
        return FGMM_OK;
    };
    o.accumulate = [](void *, const fgmm_chunk *, float *, fgmm_error *) { return FGMM_OK; };
    o.end_pass = [](void *, fgmm_stats *out, fgmm_error *) {
        fgmm_stats_add_loglik(out, -1.0, 1);
        return FGMM_OK;
    };
    o.destroy = [](void *) {};
    o.set_precision = [](void *, fgmm_precision, fgmm_error *) { return FGMM_OK; };
    o.pass_precision = [](void *, fgmm_precision asked, double mag, double *limit) {
        if (asked == FGMM_PRECISION_FP64) {
            *limit = INFINITY;
            return asked;
        }
        *limit = asked == FGMM_PRECISION_FAST ? 5e3 : 1e5;
        return mag <= *limit ? asked : FGMM_PRECISION_FP64;
    };
    o.path = [](void *) { return "probe"; };
    o.device_bytes = [](void *) { return (size_t)0; };
    o.host_alloc = [](void *, size_t b) { return malloc(b); };
    o.host_free = [](void *, void *q) { free(q); };
    o.pool = [](void *self) { return ((TermsProbe *)self)->pool; };
    return o;
}

// The pass's terms (w, c, shift, the stiff pairs and the second shift that
// removes most of them) are computed a block of components at a time on
// the engine's host pool: the same bits with 1 and 5 workers, and, with few
// stiff pairs, the bits of the one-thread public functions.
TEST(Estep, PassTermsOnThePoolAreTheOneThreadBits)
{
    const int K = 70, D = 37, N = 50;
    fgmm_error err{};
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 808);
    std::vector<float> x((size_t)N * D, 0.5f);
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, N, D, "mem", &src, &err), FGMM_OK);
    for (int many : {0, 1}) {
        SCOPED_TRACE(many ? "many stiff pairs" : "few stiff pairs");
        fgmm_model *m;
        ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
        for (int k = 0; k < K; k++) {
            fgmm_model_weights(m)[k] = 1.0 / K;
            for (int j = 0; j < D; j++) {
                // Many: blank in dimensions 0..11 for 30 of the components
                // (MNIST's pixels), lit elsewhere.
                const bool blank = many && k % 7 < 3 && j < 12;
                fgmm_model_means(m)[k * D + j] = blank ? 0.0 : 5 + 3 * fgmm_rng_normal(&rng);
                fgmm_model_variances(m)[k * D + j] =
                    blank ? 1e-6 : 0.5 + fgmm_rng_uniform(&rng);
            }
        }
        // Three components tight where no shift is near their means: stiff
        // under either shift.
        for (int k : {3, 40, 66}) fgmm_model_variances(m)[k * D + 20] = 1e-7;
        TermsProbe got[2];
        for (int i = 0; i < 2; i++) {
            ASSERT_EQ(fgmm_pool_create(i == 0 ? 1 : 5, &got[i].pool, &err), FGMM_OK);
            fgmm_backend_ops ops = terms_probe_ops();
            static fgmm_backend_ops kept[2];
            kept[i] = ops;
            fgmm_engine *e;
            ASSERT_EQ(fgmm_engine_create_on(&kept[i], &got[i], 1, &e, &err), FGMM_OK) << err.msg;
            ASSERT_EQ(fgmm_engine_set_precision(e, FGMM_PRECISION_DEFAULT, &err), FGMM_OK);
            fgmm_stats *s;
            ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
            ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
            EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), FGMM_PASS_STIFF);
            EXPECT_EQ(fgmm_engine_last_pass_stiff_pairs(e), got[i].n_stiff);
            fgmm_stats_free(s);
            fgmm_engine_free(e);
            fgmm_pool_free(got[i].pool);
        }
        EXPECT_GT(got[0].n_stiff, 0);
        EXPECT_EQ(got[0].n_stiff, got[1].n_stiff);
        EXPECT_EQ(got[0].w, got[1].w);
        EXPECT_EQ(got[0].c, got[1].c);
        EXPECT_EQ(got[0].shift, got[1].shift);
        EXPECT_EQ(got[0].stiff, got[1].stiff);
        // Few: the pairs as marked under the model's own shift, which the
        // second shift is not tried for.
        std::vector<double> w(2 * D * K), c(K), shift(D);
        fgmm_estep_params_fill(m, w.data(), c.data(), shift.data());
        if (!many) {
            EXPECT_EQ(got[0].w, w);
            EXPECT_EQ(got[0].c, c);
            EXPECT_EQ(got[0].shift, shift);
            fgmm_estep_params p = {K, D, w.data(), c.data(), shift.data(), 0, nullptr, 0,
                                   FGMM_COV_DIAG, nullptr, nullptr, nullptr, nullptr};
            std::vector<unsigned char> flags(K * D);
            EXPECT_EQ(fgmm_estep_params_mark_stiff(&p, 1e5, flags.data()), got[0].n_stiff);
            EXPECT_EQ(got[0].stiff, flags);
            EXPECT_EQ(got[0].n_stiff, 3);
        } else {
            // Many: the second shift sits on the blank pixels' value and
            // leaves fewer pairs than the model's own shift.
            EXPECT_NE(got[0].shift, shift);
            for (int j = 0; j < 12; j++) EXPECT_NEAR(got[0].shift[j], 0.0, 1.0) << j;
            fgmm_estep_params p = {K, D, w.data(), c.data(), shift.data(), 0, nullptr, 0,
                                   FGMM_COV_DIAG, nullptr, nullptr, nullptr, nullptr};
            std::vector<unsigned char> flags(K * D);
            EXPECT_GT(fgmm_estep_params_mark_stiff(&p, 1e5, flags.data()), got[0].n_stiff);
        }
        fgmm_model_free(m);
    }
    fgmm_source_close(src);
}

// The CPU engine keeps float64 logits: it computes even a model the GPU
// could not (blank pixels with tiny variances) to float64's accuracy, and
// never reports a fallback.
TEST(Estep, CpuHandlesIllConditionedModel)
{
    std::vector<float> x;
    const int64_t n = 2000;
    fgmm_model *m = blank_pixel_mixture(n, 4, 8, 40, x);
    ASSERT_NE(m, nullptr);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, 40, "blank", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(4, 40, nullptr, &s, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
    double mag = 0;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, &mag, nullptr), 0);
    EXPECT_GT(mag, 1e9);
    RefStats ref = reference_estep(m, x, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    EXPECT_LE(rel_err(nk, ref.nk), 1e-9);
    EXPECT_LE(rel_err(sx, ref.sx), 1e-9);
    EXPECT_LE(rel_err(sxx, ref.sxx), 1e-9);
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

TEST(Estep, SphericalMatchesFloat64Reference)
{
    check_estep(FGMM_COV_SPHERICAL, 2999, 13, 31, 2, 1.0);
    check_estep(FGMM_COV_SPHERICAL, 1000, 1, 7, 1, 1.0);
}

// The lanes a chunk's tiles are summed in depend on K and D only, so the
// thread count changes nothing: identical statistics, bit for bit.
TEST(Estep, ThreadCountChangesNoBits)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, fresh_seed());
    std::vector<float> x;
    const int64_t n = 70000;  // more tiles than lanes, two chunks
    fgmm_model *m = random_mixture(&rng, 9, 11, FGMM_COV_DIAG, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, 11, "mem", &src, &err), FGMM_OK);
    std::vector<std::vector<double>> sums;
    std::vector<double> ll;
    for (int t : {1, 2, 3}) {
        fgmm_engine *e;
        fgmm_stats *s;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, t, &e, &err), FGMM_OK);
        fgmm_stats_create(9, 11, nullptr, &s, &err);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK);
        ll.push_back(fgmm_stats_loglik(s));
        const double *sm = fgmm_stats_sums(s);
        sums.emplace_back(sm, sm + 9 * 2 * 11);
        sums.back().insert(sums.back().end(), fgmm_stats_nk(s), fgmm_stats_nk(s) + 9);
        fgmm_stats_free(s);
        fgmm_engine_free(e);
    }
    for (int i = 1; i < 3; i++) {
        EXPECT_EQ(ll[0], ll[i]) << "threads " << i + 1;
        EXPECT_EQ(0, memcmp(sums[0].data(), sums[i].data(), sizeof(double) * sums[0].size()))
            << "threads " << i + 1;
    }
    fgmm_source_close(src);
    fgmm_model_free(m);
}

// The CPU engine's threads take lanes of tiles from a shared counter, so
// which thread runs what changes from pass to pass; the sums must not. Three
// chunks of the memory source, 16 lanes over 3 threads, 12 passes.
TEST(Estep, SameThreadsSameBitsWhateverTheSchedule)
{
    const int64_t n = 140000;
    const int K = 7, D = 5;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, fresh_seed());
    std::vector<float> x;
    fgmm_model *m = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 3, &e, &err), FGMM_OK) << err.msg;
    std::vector<double> first_nk, first_sums;
    double first_ll = 0;
    for (int pass = 0; pass < 12; pass++) {
        fgmm_stats *s;
        ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
        std::vector<double> nk(fgmm_stats_nk(s), fgmm_stats_nk(s) + K);
        std::vector<double> sums(fgmm_stats_sums(s), fgmm_stats_sums(s) + (size_t)K * 2 * D);
        if (pass == 0) {
            first_nk = nk;
            first_sums = sums;
            first_ll = fgmm_stats_loglik(s);
        } else {
            EXPECT_EQ(0, memcmp(nk.data(), first_nk.data(), sizeof(double) * K)) << "pass " << pass;
            EXPECT_EQ(0, memcmp(sums.data(), first_sums.data(), sizeof(double) * sums.size()))
                << "pass " << pass;
            EXPECT_EQ(first_ll, fgmm_stats_loglik(s)) << "pass " << pass;
        }
        fgmm_stats_free(s);
    }
    double tot = 0;
    for (double v : first_nk) tot += v;
    EXPECT_NEAR(tot, (double)n, 1e-6 * n);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

static int cores_of_this_thread()
{
    cpu_set_t set;
    if (pthread_getaffinity_np(pthread_self(), sizeof set, &set)) return -1;
    return CPU_COUNT(&set);
}

// Lets this thread run on every online core (the kernel keeps it within
// the process's cpuset), whatever an earlier test left; returns how many.
static int widen_affinity()
{
    cpu_set_t set;
    CPU_ZERO(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < n && c < CPU_SETSIZE; c++) CPU_SET((int)c, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    return cores_of_this_thread();
}

// Pinned threads (fgmm_engine_pin_threads) change where the work runs,
// never the sums: the same bits as the unpinned engine.
TEST(Estep, PinnedThreadsSameBits)
{
    const int64_t n = 60000;
    const int K = 9, D = 6;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, fresh_seed());
    std::vector<float> x;
    fgmm_model *m = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
    std::vector<double> got[2];
    for (int pin = 0; pin < 2; pin++) {
        fgmm_engine_pin_threads(e, pin);
        fgmm_stats *s;
        ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
        const int before = cores_of_this_thread();
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(cores_of_this_thread(), before) << "the caller's affinity was not restored";
        got[pin].assign(fgmm_stats_sums(s), fgmm_stats_sums(s) + (size_t)K * 2 * D);
        got[pin].insert(got[pin].end(), fgmm_stats_nk(s), fgmm_stats_nk(s) + K);
        fgmm_stats_free(s);
    }
    EXPECT_EQ(0, memcmp(got[0].data(), got[1].data(), sizeof(double) * got[0].size()));
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

// The pool's placement: pinned, every worker (the caller included) runs on
// one core while it works, and the caller gets its own affinity back when
// the call returns, so threads it creates later are not confined to one
// core; unpinned again, workers may use every core once more.
struct PlacementLog {
    std::atomic<int> cores[64];
};

static void log_placement(int item, int worker, void *arg)
{
    (void)worker;
    auto *log = (PlacementLog *)arg;
    usleep(2000); /* long enough that both workers take items */
    log->cores[item] = cores_of_this_thread();
}

TEST(Pool, PinnedWorkersRunOnOneCoreAndTheCallerIsRestored)
{
    const int before = widen_affinity();
    if (before < 2) GTEST_SKIP() << "this process may use " << before << " core: nothing to pin apart";
    fgmm_pool *p;
    fgmm_error err{};
    ASSERT_EQ(fgmm_pool_create(2, &p, &err), FGMM_OK) << err.msg;
    PlacementLog log;
    fgmm_pool_set_pinned(p, 1);
    fgmm_pool_run(p, 16, 2, log_placement, &log);
    for (int i = 0; i < 16; i++) EXPECT_EQ(log.cores[i].load(), 1) << "item " << i;
    EXPECT_EQ(cores_of_this_thread(), before) << "the caller's affinity was not restored";
    fgmm_pool_set_pinned(p, 0);
    fgmm_pool_run(p, 16, 2, log_placement, &log);
    for (int i = 0; i < 16; i++) EXPECT_EQ(log.cores[i].load(), before) << "item " << i;
    fgmm_pool_free(p);
}

// A source that makes the engine wait: each chunk of a memory source
// handed out after a sleep. The engine must then use fewer of its threads
// (it waits most of the time) and still produce the same bits as a pass
// over the same rows that did not wait.
struct SlowSource {
    fgmm_source *inner;
    int sleep_us;
};
static fgmm_status slow_rewind(void *impl, fgmm_error *err)
{
    return fgmm_source_rewind(((SlowSource *)impl)->inner, err);
}
static fgmm_status slow_next(void *impl, fgmm_chunk *c, fgmm_error *err)
{
    SlowSource *s = (SlowSource *)impl;
    usleep(s->sleep_us);
    return fgmm_source_next(s->inner, c, err);
}
static fgmm_status slow_read_rows(void *impl, const int64_t *idx, int64_t n, float *out,
                                  fgmm_error *err)
{
    return fgmm_source_read_rows(((SlowSource *)impl)->inner, idx, n, out, err);
}
static void slow_close(void *) {}

TEST(Estep, WaitingEngineUsesFewerThreadsSameBits)
{
    const int64_t n = 65536 * 40; // 40 chunks of the memory source
    const int K = 3, D = 4;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, fresh_seed());
    std::vector<float> x;
    fgmm_model *m = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *mem;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &mem, &err), FGMM_OK);
    SlowSource impl{mem, 20000};
    static const fgmm_source_ops slow_ops = {slow_rewind, slow_next,   slow_read_rows,
                                             slow_close,  nullptr,     nullptr};
    fgmm_source *slow;
    ASSERT_EQ(fgmm_source_create(&slow_ops, &impl, n, D, FGMM_F32, "slow", &slow, &err), FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 4, &e, &err), FGMM_OK) << err.msg;
    fgmm_stats *a, *b;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &a, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &b, &err), FGMM_OK);
    // Twice: the first pass over a memory source also checks each chunk
    // for NaN/Inf, which the engine counts as waiting.
    ASSERT_EQ(fgmm_engine_estep(e, mem, m, a, nullptr, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_engine_estep(e, mem, m, a, nullptr, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_threads(e), 4.0) << "no waiting: every thread";
    ASSERT_EQ(fgmm_engine_estep(e, slow, m, b, nullptr, &err), FGMM_OK) << err.msg;
    double used = fgmm_engine_last_pass_threads(e);
    printf("  threads per chunk: %.2f of 4 while waiting 20 ms per chunk\n", used);
    EXPECT_LT(used, 4.0);
    EXPECT_GE(used, 1.0);
    EXPECT_EQ(0, memcmp(fgmm_stats_nk(a), fgmm_stats_nk(b), sizeof(double) * K));
    EXPECT_EQ(0, memcmp(fgmm_stats_sums(a), fgmm_stats_sums(b), sizeof(double) * K * 2 * D));
    EXPECT_EQ(fgmm_stats_loglik(a), fgmm_stats_loglik(b));
    fgmm_stats_free(a);
    fgmm_stats_free(b);
    fgmm_engine_free(e);
    fgmm_source_close(slow);
    fgmm_source_close(mem);
    fgmm_model_free(m);
}

TEST(Estep, IntegerAndHalfInputsConvertOnTheFly)
{
    const int n = 600, D = 6, K = 4;
    fgmm_rng rng;
    fgmm_rng_seed(&rng, fresh_seed());
    std::vector<uint8_t> u8(n * D);
    std::vector<int8_t> i8(n * D);
    std::vector<uint16_t> f16(n * D);
    std::vector<float> xf(n * D);
    for (int i = 0; i < n * D; i++) {
        int v = (int)(fgmm_rng_uniform(&rng) * 100);
        u8[i] = (uint8_t)v;
        i8[i] = (int8_t)(v - 50);
        f16[i] = fgmm_float_to_half((float)v * 0.25f);
    }
    fgmm_error err{};
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    struct Case {
        fgmm_dtype t;
        const void *p;
        double scale, off;
    } cases[] = {{FGMM_U8, u8.data(), 1, 0}, {FGMM_I8, i8.data(), 1, -50},
                 {FGMM_F16, f16.data(), 0.25, 0}};
    for (auto &c : cases) {
        for (int i = 0; i < n * D; i++) xf[i] = (float)(u8[i] * c.scale + c.off);
        double *mu = fgmm_model_means(m), *var = fgmm_model_variances(m);
        for (int i = 0; i < K * D; i++) {
            mu[i] = xf[i * 7 % (n * D)];
            var[i] = 300 * c.scale * c.scale;
        }
        fgmm_source *src;
        ASSERT_EQ(fgmm_source_memory(c.p, c.t, n, D, "mem", &src, &err), FGMM_OK);
        fgmm_stats *s;
        fgmm_stats_create(K, D, nullptr, &s, &err);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
        RefStats ref = reference_estep(m, xf, n);
        std::vector<double> nk, sx, sxx;
        unshift(s, nk, sx, sxx);
        EXPECT_LE(rel_err(sx, ref.sx), 1e-6) << fgmm_dtype_name(c.t);
        EXPECT_LE(rel_err(nk, ref.nk), 1e-6) << fgmm_dtype_name(c.t);
        fgmm_stats_free(s);
        fgmm_source_close(src);
    }
    fgmm_engine_free(e);
    fgmm_model_free(m);
}

TEST(Fit, LogLikelihoodNeverDecreases)
{
    for (fgmm_covariance cov : {FGMM_COV_DIAG, FGMM_COV_SPHERICAL}) {
        fgmm_rng rng;
        fgmm_rng_seed(&rng, fresh_seed());
        std::vector<float> x;
        fgmm_model *truth = random_mixture(&rng, 6, 8, cov, 1.5, 20000, x);
        fgmm_error err{};
        fgmm_source *src;
        fgmm_engine *e;
        ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 20000, 8, "mem", &src, &err), FGMM_OK);
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = 10;
        p.covariance = cov;
        p.init = FGMM_INIT_RANDOM;
        p.tol = 0;
        p.max_iter = 40;
        fgmm_model *m;
        ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
        int n = fgmm_model_loglik_count(m);
        ASSERT_EQ(n, 40);
        const double *ll = fgmm_model_loglik(m);
        for (int i = 1; i < n; i++)
            EXPECT_GE(ll[i], ll[i - 1] - 1e-9 * std::fabs(ll[i - 1])) << "iteration " << i + 1;
        EXPECT_EQ(fgmm_model_meta_c(m)->reseeded, 0);
        fgmm_model_free(m);
        fgmm_model_free(truth);
        fgmm_engine_free(e);
        fgmm_source_close(src);
    }
}

TEST(Fit, RecoversWellSeparatedMixture)
{
    fgmm_rng rng;
    uint64_t seed = fresh_seed();
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    const int K = 8, D = 16;
    fgmm_model *truth = random_mixture(&rng, K, D, FGMM_COV_DIAG, 6.0, 40000, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 40000, D, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = K;
    p.init = FGMM_INIT_KMEANS;
    p.seed = seed;
    fgmm_model *m;
    ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
    EXPECT_TRUE(fgmm_model_meta_c(m)->converged);
    const double *tm = fgmm_model_means_c(truth), *fm = fgmm_model_means_c(m);
    const double *tw = fgmm_model_weights_c(truth), *fw = fgmm_model_weights_c(m);
    for (int k = 0; k < K; k++) {
        int best = -1;
        double bd = INFINITY;
        for (int c = 0; c < K; c++) {
            double d = 0;
            for (int j = 0; j < D; j++) d += std::pow(tm[k * D + j] - fm[c * D + j], 2);
            if (d < bd) bd = d, best = c;
        }
        EXPECT_LT(std::sqrt(bd / D), 0.1) << "true component " << k << " seed " << seed;
        EXPECT_NEAR(fw[best], tw[k], 0.02) << "true component " << k;
    }
    fgmm_model_free(m);
    fgmm_model_free(truth);
    fgmm_engine_free(e);
    fgmm_source_close(src);
}

TEST(Fit, SeededInitIsDeterministic)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 7);
    std::vector<float> x;
    fgmm_model *truth = random_mixture(&rng, 5, 4, FGMM_COV_DIAG, 3.0, 3000, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 3000, 4, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    for (fgmm_init_kind init : {FGMM_INIT_KMEANSPP, FGMM_INIT_RANDOM, FGMM_INIT_KMEANS}) {
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = 5;
        p.init = init;
        p.seed = 123;
        fgmm_model *a, *b;
        ASSERT_EQ(fgmm_initialize(e, src, &p, &a, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_initialize(e, src, &p, &b, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(0, memcmp(fgmm_model_means_c(a), fgmm_model_means_c(b), sizeof(double) * 20));
        EXPECT_EQ(fgmm_model_validate(a, "init", &err), FGMM_OK) << err.msg;
        fgmm_model_free(a);
        fgmm_model_free(b);
    }
    fgmm_model_free(truth);
    fgmm_engine_free(e);
    fgmm_source_close(src);
}

TEST(Mstep, CollapsedComponentIsReseededAndReported)
{
    // Two far clusters, K=3 with one component placed far from all data:
    // its Nk underflows, it must be re-seeded at a worst-explained row.
    const int n = 400, D = 2;
    std::vector<float> x(n * D);
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 3);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++)
            x[i * D + j] = (float)((i % 2 ? 10 : -10) + fgmm_rng_normal(&rng));
    x[0] = 40;  // an outlier the model explains worst
    fgmm_error err{};
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(3, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    double *mu = fgmm_model_means(m);
    double init[] = {-10, -10, 10, 10, 1e4, 1e4};
    memcpy(mu, init, sizeof init);
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    fgmm_stats *s;
    fgmm_stats_create(3, D, nullptr, &s, &err);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK);
    int reseeded = -1;
    ASSERT_EQ(fgmm_stats_mstep(s, m, 1e-6, 1.0, &reseeded, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(reseeded, 1);
    EXPECT_FLOAT_EQ(mu[4], 40.0f);  // row 0, the worst explained
    EXPECT_FLOAT_EQ(mu[5], x[1]);
    // Its variance: the surviving components' average, per dimension; its
    // weight: one row's (min_count 1) before the weights are renormalised.
    const double *var = fgmm_model_variances_c(m), *w = fgmm_model_weights_c(m);
    for (int j = 0; j < D; j++) EXPECT_DOUBLE_EQ(var[2 * D + j], 0.5 * (var[j] + var[D + j])) << j;
    const double *nk = fgmm_stats_nk(s);
    const double raw0 = nk[0] / n, raw1 = nk[1] / n, raw2 = 1.0 / n, tot = raw0 + raw1 + raw2;
    EXPECT_NEAR(w[0], raw0 / tot, 1e-15);
    EXPECT_NEAR(w[1], raw1 / tot, 1e-15);
    EXPECT_NEAR(w[2], raw2 / tot, 1e-15);
    EXPECT_EQ(fgmm_model_validate(m, "after", &err), FGMM_OK) << err.msg;
    fgmm_stats_free(s);
    fgmm_source_close(src);
    fgmm_engine_free(e);
    fgmm_model_free(m);
}

TEST(Stats, AddRefusesMismatchedShapesAndShifts)
{
    fgmm_error err{};
    fgmm_stats *a, *b, *c;
    double sh[3] = {1, 2, 3};
    fgmm_stats_create(2, 3, nullptr, &a, &err);
    fgmm_stats_create(2, 4, nullptr, &b, &err);
    fgmm_stats_create(2, 3, sh, &c, &err);
    EXPECT_EQ(fgmm_stats_add(a, b, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("K=2, D=4"), std::string::npos) << err.msg;
    EXPECT_EQ(fgmm_stats_add(a, c, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("shift"), std::string::npos) << err.msg;
    fgmm_stats_free(a);
    fgmm_stats_free(b);
    fgmm_stats_free(c);
}

// The batch offer (GPU passes) keeps the same candidates as one offer per
// row, including ties at the K-th lowest (broken by row), NaNs and rows
// offered in several calls.
TEST(Stats, OfferRowsKeepsWhatOfferRowKeeps)
{
    fgmm_error err{};
    const int K = 37;
    const int64_t n = 20000;
    std::vector<float> ll(n);
    uint64_t x = 12345;
    for (int64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ll[i] = (float)((x >> 40) % 500) - 250.0f; /* many ties */
        if (i % 997 == 500) ll[i] = NAN; /* after the heap fills: a NaN never enters */
    }
    fgmm_stats *one, *batch;
    ASSERT_EQ(fgmm_stats_create(K, 2, nullptr, &one, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, 2, nullptr, &batch, &err), FGMM_OK);
    for (int64_t i = 0; i < n; i++) fgmm_stats_offer_row(one, 1000 + i, ll[i], nullptr, FGMM_F32);
    /* Uneven calls, the first shorter than K. */
    const int64_t cuts[] = {0, 10, 11, 5000, 5001, 13333, n};
    for (int c = 0; c + 1 < 7; c++)
        fgmm_stats_offer_rows(batch, 1000 + cuts[c], ll.data() + cuts[c], cuts[c + 1] - cuts[c]);
    std::vector<int64_t> r1(K), r2(K);
    std::vector<double> l1(K), l2(K);
    ASSERT_EQ(fgmm_stats_worst_rows(one, r1.data(), l1.data(), nullptr, K), K);
    ASSERT_EQ(fgmm_stats_worst_rows(batch, r2.data(), l2.data(), nullptr, K), K);
    for (int i = 0; i < K; i++) {
        EXPECT_EQ(r1[i], r2[i]) << i;
        EXPECT_EQ(l1[i], l2[i]) << i;
    }
    EXPECT_EQ(l1[0], -250.0);
    fgmm_stats_free(one);
    fgmm_stats_free(batch);
}

TEST(BadInput, KOutOfRange)
{
    std::vector<float> x(10 * 2, 1.0f);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 10, 2, "tiny.fbin", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    fgmm_model *m = nullptr;
    p.k = 0;
    EXPECT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("k must be > 0"), std::string::npos) << err.msg;
    p.k = 11;
    EXPECT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("exceeds the 10 rows of tiny.fbin"), std::string::npos)
        << err.msg;
    EXPECT_EQ(m, nullptr);
    fgmm_engine_free(e);
    fgmm_source_close(src);
}

TEST(BadInput, NonFiniteValueNamesTheRow)
{
    std::vector<float> x(100 * 3, 0.5f);
    x[37 * 3 + 2] = NAN;
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 100, 3, "data.npy", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(2, 3, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    fgmm_stats *s;
    fgmm_stats_create(2, 3, nullptr, &s, &err);
    EXPECT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("data.npy: row 37 column 2 is NaN"), std::string::npos)
        << err.msg;
    x[37 * 3 + 2] = INFINITY;  // a second source: the first pass checks each chunk once
    fgmm_source *src2;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 100, 3, "data.npy", &src2, &err), FGMM_OK);
    EXPECT_EQ(fgmm_engine_estep(e, src2, m, s, nullptr, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("row 37 column 2 is inf"), std::string::npos) << err.msg;
    fgmm_stats_free(s);
    fgmm_model_free(m);
    fgmm_source_close(src);
    fgmm_source_close(src2);
    fgmm_engine_free(e);
}

TEST(BadInput, ModelDimensionMismatch)
{
    std::vector<float> x(50 * 4, 0.5f);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 50, 4, "d4.fbin", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(2, 5, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = 2;
    p.init = FGMM_INIT_MODEL;
    p.init_model = m;
    fgmm_model *out = nullptr;
    EXPECT_EQ(fgmm_fit(e, src, &p, &out, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("initial model has D=5 but d4.fbin has dimension 4"),
              std::string::npos)
        << err.msg;
    double ll;
    EXPECT_EQ(fgmm_score(e, src, m, &ll, nullptr, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("d4.fbin has dimension 4 but the model has D=5"),
              std::string::npos)
        << err.msg;
    fgmm_model_free(m);
    fgmm_engine_free(e);
    fgmm_source_close(src);
}

TEST(BadInput, CudaDeviceRequestedWithoutGpu)
{
    int n_dev = 0;
    fgmm_error dev_err{};
    ASSERT_EQ(fgmm_device_count(FGMM_DEVICE_CUDA, &n_dev, &dev_err), FGMM_OK) << dev_err.msg;
    if (n_dev > 0) GTEST_SKIP() << "a GPU is present; nothing to refuse";
    fgmm_error err{};
    fgmm_engine *e = nullptr;
    fgmm_status st = fgmm_engine_create(FGMM_DEVICE_CUDA, 1, &e, &err);
    // A build with CUDA on a machine without a device, or a CPU-only build.
    EXPECT_TRUE(st == FGMM_ERR_DEVICE || st == FGMM_ERR_UNSUPPORTED) << err.msg;
    EXPECT_TRUE(std::string(err.msg).find("no CUDA device") != std::string::npos ||
                std::string(err.msg).find("no CUDA back end") != std::string::npos)
        << err.msg;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_AUTO, 1, &e, &err), FGMM_OK);
    EXPECT_STREQ(fgmm_engine_device_name(e), "cpu");
    fgmm_engine_free(e);
}

// The M-step's variance floor is the reg_covar it is given: an M-step that
// dropped or fixed it would fail here.
TEST(Mstep, AddsTheGivenRegCovar)
{
    const int K = 2, D = 3;
    fgmm_error err{};
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
    double *nk = fgmm_stats_nk(s), *sums = fgmm_stats_sums(s);
    // Component k: Nk = 4, E[x] = k + 1, E[x^2] = (k+1)^2 + (j+1) -> variance j + 1.
    for (int k = 0; k < K; k++) {
        nk[k] = 4;
        for (int j = 0; j < D; j++) {
            sums[(size_t)k * 2 * D + j] = 4.0 * (k + 1);
            sums[(size_t)k * 2 * D + D + j] = 4.0 * ((k + 1) * (k + 1) + (j + 1));
        }
    }
    fgmm_stats_add_loglik(s, 0, 8);
    for (double reg : {0.0, 1e-6, 0.25, 3.0}) {
        fgmm_model *m;
        ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
        int re = -1;
        ASSERT_EQ(fgmm_stats_mstep(s, m, reg, 1.0, &re, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(re, 0);
        for (int k = 0; k < K; k++)
            for (int j = 0; j < D; j++)
                EXPECT_NEAR(fgmm_model_variances_c(m)[k * D + j], (j + 1) + reg, 1e-12)
                    << "reg_covar " << reg << " k " << k << " j " << j;
        fgmm_model_free(m);
        ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_SPHERICAL, &m, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_mstep(s, m, reg, 1.0, &re, &err), FGMM_OK) << err.msg;
        for (int k = 0; k < K; k++)
            EXPECT_NEAR(fgmm_model_variances_c(m)[k], 2.0 + reg, 1e-12) << "spherical " << reg;
        fgmm_model_free(m);
    }
    fgmm_stats_free(s);
}

// Re-seeding candidates keep their rows' values through offers and sums,
// so the M-step needs no data: each candidate's values must be its own.
TEST(Stats, CandidatesCarryTheirRows)
{
    const int K = 4, D = 3;
    fgmm_error err{};
    fgmm_stats *a, *b, *sum;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &a, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &b, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &sum, &err), FGMM_OK);
    // Row r has values (r, 2r, 3r) and log-likelihood -(r * 37 % 101).
    auto offer = [&](fgmm_stats *s, int64_t r) {
        float v[3] = {(float)r, 2.0f * r, 3.0f * r};
        fgmm_stats_offer_row(s, r, -(double)(r * 37 % 101), v, FGMM_F32);
    };
    for (int64_t r = 0; r < 50; r++) offer(a, r);
    for (int64_t r = 50; r < 100; r++) offer(b, r);
    fgmm_stats *parts[2] = {a, b};
    ASSERT_EQ(fgmm_stats_reduce(sum, parts, 2, &err), FGMM_OK) << err.msg;
    int64_t rows[K];
    double ll[K];
    float xs[K * D];
    ASSERT_EQ(fgmm_stats_worst_rows(sum, rows, ll, xs, K), K);
    for (int i = 0; i < K; i++) {
        EXPECT_EQ(ll[i], -(double)(rows[i] * 37 % 101));
        for (int j = 0; j < D; j++) EXPECT_EQ(xs[i * D + j], (float)((j + 1) * rows[i])) << i;
        if (i > 0) {
            EXPECT_LE(ll[i - 1], ll[i]);
        }
    }
    EXPECT_EQ(fgmm_stats_missing_candidates(sum, nullptr, 0), 0);
    // Offered without values (as a GPU does), then supplied.
    fgmm_stats_zero(a);
    fgmm_stats_offer_row(a, 7, -1.0, nullptr, FGMM_F32);
    int64_t miss[1];
    ASSERT_EQ(fgmm_stats_missing_candidates(a, miss, 1), 1);
    EXPECT_EQ(miss[0], 7);
    float v7[3] = {7, 14, 21};
    ASSERT_EQ(fgmm_stats_set_candidate(a, 7, v7, &err), FGMM_OK);
    EXPECT_EQ(fgmm_stats_missing_candidates(a, nullptr, 0), 0);
    EXPECT_EQ(fgmm_stats_set_candidate(a, 8, v7, &err), FGMM_ERR_ARGUMENT);
    fgmm_stats_free(a);
    fgmm_stats_free(b);
    fgmm_stats_free(sum);
}

// float -> binary16 against values worked out by hand from the IEEE
// layout, not by the code under test: ties go to the even significand.
TEST(Half, RoundsToNearestEvenAgainstHandValues)
{
    struct Case {
        float f;
        uint16_t h;
    } cases[] = {
        {1.0f + 1.0f / 2048, 0x3c00},            // halfway 1 and 1+2^-10: to even (1.0)
        {1.0f + 3.0f / 2048, 0x3c02},            // halfway 1+2^-10 and 1+2^-9: to even
        {1.0f + 1.0f / 2048 + 1.0f / 65536, 0x3c01},  // just above halfway: up
        {65504.0f, 0x7bff},                      // largest finite
        {65520.0f, 0x7c00},                      // halfway to 2^16: to even, infinity
        {65519.0f, 0x7bff},                      // below halfway: largest finite
        {5.9604645e-08f, 0x0001},                // smallest subnormal 2^-24
        {2.9802322e-08f, 0x0000},                // 2^-25, halfway to 0 and 2^-24: to even 0
        {4.4703484e-08f, 0x0001},                // 1.5 * 2^-25: up to 2^-24
        {8.9406967e-08f, 0x0002},                // 1.5 * 2^-24: halfway, to even 2 * 2^-24
        {-0.0f, 0x8000},
        {6.1035156e-05f, 0x0400},                // smallest normal 2^-14
    };
    for (const Case &c : cases)
        EXPECT_EQ(fgmm_float_to_half(c.f), c.h) << std::hexfloat << c.f;
}

TEST(Half, RoundTripsAndRounds)
{
    for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333333f}) {
        float back = fgmm_half_to_float(fgmm_float_to_half(f));
        EXPECT_NEAR(back, f, std::fabs(f) * 1e-3 + 1e-8) << f;
    }
    EXPECT_EQ(fgmm_float_to_half(1.0f), 0x3c00);
    EXPECT_EQ(fgmm_float_to_half(-2.0f), 0xc000);
    EXPECT_EQ(fgmm_float_to_half(1e6f), 0x7c00);
    EXPECT_TRUE(std::isnan(fgmm_half_to_float(0x7e00)));
}

}  // namespace
