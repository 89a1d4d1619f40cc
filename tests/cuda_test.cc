// cuda_test.cc - cuda/'s E-step launchers on their own (no engine): the
// statistics against a float64 reference that materialises the N x K
// logits, for every dtype and odd sizes; per-row log-likelihoods written
// over NaN poison; bit-identical repeat passes; padded rows; a pass fed in
// uneven pieces; argument errors. Skips, with a message, where there is no
// GPU, unless FGMM_REQUIRE_GPU=1: then a missing GPU fails every GPU test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/fgmm_cuda.h"
#include "cuda/testing.h"

namespace {

// Number of CUDA devices; a CUDA error (not "no device") fails the test.
int device_count()
{
    int n = 0;
    fgmm_error err{};
    EXPECT_EQ(fgmmc_device_count(&n, &err), FGMM_OK) << err.msg;
    return n;
}

// Whether a missing GPU must fail the GPU tests (FGMM_REQUIRE_GPU=1, set
// where the tests run on a GPU machine) rather than skip them.
bool gpu_required()
{
    const char *v = std::getenv("FGMM_REQUIRE_GPU");
    return v && std::strcmp(v, "1") == 0;
}

// Skips the test (or fails it under FGMM_REQUIRE_GPU=1) without a device.
#define NEED_GPU()                                                                 \
    do {                                                                           \
        if (device_count() == 0) {                                                 \
            if (gpu_required()) FAIL() << "no CUDA device, and FGMM_REQUIRE_GPU=1"; \
            GTEST_SKIP() << "no CUDA device: skipping GPU test";                   \
        }                                                                          \
    } while (0)

const char *dtype_name(fgmm_dtype t)
{
    switch (t) {
    case FGMM_F32: return "f32";
    case FGMM_F16: return "f16";
    case FGMM_U8: return "u8";
    case FGMM_I8: return "i8";
    }
    return "?";
}

size_t elem_size(fgmm_dtype t) { return t == FGMM_F32 ? 4 : t == FGMM_F16 ? 2 : 1; }

// Half bits of a float that is exactly representable as a normal half (or
// zero): the test only generates such values, so no rounding is needed.
uint16_t exact_half_bits(float v)
{
    uint32_t f;
    std::memcpy(&f, &v, 4);
    uint16_t sign = (uint16_t)((f >> 16) & 0x8000u);
    if ((f & 0x7fffffffu) == 0) return sign;
    int e = (int)((f >> 23) & 0xff) - 127 + 15;
    uint32_t mant = (f >> 13) & 0x3ffu;
    return (uint16_t)(sign | (uint16_t)(e << 10) | (uint16_t)mant);
}

// A diagonal mixture, rows drawn from it in the dtype's value range, and
// the E-step terms of fgmm_cuda.h for it.
struct Problem {
    int64_t n;
    int K, D;
    fgmm_dtype dt;
    std::vector<uint8_t> raw;   // packed rows, n * D * elem bytes
    std::vector<double> x;      // the same values as double (what the GPU sees)
    std::vector<double> w, c, shift;
};

Problem make_problem(int64_t n, int K, int D, fgmm_dtype dt, uint64_t seed)
{
    Problem p;
    p.n = n;
    p.K = K;
    p.D = D;
    p.dt = dt;
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> N01(0.0, 1.0);
    std::uniform_real_distribution<double> U01(0.0, 1.0);
    // Standardised mixture: means N(0, sep^2) per dimension so that the
    // distance between two means is ~3.5 standard deviations whatever D
    // (overlapping, not hard, responsibilities); variances in [0.3, 1.5].
    const double sep = 2.5 / std::sqrt((double)D);
    std::vector<double> pi(K), mu((size_t)K * D), var((size_t)K * D);
    double tot = 0;
    for (int k = 0; k < K; k++) tot += (pi[k] = 0.5 + U01(rng));
    for (int k = 0; k < K; k++) pi[k] /= tot;
    for (auto &m : mu) m = sep * N01(rng);
    for (auto &v : var) v = 0.3 + 1.2 * U01(rng);
    // Physical units: integer types get a range that fills most of the
    // type; half gets values on a 2^-6 grid below 32 (exactly representable).
    double off = 0, scale = 1;
    if (dt == FGMM_U8) off = 128, scale = 20;
    if (dt == FGMM_I8) off = 0, scale = 20;
    if (dt == FGMM_F16) scale = 2;
    std::vector<double> pmu(mu.size()), pvar(var.size());
    for (size_t i = 0; i < mu.size(); i++) {
        pmu[i] = off + scale * mu[i];
        pvar[i] = scale * scale * var[i];
    }
    std::discrete_distribution<int> pick(pi.begin(), pi.end());
    const size_t es = elem_size(dt);
    p.raw.resize((size_t)n * D * es);
    p.x.resize((size_t)n * D);
    for (int64_t i = 0; i < n; i++) {
        int k = pick(rng);
        for (int j = 0; j < D; j++) {
            size_t kj = (size_t)k * D + j, ij = (size_t)i * D + j;
            double v = pmu[kj] + std::sqrt(pvar[kj]) * N01(rng);
            switch (dt) {
            case FGMM_F32: {
                float f = (float)v;
                std::memcpy(&p.raw[ij * 4], &f, 4);
                p.x[ij] = f;
                break;
            }
            case FGMM_F16: {
                double q = std::round(v * 64.0) / 64.0;
                q = std::min(31.0, std::max(-31.0, q));
                uint16_t h = exact_half_bits((float)q);
                std::memcpy(&p.raw[ij * 2], &h, 2);
                p.x[ij] = q;
                break;
            }
            case FGMM_U8: {
                double q = std::min(255.0, std::max(0.0, std::round(v)));
                p.raw[ij] = (uint8_t)q;
                p.x[ij] = q;
                break;
            }
            case FGMM_I8: {
                double q = std::min(127.0, std::max(-128.0, std::round(v)));
                int8_t s = (int8_t)q;
                std::memcpy(&p.raw[ij], &s, 1);
                p.x[ij] = q;
                break;
            }
            }
        }
    }
    // shift: the mixture mean; then, with m = mu - shift,
    //   l_k = log pi_k - 1/2 sum_j [log(2 pi v) + m^2/v] + y m/v - y^2/(2v).
    p.shift.assign(D, 0.0);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) p.shift[j] += pi[k] * pmu[(size_t)k * D + j];
    p.w.assign((size_t)2 * D * K, 0.0);
    p.c.assign(K, 0.0);
    for (int k = 0; k < K; k++) {
        double ck = std::log(pi[k]);
        for (int j = 0; j < D; j++) {
            double v = pvar[(size_t)k * D + j], m = pmu[(size_t)k * D + j] - p.shift[j];
            ck -= 0.5 * (std::log(2 * M_PI * v) + m * m / v);
            p.w[(size_t)j * K + k] = m / v;
            p.w[(size_t)(D + j) * K + k] = -0.5 / v;
        }
        p.c[k] = ck;
    }
    return p;
}

