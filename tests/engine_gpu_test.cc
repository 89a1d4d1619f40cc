// engine_gpu_test.cc - the CUDA back end through the engine: the same
// E-step statistics as the float64 reference and the same EM trajectory as
// the CPU back end, within the default precision mode's bound (1e-4).
// Skips, with a message, where there is no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
#include "core/backend.h"
}
#include "core/diagnostics.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"
#include "tests/gpu.h"
#include "tests/reference.h"

namespace {


void estep_case(fgmm_covariance cov, int64_t n, int K, int D, uint64_t seed)
{
    SCOPED_TRACE(std::string(fgmm_covariance_name(cov)) + " N=" + std::to_string(n) +
                 " K=" + std::to_string(K) + " D=" + std::to_string(D));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    fgmm_model *m = random_mixture(&rng, K, D, cov, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 1, &e, &err), FGMM_OK) << err.msg;
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
    std::vector<float> ll(n, NAN);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, ll.data(), &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), 0) << "a benign model left the GPU";
    RefStats ref = reference_estep(m, x, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    double e1 = rel_err(nk, ref.nk), e2 = rel_err(sx, ref.sx), e3 = rel_err(sxx, ref.sxx);
    double e4 = std::fabs(fgmm_stats_loglik(s) - ref.loglik) / std::fabs(ref.loglik);
    printf("  cuda %s N=%lld K=%d D=%d: rel err nk %.2e sx %.2e sxx %.2e ll %.2e\n",
           fgmm_covariance_name(cov), (long long)n, K, D, e1, e2, e3, e4);
    EXPECT_LE(e1, 1e-4);
    EXPECT_LE(e2, 1e-4);
    EXPECT_LE(e3, 1e-4);
    EXPECT_LE(e4, 1e-4);
    for (int64_t i = 0; i < n; i++)
        // Per-row values: 1e-3 relative on the tensor-core path (see
        // docs/precision.md); the statistics above keep 1e-4.
        ASSERT_NEAR(ll[i], ref.row_ll[i], 1e-3 * std::fabs(ref.row_ll[i]) + 1e-3) << "row " << i;
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

TEST(EngineCuda, StatisticsMatchFloat64Reference)
{
    NEED_GPU();
    uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    estep_case(FGMM_COV_DIAG, 5003, 37, 29, seed);
    estep_case(FGMM_COV_DIAG, 70001, 64, 128, seed + 1);  // crosses a chunk
    estep_case(FGMM_COV_DIAG, 999, 1, 1, seed + 2);
    estep_case(FGMM_COV_SPHERICAL, 3001, 19, 7, seed + 3);
    // D > 128: the wide tensor-core kernels (cuda/estep_wide.cu).
    estep_case(FGMM_COV_DIAG, 4001, 40, 200, seed + 4);
    estep_case(FGMM_COV_SPHERICAL, 2003, 12, 300, seed + 5);
}

// How the trajectory tests hand the rows to the engines.
enum class Feed { F32, F16, I8, Shards };

// Opens src over x (n x D floats) as `feed`: float32 in memory, float16 or
// int8 in memory (the engines convert on the fly), or zstd shards written
// to a temporary directory and streamed (cache budget 0: read every step).
// storage keeps what the source points into.
void open_feed(Feed feed, const std::vector<float> &x, int64_t n, int D, std::vector<char> &storage,
               std::string &dir, fgmm_source **src)
{
    fgmm_error err{};
    if (feed == Feed::F32) {
        ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "f32", src, &err), FGMM_OK);
    } else if (feed == Feed::F16) {
        storage.resize(x.size() * 2);
        uint16_t *h = (uint16_t *)storage.data();
        for (size_t i = 0; i < x.size(); i++) h[i] = fgmm_float_to_half(x[i]);
        ASSERT_EQ(fgmm_source_memory(h, FGMM_F16, n, D, "f16", src, &err), FGMM_OK);
    } else if (feed == Feed::I8) {
        storage.resize(x.size());
        int8_t *q = (int8_t *)storage.data();
        for (size_t i = 0; i < x.size(); i++) {
            float v = std::round(x[i] * 4);
            q[i] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
        }
        ASSERT_EQ(fgmm_source_memory(q, FGMM_I8, n, D, "i8", src, &err), FGMM_OK);
    } else {
        char tmpl[] = "/tmp/fgmm_gpu_shards_XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir = std::string(tmpl) + "/s";
        fgmm_shard_write_options wo;
        fgmm_shard_write_options_default(&wo);
        wo.rows_per_chunk = 4096;  // several chunks and shards
        wo.chunks_per_shard = 3;
        fgmm_shard_writer *w;
        int64_t resume = -1;
        ASSERT_EQ(fgmm_shard_writer_create(dir.c_str(), D, FGMM_F32, &wo, "test", &w, &resume,
                                           &err),
                  FGMM_OK)
            << err.msg;
        ASSERT_EQ(resume, 0);
        ASSERT_EQ(fgmm_shard_writer_append(w, x.data(), n, nullptr, &err), FGMM_OK) << err.msg;
        fgmm_shard_write_result res;
        ASSERT_EQ(fgmm_shard_writer_finish(w, "test", &res, &err), FGMM_OK) << err.msg;
        fgmm_shard_writer_free(w);
        fgmm_shard_read_options ro;
        fgmm_shard_read_options_default(&ro);
        ro.cache_budget = 0;
        ASSERT_EQ(fgmm_shards_open(dir.c_str(), &ro, src, &err), FGMM_OK) << err.msg;
    }
}

