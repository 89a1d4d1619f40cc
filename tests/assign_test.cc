// assign_test.cc - top-m assignment (fgmm_assign) on the CPU engine and,
// where a GPU is present, the CUDA engine, against a float64 reference
// that materialises N x K; k-means initialisation on the GPU; the GPU row
// cache. GPU cases skip with a message where there is no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/diagnostics.h"
#include "core/fgmm.h"
#include "tests/gpu.h"
#include "tests/reference.h"

namespace {


struct Collected {
    int64_t n = 0;
    int m = 0;
    int64_t next_row = 0;
    std::vector<int32_t> idx;
    std::vector<float> lresp, ll;
    int calls = 0;
    int fail_at = -1;  // return an error on this call
};

fgmm_status collect(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                    const float *lresp, const float *ll, fgmm_error *err)
{
    Collected *c = static_cast<Collected *>(user);
    if (c->calls++ == c->fail_at) {
        snprintf(err->msg, sizeof err->msg, "sink refused rows %lld..", (long long)first_row);
        err->code = FGMM_ERR_IO;
        return FGMM_ERR_IO;
    }
    EXPECT_EQ(first_row, c->next_row) << "chunks must arrive in row order";
    EXPECT_EQ(m, c->m);
    c->next_row = first_row + n;
    c->idx.insert(c->idx.end(), idx, idx + (size_t)n * m);
    c->lresp.insert(c->lresp.end(), lresp, lresp + (size_t)n * m);
    c->ll.insert(c->ll.end(), ll, ll + n);
    return FGMM_OK;
}

// Checks an assignment against the float64 reference. A component may
// stand in for the reference's choice only when their log-joints differ by
// less than tie_tol (the GPU's fp32 logits).
void check_against_reference(const fgmm_model *mod, const std::vector<float> &x, int64_t n,
                             const Collected &c, double tie_tol, double resp_tol, double ll_tol)
{
    int K = fgmm_model_k(mod), m = c.m;
    ASSERT_EQ((int64_t)c.ll.size(), n);
    std::vector<double> L = reference_logits(mod, x, n);
    int swapped = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *l = &L[(size_t)i * K];
        double mx = *std::max_element(l, l + K), s = 0;
        for (int k = 0; k < K; k++) s += std::exp(l[k] - mx);
        double lse = mx + std::log(s);
        ASSERT_NEAR(c.ll[i], lse, ll_tol * (1 + std::fabs(lse))) << "row " << i;
        std::vector<int> order(K);
        for (int k = 0; k < K; k++) order[k] = k;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
        for (int j = 0; j < m; j++) {
            int got = c.idx[(size_t)i * m + j];
            float lr = c.lresp[(size_t)i * m + j];
            if (j >= K) {
                ASSERT_EQ(got, -1) << "row " << i << " slot " << j << " (K=" << K << ")";
                ASSERT_EQ(lr, -INFINITY);
                continue;
            }
            int want = order[j];
            if (got != want) {
                ASSERT_TRUE(got >= 0 && got < K) << "row " << i << " slot " << j;
                ASSERT_LE(std::fabs(l[got] - l[want]), tie_tol * (1 + std::fabs(l[want])))
                    << "row " << i << " slot " << j << ": got component " << got << ", want "
                    << want;
                swapped++;
            }
            // A log-responsibility within resp_tol absolute is the
            // responsibility within resp_tol relative; the value is
            // delivered as float32, whose rounding adds up to 6e-8 of it
            // (3.8e-6 at log r = -32, far below any responsibility that
            // matters).
            double lrw = l[got] - lse;
            ASSERT_NEAR(lr, lrw, resp_tol + 1.2e-7 * std::fabs(lrw)) << "row " << i << " slot " << j;
            if (j > 0) {
                ASSERT_LE(l[got], l[c.idx[(size_t)i * m + j - 1]] + tie_tol * (1 + std::fabs(l[got])));
            }
        }
    }
    printf("  %lld rows, top-%d: %d near-tie swaps\n", (long long)n, m, swapped);
}