struct Stats {
    std::vector<double> nk, sx, sxx;  // K, K*D, K*D (shifted: sums of r*y, r*y^2)
    double ll = 0;
    std::vector<double> row_ll;
};

// float64, materialising the N x K logits on purpose (independent of the
// kernels' tiling and online log-sum-exp).
Stats reference(const Problem &p)
{
    const int K = p.K, D = p.D;
    Stats r;
    r.nk.assign(K, 0);
    r.sx.assign((size_t)K * D, 0);
    r.sxx.assign((size_t)K * D, 0);
    r.row_ll.resize(p.n);
    std::vector<double> L((size_t)p.n * K), y(D);
    for (int64_t i = 0; i < p.n; i++)
        for (int k = 0; k < K; k++) {
            double l = p.c[k];
            for (int j = 0; j < D; j++) {
                double yj = p.x[(size_t)i * D + j] - p.shift[j];
                l += yj * p.w[(size_t)j * K + k] + yj * yj * p.w[(size_t)(D + j) * K + k];
            }
            L[(size_t)i * K + k] = l;
        }
    for (int64_t i = 0; i < p.n; i++) {
        const double *li = &L[(size_t)i * K];
        double mx = *std::max_element(li, li + K), s = 0;
        for (int k = 0; k < K; k++) s += std::exp(li[k] - mx);
        double lse = mx + std::log(s);
        r.row_ll[i] = lse;
        r.ll += lse;
        for (int j = 0; j < D; j++) y[j] = p.x[(size_t)i * D + j] - p.shift[j];
        for (int k = 0; k < K; k++) {
            double rk = std::exp(li[k] - lse);
            r.nk[k] += rk;
            for (int j = 0; j < D; j++) {
                r.sx[(size_t)k * D + j] += rk * y[j];
                r.sxx[(size_t)k * D + j] += rk * y[j] * y[j];
            }
        }
    }
    return r;
}

double rel_err(const std::vector<double> &a, const std::vector<double> &b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Ctx {
    fgmmc_context *p = nullptr;
    ~Ctx() { fgmmc_free(p); }
};

struct GpuOut {
    std::vector<double> nk, sums;  // K, K*2D as fgmm_cuda.h lays them out
    double ll = 0;
    std::vector<float> row_ll;
};

// One pass over p's rows, fed as consecutive pieces of the given sizes;
// rows taken from `rows` with `stride` bytes between them.
void run_pass(fgmmc_context *ctx, const Problem &p, const uint8_t *rows, size_t stride,
              const std::vector<int64_t> &pieces, bool want_ll, GpuOut &out)
{
    fgmm_error err{};
    out.nk.assign(p.K, NAN);
    out.sums.assign((size_t)p.K * 2 * p.D, NAN);
    out.ll = NAN;
    out.row_ll.assign(p.n, NAN);  // poison: every row must be written
    ASSERT_EQ(fgmmc_begin_pass(ctx, p.K, p.D, p.w.data(), p.c.data(), p.shift.data(), &err),
              FGMM_OK)
        << err.msg;
    int64_t off = 0;
    for (int64_t m : pieces) {
        ASSERT_EQ(fgmmc_accumulate(ctx, rows + (size_t)off * stride, stride, m, p.dt,
                                   want_ll ? out.row_ll.data() + off : nullptr, &err),
                  FGMM_OK)
            << err.msg;
        off += m;
    }
    ASSERT_EQ(off, p.n);
    ASSERT_EQ(fgmmc_end_pass(ctx, out.nk.data(), out.sums.data(), &out.ll, &err), FGMM_OK)
        << err.msg;
}

void split_sums(const GpuOut &g, int K, int D, std::vector<double> &sx, std::vector<double> &sxx)
{
    sx.resize((size_t)K * D);
    sxx.resize((size_t)K * D);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < D; j++) {
            sx[(size_t)k * D + j] = g.sums[(size_t)k * 2 * D + j];
            sxx[(size_t)k * D + j] = g.sums[(size_t)k * 2 * D + D + j];
        }
}

