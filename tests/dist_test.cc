// dist_test.cc - EM across processes: the statistics' byte image, the
// partition of a source, checkpoint/resume bit for bit, and the MPI
// reducer end to end through mpirun (agreement across 1, 2 and 3 ranks,
// repeated runs bit for bit, an uneven split, a rank killed or hung, ranks
// that see different data).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

extern "C" {
#include "backends/fgmm_backends.h"
#include "core/backend.h"
#include "dist/fgmm_dist.h"
#include "tests/dist_data.h"
}

namespace {

uint64_t fresh_seed()
{
    static uint64_t counter = 0;
    return (uint64_t)time(nullptr) * 1000003u + counter++;
}

// ------------------------------------------------------------- in process

TEST(DistStats, ByteImageAddsLikeTheOriginal)
{
    uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    const int K = 5, D = 3;
    double shift[D] = {0.5, -1, 2};
    fgmm_error err{};
    fgmm_stats *a, *b, *c, *d1, *d2;
    ASSERT_EQ(fgmm_stats_create(K, D, shift, &a, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, shift, &b, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, nullptr, &c, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, shift, &d1, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_create(K, D, shift, &d2, &err), FGMM_OK);
    for (int k = 0; k < K; k++) fgmm_stats_nk(a)[k] = fgmm_rng_uniform(&rng);
    for (int i = 0; i < K * 2 * D; i++) fgmm_stats_sums(a)[i] = fgmm_rng_normal(&rng);
    fgmm_stats_add_loglik(a, -123.25, 77);
    for (int r = 0; r < 9; r++) {
        float x[D] = {(float)r, 1.5f * r, -2.0f};
        fgmm_stats_offer_row(a, 100 + r, -fgmm_rng_uniform(&rng), r % 3 ? x : nullptr, FGMM_F32);
        fgmm_stats_offer_row(d1, 500 + r, -fgmm_rng_uniform(&rng), x, FGMM_F32);
    }
    ASSERT_EQ(fgmm_stats_add(d2, d1, &err), FGMM_OK);
    std::vector<char> img(fgmm_stats_serial_size(a));
    fgmm_stats_serialize(a, img.data());
    ASSERT_EQ(fgmm_stats_deserialize(c, img.data(), img.size(), &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_stats_add(d1, a, &err), FGMM_OK);
    ASSERT_EQ(fgmm_stats_add(d2, c, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(0, memcmp(fgmm_stats_nk(d1), fgmm_stats_nk(d2), sizeof(double) * K));
    EXPECT_EQ(0, memcmp(fgmm_stats_sums(d1), fgmm_stats_sums(d2), sizeof(double) * K * 2 * D));
    EXPECT_EQ(fgmm_stats_loglik(d1), fgmm_stats_loglik(d2));
    EXPECT_EQ(fgmm_stats_rows(d1), fgmm_stats_rows(d2));
    int64_t r1[K], r2[K];
    double l1[K], l2[K];
    float x1[K * D], x2[K * D];
    ASSERT_EQ(fgmm_stats_worst_rows(d1, r1, l1, x1, K), K);
    ASSERT_EQ(fgmm_stats_worst_rows(d2, r2, l2, x2, K), K);
    EXPECT_EQ(0, memcmp(r1, r2, sizeof r1));
    EXPECT_EQ(0, memcmp(l1, l2, sizeof l1));
    EXPECT_EQ(fgmm_stats_missing_candidates(d1, nullptr, 0),
              fgmm_stats_missing_candidates(d2, nullptr, 0));
    // A damaged image or one of another shape is refused.
    img[0] ^= 1;
    EXPECT_EQ(fgmm_stats_deserialize(c, img.data(), img.size(), &err), FGMM_ERR_FORMAT);
    EXPECT_EQ(fgmm_stats_deserialize(c, img.data(), img.size() - 8, &err), FGMM_ERR_FORMAT);
    for (fgmm_stats *s : {a, b, c, d1, d2}) fgmm_stats_free(s);
}

// The shares of R ranks: whole chunks, contiguous, in rank order, every row
// once, with global first_row; balanced by rows; more ranks than chunks
// refused.
void check_partition(bool with_layout)
{
    const int64_t n = 3400, chunk = 500;
    const int d = 2;
    std::vector<float> x(n * d);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)i;
    fgmm_error err{};
    fgmm_source *mem;
    ASSERT_EQ(fgmm_source_memory_chunked(x.data(), FGMM_F32, n, d, chunk, "m", &mem, &err),
              FGMM_OK);
    fgmm_source *src = mem;
    fgmm_source_ops plain = *fgmm_source_ops_of(mem);
    plain.close = [](void *) {};
    plain.chunk_layout = nullptr;
    plain.seek_chunks = nullptr;
    fgmm_source *counted = nullptr;
    if (!with_layout) {
        ASSERT_EQ(fgmm_source_create(&plain, fgmm_source_impl(mem), n, d, FGMM_F32, "m",
                                     &counted, &err), FGMM_OK);
        src = counted;
    }
    for (int R = 1; R <= 7; R++) {
        int64_t next = 0;
        for (int r = 0; r < R; r++) {
            fgmm_source *v;
            ASSERT_EQ(fgmm_source_partition(src, r, R, &v, &err), FGMM_OK) << err.msg;
            EXPECT_EQ(fgmm_source_rows(v), n);
            int64_t first, rows;
            fgmm_source_pass_range(v, &first, &rows);
            EXPECT_EQ(first, next);
            EXPECT_EQ(first % chunk, 0);
            EXPECT_GT(rows, 0);
            // Balanced: within a chunk of N/R.
            EXPECT_LE(std::llabs((long long)(rows - n / R)), chunk) << "R=" << R << " r=" << r;
            for (int pass = 0; pass < 2; pass++) {
                ASSERT_EQ(fgmm_source_rewind(v, &err), FGMM_OK);
                int64_t at = first;
                for (;;) {
                    fgmm_chunk c;
                    ASSERT_EQ(fgmm_source_next(v, &c, &err), FGMM_OK);
                    if (!c.n_rows) break;
                    EXPECT_EQ(c.first_row, at);
                    EXPECT_EQ(((const float *)c.rows)[0], (float)(at * d));
                    at += c.n_rows;
                }
                EXPECT_EQ(at, first + rows);
            }
            float row[d];
            int64_t last = n - 1;
            ASSERT_EQ(fgmm_source_read_rows(v, &last, 1, row, &err), FGMM_OK);
            EXPECT_EQ(row[0], (float)(last * d));
            next = first + rows;
            fgmm_source_close(v);
        }
        EXPECT_EQ(next, n);
    }
    fgmm_source *v;
    EXPECT_EQ(fgmm_source_partition(src, 0, 8, &v, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("fewer than the 8 ranks"), std::string::npos) << err.msg;
    fgmm_source_close(counted);
    fgmm_source_close(mem);
}

TEST(DistPartition, FromTheChunkLayout) { check_partition(true); }
TEST(DistPartition, FromACountingPass) { check_partition(false); }

fgmm_status keep_step(void *user, int, const fgmm_model *m, fgmm_error *err)
{
    fgmm_model *c;
    fgmm_status st = fgmm_model_clone(m, &c, err);
    if (!st) static_cast<std::vector<fgmm_model *> *>(user)->push_back(c);
    return st;
}

std::vector<double> params_of(const fgmm_model *m)
{
    int K = fgmm_model_k(m), D = fgmm_model_d(m);
    std::vector<double> v(fgmm_model_weights_c(m), fgmm_model_weights_c(m) + K);
    v.insert(v.end(), fgmm_model_means_c(m), fgmm_model_means_c(m) + K * D);
    size_t nv = fgmm_covariance_len(fgmm_model_covariance(m), K, D);
    v.insert(v.end(), fgmm_model_variances_c(m), fgmm_model_variances_c(m) + nv);
    return v;
}

// Fit 6 steps straight; fit 3, checkpoint through on_step, resume for 3
// more: the same parameter bytes and log-likelihood history, whether the
// resumed fit copies the checkpoint or takes it over (init_model_owned).
TEST(DistCheckpoint, ResumeEqualsAnUninterruptedFit)
{
    uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    const int64_t n = 4000;
    const int d = 3, k = 4;
    float *x = dist_test_data(seed, n, d, k);
    ASSERT_NE(x, nullptr);
    fgmm_error err{};
    fgmm_source *src;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_source_memory_chunked(x, FGMM_F32, n, d, 700, "m", &src, &err), FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = k;
    p.tol = 0;
    p.seed = seed;
    p.max_iter = 6;
    fgmm_model *straight, *first, *resumed;
    ASSERT_EQ(fgmm_fit(e, src, &p, &straight, &err), FGMM_OK) << err.msg;
    std::vector<fgmm_model *> saved;
    p.max_iter = 3;
    p.on_step = keep_step;
    p.on_step_user = &saved;
    p.on_step_every = 3;
    ASSERT_EQ(fgmm_fit(e, src, &p, &first, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(saved.size(), 1u);
    fgmm_model *ck = saved[0];
    ASSERT_EQ(fgmm_model_meta_c(ck)->iterations, 3);
    fgmm_fit_params q;
    fgmm_fit_params_default(&q);
    q.k = k;
    q.tol = 0;
    q.seed = seed;
    q.max_iter = 6;
    q.init = FGMM_INIT_MODEL;
    q.init_model = ck;
    q.resume_iteration = fgmm_model_meta_c(ck)->iterations;
    q.resume_loglik = fgmm_model_loglik(ck);
    ASSERT_EQ(fgmm_fit(e, src, &q, &resumed, &err), FGMM_OK) << err.msg;
    std::vector<double> a = params_of(straight), b = params_of(resumed);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, memcmp(a.data(), b.data(), a.size() * sizeof(double)));
    ASSERT_EQ(fgmm_model_loglik_count(straight), 6);
    ASSERT_EQ(fgmm_model_loglik_count(resumed), 6);
    EXPECT_EQ(0, memcmp(fgmm_model_loglik(straight), fgmm_model_loglik(resumed),
                        6 * sizeof(double)));
    EXPECT_EQ(fgmm_model_meta_c(resumed)->iterations, 6);
    // The fit may take the checkpoint over instead of copying it: the same
    // bits and history.
    fgmm_model *taken, *from_taken;
    ASSERT_EQ(fgmm_model_clone(ck, &taken, &err), FGMM_OK);
    q.init_model = nullptr;
    q.init_model_owned = taken;
    fgmm_model *read;  // fgmm_initialize only reads it
    ASSERT_EQ(fgmm_initialize(e, src, &q, &read, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(params_of(read), params_of(ck));
    EXPECT_EQ(params_of(taken), params_of(ck));
    fgmm_model_free(read);
    ASSERT_EQ(fgmm_fit(e, src, &q, &from_taken, &err), FGMM_OK) << err.msg;
    b = params_of(from_taken);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, memcmp(a.data(), b.data(), a.size() * sizeof(double)));
    ASSERT_EQ(fgmm_model_loglik_count(from_taken), 6);
    EXPECT_EQ(0, memcmp(fgmm_model_loglik(straight), fgmm_model_loglik(from_taken),
                        6 * sizeof(double)));
    fgmm_model_free(from_taken);
    // Across ranks each rank reads the initial model: refused, and the
    // model is left to the caller.
    fgmm_dist_reducer one;
    ASSERT_EQ(fgmm_dist_single(&one, &err), FGMM_OK);
    ASSERT_EQ(fgmm_model_clone(ck, &taken, &err), FGMM_OK);
    q.init_model_owned = taken;
    fgmm_model *refused = nullptr;
    EXPECT_EQ(fgmm_dist_fit(e, &one, src, &q, &refused, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("init_model_owned"), std::string::npos) << err.msg;
    EXPECT_EQ(refused, nullptr);
    EXPECT_EQ(fgmm_model_k(taken), k);
    fgmm_model_free(taken);
    fgmm_dist_free(&one);
    q.init_model = ck;
    q.init_model_owned = nullptr;
    // Resuming needs the model it continues from.
    q.init = FGMM_INIT_KMEANSPP;
    fgmm_model *bad = nullptr;
    EXPECT_EQ(fgmm_fit(e, src, &q, &bad, &err), FGMM_ERR_ARGUMENT);
    EXPECT_EQ(bad, nullptr);
    for (fgmm_model *m : saved) fgmm_model_free(m);
    fgmm_model_free(straight);
    fgmm_model_free(first);
    fgmm_model_free(resumed);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    free(x);
}

// Without a GPU, NCCL or the CUDA runtime, the NCCL reducer says what is
// missing; it never crashes.
TEST(DistNccl, SaysWhatIsMissing)
{
    fgmm_error err{};
    fgmm_dist_reducer boot, n;
    ASSERT_EQ(fgmm_dist_single(&boot, &err), FGMM_OK);
    EXPECT_EQ(fgmm_dist_nccl(&boot, 0, 0, &n, &err), FGMM_ERR_ARGUMENT);
    fgmm_status st = fgmm_dist_nccl(&boot, 0, 10, &n, &err);
    if (st == FGMM_OK) {
        // A machine with a GPU: one rank's collectives work.
        EXPECT_EQ(fgmm_dist_size(&n), 1);
        double v = 3.5, all = 0;
        EXPECT_EQ(n.ops->allgather(n.self, &v, sizeof v, &all, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(all, 3.5);
        EXPECT_EQ(n.ops->broadcast(n.self, &v, sizeof v, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(n.ops->barrier(n.self, &err), FGMM_OK) << err.msg;
        fgmm_dist_free(&n);
        return;
    }
    printf("%s\n", err.msg);
    EXPECT_TRUE(st == FGMM_ERR_UNSUPPORTED || st == FGMM_ERR_DEVICE) << err.msg;
    std::string m = err.msg;
    EXPECT_TRUE(m.find("libnccl.so.2") != std::string::npos ||
                m.find("libcudart") != std::string::npos || m.find("cuda") != std::string::npos)
        << m;
    EXPECT_EQ(n.ops, nullptr);
}

// Ranks as threads of this process: G = 1, 2, 3 CPU engines agree with a
// fit without a reducer, and a repeat gives the same bits.
std::vector<double> fit_local(const float *x, int64_t n, int d, int k, int iters, uint64_t seed,
                              int ranks, std::vector<double> *loglik,
                              fgmm_covariance cov = FGMM_COV_DIAG)
{
    fgmm_error err{};
    std::vector<fgmm_engine *> e(ranks);
    std::vector<fgmm_source *> s(ranks);
    for (int r = 0; r < ranks; r++) {
        EXPECT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e[r], &err), FGMM_OK);
        EXPECT_EQ(fgmm_source_memory_chunked(x, FGMM_F32, n, d, 500, "m", &s[r], &err), FGMM_OK);
    }
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = k;
    p.covariance = cov;
    p.tol = 0;
    p.seed = seed;
    p.max_iter = iters;
    fgmm_model *m = nullptr;
    fgmm_status st = fgmm_dist_fit_local(e.data(), s.data(), ranks, 30, &p, &m, &err);
    EXPECT_EQ(st, FGMM_OK) << err.msg;
    std::vector<double> v;
    if (m) {
        v = params_of(m);
        loglik->assign(fgmm_model_loglik(m), fgmm_model_loglik(m) + fgmm_model_loglik_count(m));
    }
    fgmm_model_free(m);
    for (int r = 0; r < ranks; r++) {
        fgmm_source_close(s[r]);
        fgmm_engine_free(e[r]);
    }
    return v;
}

TEST(DistGroup, ThreadRanksAgreeAndRepeatBitForBit)
{
    uint64_t seed = fresh_seed();
    printf("seed %llu\n", (unsigned long long)seed);
    const int64_t n = 3400;
    const int d = 4, k = 4, iters = 8;
    float *x = dist_test_data(seed, n, d, k);
    ASSERT_NE(x, nullptr);
    std::vector<double> l0, l1, l2, l3, l3b;
    // One engine, no reducer.
    std::vector<double> p0 = [&] {
        fgmm_error err{};
        fgmm_engine *e;
        fgmm_source *s;
        EXPECT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &e, &err), FGMM_OK);
        EXPECT_EQ(fgmm_source_memory_chunked(x, FGMM_F32, n, d, 500, "m", &s, &err), FGMM_OK);
        fgmm_fit_params p;
        fgmm_fit_params_default(&p);
        p.k = k;
        p.tol = 0;
        p.seed = seed;
        p.max_iter = iters;
        fgmm_model *m = nullptr;
        EXPECT_EQ(fgmm_fit(e, s, &p, &m, &err), FGMM_OK) << err.msg;
        std::vector<double> v = params_of(m);
        l0.assign(fgmm_model_loglik(m), fgmm_model_loglik(m) + iters);
        fgmm_model_free(m);
        fgmm_source_close(s);
        fgmm_engine_free(e);
        return v;
    }();
    std::vector<double> p1 = fit_local(x, n, d, k, iters, seed, 1, &l1);
    std::vector<double> p2 = fit_local(x, n, d, k, iters, seed, 2, &l2);
    std::vector<double> p3 = fit_local(x, n, d, k, iters, seed, 3, &l3);
    std::vector<double> p3b = fit_local(x, n, d, k, iters, seed, 3, &l3b);
    EXPECT_EQ(p1, p0);
    EXPECT_EQ(l1, l0);
    EXPECT_EQ(p3b, p3);
    EXPECT_EQ(l3b, l3);
    for (auto *pl : {&l2, &l3})
        for (int i = 0; i < iters; i++)
            EXPECT_LE(std::fabs((*pl)[i] - l0[i]), 1e-12 * std::fabs(l0[i])) << "step " << i;
    double scale = 0, diff2 = 0, diff3 = 0;
    for (size_t i = 0; i < p0.size(); i++) {
        scale = std::fmax(scale, std::fabs(p0[i]));
        diff2 = std::fmax(diff2, std::fabs(p2[i] - p0[i]));
        diff3 = std::fmax(diff3, std::fabs(p3[i] - p0[i]));
    }
    printf("threads: 2 ranks differ by %.3g, 3 by %.3g (relative)\n", diff2 / scale, diff3 / scale);
    EXPECT_LE(diff2, 1e-9 * scale);
    EXPECT_LE(diff3, 1e-9 * scale);
    free(x);
}

// Full and tied statistics (scatter matrices, per-component shifts) go
// through the same reduction: 2 and 3 ranks agree with 1, and repeat.
TEST(DistGroup, FullAndTiedRanksAgree)
{
    uint64_t seed = fresh_seed();
    printf("seed %llu\n", (unsigned long long)seed);
    const int64_t n = 3400;
    const int d = 4, k = 4, iters = 6;
    float *x = dist_test_data(seed, n, d, k);
    ASSERT_NE(x, nullptr);
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED}) {
        SCOPED_TRACE(fgmm_covariance_name(cov));
        std::vector<double> l1, l2, l3, l3b;
        std::vector<double> p1 = fit_local(x, n, d, k, iters, seed, 1, &l1, cov);
        std::vector<double> p2 = fit_local(x, n, d, k, iters, seed, 2, &l2, cov);
        std::vector<double> p3 = fit_local(x, n, d, k, iters, seed, 3, &l3, cov);
        std::vector<double> p3b = fit_local(x, n, d, k, iters, seed, 3, &l3b, cov);
        ASSERT_EQ(p1.size(), (size_t)(k + k * d + (cov == FGMM_COV_FULL ? k : 1) * d * d));
        EXPECT_EQ(p3b, p3);
        double scale = 0, diff = 0;
        for (size_t i = 0; i < p1.size(); i++) {
            scale = std::fmax(scale, std::fabs(p1[i]));
            diff = std::fmax(diff, std::fmax(std::fabs(p2[i] - p1[i]), std::fabs(p3[i] - p1[i])));
        }
        printf("%s: 2 and 3 ranks differ from 1 by %.3g (relative)\n", fgmm_covariance_name(cov),
               diff / scale);
        EXPECT_LE(diff, 1e-9 * scale);
        for (int i = 0; i < iters; i++)
            EXPECT_LE(std::fabs(l3[i] - l1[i]), 1e-12 * std::fabs(l1[i])) << "step " << i;
    }
    free(x);
}

TEST(DistGroup, AMissingRankIsNamedWithinTheTimeout)
{
    fgmm_error err{};
    fgmm_dist_reducer red[3];
    ASSERT_EQ(fgmm_dist_group(3, 0.3, red, &err), FGMM_OK);
    // Rank 1 arrives, rank 2 never does.
    std::thread one([&] {
        fgmm_error e1{};
        EXPECT_EQ(red[1].ops->barrier(red[1].self, &e1), FGMM_ERR_IO);
    });
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(red[0].ops->barrier(red[0].self, &err), FGMM_ERR_IO);
    one.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 5);
    EXPECT_NE(std::string(err.msg).find("rank 2 did not take part"), std::string::npos) << err.msg;
    // The group stays failed.
    EXPECT_EQ(red[2].ops->barrier(red[2].self, &err), FGMM_ERR_IO);
    for (auto &r : red) fgmm_dist_free(&r);
}

// --------------------------------------------------------------- mpirun

std::string mpirun()
{
    const char *path = getenv("PATH");
    std::stringstream ss(path ? path : "");
    std::string dir;
    while (std::getline(ss, dir, ':'))
        if (!dir.empty() && access((dir + "/mpirun").c_str(), X_OK) == 0) return dir + "/mpirun";
    return "";
}

struct Job {
    int status;
    double seconds;
    std::string output;
    std::map<std::string, std::vector<double>> model; // empty: no output file
};

std::string tmp_path(const std::string &name)
{
    const char *d = getenv("TEST_TMPDIR");
    return std::string(d ? d : "/tmp") + "/" + name;
}

Job launch(int ranks, const std::string &args, const std::string &name,
           const std::string &mpirun_flags = "")
{
    Job r{};
    std::string out = tmp_path(name), log = tmp_path(name + ".log");
    unlink(out.c_str());
    std::string cmd = mpirun() + " --allow-run-as-root --oversubscribe " + mpirun_flags + " -np " +
                      std::to_string(ranks) + " tests/dist_fit_main --out " + out + " " + args +
                      " > " + log + " 2>&1";
    auto t0 = std::chrono::steady_clock::now();
    r.status = system(cmd.c_str());
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::ifstream lf(log);
    r.output.assign(std::istreambuf_iterator<char>(lf), {});
    std::ifstream f(out);
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        std::string key, v;
        ls >> key;
        while (ls >> v) r.model[key].push_back(strtod(v.c_str(), nullptr));
    }
    return r;
}

class DistMpi : public ::testing::Test {
  protected:
    void SetUp() override
    {
        if (mpirun().empty()) GTEST_SKIP() << "no mpirun on PATH";
    }
};

// Largest difference over the largest magnitude of the array: entries near
// zero (a mean's coordinate) carry the array's absolute rounding, not their
// own relative one.
double max_rel(const std::vector<double> &a, const std::vector<double> &b)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < a.size(); i++) {
        diff = std::fmax(diff, std::fabs(a[i] - b[i]));
        scale = std::fmax(scale, std::fabs(b[i]));
    }
    return diff / scale;
}

void expect_close(const Job &a, const Job &b, const std::string &what)
{
    for (const char *key : {"loglik", "weights", "means", "variances"}) {
        ASSERT_EQ(a.model.at(key).size(), b.model.at(key).size()) << key;
        // Ranks sum the same chunks' statistics in another order, and ten EM
        // steps magnify that rounding: within 1e-13 on most seeds, but on
        // about one in 30 a step lifts it to 1e-9 and the last steps to
        // 1e-7.
        // A lost or doubled rank or chunk moves them by a twelfth or more.
        double bound = std::string(key) == "loglik" ? 1e-9 : 1e-6;
        double got = std::string(key) == "loglik" ? 0 : max_rel(a.model.at(key), b.model.at(key));
        if (std::string(key) == "loglik")
            for (size_t i = 0; i < a.model.at(key).size(); i++)
                got = std::fmax(got, std::fabs(a.model.at(key)[i] - b.model.at(key)[i]) /
                                         std::fabs(b.model.at(key)[i]));
        printf("%s: %s differ by %.3g (relative)\n", what.c_str(), key, got);
        EXPECT_LE(got, bound) << what << ": " << key;
    }
}

// The same fit in one process, on an engine without a reducer.
Job in_process(const std::string &args)
{
    Job r{};
    std::string out = tmp_path("single.txt");
    unlink(out.c_str());
    std::string cmd = "tests/dist_fit_main --reducer none --out " + out + " " + args + " 2>&1";
    r.status = system(cmd.c_str());
    std::ifstream f(out);
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        std::string key, v;
        ls >> key;
        while (ls >> v) r.model[key].push_back(strtod(v.c_str(), nullptr));
    }
    return r;
}

TEST_F(DistMpi, OneTwoThreeRanksAgreeAndRepeatBitForBit)
{
    uint64_t seed = fresh_seed();
    printf("seed %llu\n", (unsigned long long)seed);
    std::string args = "--n 6000 --chunk 500 --d 4 --k 4 --iters 10 --seed " + std::to_string(seed);
    Job single = in_process(args);
    ASSERT_EQ(single.status, 0);
    Job r1 = launch(1, args, "r1.txt");
    ASSERT_EQ(r1.status, 0) << r1.output;
    // One rank sums 0 + its statistics: the bits of a fit without a reducer.
    EXPECT_EQ(r1.model, single.model);
    Job r2 = launch(2, args, "r2.txt"), r3 = launch(3, args, "r3.txt");
    ASSERT_EQ(r2.status, 0) << r2.output;
    ASSERT_EQ(r3.status, 0) << r3.output;
    ASSERT_EQ(r2.model.at("loglik").size(), 10u);
    expect_close(r2, r1, "2 ranks vs 1");
    expect_close(r3, r1, "3 ranks vs 1");
    // Rank 0 reports every rank's times.
    EXPECT_NE(r3.output.find("ranks     3 over mpi"), std::string::npos) << r3.output;
    Job r2b = launch(2, args, "r2b.txt"), r3b = launch(3, args + " --no-layout", "r3b.txt");
    ASSERT_EQ(r2b.status, 0) << r2b.output;
    ASSERT_EQ(r3b.status, 0) << r3b.output;
    EXPECT_EQ(r2b.model, r2.model);
    EXPECT_EQ(r3b.model, r3.model);
}

TEST_F(DistMpi, UnevenSplit)
{
    uint64_t seed = fresh_seed();
    printf("seed %llu\n", (unsigned long long)seed);
    // 7 chunks (the last of 400 rows) over 3 ranks: 3, 2 and 2 chunks.
    std::string args = "--n 3400 --chunk 500 --k 4 --iters 8 --seed " + std::to_string(seed);
    Job r1 = launch(1, args, "u1.txt"), r3 = launch(3, args, "u3.txt");
    ASSERT_EQ(r1.status, 0) << r1.output;
    ASSERT_EQ(r3.status, 0) << r3.output;
    expect_close(r3, r1, "uneven 3 ranks vs 1");
}

TEST_F(DistMpi, MoreRanksThanChunksFailsOnEveryRank)
{
    // Under its defaults mpirun ends the job when the first rank exits
    // non-zero, possibly before another has printed its message; with the
    // abort turned off every rank runs to its own end (and mpirun's status
    // is 0), so each one's message, printed just before it exits 1, can
    // be checked.
    Job r = launch(3, "--n 900 --chunk 500 --seed 7", "few.txt",
                   "--mca orte_abort_on_non_zero_status 0");
    EXPECT_TRUE(r.model.empty());
    for (int rank = 0; rank < 3; rank++)
        EXPECT_NE(r.output.find("rank " + std::to_string(rank) +
                                ": error: synthetic has 2 chunks of rows, fewer than the 3 ranks"),
                  std::string::npos)
            << r.output;
    // And under the defaults the job fails.
    Job d = launch(3, "--n 900 --chunk 500 --seed 7", "few2.txt");
    EXPECT_NE(d.status, 0);
    EXPECT_TRUE(d.model.empty());
}

TEST_F(DistMpi, RanksWithDifferentDataFailOnEveryRank)
{
    Job r = launch(2, "--n 2000 --chunk 500 --seed 11 --perturb-rank 1", "diff.txt");
    EXPECT_NE(r.status, 0);
    EXPECT_TRUE(r.model.empty());
    for (int rank = 0; rank < 2; rank++)
        EXPECT_NE(r.output.find("rank " + std::to_string(rank) + ": error: rank 1 sees 2000 rows"),
                  std::string::npos)
            << r.output;
    EXPECT_NE(r.output.find("every rank must open the same data"), std::string::npos);
}

TEST_F(DistMpi, ResumeAfterAKilledRankEqualsAnUninterruptedFit)
{
    uint64_t seed = fresh_seed();
    printf("seed %llu\n", (unsigned long long)seed);
    std::string args = "--n 3000 --chunk 500 --k 4 --iters 7 --seed " + std::to_string(seed);
    std::string ck = tmp_path("ck.txt");
    unlink(ck.c_str());
    Job straight = launch(2, args, "straight.txt");
    ASSERT_EQ(straight.status, 0) << straight.output;
    // Checkpoints every 2 steps; rank 1 dies as pass 5 starts: the last
    // checkpoint is step 2's or step 4's.
    Job killed = launch(2, args + " --checkpoint " + ck +
                               " --checkpoint-every 2 --fault kill --fault-rank 1 --fault-pass 5",
                        "killed2.txt");
    EXPECT_NE(killed.status, 0);
    EXPECT_TRUE(killed.model.empty());
    ASSERT_EQ(access(ck.c_str(), R_OK), 0) << killed.output;
    Job resumed = launch(2, args + " --resume " + ck, "resumed.txt");
    ASSERT_EQ(resumed.status, 0) << resumed.output;
    // It continued: no first step, and the last one.
    EXPECT_EQ(resumed.output.find("iter    1 "), std::string::npos) << resumed.output;
    EXPECT_NE(resumed.output.find("iter    7 "), std::string::npos) << resumed.output;
    EXPECT_EQ(resumed.model, straight.model);
}

TEST_F(DistMpi, InitFailureOnRankZeroReachesEveryRank)
{
    // Only rank 0 initialises: its failure (K > N) travels with the
    // initial model's broadcast.
    Job r = launch(2, "--n 2000 --chunk 500 --k 3000 --seed 13", "initfail.txt");
    EXPECT_NE(r.status, 0);
    EXPECT_TRUE(r.model.empty());
    EXPECT_NE(r.output.find("rank 1: error: rank 0: k = 3000 exceeds the 2000 rows"),
              std::string::npos) << r.output;
}

TEST_F(DistMpi, KilledRankEndsTheJob)
{
    // Rank 1 dies by SIGKILL as its third pass starts (the partition's
    // layout and the fingerprint take no pass). mpirun sees it die and ends
    // the job; the survivor writes nothing.
    Job r = launch(2, "--n 4000 --chunk 500 --iters 50 --seed 3 --timeout 20 --fault kill "
                      "--fault-rank 1 --fault-pass 3", "killed.txt");
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_LT(r.seconds, 60) << r.output;
    EXPECT_TRUE(r.model.empty());
    // Open MPI names the rank and the signal.
    EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("signal 9"), std::string::npos) << r.output;
}