void assign_case(fgmm_device dev, int64_t n, int K, int D, int m, uint64_t seed, double tie_tol,
                 double resp_tol, double ll_tol)
{
    SCOPED_TRACE("N=" + std::to_string(n) + " K=" + std::to_string(K) + " D=" +
                 std::to_string(D) + " m=" + std::to_string(m));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    // Spread 0.4: overlapping components, so responsibilities are not all
    // 0 or 1 and the order below the best one matters.
    fgmm_model *mod = random_mixture(&rng, K, D, FGMM_COV_DIAG, 0.4, n, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(dev, 2, &e, &err), FGMM_OK) << err.msg;
    Collected c;
    c.m = m;
    ASSERT_EQ(fgmm_assign(e, src, mod, m, collect, &c, &err), FGMM_OK) << err.msg;
    check_against_reference(mod, x, n, c, tie_tol, resp_tol, ll_tol);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(mod);
}

TEST(AssignCpu, TopMMatchesFloat64Reference)
{
    uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    assign_case(FGMM_DEVICE_CPU, 3001, 37, 13, 5, seed, 1e-9, 1e-6, 1e-7);
    assign_case(FGMM_DEVICE_CPU, 70001, 16, 8, 3, seed + 1, 1e-9, 1e-6, 1e-7);  // crosses a chunk
    assign_case(FGMM_DEVICE_CPU, 500, 3, 4, 8, seed + 2, 1e-9, 1e-6, 1e-7);     // m > K: -1 tail
    assign_case(FGMM_DEVICE_CPU, 500, 1, 1, 1, seed + 3, 1e-9, 1e-6, 1e-7);
    assign_case(FGMM_DEVICE_CPU, 400, 9, 5, 0, seed + 4, 1e-9, 1e-6, 1e-7);     // scoring only
}

// A source that hands out rows in small chunks (as the shard reader's
// 8,192-row chunks, here 37): the assignment does not depend on chunking,
// and a sink's error stops it while later chunks are in flight.
struct SmallChunks {
    const float *x;
    int64_t n, pos;
    int d;
};

fgmm_status sc_rewind(void *impl, fgmm_error *)
{
    static_cast<SmallChunks *>(impl)->pos = 0;
    return FGMM_OK;
}

fgmm_status sc_next(void *impl, fgmm_chunk *c, fgmm_error *)
{
    SmallChunks *s = static_cast<SmallChunks *>(impl);
    int64_t take = s->n - s->pos < 37 ? s->n - s->pos : 37;
    c->rows = s->x + (size_t)s->pos * s->d;
    c->row_stride = sizeof(float) * s->d;
    c->first_row = s->pos;
    c->n_rows = take;
    c->dtype = FGMM_F32;
    s->pos += take;
    return FGMM_OK;
}

fgmm_status sc_read_rows(void *impl, const int64_t *idx, int64_t n, float *out, fgmm_error *)
{
    SmallChunks *s = static_cast<SmallChunks *>(impl);
    for (int64_t i = 0; i < n; i++)
        std::memcpy(out + (size_t)i * s->d, s->x + (size_t)idx[i] * s->d, sizeof(float) * s->d);
    return FGMM_OK;
}

void sc_close(void *impl) { delete static_cast<SmallChunks *>(impl); }

const fgmm_source_ops small_chunk_ops = {sc_rewind, sc_next, sc_read_rows,
                                         sc_close,  nullptr, nullptr};