void expect_matches_reference(const Problem &p, const Stats &ref, const GpuOut &g,
                              double tol = 1e-4, double row_tol = 1e-4)
{
    std::vector<double> sx, sxx;
    split_sums(g, p.K, p.D, sx, sxx);
    double e1 = rel_err(g.nk, ref.nk), e2 = rel_err(sx, ref.sx), e3 = rel_err(sxx, ref.sxx);
    double e4 = std::fabs(g.ll - ref.ll) / std::fabs(ref.ll);
    double e5 = 0;  // worst per-row relative error of the log-likelihood
    for (int64_t i = 0; i < p.n; i++)
        e5 = std::max(e5, std::fabs(g.row_ll[i] - ref.row_ll[i]) / std::max(1.0, std::fabs(ref.row_ll[i])));
    printf("  %s N=%lld K=%d D=%d: rel err nk %.2e sy %.2e syy %.2e ll %.2e row ll %.2e\n",
           dtype_name(p.dt), (long long)p.n, p.K, p.D, e1, e2, e3, e4, e5);
    EXPECT_LE(e1, tol);
    EXPECT_LE(e2, tol);
    EXPECT_LE(e3, tol);
    EXPECT_LE(e4, tol);
    for (int64_t i = 0; i < p.n; i++) {
        ASSERT_TRUE(std::isfinite(g.row_ll[i])) << "row " << i << " not written";
        ASSERT_NEAR(g.row_ll[i], ref.row_ll[i], row_tol * std::max(1.0, std::fabs(ref.row_ll[i])))
            << "row " << i;
    }
}

struct Size {
    int64_t n;
    int k, d;
};

const Size kSizes[] = {
    {1000, 7, 13},  {4099, 1, 1},   {777, 33, 1},   {5000, 64, 128}, {300, 300, 96},
    {2001, 70, 20}, {1500, 40, 40}, {1200, 24, 200}, {900, 17, 300},  {500, 9, 1024},
    // D > 128: the wide kernels (estep_wide.cu); K = 129 crosses their
    // 128-component tiles, D = 129 is the narrowest, 784 is MNIST's.
    {1500, 129, 129}, {1000, 10, 784},
    // K > 16 * 64: on Hopper, kernels A and B rather than the fused kernel.
    {3000, 1100, 16},
};

// prec: which kernels (DEFAULT: tensor cores with split bf16 operands, the
// wide kernels above D = 128; FP32: SIMT fp32 everywhere; FAST: plain bf16
// tensor cores, checked against its documented, looser bound).
// portable: the mma.sync kernels even where the wgmma ones would serve.
void statistics_case(fgmm_dtype dt, uint64_t seed, fgmmc_precision prec = FGMMC_PREC_DEFAULT,
                     int portable = 0)
{
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmmc_set_precision(ctx.p, prec, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmmc_set_portable_kernels(ctx.p, portable, &err), FGMM_OK) << err.msg;
    if (portable) {
        EXPECT_EQ(fgmmc_uses_wgmma(ctx.p), 0);
    }
    printf("  kernels: %s\n", fgmmc_uses_wgmma(ctx.p) ? "wgmma (sm_90a)" : "mma.sync");
    for (const Size &s : kSizes) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " N=" + std::to_string(s.n) +
                     " K=" + std::to_string(s.k) + " D=" + std::to_string(s.d));
        Problem p = make_problem(s.n, s.k, s.d, dt, seed++);
        Stats ref = reference(p);
        GpuOut g;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * elem_size(dt), {p.n}, true, g);
        if (::testing::Test::HasFatalFailure()) return;
        const char *want = prec == FGMMC_PREC_FP32   ? "fp32 SIMT"
                           : prec == FGMMC_PREC_FP64 ? "float64 SIMT"
                           : prec == FGMMC_PREC_FAST ? "tensor cores, bf16"
                                                     : "tensor cores, split bf16";
        EXPECT_STREQ(fgmmc_path_name(ctx.p), want);
        /* Split bf16: statistics 1e-4, per-row log-likelihood 1e-3 (a
         * logit's terms cancel, and each is good to ~2^-16 of its size);
         * fast bf16: 1e-1 both (docs/precision.md). */
        if (prec == FGMMC_PREC_FAST) expect_matches_reference(p, ref, g, 1e-1, 1e-1);
        else if (prec == FGMMC_PREC_DEFAULT) expect_matches_reference(p, ref, g, 1e-4, 1e-3);
        /* float64: the reference's own arithmetic, in another order (the
         * per-row values are floats). */
        else if (prec == FGMMC_PREC_FP64) expect_matches_reference(p, ref, g, 1e-10, 1e-6);
        else expect_matches_reference(p, ref, g);
    }
}