void trajectory_case(int n, int K, int D, fgmm_covariance cov = FGMM_COV_DIAG,
                     Feed feed = Feed::F32)
{
    SCOPED_TRACE("N=" + std::to_string(n) + " K=" + std::to_string(K) + " D=" + std::to_string(D) +
                 " " + fgmm_covariance_name(cov) + " feed " + std::to_string((int)feed));
    fgmm_rng rng;
    const uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    fgmm_model *truth = random_mixture(&rng, K, D, cov, 1.5, n, x);
    fgmm_error err{};
    fgmm_source *src = nullptr;
    std::vector<char> storage;
    std::string dir;
    open_feed(feed, x, n, D, storage, dir, &src);
    ASSERT_NE(src, nullptr);
    std::vector<std::vector<double>> traj;
    // Both start from one initial model: this compares the EM steps (the
    // GPU seeds k-means++ with its own fp32 distances, so its draws may
    // differ from the CPU's near row boundaries).
    fgmm_model *init = nullptr;
    {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 0, &e, &err), FGMM_OK) << err.msg;
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = K;
        p.covariance = cov;
        p.seed = 5;
        ASSERT_EQ(fgmm_initialize(e, src, &p, &init, &err), FGMM_OK) << err.msg;
        fgmm_engine_free(e);
    }
    for (fgmm_device dev : {FGMM_DEVICE_CPU, FGMM_DEVICE_CUDA}) {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(dev, 0, &e, &err), FGMM_OK) << err.msg;
        if (feed == Feed::Shards) {
            ASSERT_EQ(fgmm_engine_set_gpu_cache_budget(e, 0, &err), FGMM_OK) << err.msg;
        }
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = K;
        p.covariance = cov;
        p.init = FGMM_INIT_MODEL;
        p.init_model = init;
        p.max_iter = 8;
        p.tol = 0;
        fgmm_model *m;
        ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
        const double *ll = fgmm_model_loglik(m);
        traj.emplace_back(ll, ll + fgmm_model_loglik_count(m));
        if (dev == FGMM_DEVICE_CUDA && feed == Feed::Shards) {
            EXPECT_EQ(fgmm_engine_cached_passes(e), 0) << "the rows were to stream every step";
        }
        fgmm_model_free(m);
        fgmm_engine_free(e);
    }
    ASSERT_EQ(traj[0].size(), traj[1].size());
    for (size_t i = 0; i < traj[0].size(); i++) {
        printf("  iter %zu: cpu %.8f cuda %.8f\n", i + 1, traj[0][i], traj[1][i]);
        EXPECT_NEAR(traj[1][i], traj[0][i], 1e-4 * std::fabs(traj[0][i])) << "iteration " << i + 1;
    }
    fgmm_model_free(init);
    fgmm_model_free(truth);
    fgmm_source_close(src);
    if (!dir.empty()) {
        std::string cmd = "rm -rf '" + dir.substr(0, dir.size() - 2) + "'";
        EXPECT_EQ(system(cmd.c_str()), 0);
    }
}