void small_chunks_case(fgmm_device dev)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 77);
    std::vector<float> x;
    const int64_t n = 150001;
    const int K = 12, D = 9, m = 3;
    fgmm_model *mod = random_mixture(&rng, K, D, FGMM_COV_DIAG, 0.5, n, x);
    fgmm_error err{};
    fgmm_source *whole, *small;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &whole, &err), FGMM_OK);
    ASSERT_EQ(fgmm_source_create(&small_chunk_ops, new SmallChunks{x.data(), n, 0, D}, n, D,
                                 FGMM_F32, "small", &small, &err),
              FGMM_OK);
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(dev, 2, &e, &err), FGMM_OK) << err.msg;
    Collected a, b;
    a.m = b.m = m;
    ASSERT_EQ(fgmm_assign(e, whole, mod, m, collect, &a, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_assign(e, small, mod, m, collect, &b, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(b.next_row, n);
    EXPECT_EQ(a.idx, b.idx);
    EXPECT_EQ(a.lresp, b.lresp);
    EXPECT_EQ(std::memcmp(a.ll.data(), b.ll.data(), sizeof(float) * n), 0);
    // A sink that fails while later chunks are in flight stops the pass
    // with its error, and the engine assigns again as before.
    Collected f, again;
    f.m = again.m = m;
    f.fail_at = 5;
    EXPECT_EQ(fgmm_assign(e, small, mod, m, collect, &f, &err), FGMM_ERR_IO);
    EXPECT_NE(std::strstr(err.msg, "sink refused rows 185.."), nullptr) << err.msg;
    ASSERT_EQ(fgmm_assign(e, small, mod, m, collect, &again, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(again.idx, a.idx);
    EXPECT_EQ(again.lresp, a.lresp);
    EXPECT_EQ(std::memcmp(again.ll.data(), a.ll.data(), sizeof(float) * n), 0);
    fgmm_engine_free(e);
    fgmm_source_close(small);
    fgmm_source_close(whole);
    fgmm_model_free(mod);
}

TEST(AssignCpu, SmallChunksGiveTheSameResults) { small_chunks_case(FGMM_DEVICE_CPU); }

TEST(AssignCuda, SmallChunksGiveTheSameResults)
{
    NEED_GPU();
    small_chunks_case(FGMM_DEVICE_CUDA);
}

TEST(AssignCpu, ScoresEqualScore)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 11);
    std::vector<float> x;
    const int n = 2000, K = 7, D = 6;
    fgmm_model *mod = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    Collected c;
    c.m = 2;
    ASSERT_EQ(fgmm_assign(e, src, mod, 2, collect, &c, &err), FGMM_OK) << err.msg;
    std::vector<float> per(n);
    double mean;
    ASSERT_EQ(fgmm_score(e, src, mod, &mean, per.data(), &err), FGMM_OK);
    double s = 0;
    for (int i = 0; i < n; i++) {
        EXPECT_NEAR(c.ll[i], per[i], 1e-5 * (1 + std::fabs(per[i])));
        s += c.ll[i];
        // The best component's responsibility is the largest one.
        EXPECT_GE(c.lresp[(size_t)i * 2], c.lresp[(size_t)i * 2 + 1]);
    }
    EXPECT_NEAR(s / n, mean, 1e-5 * std::fabs(mean));
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(mod);
}

TEST(AssignCpu, BadRequestsAreRefused)
{
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 3);
    std::vector<float> x;
    fgmm_model *mod = random_mixture(&rng, 4, 3, FGMM_COV_DIAG, 1.0, 100, x);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, 100, 3, "mem", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
    Collected c;
    c.m = 33;
    EXPECT_EQ(fgmm_assign(e, src, mod, 33, collect, &c, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::strstr(err.msg, "top-m"), nullptr) << err.msg;
    EXPECT_EQ(fgmm_assign(e, src, mod, -1, collect, &c, &err), FGMM_ERR_ARGUMENT);
    EXPECT_EQ(fgmm_assign(e, src, mod, 2, nullptr, &c, &err), FGMM_ERR_ARGUMENT);
    // A sink's error stops the pass and comes back unchanged.
    Collected f;
    f.m = 2;
    f.fail_at = 0;
    EXPECT_EQ(fgmm_assign(e, src, mod, 2, collect, &f, &err), FGMM_ERR_IO);
    EXPECT_NE(std::strstr(err.msg, "sink refused"), nullptr) << err.msg;
    // A model of another dimension names both.
    fgmm_model *other = random_mixture(&rng, 4, 5, FGMM_COV_DIAG, 1.0, 10, x);
    EXPECT_EQ(fgmm_assign(e, src, other, 2, collect, &c, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::strstr(err.msg, "dimension"), nullptr) << err.msg;
    fgmm_model_free(other);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(mod);
}

TEST(AssignCuda, TopMMatchesFloat64Reference)
{
    NEED_GPU();
    uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    // fp32 logits: ties within ~1e-5 relative may swap; responsibilities
    // and log-likelihoods within 1e-4.
    assign_case(FGMM_DEVICE_CUDA, 3001, 37, 13, 5, seed, 2e-5, 2e-4, 1e-5);
    assign_case(FGMM_DEVICE_CUDA, 70001, 130, 128, 10, seed + 1, 2e-5, 2e-4, 1e-5);
    assign_case(FGMM_DEVICE_CUDA, 500, 3, 4, 8, seed + 2, 2e-5, 2e-4, 1e-5);  // m > K
    assign_case(FGMM_DEVICE_CUDA, 777, 1, 1, 1, seed + 3, 2e-5, 2e-4, 1e-5);
    assign_case(FGMM_DEVICE_CUDA, 3000, 1000, 200, 32, seed + 4, 2e-5, 2e-4, 1e-5);  // D > 128
    assign_case(FGMM_DEVICE_CUDA, 400, 9, 5, 0, seed + 5, 2e-5, 2e-4, 1e-5);
}

// Scoring on the GPU runs the log-sum-exp kernel alone; its per-row and
// mean log-likelihoods match the CPU engine's (float64) and, per row, the
// top-m assignment's.
void score_case(int n, int K, int D, uint64_t seed)
{
    SCOPED_TRACE("N=" + std::to_string(n) + " K=" + std::to_string(K) + " D=" + std::to_string(D));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    std::vector<float> x;
    fgmm_model *mod = random_mixture(&rng, K, D, FGMM_COV_DIAG, 0.6, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    std::vector<std::vector<float>> per(2, std::vector<float>(n, NAN));
    double mean[2];
    fgmm_device devs[2] = {FGMM_DEVICE_CPU, FGMM_DEVICE_CUDA};
    for (int i = 0; i < 2; i++) {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(devs[i], 0, &e, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_score(e, src, mod, &mean[i], per[i].data(), &err), FGMM_OK) << err.msg;
        if (devs[i] == FGMM_DEVICE_CUDA) {
            EXPECT_EQ(fgmm_engine_last_pass_fallback(e, nullptr, nullptr), 0);
        }
        fgmm_engine_free(e);
    }
    printf("  N=%d K=%d D=%d: mean log-likelihood cpu %.8f cuda %.8f\n", n, K, D, mean[0], mean[1]);
    EXPECT_NEAR(mean[1], mean[0], 1e-5 * std::fabs(mean[0]));
    for (int i = 0; i < n; i++)
        ASSERT_NEAR(per[1][i], per[0][i], 1e-3 * std::fabs(per[0][i]) + 1e-3) << "row " << i;
    fgmm_source_close(src);
    fgmm_model_free(mod);
}

TEST(ScoreCuda, MatchesCpu)
{
    NEED_GPU();
    score_case(30011, 70, 48, 31);
    score_case(9001, 40, 200, 32);  // D > 128: the wide kernels' log-likelihood-only pass
}

// The same fit with the GPU row cache on (default) and off: later steps
// read GPU memory, and the trajectories agree (the sums' order differs
// with the call sizes, so not bit for bit).
TEST(GpuCache, LaterStepsReadGpuMemoryAndAgree)
{
    NEED_GPU();
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 21);
    std::vector<float> x;
    const int n = 200000, K = 20, D = 32;
    fgmm_model *truth = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.5, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    std::vector<std::vector<double>> traj;
    std::vector<int> cached;
    for (int64_t budget : {(int64_t)0, (int64_t)1 << 30, (int64_t)1 << 30}) {
        fgmm_engine *e;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 0, &e, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_engine_set_gpu_cache_budget(e, budget, &err), FGMM_OK) << err.msg;
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = K;
        p.seed = 2;
        p.max_iter = 6;
        p.tol = 0;
        fgmm_model *m;
        ASSERT_EQ(fgmm_fit(e, src, &p, &m, &err), FGMM_OK) << err.msg;
        const double *ll = fgmm_model_loglik(m);
        traj.emplace_back(ll, ll + fgmm_model_loglik_count(m));
        cached.push_back(fgmm_engine_cached_passes(e));
        fgmm_model_free(m);
        fgmm_engine_free(e);
    }
    EXPECT_EQ(cached[0], 0);
    EXPECT_EQ(cached[1], 5);  // every step after the first
    for (size_t i = 0; i < traj[0].size(); i++) {
        printf("  iter %zu: streamed %.10f cached %.10f\n", i + 1, traj[0][i], traj[1][i]);
        EXPECT_NEAR(traj[1][i], traj[0][i], 1e-6 * std::fabs(traj[0][i]));
        EXPECT_EQ(traj[1][i], traj[2][i]) << "cached runs must repeat bit for bit";
    }
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CUDA, 0, &e, &err), FGMM_OK);
    EXPECT_EQ(fgmm_engine_set_gpu_cache_budget(e, -1, &err), FGMM_ERR_ARGUMENT);
    fgmm_engine_free(e);
    fgmm_model_free(truth);
    fgmm_source_close(src);
}