TEST(Cuda, StatisticsMatchFloat64F32) { NEED_GPU(); statistics_case(FGMM_F32, 1000); }
TEST(Cuda, StatisticsMatchFloat64F16) { NEED_GPU(); statistics_case(FGMM_F16, 2000); }
TEST(Cuda, StatisticsMatchFloat64U8) { NEED_GPU(); statistics_case(FGMM_U8, 3000); }
TEST(Cuda, StatisticsMatchFloat64I8) { NEED_GPU(); statistics_case(FGMM_I8, 4000); }
// The mma.sync kernels on a GPU where the wgmma ones would serve: both
// families are tested on the one Hopper GPU the project has.
TEST(Cuda, PortableKernelsMatchFloat64F32) { NEED_GPU(); statistics_case(FGMM_F32, 1200, FGMMC_PREC_DEFAULT, 1); }
TEST(Cuda, PortableKernelsMatchFloat64U8) { NEED_GPU(); statistics_case(FGMM_U8, 3200, FGMMC_PREC_DEFAULT, 1); }
TEST(Cuda, PortableFastBf16WithinItsBound) { NEED_GPU(); statistics_case(FGMM_F32, 1300, FGMMC_PREC_FAST, 1); }

// On Hopper the build's sm_90a code must be what runs (a build without it
// would silently fall back to the slower kernels), and the two families
// must agree with each other as closely as each does with float64.
TEST(Cuda, HopperRunsWgmmaAndAgreesWithPortable)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    if (!strstr(fgmmc_describe(ctx.p), "sm_90")) GTEST_SKIP() << "not a Hopper GPU: " << fgmmc_describe(ctx.p);
    EXPECT_EQ(fgmmc_uses_wgmma(ctx.p), 1) << fgmmc_describe(ctx.p);
    Problem p = make_problem(20011, 200, 128, FGMM_F32, 77);
    GpuOut a, b;
    run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * 4, {p.n}, true, a);
    ASSERT_EQ(fgmmc_set_portable_kernels(ctx.p, 1, &err), FGMM_OK);
    EXPECT_EQ(fgmmc_uses_wgmma(ctx.p), 0);
    run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * 4, {p.n}, true, b);
    ASSERT_EQ(fgmmc_set_portable_kernels(ctx.p, 0, &err), FGMM_OK);
    EXPECT_EQ(fgmmc_uses_wgmma(ctx.p), 1);
    double e1 = rel_err(a.nk, b.nk), e2 = rel_err(a.sums, b.sums);
    printf("  wgmma vs mma.sync N=20011 K=200 D=128: rel diff nk %.2e sums %.2e\n", e1, e2);
    EXPECT_LE(e1, 2e-5);
    EXPECT_LE(e2, 2e-5);
    for (int64_t i = 0; i < p.n; i++) ASSERT_NEAR(a.row_ll[i], b.row_ll[i], 1e-4 * std::max(1.0, (double)std::fabs(b.row_ll[i])));
}

TEST(Cuda, SimtFp32MatchesFloat64F32) { NEED_GPU(); statistics_case(FGMM_F32, 1100, FGMMC_PREC_FP32); }
TEST(Cuda, SimtFp32MatchesFloat64U8) { NEED_GPU(); statistics_case(FGMM_U8, 3100, FGMMC_PREC_FP32); }
TEST(Cuda, Float64MatchesFloat64F32) { NEED_GPU(); statistics_case(FGMM_F32, 1400, FGMMC_PREC_FP64); }
TEST(Cuda, Float64MatchesFloat64U8) { NEED_GPU(); statistics_case(FGMM_U8, 3400, FGMMC_PREC_FP64); }
TEST(Cuda, FastBf16WithinItsBoundF32) { NEED_GPU(); statistics_case(FGMM_F32, 1200, FGMMC_PREC_FAST); }
TEST(Cuda, FastBf16WithinItsBoundU8) { NEED_GPU(); statistics_case(FGMM_U8, 3200, FGMMC_PREC_FAST); }

// More rows than one staging sub-chunk: both pinned/device slots are used
// and reused, and per-row results come back from each.
TEST(Cuda, CrossesStagingChunks)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const Size sizes[] = {{300001, 8, 128}, {270001, 4, 128}}; /* > 262144 rows per sub-chunk */
    const fgmm_dtype dts[] = {FGMM_F32, FGMM_U8};
    for (int t = 0; t < 2; t++) {
        Problem p = make_problem(sizes[t].n, sizes[t].k, sizes[t].d, dts[t], 5000 + t);
        Stats ref = reference(p);
        GpuOut g;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * elem_size(p.dt), {p.n}, true, g);
        if (::testing::Test::HasFatalFailure()) return;
        expect_matches_reference(p, ref, g, 1e-4, 1e-3);
    }
    printf("  %s; peak device memory %.1f MiB\n", fgmmc_describe(ctx.p),
           fgmmc_device_bytes(ctx.p) / 1048576.0);
    EXPECT_GT(fgmmc_device_bytes(ctx.p), (size_t)0);
    EXPECT_GT(std::strlen(fgmmc_describe(ctx.p)), (size_t)0);
}