// The precision schedule against float64 from one initial model, same
// tol and max_iter: the final models' mean log-likelihoods, both scored in
// float64 on the CPU, within 1e-6 relative, and (check_steps) in at most
// 20% more steps, or two more: the step that leaves bf16 cannot count
// towards convergence.
void schedule_case(const char *what, const void *rows, fgmm_dtype dtype, int64_t n, int D,
                   int K, double tol, bool expect_fast, bool check_steps)
{
    SCOPED_TRACE(what);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(rows, dtype, n, D, what, &src, &err), FGMM_OK);
    fgmm_engine *cpu;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 0, &cpu, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_engine_set_precision(cpu, FGMM_PRECISION_FP64, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = K;
    p.seed = 3;
    fgmm_model *init = nullptr;
    ASSERT_EQ(fgmm_initialize(cpu, src, &p, &init, &err), FGMM_OK) << err.msg;
    p.init = FGMM_INIT_MODEL;
    p.init_model = init;
    p.max_iter = 300;
    p.tol = tol;
    double mean[2];
    int steps[2], fast = 0;
    const fgmm_precision modes[2] = {FGMM_PRECISION_AUTO, FGMM_PRECISION_FP64};
    for (int i = 0; i < 2; i++) {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 0, &e, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_engine_set_precision(e, modes[i], &err), FGMM_OK) << err.msg;
        fgmm_model *m;
        ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
        steps[i] = fgmm_model_loglik_count(m);
        if (i == 0) fast = fgmm_engine_last_fit_fast_steps(e);
        ASSERT_EQ(fgmm_score(cpu, src, m, &mean[i], nullptr, &err), FGMM_OK) << err.msg;
        fgmm_model_free(m);
        fgmm_engine_free(e);
    }
    const double rel = std::fabs(mean[0] - mean[1]) / std::fabs(mean[1]);
    printf("  %s: auto %d steps (%d bf16) mean ll %.10f; fp64 %d steps %.10f; rel %.2e\n", what,
           steps[0], fast, mean[0], steps[1], mean[1], rel);
    if (expect_fast) {
        EXPECT_GT(fast, 0) << "no step ran in bf16";
    }
    EXPECT_LE(rel, 1e-6);
    if (check_steps) {
        EXPECT_LE(steps[0], std::max(steps[1] + 2, (int)std::ceil(1.2 * steps[1])));
    }
    fgmm_model_free(init);
    fgmm_engine_free(cpu);
    fgmm_source_close(src);
}

TEST(EngineCuda, PrecisionScheduleReachesTheFloat64Fit)
{
    NEED_GPU();
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 77);
    std::vector<float> x;
    fgmm_model *truth = random_mixture(&rng, 24, 48, FGMM_COV_DIAG, 1.5, 120000, x);
    schedule_case("random mixture, float32", x.data(), FGMM_F32, 120000, 48, 24, 1e-6, true, true);
    fgmm_model_free(truth);
    // Pixels with blank dimensions (stiff pairs) as uint8: every step runs
    // split bf16, FAST's limit being far too small. At this tol, 5e-8 of
    // the log-likelihood, split bf16's own evaluation of it (~1e-7) is the
    // noise the changes sink into, so the step count is not compared
    // (H100: 28 steps against float64's 5, the final models within 8.6e-7).
    std::vector<float> px;
    fgmm_model *blank = blank_pixel_mixture(40000, 6, 8, 64, px);
    std::vector<uint8_t> u(px.size());
    for (size_t i = 0; i < px.size(); i++) u[i] = (uint8_t)px[i];
    schedule_case("blank pixels, uint8", u.data(), FGMM_U8, 40000, 64, 6, 1e-5, false, false);
    fgmm_model_free(blank);
}

TEST(EngineCuda, TrajectoryMatchesCpu)
{
    NEED_GPU();
    trajectory_case(50000, 24, 40);
}

// D > 128 runs the wide kernels: the same EM through the same engine.
TEST(EngineCuda, TrajectoryMatchesCpuWide)
{
    NEED_GPU();
    trajectory_case(20000, 16, 200);
}

TEST(EngineCuda, TrajectoryMatchesCpuSpherical)
{
    NEED_GPU();
    trajectory_case(30000, 12, 40, FGMM_COV_SPHERICAL);
}

// Half and int8 rows are converted on the device: the same trajectory as
// the CPU engine's on the same stored values.
TEST(EngineCuda, TrajectoryMatchesCpuFloat16AndInt8)
{
    NEED_GPU();
    trajectory_case(20000, 8, 32, FGMM_COV_DIAG, Feed::F16);
    trajectory_case(20000, 8, 32, FGMM_COV_DIAG, Feed::I8);
}

// Shards streamed from disk every step (pinned ring, no row cache).
TEST(EngineCuda, TrajectoryMatchesCpuFromShards)
{
    NEED_GPU();
    trajectory_case(40000, 16, 48, FGMM_COV_DIAG, Feed::Shards);
}

// A model the GPU's arithmetic cannot evaluate (MNIST-like blank pixels
// with 1e-6 variances: the GPU's own fp32 and split-bf16 logits were off by
// thousands of nats on MNIST, BENCHMARKS.md): the CUDA engine must run the
// pass on the CPU, say so, and give float64's statistics; a larger
// variance floor brings the pass back to the GPU.
// Top-1 of each row, written where the assignment pass hands it over.
fgmm_status store_best(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                       const float *lresp, const float *ll, fgmm_error *err)
{
    (void)lresp, (void)ll, (void)err;
    int32_t *best = (int32_t *)user;
    for (int64_t i = 0; i < n; i++) best[first_row + i] = idx[(size_t)i * m];
    return FGMM_OK;
}