TEST_F(DistMpi, FailedCheckpointStopsEveryRank)
{
    // Rank 0's per-step callback fails at step 2: every rank learns it at
    // the next collective and fails with rank 0's message.
    Job r = launch(2, "--n 2000 --chunk 500 --iters 5 --seed 5 --fail-step 2", "ckfail.txt");
    EXPECT_NE(r.status, 0);
    EXPECT_TRUE(r.model.empty());
    for (int rank = 0; rank < 2; rank++)
        EXPECT_NE(r.output.find("rank " + std::to_string(rank) +
                                ": error: rank 0: checkpoint of step 2 failed"),
                  std::string::npos)
            << r.output;
    // At the last step, the end-of-fit collective carries it.
    r = launch(2, "--n 2000 --chunk 500 --iters 5 --seed 5 --fail-step 5", "ckfail5.txt");
    EXPECT_NE(r.status, 0);
    EXPECT_TRUE(r.model.empty());
    EXPECT_NE(r.output.find("rank 1: error: rank 0: checkpoint of step 5 failed"),
              std::string::npos) << r.output;
}

TEST_F(DistMpi, HungRankIsNamedWithinTheTimeout)
{
    // Rank 1 stops (SIGSTOP) as its third pass starts: rank 0's next
    // collective times out after 3 s naming it, and the job ends.
    Job r = launch(2, "--n 4000 --chunk 500 --iters 50 --seed 3 --timeout 3 --fault stop "
                      "--fault-rank 1 --fault-pass 3", "hung.txt");
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_LT(r.seconds, 60) << r.output;
    EXPECT_TRUE(r.model.empty());
    EXPECT_NE(r.output.find("nothing arrived from rank 1"), std::string::npos) << r.output;
}

} // namespace