// D > 128 with more rows than one of the wide path's sub-chunks (at most
// 65,536 rows: fgmmc_wide_sub_rows), in one batch and over several calls:
// later sub-chunks add to the split partials the first one wrote.
TEST(Cuda, WideRowsCrossSubChunks)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const fgmm_dtype dts[] = {FGMM_F32, FGMM_U8};
    for (int t = 0; t < 2; t++) {
        Problem p = make_problem(140001, 5, 130, dts[t], 5100 + t);
        Stats ref = reference(p);
        GpuOut g;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * elem_size(p.dt), {p.n}, true, g);
        if (::testing::Test::HasFatalFailure()) return;
        EXPECT_STREQ(fgmmc_path_name(ctx.p), "tensor cores, split bf16");
        expect_matches_reference(p, ref, g, 1e-4, 1e-3);
        GpuOut h;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * elem_size(p.dt), {70000, 3, p.n - 70003}, true, h);
        if (::testing::Test::HasFatalFailure()) return;
        expect_matches_reference(p, ref, h, 1e-4, 1e-3);
    }
}

bool same_bits(const std::vector<double> &a, const std::vector<double> &b)
{
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// Same input, same bits: no atomics, fixed reduction order.
TEST(Cuda, RepeatedPassesAreBitIdentical)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const Size sizes[] = {{5000, 64, 128}, {4099, 1, 1}, {3000, 300, 96}, {2001, 150, 300}};
    uint64_t seed = 6000;
    for (const Size &s : sizes) {
        Problem p = make_problem(s.n, s.k, s.d, FGMM_F32, seed++);
        const std::vector<int64_t> pieces = {p.n / 3, p.n - p.n / 3};
        GpuOut a, b;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * 4, pieces, true, a);
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D * 4, pieces, true, b);
        if (::testing::Test::HasFatalFailure()) return;
        EXPECT_TRUE(same_bits(a.nk, b.nk)) << "N=" << s.n;
        EXPECT_TRUE(same_bits(a.sums, b.sums)) << "N=" << s.n;
        EXPECT_EQ(std::memcmp(&a.ll, &b.ll, sizeof(double)), 0) << "N=" << s.n;
        EXPECT_EQ(std::memcmp(a.row_ll.data(), b.row_ll.data(), a.row_ll.size() * sizeof(float)), 0);
    }
}

// row_stride > d*elem: the padding is skipped, and the device sees the same
// packed rows, so the result is bit-identical to the packed call's.
TEST(Cuda, PaddedRows)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const fgmm_dtype dts[] = {FGMM_F32, FGMM_F16, FGMM_U8, FGMM_I8};
    for (fgmm_dtype dt : dts) {
        Problem p = make_problem(1777, 11, 37, dt, 7000 + (int)dt);
        const size_t rb = (size_t)p.D * elem_size(dt), stride = rb + 5;  // odd: unaligned rows
        std::vector<uint8_t> padded((size_t)p.n * stride, 0xAB);
        for (int64_t i = 0; i < p.n; i++)
            std::memcpy(&padded[(size_t)i * stride], &p.raw[(size_t)i * rb], rb);
        GpuOut a, b;
        run_pass(ctx.p, p, p.raw.data(), rb, {p.n}, true, a);
        run_pass(ctx.p, p, padded.data(), stride, {p.n}, true, b);
        if (::testing::Test::HasFatalFailure()) return;
        EXPECT_TRUE(same_bits(a.nk, b.nk)) << dtype_name(dt);
        EXPECT_TRUE(same_bits(a.sums, b.sums)) << dtype_name(dt);
        EXPECT_EQ(a.ll, b.ll) << dtype_name(dt);
        Stats ref = reference(p);
        expect_matches_reference(p, ref, b);
    }
}