// A model whose logits the tensor cores cannot form (terms ~1e11 that
// cancel) runs its E-step, scoring and top-m assignment passes in float64
// on the GPU, matching float64; a variance floor brings it back to the
// tensor cores.
// A mixture with `stiff` of its K components stiff in their first `dims`
// dimensions: mean 50 + 4k there (far from the data's centre) and variance
// 1e-4 (terms of ~3e7 each against the tensor cores' 1e5), variance 4 and
// means ~N(3, 4) elsewhere; rows drawn from it. With one_row, component 0
// instead sits on row 0 with variance reg everywhere, as a component
// re-seeded on a single row does.
fgmm_model *stiff_mixture(int64_t n, int K, int D, int stiff, int dims, bool one_row,
                          std::vector<float> &x)
{
    fgmm_error err{};
    fgmm_model *m = nullptr;
    if (fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err) != FGMM_OK) return nullptr;
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *var = fgmm_model_variances(m);
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 1234 + K + D + stiff);
    for (int k = 0; k < K; k++) {
        w[k] = 1.0 / K;
        for (int j = 0; j < D; j++) {
            const bool st = k < stiff && j < dims;
            mu[(size_t)k * D + j] = st ? 50.0 + 4.0 * k : 3.0 + 2.0 * fgmm_rng_normal(&rng);
            var[(size_t)k * D + j] = st ? 1e-4 : 4.0;
        }
    }
    x.resize((size_t)n * D);
    for (int64_t i = 0; i < n; i++) {
        const int k = (int)(i % K);
        for (int j = 0; j < D; j++)
            x[(size_t)i * D + j] = (float)(mu[(size_t)k * D + j] +
                                           std::sqrt(var[(size_t)k * D + j]) * fgmm_rng_normal(&rng));
    }
    if (one_row)
        for (int j = 0; j < D; j++) {
            mu[j] = x[j];
            var[j] = 1e-6;
        }
    return m;
}

// The M-step's variances from float64 raw moments (ref) and from the
// engine's statistics (s), in the pairs marked stiff: their largest
// difference relative to the variance, and whether any is negative. The
// reference's E[x^2] - E[x]^2 itself cancels in float64, to about
// 1e-15 E[x^2]: that much of an absolute difference is the reference's.
double stiff_variance_error(fgmm_stats *s, const RefStats &ref, const fgmm_model *m0,
                            const unsigned char *stiff, bool *negative)
{
    const int K = fgmm_model_k(m0), D = fgmm_model_d(m0);
    fgmm_model *m = nullptr;
    fgmm_error err{};
    EXPECT_EQ(fgmm_model_clone(m0, &m, &err), FGMM_OK);
    EXPECT_EQ(fgmm_stats_mstep(s, m, 0.0, 0.0, nullptr, &err), FGMM_OK) << err.msg;
    double worst = 0;
    *negative = false;
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) {
            if (!stiff[(size_t)k * D + j]) continue;
            const size_t i = (size_t)k * D + j;
            const double mean = ref.sx[i] / ref.nk[k], v = ref.sxx[i] / ref.nk[k] - mean * mean;
            const double got = fgmm_model_variances_c(m)[i];
            if (got < 0) *negative = true;
            const double floor = 1e-13 * ref.sxx[i] / ref.nk[k] + 1e-300;
            worst = std::max(worst,
                             std::max(0.0, std::fabs(got - v) - floor) / (std::max(v, 0.0) + floor));
        }
    fgmm_model_free(m);
    return worst;
}