// k-means initialisation on the GPU (k-means++ seeding and Lloyd's
// nearest-centre step there): on well-separated data it finds every
// cluster as the CPU does, and a seed gives the same bits every time.
TEST(GpuKmeans, InitialisationFindsTheClustersAndRepeats)
{
    NEED_GPU();
    fgmm_rng rng;
    fgmm_rng_seed(&rng, 8);
    std::vector<float> x;
    const int n = 30000, K = 16, D = 24;
    fgmm_model *truth = random_mixture(&rng, K, D, FGMM_COV_DIAG, 4.0, n, x);
    fgmm_error err{};
    fgmm_source *src;
    ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, D, "mem", &src, &err), FGMM_OK);
    std::vector<fgmm_model *> ms;
    for (fgmm_device dev : {FGMM_DEVICE_CPU, FGMM_DEVICE_CUDA, FGMM_DEVICE_CUDA}) {
        for (fgmm_init_kind kind : {FGMM_INIT_KMEANS, FGMM_INIT_KMEANSPP}) {
            fgmm_engine *e;
            ASSERT_EQ(fgmm_engine_create(dev, 0, &e, &err), FGMM_OK) << err.msg;
            fgmm_fit_params p;
            fgmm_fit_params_default(&p);
            p.k = K;
            p.seed = 4;
            p.init = kind;
            fgmm_model *m;
            ASSERT_EQ(fgmm_initialize(e, src, &p, &m, &err), FGMM_OK) << err.msg;
            ms.push_back(m);
            fgmm_engine_free(e);
        }
    }
    // Each true mean has an initial mean close by (noise std <= 1.3 per
    // dimension, ~1,900 rows per cluster: the mean is off by ~0.15).
    const double *tm = fgmm_model_means_c(truth);
    for (size_t v = 0; v < ms.size(); v++) {
        const double *a = fgmm_model_means_c(ms[v]);
        double worst = 0;
        for (int k = 0; k < K; k++) {
            double best = INFINITY;
            for (int l = 0; l < K; l++) {
                double d2 = 0;
                for (int j = 0; j < D; j++) {
                    double t = tm[(size_t)k * D + j] - a[(size_t)l * D + j];
                    d2 += t * t;
                }
                best = std::min(best, d2);
            }
            worst = std::max(worst, std::sqrt(best));
        }
        printf("  init %zu (%s, %s): worst distance of a true mean to its nearest initial mean %.3f\n",
               v, v < 2 ? "cpu" : "cuda", v % 2 ? "kmeans++" : "kmeans", worst);
        EXPECT_LE(worst, 0.6) << "initialisation " << v << " missed a cluster";
    }
    for (int v = 2; v < 4; v++) {  // the two GPU runs of each kind: same bits
        const double *a = fgmm_model_means_c(ms[v]), *b = fgmm_model_means_c(ms[v + 2]);
        EXPECT_EQ(std::memcmp(a, b, sizeof(double) * K * D), 0) << "GPU initialisation " << v;
    }
    for (fgmm_model *m : ms) fgmm_model_free(m);
    fgmm_model_free(truth);
    fgmm_source_close(src);
}

}  // namespace