// One pass fed in three uneven pieces equals one call over all rows, up to
// the fp32 summation grouping (which depends on where the pieces start).
TEST(Cuda, PiecesEqualOneCall)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const Size sizes[] = {{10007, 23, 61}, {4099, 1, 1}, {3001, 130, 9}};
    uint64_t seed = 8000;
    for (const Size &s : sizes) {
        Problem p = make_problem(s.n, s.k, s.d, FGMM_U8, seed++);
        GpuOut one, three;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D, {p.n}, true, one);
        const int64_t a = p.n / 7, b = p.n / 2;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D, {a, b, p.n - a - b}, true, three);
        if (::testing::Test::HasFatalFailure()) return;
        double e1 = rel_err(three.nk, one.nk), e2 = rel_err(three.sums, one.sums);
        double e3 = std::fabs(three.ll - one.ll) / std::fabs(one.ll);
        printf("  pieces vs one call N=%lld K=%d D=%d: rel diff nk %.2e sums %.2e ll %.2e\n",
               (long long)p.n, p.K, p.D, e1, e2, e3);
        EXPECT_LE(e1, 1e-6);
        EXPECT_LE(e2, 1e-6);
        EXPECT_LE(e3, 1e-6);
        // Rows are independent in kernel A: per-row results do not depend
        // on the pieces at all.
        EXPECT_EQ(std::memcmp(one.row_ll.data(), three.row_ll.data(), p.n * sizeof(float)), 0);
        // NULL per_row_ll is allowed and changes nothing.
        GpuOut nol;
        run_pass(ctx.p, p, p.raw.data(), (size_t)p.D, {p.n}, false, nol);
        if (::testing::Test::HasFatalFailure()) return;
        EXPECT_TRUE(same_bits(one.nk, nol.nk));
        EXPECT_TRUE(same_bits(one.sums, nol.sums));
    }
}

// Many small calls (a shard reader's 8,192-row chunks, here 37 rows) are
// staged into batches: without per-row values they form the same single
// batch as one call over the rows (same bits); with them, a batch closes
// every 64 calls, and each call's values still arrive, bit for bit the
// one call's, by end_pass, with fgmmc_ll_completed counting calls in order.
TEST(Cuda, SmallCallsAreBatched)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    Problem p = make_problem(20011, 45, 19, FGMM_F32, 9100);
    const size_t stride = (size_t)p.D * 4;
    GpuOut one, nol;
    run_pass(ctx.p, p, p.raw.data(), stride, {p.n}, true, one);
    std::vector<int64_t> pieces;
    for (int64_t off = 0; off < p.n; off += 37) pieces.push_back(p.n - off < 37 ? p.n - off : 37);
    run_pass(ctx.p, p, p.raw.data(), stride, pieces, false, nol);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_TRUE(same_bits(one.nk, nol.nk));
    EXPECT_TRUE(same_bits(one.sums, nol.sums));
    // With per-row values, through fgmmc_accumulate_at (row indices given).
    std::vector<float> ll(p.n, NAN);
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, p.K, p.D, p.w.data(), p.c.data(), p.shift.data(), &err),
              FGMM_OK);
    uint64_t base = fgmmc_ll_completed(ctx.p), prev = base;
    int64_t off = 0;
    for (int64_t m : pieces) {
        ASSERT_EQ(fgmmc_accumulate_at(ctx.p, off, p.raw.data() + off * stride, stride, m, p.dt,
                                      ll.data() + off, &err),
                  FGMM_OK) << err.msg;
        uint64_t done = fgmmc_ll_completed(ctx.p);
        ASSERT_GE(done, prev);
        for (int64_t i = 0; i < (int64_t)(done - base) * 37 && i < p.n; i++)
            ASSERT_FALSE(std::isnan(ll[i])) << "call " << i / 37 + 1 << " counted but row " << i
                                            << " not delivered";
        prev = done;
        off += m;
    }
    EXPECT_LT(prev - base, pieces.size()) << "the last batch cannot be delivered before end_pass";
    std::vector<double> nk(p.K), sums((size_t)p.K * 2 * p.D);
    double tot;
    ASSERT_EQ(fgmmc_end_pass(ctx.p, nk.data(), sums.data(), &tot, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmmc_ll_completed(ctx.p), base + pieces.size());
    EXPECT_EQ(std::memcmp(one.row_ll.data(), ll.data(), p.n * sizeof(float)), 0);
    EXPECT_LE(rel_err(nk, one.nk), 1e-6);
    EXPECT_LE(rel_err(sums, one.sums), 1e-6);
    EXPECT_LE(std::fabs(tot - one.ll), 1e-6 * std::fabs(one.ll));

    // The same calls from pinned memory (as the shard reader's ring on a
    // GPU engine) go straight to the device without packing: same batches,
    // same bits. The buffer is overwritten after each call, as a reader
    // reusing its slot would.
    uint8_t *pinned = (uint8_t *)fgmmc_host_alloc(37 * stride);
    ASSERT_NE(pinned, nullptr);
    std::vector<float> ll2(p.n, NAN);
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, p.K, p.D, p.w.data(), p.c.data(), p.shift.data(), &err),
              FGMM_OK);
    off = 0;
    for (int64_t m : pieces) {
        std::memcpy(pinned, p.raw.data() + off * stride, (size_t)m * stride);
        ASSERT_EQ(fgmmc_accumulate_at(ctx.p, off, pinned, stride, m, p.dt, ll2.data() + off, &err),
                  FGMM_OK) << err.msg;
        std::memset(pinned, 0xff, (size_t)m * stride);  // NaN rows if read late
        off += m;
    }
    std::vector<double> nk2(p.K), sums2((size_t)p.K * 2 * p.D);
    double tot2;
    ASSERT_EQ(fgmmc_end_pass(ctx.p, nk2.data(), sums2.data(), &tot2, &err), FGMM_OK) << err.msg;
    fgmmc_host_free(pinned);
    EXPECT_TRUE(same_bits(nk, nk2));
    EXPECT_TRUE(same_bits(sums, sums2));
    EXPECT_EQ(tot, tot2);
    EXPECT_EQ(std::memcmp(ll.data(), ll2.data(), p.n * sizeof(float)), 0);
}