// Components whose terms are too large for the tensor cores in some
// dimensions only: those (component, dimension) pairs are evaluated
// exactly and the rest stays on the tensor cores. Statistics within the
// mode's bound of float64, and the stiff pairs' variances to 1e-4 where
// the tensor cores' own sums would not keep a single digit.
void stiff_case(int64_t n, int K, int D, int stiff, int dims, bool one_row, fgmm_dtype dtype)
{
    SCOPED_TRACE("K=" + std::to_string(K) + " D=" + std::to_string(D) + " stiff " +
                 std::to_string(stiff) + " x " + std::to_string(dims) +
                 (one_row ? " one-row component" : "") + " dtype " + std::to_string((int)dtype));
    std::vector<float> x;
    fgmm_model *m = stiff_mixture(n, K, D, stiff, dims, one_row, x);
    ASSERT_NE(m, nullptr);
    // Rows as the engine reads them, and x as their exact values.
    std::vector<uint16_t> h;
    std::vector<uint8_t> u;
    const void *rows = x.data();
    if (dtype == FGMM_F16) {
        h.resize(x.size());
        for (size_t i = 0; i < x.size(); i++) {
            h[i] = fgmm_float_to_half(x[i]);
            x[i] = fgmm_half_to_float(h[i]);
        }
        rows = h.data();
    } else if (dtype == FGMM_U8) {
        u.resize(x.size());
        for (size_t i = 0; i < x.size(); i++) {
            u[i] = (uint8_t)std::lround(std::fmin(255.0, std::fmax(0.0, (double)x[i])));
            x[i] = u[i];
        }
        rows = u.data();
    }
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(rows, dtype, n, D, "stiff", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 2, &e, &err), FGMM_OK) << err.msg;
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
    std::vector<float> ll(n, NAN);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, ll.data(), &err), FGMM_OK) << err.msg;
    double mag = 0, limit = 0;
    ASSERT_EQ(fgmm_engine_last_pass_fallback(e, &mag, &limit), FGMM_PASS_STIFF)
        << "magnitude " << mag << " limit " << limit;
    EXPECT_STREQ(fgmm_engine_path(e), "tensor cores, split bf16");
    const int64_t marked = fgmm_engine_last_pass_stiff_pairs(e);
    EXPECT_GT(marked, 0);
    // The pairs stiff by construction, whose variances are checked.
    std::vector<unsigned char> flags((size_t)K * D, 0);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++)
            flags[(size_t)k * D + j] = one_row ? k == 0 : (k < stiff && j < dims);
    RefStats ref = reference_estep(m, x, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    bool negative = false;
    const double ev = stiff_variance_error(s, ref, m, flags.data(), &negative);
    const double e4 = std::fabs(fgmm_stats_loglik(s) - ref.loglik) / std::fabs(ref.loglik);
    printf("  stiff pairs %lld (magnitude %.2g): rel err nk %.2e sx %.2e sxx %.2e ll %.2e, "
           "stiff variances %.2e\n",
           (long long)marked, mag, rel_err(nk, ref.nk), rel_err(sx, ref.sx), rel_err(sxx, ref.sxx),
           e4, ev);
    EXPECT_LE(rel_err(nk, ref.nk), 1e-4);
    EXPECT_LE(rel_err(sx, ref.sx), 1e-4);
    EXPECT_LE(rel_err(sxx, ref.sxx), 1e-4);
    EXPECT_LE(e4, 1e-4);
    EXPECT_LE(ev, 1e-4);
    EXPECT_FALSE(negative);
    for (int64_t i = 0; i < n; i++)
        ASSERT_NEAR(ll[i], ref.row_ll[i], 1e-3 * std::fabs(ref.row_ll[i]) + 1e-3) << "row " << i;
    // Scoring takes the same path.
    double mean_ll = 0, ref_mean = 0;
    for (int64_t i = 0; i < n; i++) ref_mean += ref.row_ll[i] / n;
    ASSERT_EQ(fgmm_score(e, src, m, &mean_ll, nullptr, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), FGMM_PASS_STIFF);
    EXPECT_NEAR(mean_ll, ref_mean, 1e-4 * std::fabs(ref_mean));
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

TEST(EngineCuda, StiffPairsAreExact)
{
    NEED_GPU();
    stiff_case(20000, 16, 40, 1, 8, false, FGMM_F32);    // one component
    stiff_case(40000, 32, 64, 10, 12, false, FGMM_F32);  // ten
    stiff_case(30000, 24, 96, 24, 12, false, FGMM_F32);  // every component, some dimensions
    stiff_case(20000, 20, 128, 0, 0, true, FGMM_F32);    // one component on a single row
    stiff_case(30001, 40, 200, 7, 30, false, FGMM_F32);  // D > 128
    stiff_case(20000, 16, 40, 16, 5, false, FGMM_F16);
    stiff_case(20000, 16, 40, 4, 8, false, FGMM_U8);
}

// MNIST-like pixels: each component blank (0, variance 1e-6) on its own
// dimensions, with integer rows as uint8: the blank pairs run exactly.
TEST(EngineCuda, BlankPixelsRunExactlyOnTensorCores)
{
    NEED_GPU();
    std::vector<float> x;
    const int64_t n = 3000;
    const int K = 4, D = 64;
    fgmm_model *m = blank_pixel_mixture(n, K, 8, D, x);
    ASSERT_NE(m, nullptr);
    std::vector<uint8_t> u(x.size());
    for (size_t i = 0; i < x.size(); i++) u[i] = (uint8_t)x[i];
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(u.data(), FGMM_U8, n, D, "blank", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 2, &e, &err), FGMM_OK) << err.msg;
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
    std::vector<float> ll(n, NAN);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, ll.data(), &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), FGMM_PASS_STIFF);
    EXPECT_EQ(fgmm_engine_last_pass_stiff_pairs(e), K * 8);
    RefStats ref = reference_estep(m, x, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    EXPECT_LE(rel_err(nk, ref.nk), 1e-4);
    EXPECT_LE(rel_err(sx, ref.sx), 1e-4);
    EXPECT_LE(rel_err(sxx, ref.sxx), 1e-4);
    // The blank pairs' sums are exactly zero: every row of the component is 0 there.
    for (int k = 0; k < K; k++)
        for (int j = 8 * k; j < 8 * k + 8; j++) {
            EXPECT_EQ(sx[(size_t)k * D + j], 0.0) << k << "," << j;
            EXPECT_EQ(sxx[(size_t)k * D + j], 0.0) << k << "," << j;
        }
    for (int64_t i = 0; i < n; i++)
        ASSERT_NEAR(ll[i], ref.row_ll[i], 1e-3 * std::fabs(ref.row_ll[i]) + 1e-3) << "row " << i;
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

// In the fp32 mode (no stiff pairs there) such a model's passes run in
// float64, as do assignments in every mode.
TEST(EngineCuda, IllConditionedModelRunsInFloat64)
{
    NEED_GPU();
    std::vector<float> x;
    const int64_t n = 3000;
    const int K = 4, D = 40;
    fgmm_model *m = blank_pixel_mixture(n, K, 8, D, x);
    ASSERT_NE(m, nullptr);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "blank", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 2, &e, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_engine_set_precision(e, FGMM_PRECISION_FP32, &err), FGMM_OK) << err.msg;
    fgmm_stats *s;
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &s, &err), FGMM_OK);
    std::vector<float> ll(n, NAN);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, ll.data(), &err), FGMM_OK) << err.msg;
    double mag = 0, limit = 0;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, &mag, &limit), FGMM_PASS_FP64);
    EXPECT_GT(mag, limit);
    EXPECT_EQ(limit, 1e5) << "the fp32 limit";
    EXPECT_STREQ(fgmm_engine_path(e), "float64 SIMT");
    RefStats ref = reference_estep(m, x, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    printf("  blank pixels, magnitude %.2g, float64 on the GPU: rel err nk %.2e sx %.2e sxx %.2e\n",
           mag, rel_err(nk, ref.nk), rel_err(sx, ref.sx), rel_err(sxx, ref.sxx));
    EXPECT_LE(rel_err(nk, ref.nk), 1e-7);
    EXPECT_LE(rel_err(sx, ref.sx), 1e-7);
    EXPECT_LE(rel_err(sxx, ref.sxx), 1e-7);
    for (int64_t i = 0; i < n; i++)
        ASSERT_NEAR(ll[i], ref.row_ll[i], 1e-5 * std::fabs(ref.row_ll[i]) + 1e-3) << "row " << i;
    // Scoring: the same pass without statistics.
    double mean_ll = 0, ref_mean = 0;
    for (int64_t i = 0; i < n; i++) ref_mean += ref.row_ll[i] / n;
    ASSERT_EQ(fgmm_score(e, src, m, &mean_ll, nullptr, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), FGMM_PASS_FP64);
    EXPECT_NEAR(mean_ll, ref_mean, 1e-6 * std::fabs(ref_mean));
    // Assignment: the best component of each row as float64 has it.
    std::vector<int32_t> best(n, -1);
    ASSERT_EQ(fgmm_assign(e, src, m, 1, store_best, best.data(), &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), FGMM_PASS_FP64);
    EXPECT_STREQ(fgmm_engine_path(e), "float64 SIMT");
    std::vector<double> L = reference_logits(m, x, n);
    for (int64_t i = 0; i < n; i++) {
        int b = 0;
        for (int k = 1; k < K; k++)
            if (L[(size_t)i * K + k] > L[(size_t)i * K + b]) b = k;
        ASSERT_EQ(best[i], b) << "row " << i;
    }
    // Variances floored at 225 on the blank dimensions: back on fp32.
    for (int i = 0; i < K * D; i++) fgmm_model_variances(m)[i] = 225.0;
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_engine_last_pass_fallback(e, &mag, &limit), FGMM_PASS_AS_ASKED) << "magnitude " << mag;
    EXPECT_STREQ(fgmm_engine_path(e), "fp32 SIMT");
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

TEST(EngineCuda, IntegerInputs)
{
    NEED_GPU();
    const int n = 4000, D = 24, K = 6;
    fgmm_rng rng;
    const uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    fgmm_rng_seed(&rng, seed);
    std::vector<uint8_t> u8(n * D);
    std::vector<float> xf(n * D);
    for (int i = 0; i < n * D; i++) xf[i] = u8[i] = (uint8_t)(fgmm_rng_uniform(&rng) * 256);
    fgmm_error err{};
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_create(K, D, FGMM_COV_DIAG, &m, &err), FGMM_OK);
    for (int i = 0; i < K * D; i++) {
        fgmm_model_means(m)[i] = xf[i * 13 % (n * D)];
        fgmm_model_variances(m)[i] = 3000;
    }
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(u8.data(), FGMM_U8, n, D, "u8", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 1, &e, &err), FGMM_OK) << err.msg;
    fgmm_stats *s;
    fgmm_stats_create(K, D, nullptr, &s, &err);
    ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
    RefStats ref = reference_estep(m, xf, n);
    std::vector<double> nk, sx, sxx;
    unshift(s, nk, sx, sxx);
    EXPECT_LE(rel_err(nk, ref.nk), 1e-4);
    EXPECT_LE(rel_err(sx, ref.sx), 1e-4);
    EXPECT_LE(rel_err(sxx, ref.sxx), 1e-4);
    fgmm_stats_free(s);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

}  // namespace