// The k-means++ primitives on a case small enough to work by hand: rows
// 0..4 on a line, first centre at 0, so d2 = 0 1 4 9 16 and the running
// sums 0 1 5 14 30; a draw picks the first row whose running sum exceeds
// its threshold.
TEST(Cuda, KmeansppPrimitives)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    const float x[5] = {0, 1, 2, 3, 4};
    const double shift[1] = {1.5};
    ASSERT_EQ(fgmmc_pp_begin(ctx.p, x, 5, 1, shift, &err), FGMM_OK) << err.msg;
    const float cand[2] = {0, 4};
    double pot[2];
    ASSERT_EQ(fgmmc_pp_potentials(ctx.p, cand, 2, pot, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(pot[0], 30.0);  // d2 = +inf: the potentials are the distances' sums
    EXPECT_EQ(pot[1], 30.0);
    ASSERT_EQ(fgmmc_pp_commit(ctx.p, 2, 0, &err), FGMM_OK);
    double total;
    ASSERT_EQ(fgmmc_pp_total(ctx.p, &total, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(total, 30.0);
    const double th[6] = {0, 0.5, 1, 4.9, 5, 29.9};
    int64_t rows[6];
    ASSERT_EQ(fgmmc_pp_pick(ctx.p, th, 6, rows, &err), FGMM_OK) << err.msg;
    const int64_t want[6] = {1, 1, 2, 2, 3, 4};
    for (int i = 0; i < 6; i++) EXPECT_EQ(rows[i], want[i]) << "threshold " << th[i];
    // Against a candidate at 4: min(d2, dist) = 0 1 4 1 0.
    const float c4[1] = {4};
    ASSERT_EQ(fgmmc_pp_potentials(ctx.p, c4, 1, pot, &err), FGMM_OK);
    EXPECT_EQ(pot[0], 6.0);
    EXPECT_EQ(fgmmc_pp_potentials(ctx.p, cand, 17, pot, &err), FGMM_ERR_ARGUMENT);
    EXPECT_EQ(fgmmc_pp_commit(ctx.p, 1, 1, &err), FGMM_ERR_ARGUMENT);
}

// Needs no GPU: the device count is never an error for a missing device,
// and creating a context without one says so.
TEST(Cuda, DeviceCountAndNoDevice)
{
    int n = -1;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_device_count(&n, &err), FGMM_OK) << err.msg;
    EXPECT_GE(n, 0);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_device_count(nullptr, &err), FGMM_ERR_ARGUMENT);
    EXPECT_GT(std::strlen(err.msg), (size_t)0);
    if (n > 0) return;
    fgmmc_context *ctx = nullptr;
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_create(0, &ctx, &err), FGMM_ERR_DEVICE);
    EXPECT_EQ(ctx, nullptr);
    EXPECT_NE(std::strstr(err.msg, "no CUDA device"), nullptr) << err.msg;
    printf("  %s\n", err.msg);
}