// ------------------------------------------------ full and tied covariances

namespace {

// One EM step of a full or tied model on the GPU against the float64
// reference (N x K materialised), and the CPU engine's step on the same
// start; then scoring and top-1 assignment against the reference logits.
// path: the GPU pass's kernels as fgmm_engine_path names them (NULL: not
// checked).
void matrix_case(fgmm_covariance cov, int64_t n, int K, int D, double emin, double emax,
                 uint64_t seed, double tol, const char *path = nullptr)
{
    SCOPED_TRACE(std::string(fgmm_covariance_name(cov)) + " N=" + std::to_string(n) +
                 " K=" + std::to_string(K) + " D=" + std::to_string(D));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    fgmm_model *truth = random_matrix_mixture(&rng, K, D, cov, 2.0, emin, emax, n, x);
    ASSERT_NE(truth, nullptr);
    fgmm_model *m;
    fgmm_error err{};
    ASSERT_EQ(fgmm_model_clone(truth, &m, &err), FGMM_OK);
    for (int i = 0; i < K * D; i++) fgmm_model_means(m)[i] += 0.1 * std::sqrt(emin) * fgmm_rng_normal(&rng);
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    RefMatrixStep ref = reference_matrix_step(m, x, n, 1e-6);
    ASSERT_FALSE(ref.w.empty());
    for (fgmm_device dev : {FGMM_DEVICE_CUDA, FGMM_DEVICE_CPU}) {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(dev, 2, &e, &err), FGMM_OK) << err.msg;
        fgmm_stats *s;
        ASSERT_EQ(fgmm_stats_create_cov(K, D, cov, nullptr, &s, &err), FGMM_OK);
        std::vector<float> ll(n, NAN);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, ll.data(), &err), FGMM_OK) << err.msg;
        fgmm_model *next;
        ASSERT_EQ(fgmm_model_clone(m, &next, &err), FGMM_OK);
        ASSERT_EQ(fgmm_stats_mstep(s, next, 1e-6, 1e-9, nullptr, &err), FGMM_OK) << err.msg;
        const size_t vl = fgmm_covariance_len(cov, K, D);
        std::vector<double> w(fgmm_model_weights_c(next), fgmm_model_weights_c(next) + K),
            mu(fgmm_model_means_c(next), fgmm_model_means_c(next) + (size_t)K * D),
            cv(fgmm_model_variances_c(next), fgmm_model_variances_c(next) + vl);
        const double ew = rel_err(w, ref.w), em = rel_err(mu, ref.mu), ec = rel_err(cv, ref.cov),
                     el = std::fabs(fgmm_stats_loglik(s) / n - ref.loglik) / std::fabs(ref.loglik);
        printf("  %s (%s) %s N=%lld K=%d D=%d cond %.0e: rel err weights %.2e means %.2e "
               "covariances %.2e ll %.2e\n",
               fgmm_engine_device_name(e), fgmm_engine_path(e), fgmm_covariance_name(cov),
               (long long)n, K, D, emax / emin, ew, em, ec, el);
        if (dev == FGMM_DEVICE_CUDA && path) {
            EXPECT_STREQ(fgmm_engine_path(e), path);
        }
        EXPECT_LE(ew, tol);
        EXPECT_LE(em, tol);
        EXPECT_LE(ec, tol);
        EXPECT_LE(el, tol);
        // Per-row log-likelihoods: logits from tf32 x 3 products, which
        // keep about 2^-22 of each term; a whitened coordinate loses
        // sqrt(cond) times that (2.4e-3 at cond 1e8, tol's case), else
        // within 1e-4 of (|ll| + 1).
        const double row_tol = tol > 1e-5 ? 5 * tol : 1e-4;
        std::vector<double> L = reference_logits_matrix(m, x, n);
        double worst = 0;
        int64_t worst_row = 0;
        for (int64_t i = 0; i < n; i++) {
            double mx = -INFINITY, sum = 0;
            for (int k = 0; k < K; k++) mx = std::max(mx, L[(size_t)i * K + k]);
            for (int k = 0; k < K; k++) sum += std::exp(L[(size_t)i * K + k] - mx);
            const double lse = mx + std::log(sum);
            const double e = std::fabs(ll[i] - lse) / (std::fabs(lse) + 1);
            if (!(e <= worst)) {
                worst = e;
                worst_row = i;
            }
        }
        printf("    per-row log-likelihoods: largest error %.2e of (|ll| + 1), row %lld\n", worst,
               (long long)worst_row);
        EXPECT_LE(worst, row_tol) << "row " << worst_row;
        const int64_t wrong = assign_misses(e, src, m, 2, L, n, 1e-4, &err);
        ASSERT_GE(wrong, 0) << err.msg;
        EXPECT_EQ(wrong, 0) << "rows assigned past a near tie";
        fgmm_model_free(next);
        fgmm_stats_free(s);
        fgmm_engine_free(e);
    }
    fgmm_source_close(src);
    fgmm_model_free(m);
    fgmm_model_free(truth);
}

}  // namespace

const char *const kScreened = "tensor cores, tf32 screen then tf32 x 3, full covariance";
const char *const kDirect = "tensor cores, tf32 x 3, full covariance";

TEST(EngineCuda, FullCovarianceMatchesFloat64)
{
    NEED_GPU();
    // Below 16 components the logits are not screened.
    matrix_case(FGMM_COV_FULL, 20000, 8, 16, 0.2, 2.0, 71, 1e-5, kDirect);
    matrix_case(FGMM_COV_FULL, 70001, 3, 5, 0.5, 2.0, 72, 1e-5);  // a chunk edge
    matrix_case(FGMM_COV_FULL, 3001, 1, 1, 1.0, 1.0, 73, 1e-5);
    matrix_case(FGMM_COV_FULL, 4000, 5, 33, 0.3, 3.0, (uint64_t)time(nullptr), 1e-5);
    // Past one 128-column pass of the logits and 8 tiles of the scatter.
    matrix_case(FGMM_COV_FULL, 3000, 3, 200, 0.3, 3.0, 75, 1e-5);
}

TEST(EngineCuda, ScreenedFullCovarianceMatchesFloat64)
{
    NEED_GPU();
    // One tf32 product bounds every logit; tf32 x 3 recomputes the pairs
    // the bounds cannot rule out. The same accuracy as the direct path.
    matrix_case(FGMM_COV_FULL, 6000, 40, 128, 0.3, 3.0, 74, 1e-5, kScreened);
    matrix_case(FGMM_COV_FULL, 20000, 24, 33, 0.3, 3.0, 76, 1e-5, kScreened);  // rows a value at a time
    matrix_case(FGMM_COV_FULL, 3000, 16, 200, 0.3, 3.0, 78, 1e-5, kScreened);  // two column passes
    matrix_case(FGMM_COV_FULL, 70001, 1024, 8, 0.5, 2.0, 77, 1e-5, kScreened);  // two sub-batches
}

TEST(EngineCuda, ScreenStepsAsideWhereItKeepsMostPairs)
{
    NEED_GPU();
    // Components on top of one another (the same mean): no bound rules a
    // pair out, the screen keeps them all; the pass is right, and the next
    // ones run the direct product.
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 94);
    const int64_t n = 4000;
    const int K = 24, D = 12;
    std::vector<float> x;
    fgmm_model *m = random_matrix_mixture(&rng, K, D, FGMM_COV_FULL, 0.0, 0.5, 2.0, n, x);
    ASSERT_NE(m, nullptr);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 1, &e, &err), FGMM_OK) << err.msg;
    double ll[2];
    for (int pass = 0; pass < 2; pass++) {
        fgmm_stats *s;
        ASSERT_EQ(fgmm_stats_create_cov(K, D, FGMM_COV_FULL, nullptr, &s, &err), FGMM_OK);
        ASSERT_EQ(fgmm_engine_estep(e, src, m, s, nullptr, &err), FGMM_OK) << err.msg;
        EXPECT_STREQ(fgmm_engine_path(e), pass == 0 ? kScreened : kDirect);
        ll[pass] = fgmm_stats_loglik(s);
        fgmm_stats_free(s);
    }
    EXPECT_LE(std::fabs(ll[0] - ll[1]), 1e-6 * std::fabs(ll[1]));
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

TEST(EngineCuda, TiedCovarianceMatchesFloat64)
{
    NEED_GPU();
    // Whitened means within reach of the shift: the logits from whitened
    // rows (docs/precision.md).
    const char *whitened = "tensor cores, tf32 x 3, tied covariance, whitened rows";
    matrix_case(FGMM_COV_TIED, 20000, 8, 16, 0.2, 2.0, 81, 1e-5, whitened);
    matrix_case(FGMM_COV_TIED, 3001, 1, 1, 1.0, 1.0, 83, 1e-5, whitened);
    matrix_case(FGMM_COV_TIED, 6000, 40, 128, 0.3, 3.0, 84, 1e-5, whitened);
    matrix_case(FGMM_COV_TIED, 2500, 4, 256, 0.3, 3.0, 85, 1e-5, whitened);  // the largest D
}

TEST(EngineCuda, IllConditionedMatrixCovariance)
{
    NEED_GPU();
    // Eigenvalues 1e-6 .. 1e2: the fp32 product loses what the condition
    // number takes; the bound says how much.
    matrix_case(FGMM_COV_FULL, 5000, 3, 12, 1e-6, 1e2, 91, 1e-3);
    matrix_case(FGMM_COV_FULL, 5000, 24, 12, 1e-6, 1e2, 93, 1e-3, kScreened);
    matrix_case(FGMM_COV_TIED, 5000, 3, 12, 1e-6, 1e2, 92, 1e-3);
}