TEST(Cuda, ArgumentErrors)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    std::vector<double> w(2 * 4 * 3, 0.0), c(3, 0.0), shift(4, 0.0), nk(3), sums(24);
    double ll;
    for (int k : {0, -1}) {
        err = fgmm_error{};
        EXPECT_EQ(fgmmc_begin_pass(ctx.p, k, 4, w.data(), c.data(), shift.data(), &err),
                  FGMM_ERR_ARGUMENT);
        EXPECT_EQ(err.code, FGMM_ERR_ARGUMENT);
        EXPECT_GT(std::strlen(err.msg), (size_t)0);
        printf("  k=%d: %s\n", k, err.msg);
    }
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_set_portable_kernels(nullptr, 1, &err), FGMM_ERR_ARGUMENT);
    EXPECT_GT(std::strlen(err.msg), (size_t)0);
    EXPECT_EQ(fgmmc_uses_wgmma(nullptr), 0);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_begin_pass(ctx.p, 3, 0, w.data(), c.data(), shift.data(), &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_GT(std::strlen(err.msg), (size_t)0);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, nullptr, c.data(), shift.data(), &err),
              FGMM_ERR_ARGUMENT);
    // No pass in progress.
    float row[4] = {0, 0, 0, 0};
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_accumulate(ctx.p, row, sizeof row, 1, FGMM_F32, nullptr, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_GT(std::strlen(err.msg), (size_t)0);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_end_pass(ctx.p, nk.data(), sums.data(), &ll, &err), FGMM_ERR_ARGUMENT);
    // Bad rows in a valid pass.
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, w.data(), c.data(), shift.data(), &err), FGMM_OK)
        << err.msg;
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_accumulate(ctx.p, row, 8, 1, FGMM_F32, nullptr, &err), FGMM_ERR_ARGUMENT)
        << "row_stride below d*4";
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_accumulate(ctx.p, row, sizeof row, 1, (fgmm_dtype)9, nullptr, &err),
              FGMM_ERR_ARGUMENT);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_accumulate(ctx.p, row, sizeof row, -1, FGMM_F32, nullptr, &err),
              FGMM_ERR_ARGUMENT);
    // n = 0 is a no-op; the pass still ends, with zeros.
    EXPECT_EQ(fgmmc_accumulate(ctx.p, row, sizeof row, 0, FGMM_F32, nullptr, &err), FGMM_OK);
    ASSERT_EQ(fgmmc_end_pass(ctx.p, nk.data(), sums.data(), &ll, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(nk[0], 0.0);
    EXPECT_EQ(ll, 0.0);
    // Assignment and the row cache refuse what they cannot serve.
    int idx[64];
    float resp[64], rll[4];
    int cached = 1;
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_assign(ctx.p, row, sizeof row, 1, FGMM_F32, 1, idx, resp, rll, &err),
              FGMM_ERR_ARGUMENT) << "no pass in progress";
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_pass_data(ctx.p, 7, 0, 1, FGMM_F32, &cached, &err), FGMM_ERR_ARGUMENT);
    EXPECT_EQ(cached, 0);
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, w.data(), c.data(), shift.data(), &err), FGMM_OK);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_assign(ctx.p, row, sizeof row, 1, FGMM_F32, 33, idx, resp, rll, &err),
              FGMM_ERR_ARGUMENT) << "m > 32";
    EXPECT_NE(std::strstr(err.msg, "m=33"), nullptr) << err.msg;
    EXPECT_EQ(fgmmc_assign(ctx.p, row, sizeof row, 1, FGMM_F32, 2, idx, resp, rll, &err), FGMM_OK)
        << err.msg;
    EXPECT_EQ(idx[0] >= 0 && idx[0] < 3, true);
    // A first pass over data named 7 fills the copy; the next is served
    // from it, and a row range outside the data is refused.
    ASSERT_EQ(fgmmc_pass_data(ctx.p, 7, 0, 1, FGMM_F32, &cached, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(cached, 0);
    ASSERT_EQ(fgmmc_accumulate_at(ctx.p, 0, row, sizeof row, 1, FGMM_F32, nullptr, &err), FGMM_OK);
    ASSERT_EQ(fgmmc_end_pass(ctx.p, nk.data(), sums.data(), &ll, &err), FGMM_OK) << err.msg;
    double ll_first = ll;
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, w.data(), c.data(), shift.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmmc_pass_data(ctx.p, 7, 0, 1, FGMM_F32, &cached, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(cached, 1);
    err = fgmm_error{};
    EXPECT_EQ(fgmmc_accumulate_at(ctx.p, 1, nullptr, 0, 1, FGMM_F32, nullptr, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::strstr(err.msg, "device copy"), nullptr) << err.msg;
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, w.data(), c.data(), shift.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmmc_pass_data(ctx.p, 7, 0, 1, FGMM_F32, &cached, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmmc_accumulate_at(ctx.p, 0, nullptr, 0, 1, FGMM_F32, nullptr, &err), FGMM_OK)
        << err.msg;
    ASSERT_EQ(fgmmc_end_pass(ctx.p, nk.data(), sums.data(), &ll, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(ll, ll_first) << "the device copy holds the same row";
    // Budget 0 drops the copy: the same data is not served any more.
    ASSERT_EQ(fgmmc_set_cache_budget(ctx.p, 0, &err), FGMM_OK);
    ASSERT_EQ(fgmmc_begin_pass(ctx.p, 3, 4, w.data(), c.data(), shift.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmmc_pass_data(ctx.p, 7, 0, 1, FGMM_F32, &cached, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(cached, 0);
    // A device that does not exist.
    fgmmc_context *bad = nullptr;
    err = fgmm_error{};
    EXPECT_NE(fgmmc_create(device_count() + 3, &bad, &err), FGMM_OK);
    EXPECT_EQ(bad, nullptr);
    EXPECT_GT(std::strlen(err.msg), (size_t)0);
}

}  // namespace

// A full covariance whose factors and sums cannot fit the device is
// refused before anything is read or allocated, with its sizes.
TEST(Cuda, MatrixPassTooLargeIsRefused)
{
    NEED_GPU();
    Ctx ctx;
    fgmm_error err{};
    ASSERT_EQ(fgmmc_create(0, &ctx.p, &err), FGMM_OK) << err.msg;
    double one = 1.0;  // never read: the refusal comes first
    EXPECT_EQ(fgmmc_begin_matrix_pass(ctx.p, 200000, 256, 0, &one, &one, &one, &one, 0, &err),
              FGMM_ERR_NO_MEMORY);
    EXPECT_NE(std::string(err.msg).find("GB"), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("K=200000, D=256"), std::string::npos) << err.msg;
    EXPECT_EQ(fgmmc_begin_matrix_pass(ctx.p, 4, 300, 0, &one, &one, &one, &one, 0, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_NE(std::string(err.msg).find("D <= 256"), std::string::npos) << err.msg;
}
