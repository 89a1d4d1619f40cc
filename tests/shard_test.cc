// shard_test.cc - the out-of-core path: every input format through shards
// and back bit for bit, fits from shards equal to fits from files, both
// reader paths (io_uring O_DIRECT and buffered), the ring's bound, the
// cache tier, resumable and crash-safe conversion, and every injected
// fault giving a clear error that names the file and chunk.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"

namespace {

std::string tmpdir()
{
    const char *t = getenv("TEST_TMPDIR");
    return t ? t : "/tmp";
}

int g_counter = 0;
std::string fresh(const char *stem)
{
    return tmpdir() + "/" + stem + "_" + std::to_string(getpid()) + "_" +
           std::to_string(g_counter++);
}

void write_bytes(const std::string &p, const void *d, size_t n)
{
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr) << p;
    ASSERT_EQ(fwrite(d, 1, n, f), n);
    fclose(f);
}

std::vector<unsigned char> read_bytes(const std::string &p)
{
    std::vector<unsigned char> v;
    FILE *f = fopen(p.c_str(), "rb");
    if (!f) return v;
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + n);
    fclose(f);
    return v;
}

bool exists(const std::string &p)
{
    struct stat sb;
    return stat(p.c_str(), &sb) == 0;
}

// Packed rows of a dtype: random values that fit it (float16 from halves
// of small numbers, so conversions are exact).
std::vector<unsigned char> make_rows(fgmm_dtype t, int64_t n, int d, uint64_t seed)
{
    fgmm_rng r;
    fgmm_rng_seed(&r, seed);
    std::vector<unsigned char> v((size_t)n * d * fgmm_dtype_size(t));
    for (int64_t i = 0; i < n * d; i++) {
        double x = 4.0 * fgmm_rng_normal(&r) + (double)(i / d % 3) * 10.0;
        switch (t) {
        case FGMM_F32: {
            float f = (float)x;
            memcpy(&v[i * 4], &f, 4);
            break;
        }
        case FGMM_F16: {
            uint16_t h = fgmm_float_to_half((float)x);
            memcpy(&v[i * 2], &h, 2);
            break;
        }
        case FGMM_U8: v[i] = (unsigned char)(fgmm_rng_next(&r) & 255); break;
        case FGMM_I8: v[i] = (unsigned char)(signed char)((int)(fgmm_rng_next(&r) & 255) - 128); break;
        }
    }
    return v;
}

void write_bin(const std::string &p, const std::vector<unsigned char> &rows, uint32_t n,
               uint32_t d)
{
    std::vector<unsigned char> b(8 + rows.size());
    memcpy(&b[0], &n, 4);
    memcpy(&b[4], &d, 4);
    memcpy(&b[8], rows.data(), rows.size());
    write_bytes(p, b.data(), b.size());
}

void write_vecs(const std::string &p, const std::vector<unsigned char> &rows, int64_t n, int d,
                size_t elem)
{
    std::vector<unsigned char> b;
    for (int64_t i = 0; i < n; i++) {
        int32_t dd = d;
        b.insert(b.end(), (unsigned char *)&dd, (unsigned char *)&dd + 4);
        b.insert(b.end(), rows.begin() + i * d * elem, rows.begin() + (i + 1) * d * elem);
    }
    write_bytes(p, b.data(), b.size());
}

void write_npy(const std::string &p, const std::vector<unsigned char> &rows, int64_t n, int d,
               const char *descr)
{
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %d), }",
             descr, (long long)n, d);
    std::string h = dict;
    while ((10 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::vector<unsigned char> b = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    uint16_t hl = (uint16_t)h.size();
    b.insert(b.end(), (unsigned char *)&hl, (unsigned char *)&hl + 2);
    b.insert(b.end(), h.begin(), h.end());
    b.insert(b.end(), rows.begin(), rows.end());
    write_bytes(p, b.data(), b.size());
}

fgmm_shard_write_options small_opts(int64_t r = 37, int c = 3)
{
    fgmm_shard_write_options o;
    fgmm_shard_write_options_default(&o);
    o.rows_per_chunk = r;
    o.chunks_per_shard = c;
    o.threads = 2;
    return o;
}

fgmm_status convert(const std::string &in, const std::string &out,
                    const fgmm_shard_write_options &o, fgmm_error *err,
                    fgmm_shard_write_result *res = nullptr)
{
    const char *p = in.c_str();
    fgmm_shard_write_result r;
    return fgmm_shard_convert(&p, 1, out.c_str(), &o, res ? res : &r, err);
}

fgmm_shard_read_options ropts(int64_t cache = 0, int buffered = 0, int ring = 0, int threads = 2)
{
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.cache_budget = cache;
    o.buffered = buffered;
    o.ring_slots = ring;
    o.threads = threads;
    return o;
}

// All rows of a source's pass, as packed bytes, checking chunk order.
std::vector<unsigned char> drain(fgmm_source *s, fgmm_error *err, fgmm_status *st_out = nullptr,
                                 int sleep_us = 0)
{
    std::vector<unsigned char> v;
    size_t rb = (size_t)fgmm_source_dim(s) * fgmm_dtype_size(fgmm_source_dtype(s));
    fgmm_status st = fgmm_source_rewind(s, err);
    int64_t next = 0;
    while (!st) {
        fgmm_chunk c;
        st = fgmm_source_next(s, &c, err);
        if (st || c.n_rows == 0) break;
        EXPECT_EQ(c.first_row, next);
        next += c.n_rows;
        for (int64_t i = 0; i < c.n_rows; i++) {
            const unsigned char *r = (const unsigned char *)c.rows + i * c.row_stride;
            v.insert(v.end(), r, r + rb);
        }
        if (sleep_us) usleep(sleep_us);
    }
    if (st_out) *st_out = st;
    else EXPECT_EQ(st, FGMM_OK) << err->msg;
    return v;
}

struct Format {
    const char *ext;
    fgmm_dtype t;
    const char *npy_descr;
};

TEST(Shards, RoundTripEveryInputFormatBitExact)
{
    const Format fmts[] = {{"fvecs", FGMM_F32, nullptr}, {"bvecs", FGMM_U8, nullptr},
                           {"fbin", FGMM_F32, nullptr},  {"u8bin", FGMM_U8, nullptr},
                           {"i8bin", FGMM_I8, nullptr},  {"npy", FGMM_F32, "<f4"},
                           {"npy", FGMM_F16, "<f2"},     {"npy", FGMM_U8, "|u1"},
                           {"npy", FGMM_I8, "|i1"}};
    const int64_t n = 1000;
    const int d = 13;
    for (const Format &f : fmts) {
        SCOPED_TRACE(std::string(f.ext) + " " + fgmm_dtype_name(f.t));
        auto rows = make_rows(f.t, n, d, 7);
        std::string in = fresh("rt") + "." + f.ext, out = fresh("rt_out");
        if (!strcmp(f.ext, "fvecs") || !strcmp(f.ext, "bvecs"))
            write_vecs(in, rows, n, d, fgmm_dtype_size(f.t));
        else if (!strcmp(f.ext, "npy")) write_npy(in, rows, n, d, f.npy_descr);
        else write_bin(in, rows, (uint32_t)n, (uint32_t)d);
        fgmm_error err = {};
        fgmm_shard_write_result res;
        ASSERT_EQ(convert(in, out, small_opts(), &err, &res), FGMM_OK) << err.msg;
        EXPECT_TRUE(res.complete);
        EXPECT_EQ(res.rows, n);
        EXPECT_EQ(res.shards, (int)((n + 37 * 3 - 1) / (37 * 3)));
        EXPECT_FALSE(exists(out + "/.conversion.json"));
        fgmm_source *s = nullptr;
        auto o = ropts();
        ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_source_rows(s), n);
        EXPECT_EQ(fgmm_source_dim(s), d);
        EXPECT_EQ(fgmm_source_dtype(s), f.t);
        EXPECT_EQ(drain(s, &err), rows);
        // Random access (initialisation, re-seeding) gives the same rows.
        std::vector<int64_t> idx = {999, 0, 500, 36, 37, 111, 998};
        std::vector<float> got(idx.size() * d), want(d);
        ASSERT_EQ(fgmm_source_read_rows(s, idx.data(), (int64_t)idx.size(), got.data(), &err),
                  FGMM_OK)
            << err.msg;
        for (size_t i = 0; i < idx.size(); i++) {
            fgmm_convert_row(f.t, &rows[idx[i] * d * fgmm_dtype_size(f.t)], d, want.data());
            for (int j = 0; j < d; j++) ASSERT_EQ(got[i * d + j], want[j]) << "row " << idx[i];
        }
        fgmm_source_close(s);
        fgmm_shards_info info;
        ASSERT_EQ(fgmm_shards_probe(out.c_str(), 1, 2, &info, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(info.rows, n);
        EXPECT_EQ(info.chunks, (n + 36) / 37);
    }
}

// Random rows barely compress and are stored raw; rows like images compress
// and are stored as zstd frames. Both kinds round-trip, in one directory too.
TEST(Shards, CompressedAndRawChunksRoundTrip)
{
    const int64_t n = 6000;
    const int d = 64;
    std::vector<unsigned char> rows((size_t)n * d);
    fgmm_rng r;
    fgmm_rng_seed(&r, 3);
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            // first half of the rows compressible (few distinct values), the rest random
            rows[i * d + j] = i < n / 2 ? (unsigned char)((i / 7 + j / 8) % 5)
                                        : (unsigned char)(fgmm_rng_next(&r) & 255);
    std::string in = fresh("mixed") + ".u8bin", out = fresh("mixedout");
    write_bin(in, rows, (uint32_t)n, d);
    fgmm_error err = {};
    ASSERT_EQ(convert(in, out, small_opts(1000, 2), &err), FGMM_OK) << err.msg;
    fgmm_shards_info info;
    ASSERT_EQ(fgmm_shards_probe(out.c_str(), 1, 2, &info, &err), FGMM_OK) << err.msg;
    // Half the chunks compress well, half are raw (plus 4 KiB alignment).
    EXPECT_LT(info.stored_bytes, info.raw_bytes * 3 / 4);
    EXPECT_GT(info.stored_bytes, info.raw_bytes / 2);
    for (int buffered : {0, 1}) {
        for (int64_t cache : {(int64_t)0, (int64_t)1 << 30}) {
            fgmm_source *s;
            auto o = ropts(cache, buffered);
            ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
            EXPECT_EQ(drain(s, &err), rows);
            EXPECT_EQ(drain(s, &err), rows);
            std::vector<int64_t> idx = {0, 2999, 3000, 5999, 100, 4500};
            std::vector<float> got(idx.size() * d);
            ASSERT_EQ(fgmm_source_read_rows(s, idx.data(), (int64_t)idx.size(), got.data(), &err),
                      FGMM_OK);
            for (size_t i = 0; i < idx.size(); i++)
                for (int j = 0; j < d; j++)
                    ASSERT_EQ(got[i * d + j], (float)rows[idx[i] * d + j]);
            fgmm_source_close(s);
        }
    }
}

TEST(Shards, DirectoryOfInputsInNameOrderAndConversions)
{
    std::string dir = fresh("indir");
    ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
    auto a = make_rows(FGMM_F32, 50, 8, 1), b = make_rows(FGMM_F32, 70, 8, 2);
    write_bin(dir + "/b.fbin", b, 70, 8);
    write_bin(dir + "/a.fbin", a, 50, 8);
    write_bytes(dir + "/README.txt", "not data", 8);
    fgmm_error err = {};
    std::string out = fresh("dirout");
    ASSERT_EQ(convert(dir, out, small_opts(16, 2), &err), FGMM_OK) << err.msg;
    fgmm_source *s;
    auto o = ropts();
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
    auto all = a;
    all.insert(all.end(), b.begin(), b.end());
    EXPECT_EQ(drain(s, &err), all);
    fgmm_source_close(s);

    // --dtype float16: each value rounded to nearest half.
    std::string out16 = fresh("dirout16");
    auto o16 = small_opts(16, 2);
    o16.dtype = FGMM_F16;
    ASSERT_EQ(convert(dir, out16, o16, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_shards_open(out16.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
    auto h = drain(s, &err);
    ASSERT_EQ(h.size(), all.size() / 2);
    for (size_t i = 0; i < all.size() / 4; i++) {
        float x;
        uint16_t hv;
        memcpy(&x, &all[i * 4], 4);
        memcpy(&hv, &h[i * 2], 2);
        ASSERT_EQ(hv, fgmm_float_to_half(x)) << i;
    }
    fgmm_source_close(s);
}

TEST(Shards, MixedDimensionsOrDtypesRefusedBeforeWriting)
{
    std::string dir = fresh("mixdim");
    ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
    write_bin(dir + "/a.fbin", make_rows(FGMM_F32, 10, 8, 1), 10, 8);
    write_bin(dir + "/b.fbin", make_rows(FGMM_F32, 10, 9, 1), 10, 9);
    fgmm_error err = {};
    std::string out = fresh("mixout");
    EXPECT_EQ(convert(dir, out, small_opts(), &err), FGMM_ERR_DATA);
    EXPECT_NE(strstr(err.msg, "mixed dimensions"), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "b.fbin"), nullptr) << err.msg;
    EXPECT_FALSE(exists(out));

    std::string dir2 = fresh("mixtype");
    ASSERT_EQ(mkdir(dir2.c_str(), 0755), 0);
    auto f = make_rows(FGMM_F32, 10, 8, 1);
    auto u = make_rows(FGMM_U8, 10, 8, 1);
    write_bin(dir2 + "/a.fbin", f, 10, 8);
    write_bin(dir2 + "/b.u8bin", u, 10, 8);
    EXPECT_EQ(convert(dir2, out, small_opts(), &err), FGMM_ERR_DATA);
    EXPECT_NE(strstr(err.msg, "mixed dtypes"), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "convert them all to float32"), nullptr) << err.msg;
    EXPECT_FALSE(exists(out));
    // With --dtype float32 they convert, integers as their values.
    auto o = small_opts();
    o.dtype = FGMM_F32;
    ASSERT_EQ(convert(dir2, out, o, &err), FGMM_OK) << err.msg;
    fgmm_source *s;
    auto r = ropts();
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &r, &s, &err), FGMM_OK) << err.msg;
    auto got = drain(s, &err);
    ASSERT_EQ(got.size(), 20u * 8 * 4);
    float x;
    memcpy(&x, &got[(10 * 8 + 5) * 4], 4);
    EXPECT_EQ(x, (float)u[5]);
    fgmm_source_close(s);
}

TEST(Shards, BadRowNamedByFileAndRow)
{
    auto rows = make_rows(FGMM_F32, 300, 4, 3);
    float nan = NAN;
    memcpy(&rows[(123 * 4 + 2) * 4], &nan, 4);
    std::string in = fresh("nan") + ".fbin", out = fresh("nanout");
    write_bin(in, rows, 300, 4);
    fgmm_error err = {};
    EXPECT_EQ(convert(in, out, small_opts(), &err), FGMM_ERR_DATA);
    EXPECT_NE(strstr(err.msg, in.c_str()), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "123"), nullptr) << err.msg;
    EXPECT_FALSE(exists(out + "/manifest.json"));
}

// A fit streamed from shards is the fit from the original file: same rows,
// same order, same initial sample.
TEST(Shards, FitFromShardsEqualsFitFromFile)
{
    const int64_t n = 20000;
    const int d = 16;
    std::vector<float> x((size_t)n * d);
    fgmm_rng r;
    fgmm_rng_seed(&r, 11);
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)(fgmm_rng_normal(&r) + 6.0 * ((i % 4) == j % 4));
    std::string in = fresh("fit") + ".fbin", out = fresh("fitout");
    write_bin(in, std::vector<unsigned char>((unsigned char *)x.data(),
                                             (unsigned char *)(x.data() + x.size())),
              (uint32_t)n, d);
    fgmm_error err = {};
    // 512 rows per chunk: a multiple of the CPU engine's 256-row tile, as
    // the default chunk size is, so the tiles are the file's tiles.
    ASSERT_EQ(convert(in, out, small_opts(512, 4), &err), FGMM_OK) << err.msg;
    fgmm_engine *e;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK);
    fgmm_fit_params p;
    fgmm_fit_params_default(&p);
    p.k = 5;
    p.max_iter = 6;
    p.tol = 0;
    p.seed = 3;
    fgmm_source *file, *sh_stream, *sh_cache;
    ASSERT_EQ(fgmm_dataset_open(in.c_str(), &file, &err), FGMM_OK) << err.msg;
    auto o0 = ropts(0), oc = ropts(1 << 30);
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &o0, &sh_stream, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &oc, &sh_cache, &err), FGMM_OK) << err.msg;
    fgmm_model *mf, *ms, *mc;
    ASSERT_EQ(fgmm_fit(e, file, &p, &mf, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_fit(e, sh_stream, &p, &ms, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_fit(e, sh_cache, &p, &mc, &err), FGMM_OK) << err.msg;
    for (fgmm_model *m : {ms, mc}) {
        const double *a[3] = {fgmm_model_weights_c(mf), fgmm_model_means_c(mf),
                              fgmm_model_variances_c(mf)};
        const double *b[3] = {fgmm_model_weights_c(m), fgmm_model_means_c(m),
                              fgmm_model_variances_c(m)};
        size_t len[3] = {5, 5 * d, 5 * d};
        // Normwise relative error: a mean near 0 differs from its twin by
        // summation order (chunks differ), not by anything relative to 0.
        for (int t = 0; t < 3; t++) {
            double diff = 0, scale = 0;
            for (size_t i = 0; i < len[t]; i++) {
                diff = std::fmax(diff, std::fabs(a[t][i] - b[t][i]));
                scale = std::fmax(scale, std::fabs(a[t][i]));
            }
            EXPECT_LE(diff, 1e-6 * scale) << "array " << t;
        }
        EXPECT_EQ(fgmm_model_loglik_count(m), 6);
    }
    fgmm_shard_read_stats st;
    ASSERT_EQ(fgmm_shards_stats(sh_cache, &st, &err), FGMM_OK);
    EXPECT_TRUE(st.cache_complete);
    EXPECT_GT(st.chunks_cached, 0);
    EXPECT_EQ(fgmm_shards_stats(file, &st, &err), FGMM_ERR_ARGUMENT);
    fgmm_model_free(mf);
    fgmm_model_free(ms);
    fgmm_model_free(mc);
    fgmm_source_close(file);
    fgmm_source_close(sh_stream);
    fgmm_source_close(sh_cache);
    fgmm_engine_free(e);
}

// A directory that surely supports O_DIRECT, or "" if none does here.
bool direct_io_works(const std::string &dir)
{
    std::string p = dir + "/odirect_probe";
    int fd = open(p.c_str(), O_CREAT | O_RDWR | O_DIRECT, 0644);
    if (fd < 0) return false;
    void *b = aligned_alloc(4096, 4096);
    memset(b, 0, 4096);
    bool ok = pwrite(fd, b, 4096, 0) == 4096;
    free(b);
    close(fd);
    unlink(p.c_str());
    return ok;
}

std::string make_shards(int64_t n, int d, int64_t r, int c, std::vector<unsigned char> *rows,
                        uint64_t seed = 5)
{
    *rows = make_rows(FGMM_F32, n, d, seed);
    std::string in = fresh("ds") + ".fbin", out = fresh("dsout");
    write_bin(in, *rows, (uint32_t)n, (uint32_t)d);
    fgmm_error err = {};
    EXPECT_EQ(convert(in, out, small_opts(r, c), &err), FGMM_OK) << err.msg;
    return out;
}

TEST(Shards, BothReaderPathsGiveTheSameRows)
{
    std::vector<unsigned char> rows;
    std::string out = make_shards(5000, 7, 100, 8, &rows);
    fgmm_error err = {};
    for (int buffered : {1, 0}) {
        SCOPED_TRACE(buffered ? "buffered" : "O_DIRECT");
        if (!buffered && !direct_io_works(tmpdir()))
            GTEST_SKIP() << "O_DIRECT is not supported on " << tmpdir()
                         << "; the buffered path was tested";
        for (int qd : {1, 4, 64}) {
            fgmm_source *s;
            auto o = ropts(0, buffered);
            o.queue_depth = qd;
            ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
            fgmm_shard_read_stats st;
            ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
            EXPECT_EQ(st.direct_io, !buffered);
            EXPECT_EQ(drain(s, &err), rows);
            EXPECT_EQ(drain(s, &err), rows); // a second pass, after rewind
            ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
            EXPECT_EQ(st.chunks_read, 2 * 50);
            EXPECT_GE(st.bytes_read, st.bytes_decoded / 2);
            fgmm_source_close(s);
        }
    }
}

// A rank's share of shards (fgmm_source_partition) is whole chunks, with
// global row ids, and the reader reads only those chunks: the shares of 3
// ranks tile the rows exactly, and together read each chunk once a pass.
TEST(Shards, PartitionReadsOnlyItsOwnChunks)
{
    std::vector<unsigned char> rows;
    const int64_t n = 5000;
    const int d = 7;
    std::string out = make_shards(n, d, 100, 8, &rows);  // 50 chunks, 7 shards
    fgmm_error err = {};
    int64_t next_row = 0, chunks_total = 0;
    for (int rank = 0; rank < 3; rank++) {
        SCOPED_TRACE("rank " + std::to_string(rank));
        fgmm_source *s, *view;
        auto o = ropts(0, 1);
        ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_source_partition(s, rank, 3, &view, &err), FGMM_OK) << err.msg;
        int64_t my_chunks = 0;
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(fgmm_source_rewind(view, &err), FGMM_OK) << err.msg;
            int64_t row = -1;
            my_chunks = 0;
            for (;;) {
                fgmm_chunk c;
                ASSERT_EQ(fgmm_source_next(view, &c, &err), FGMM_OK) << err.msg;
                if (c.n_rows == 0) break;
                if (row < 0) {
                    row = c.first_row;
                    if (pass == 0) {
                        EXPECT_EQ(row, next_row) << "shares must tile the rows";
                    }
                }
                EXPECT_EQ(c.first_row, row);
                for (int64_t i = 0; i < c.n_rows; i++)
                    ASSERT_EQ(0, memcmp((const char *)c.rows + i * c.row_stride,
                                        rows.data() + (size_t)(c.first_row + i) * d * 4, d * 4))
                        << "row " << c.first_row + i;
                row += c.n_rows;
                my_chunks++;
            }
            if (pass == 0) next_row = row;
        }
        fgmm_shard_read_stats st;
        ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
        EXPECT_EQ(st.chunks_read, 2 * my_chunks) << "read other ranks' chunks";
        chunks_total += my_chunks;
        fgmm_source_close(view);
        fgmm_source_close(s);
    }
    EXPECT_EQ(next_row, n);
    EXPECT_EQ(chunks_total, 50);
}

// The default ring holds ~256 MiB of decoded chunks, 16 to 64 slots, and
// at least one per decoder plus two (BENCHMARKS.md: a 16-slot ring of
// 4 MiB chunks let EM steps fall behind the disk).
TEST(Shards, DefaultRingIsSizedByChunkBytes)
{
    struct Case {
        int64_t n, rows_per_chunk;
        int d, threads, want;
    } cases[] = {
        {600, 30, 5, 2, 64},      // 600-byte chunks: the 64-slot cap
        {600, 30, 5, 80, 82},     // more decoders than that: threads + 2
        {8192, 8192, 256, 2, 32}, // one 8 MiB chunk: 256 MiB / 8 MiB
        {1024, 1024, 8192, 2, 16} // 32 MiB chunks: the 16-slot floor
    };
    for (const Case &c : cases) {
        SCOPED_TRACE(std::to_string(c.rows_per_chunk) + " x " + std::to_string(c.d) + " floats, " +
                     std::to_string(c.threads) + " threads");
        std::vector<unsigned char> rows;
        std::string out = make_shards(c.n, c.d, c.rows_per_chunk, 4, &rows);
        fgmm_error err = {};
        fgmm_source *s;
        auto o = ropts(0, 0, 0, c.threads);
        ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
        fgmm_shard_read_stats st;
        ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
        EXPECT_EQ(st.ring_slots, c.want);
        fgmm_source_close(s);
    }
}

TEST(Shards, RingNeverExceedsItsSizeAndReadsAhead)
{
    std::vector<unsigned char> rows;
    std::string out = make_shards(6000, 5, 30, 50, &rows); // 200 chunks
    fgmm_error err = {};
    for (int ring : {2, 3, 6}) {
        SCOPED_TRACE(ring);
        fgmm_source *s;
        auto o = ropts(0, 0, ring, 2);
        ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
        // A slow consumer: the reader fills the ring and must stop there.
        EXPECT_EQ(drain(s, &err, nullptr, 300), rows);
        fgmm_shard_read_stats st;
        ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
        EXPECT_EQ(st.ring_slots, ring);
        EXPECT_LE(st.ring_max_in_use, ring);
        EXPECT_EQ(st.ring_max_in_use, ring) << "the reader never ran ahead of the consumer";
        // ... and says so: reads waited for ring slots, at most for the
        // 60 ms the consumer slept.
        EXPECT_GT(st.ring_full_s, 0.0);
        EXPECT_LT(st.ring_full_s, 30.0);
        EXPECT_GE(st.wait_read_s, 0.0);
        EXPECT_GE(st.wait_decode_s, 0.0);
        fgmm_source_close(s);
    }
}

TEST(Shards, CacheServesLaterPassesFromMemory)
{
    std::vector<unsigned char> rows;
    std::string out = make_shards(3000, 6, 64, 4, &rows);
    const int64_t chunks = (3000 + 63) / 64;
    fgmm_error err = {};
    fgmm_source *s;
    auto o = ropts(3000 * 6 * 4); // exactly fits
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
    fgmm_shard_read_stats st;
    EXPECT_EQ(drain(s, &err), rows);
    ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
    EXPECT_TRUE(st.cache_enabled);
    EXPECT_TRUE(st.cache_complete);
    EXPECT_EQ(st.chunks_read, chunks);
    EXPECT_EQ(drain(s, &err), rows);
    EXPECT_EQ(drain(s, &err), rows);
    ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
    EXPECT_EQ(st.chunks_read, chunks) << "later passes must not touch the disk";
    EXPECT_EQ(st.chunks_cached, 2 * chunks);
    fgmm_source_close(s);

    // One byte short of fitting: every pass streams.
    o = ropts(3000 * 6 * 4 - 1);
    ASSERT_EQ(fgmm_shards_open(out.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(drain(s, &err), rows);
    EXPECT_EQ(drain(s, &err), rows);
    ASSERT_EQ(fgmm_shards_stats(s, &st, &err), FGMM_OK);
    EXPECT_FALSE(st.cache_enabled);
    EXPECT_EQ(st.chunks_read, 2 * chunks);
    EXPECT_EQ(st.chunks_cached, 0);
    fgmm_source_close(s);
}

// ------------------------------------------------------------ faults

struct Corpus {
    std::vector<unsigned char> rows;
    std::string dir;
    explicit Corpus(uint64_t seed = 5) { dir = make_shards(2000, 6, 50, 10, &rows, seed); }
    // 40 chunks of 50 rows, 4 shards
    std::string shard(int i) const
    {
        char b[32];
        snprintf(b, sizeof b, "/shard-%05d.fgs", i);
        return dir + b;
    }
};

uint64_t u64_at(const std::vector<unsigned char> &b, size_t off)
{
    uint64_t v;
    memcpy(&v, &b[off], 8);
    return v;
}

// Offset of chunk `c` of a shard file, from its index.
uint64_t chunk_offset(const std::string &shard, int c)
{
    auto b = read_bytes(shard);
    uint64_t index = u64_at(b, 48);
    return u64_at(b, index + 32 * (size_t)c);
}

void flip_byte(const std::string &p, uint64_t off)
{
    auto b = read_bytes(p);
    b[off] ^= 0x5a;
    write_bytes(p, b.data(), b.size());
}

std::string open_error(const std::string &dir, fgmm_status want)
{
    fgmm_error err = {};
    fgmm_source *s = nullptr;
    auto o = ropts();
    fgmm_status st = fgmm_shards_open(dir.c_str(), &o, &s, &err);
    EXPECT_EQ(st, want) << err.msg;
    if (!st) fgmm_source_close(s);
    return err.msg;
}

TEST(ShardFaults, FlippedChunkByteNamesShardAndChunk)
{
    Corpus c;
    flip_byte(c.shard(2), chunk_offset(c.shard(2), 7) + 3);
    fgmm_error err = {};
    fgmm_source *s;
    auto o = ropts();
    // Opening checks headers and indexes, not every chunk's bytes.
    ASSERT_EQ(fgmm_shards_open(c.dir.c_str(), &o, &s, &err), FGMM_OK) << err.msg;
    fgmm_status st;
    drain(s, &err, &st);
    EXPECT_EQ(st, FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "shard-00002.fgs: chunk 7"), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "checksum mismatch"), nullptr) << err.msg;
    // Random access to a row of that chunk fails the same way.
    int64_t row = 2 * 500 + 7 * 50 + 1;
    std::vector<float> out(6);
    EXPECT_EQ(fgmm_source_read_rows(s, &row, 1, out.data(), &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "chunk 7"), nullptr) << err.msg;
    fgmm_source_close(s);
    fgmm_shards_info info;
    EXPECT_EQ(fgmm_shards_probe(c.dir.c_str(), 0, 1, &info, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_shards_probe(c.dir.c_str(), 1, 2, &info, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "chunk 7"), nullptr) << err.msg;
}

TEST(ShardFaults, TruncatedShard)
{
    Corpus c;
    auto b = read_bytes(c.shard(1));
    write_bytes(c.shard(1), b.data(), b.size() - 5000);
    std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("shard-00001.fgs"), std::string::npos) << m;
    EXPECT_NE(m.find("truncated"), std::string::npos) << m;
}

TEST(ShardFaults, MissingShard)
{
    Corpus c;
    ASSERT_EQ(unlink(c.shard(3).c_str()), 0);
    std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("shard-00003.fgs: cannot open"), std::string::npos) << m;
    EXPECT_NE(m.find("listed in"), std::string::npos) << m;
}

TEST(ShardFaults, CorruptHeaderOrIndex)
{
    Corpus c;
    flip_byte(c.shard(0), 33); // inside the rows field
    std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("shard-00000.fgs: header checksum mismatch"), std::string::npos) << m;
    Corpus c2;
    auto b = read_bytes(c2.shard(1));
    flip_byte(c2.shard(1), u64_at(b, 48) + 32 + 12); // chunk 1's row count
    m = open_error(c2.dir, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("shard-00001.fgs: chunk index checksum mismatch"), std::string::npos) << m;
}

void edit_manifest(const std::string &dir, const std::string &from, const std::string &to)
{
    auto b = read_bytes(dir + "/manifest.json");
    std::string s(b.begin(), b.end());
    size_t at = s.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    write_bytes(dir + "/manifest.json", s.data(), s.size());
}

TEST(ShardFaults, ManifestThatDisagreesWithShards)
{
    {
        Corpus c;
        edit_manifest(c.dir, "\"rows\": 2000", "\"rows\": 2001");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("shards hold 2000 rows but \"rows\" says 2001"), std::string::npos) << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "\"dim\": 6", "\"dim\": 7");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("dimension 6; the manifest says float32, dimension 7"),
                  std::string::npos)
            << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "\"dtype\": \"float32\"", "\"dtype\": \"float16\"");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("holds float32 rows"), std::string::npos) << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "\"checksum\": \"", "\"checksum\": \"f");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("16 hex digits"), std::string::npos) << m;
    }
    {
        // A shard swapped for another conversion's shard of the same shape
        // (a valid file on its own): the manifest's checksum catches it.
        Corpus c, other(6);
        auto b = read_bytes(other.shard(0));
        write_bytes(c.shard(0), b.data(), b.size());
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("shard-00000.fgs: does not match manifest.json"), std::string::npos)
            << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "\"file\": \"shard-00001.fgs\"", "\"file\": \"../x\"");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("plain file name"), std::string::npos) << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "{", "[");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("manifest.json"), std::string::npos) << m;
    }
}

// ------------------------------------------------- conversion safety

std::vector<std::string> listing(const std::string &dir)
{
    std::vector<std::string> v;
    std::string cmd = "ls -a " + dir;
    FILE *p = popen(cmd.c_str(), "r");
    char line[512];
    while (p && fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, ".") && strcmp(line, "..")) v.push_back(line);
    }
    if (p) pclose(p);
    return v;
}

TEST(ShardConvert, InterruptedConversionResumesToTheSameBytes)
{
    auto rows = make_rows(FGMM_F32, 1000, 5, 9);
    std::string in = fresh("res") + ".fbin";
    write_bin(in, rows, 1000, 5);
    fgmm_error err = {};
    std::string once = fresh("once"), twice = fresh("twice");
    ASSERT_EQ(convert(in, once, small_opts(20, 5), &err), FGMM_OK) << err.msg; // 10 shards
    auto o = small_opts(20, 5);
    o.max_shards = 3;
    fgmm_shard_write_result res;
    ASSERT_EQ(convert(in, twice, o, &err, &res), FGMM_OK) << err.msg;
    EXPECT_FALSE(res.complete);
    EXPECT_EQ(res.shards, 3);
    EXPECT_FALSE(exists(twice + "/manifest.json"));
    EXPECT_TRUE(exists(twice + "/.conversion.json"));
    std::string m = open_error(twice, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("unfinished conversion"), std::string::npos) << m;
    // What a crash in the middle of shard 3 leaves behind, and a damaged
    // "complete" shard 2: both are redone.
    write_bytes(twice + "/shard-00003.fgs.tmp", "partial", 7);
    auto b2 = read_bytes(twice + "/shard-00002.fgs");
    write_bytes(twice + "/shard-00002.fgs", b2.data(), b2.size() - 4096);
    // Different options are refused, not mixed in.
    auto other = small_opts(21, 5);
    EXPECT_EQ(convert(in, twice, other, &err), FGMM_ERR_EXISTS);
    EXPECT_NE(strstr(err.msg, "unfinished conversion of other inputs or options"), nullptr)
        << err.msg;
    o.max_shards = 0;
    ASSERT_EQ(convert(in, twice, o, &err, &res), FGMM_OK) << err.msg;
    EXPECT_TRUE(res.complete);
    EXPECT_EQ(res.shards_resumed, 2);
    EXPECT_EQ(res.shards, 10);
    EXPECT_EQ(listing(once), listing(twice));
    for (const std::string &f : listing(once))
        EXPECT_EQ(read_bytes(once + "/" + f), read_bytes(twice + "/" + f)) << f;
}

TEST(ShardConvert, NeverReplacesWhatIsThere)
{
    auto rows = make_rows(FGMM_U8, 100, 4, 1);
    std::string in = fresh("ex") + ".u8bin";
    write_bin(in, rows, 100, 4);
    fgmm_error err = {};
    std::string done = fresh("done");
    ASSERT_EQ(convert(in, done, small_opts(), &err), FGMM_OK) << err.msg;
    auto before = read_bytes(done + "/manifest.json");
    EXPECT_EQ(convert(in, done, small_opts(), &err), FGMM_ERR_EXISTS);
    EXPECT_NE(strstr(err.msg, "already holds a complete shard directory"), nullptr) << err.msg;
    EXPECT_EQ(read_bytes(done + "/manifest.json"), before);

    std::string user = fresh("user");
    ASSERT_EQ(mkdir(user.c_str(), 0755), 0);
    write_bytes(user + "/notes.txt", "mine", 4);
    EXPECT_EQ(convert(in, user, small_opts(), &err), FGMM_ERR_EXISTS);
    EXPECT_EQ(listing(user), std::vector<std::string>{"notes.txt"});

    std::string file = fresh("afile");
    write_bytes(file, "x", 1);
    EXPECT_EQ(convert(in, file, small_opts(), &err), FGMM_ERR_EXISTS);
    EXPECT_EQ(read_bytes(file).size(), 1u);
}

// A write that fails part-way (here: the file-size limit, which fails
// writes exactly as a full disk does, with another errno) is a clear error
// and leaves no manifest and no temporary shard.
TEST(ShardConvert, FailedWriteIsAClearErrorAndLeavesNoManifest)
{
    auto rows = make_rows(FGMM_F32, 20000, 16, 4);
    std::string in = fresh("big") + ".fbin", out = fresh("bigout");
    write_bin(in, rows, 20000, 16);
    struct rlimit old;
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 300 * 1024;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fgmm_error err = {};
    fgmm_status st = convert(in, out, small_opts(1000, 100), &err);
    setrlimit(RLIMIT_FSIZE, &old);
    EXPECT_EQ(st, FGMM_ERR_IO);
    EXPECT_NE(strstr(err.msg, "shard-00000.fgs.tmp: write of"), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "File too large"), nullptr) << err.msg;
    EXPECT_FALSE(exists(out + "/manifest.json"));
    EXPECT_FALSE(exists(out + "/shard-00000.fgs.tmp"));
    EXPECT_FALSE(exists(out + "/shard-00000.fgs"));
}

// A manifest names plain files in its own directory: anything else (an
// absolute path, ".", "..", a path, an empty or over-long name) is refused
// before any file is opened, and a shard that is a symbolic link is refused
// when it is opened, naming it.
TEST(ShardFaults, ManifestEntriesMustBePlainFilesInTheDirectory)
{
    const std::string bad[] = {"/etc/passwd", ".", "..", "", "sub/shard-00001.fgs",
                               std::string(64, 'x'), std::string(300, 'y')};
    for (const std::string &name : bad) {
        Corpus c;
        edit_manifest(c.dir, "\"file\": \"shard-00001.fgs\"", "\"file\": \"" + name + "\"");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("shards[1]: shard file \"" + name.substr(0, 200) + "\""),
                  std::string::npos)
            << m;
        EXPECT_NE(m.find("must be a plain file name"), std::string::npos) << m;
    }
    {
        // A link to an identical copy of the shard: the bytes would pass
        // every check, the link itself is what is refused.
        Corpus c;
        std::string elsewhere = fresh("linked") + ".fgs";
        auto b = read_bytes(c.shard(1));
        write_bytes(elsewhere, b.data(), b.size());
        ASSERT_EQ(unlink(c.shard(1).c_str()), 0);
        ASSERT_EQ(symlink(elsewhere.c_str(), c.shard(1).c_str()), 0);
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("shard-00001.fgs: is a symbolic link"), std::string::npos) << m;
        fgmm_shards_info info;
        fgmm_error err = {};
        EXPECT_EQ(fgmm_shards_probe(c.dir.c_str(), 0, 1, &info, &err), FGMM_ERR_FORMAT);
        EXPECT_NE(strstr(err.msg, "symbolic link"), nullptr) << err.msg;
    }
}

// Sizes are rows x dim x element size: products that overflow 64 bits
// are errors, not wrapped small numbers.
TEST(ShardFaults, ManifestSizesThatOverflowAreRefused)
{
    {
        Corpus c; // 6 float32 dims: 24 bytes a row, 2^62 rows overflow
        edit_manifest(c.dir, "\"rows\": 2000", "\"rows\": 4611686018427387904");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("4611686018427387904 rows x 6 dims x 4 bytes overflows"),
                  std::string::npos)
            << m;
    }
    {
        Corpus c;
        edit_manifest(c.dir, "\"dim\": 6", "\"dim\": 1073741824");
        edit_manifest(c.dir, "\"rows\": 2000", "\"rows\": 9223372036854775807");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("overflows"), std::string::npos) << m;
    }
    {
        // One entry's rows running past the total, near 2^63.
        Corpus c;
        edit_manifest(c.dir, "\"rows\": 500", "\"rows\": 9223372036854775000");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("shards[0] (shard-00000.fgs) holds rows 0..9223372036854774999 past"),
                  std::string::npos)
            << m;
    }
    {
        // Beyond 2^64 is not a number jansson or the manifest can hold.
        Corpus c;
        edit_manifest(c.dir, "\"rows\": 2000", "\"rows\": 18446744073709551616");
        std::string m = open_error(c.dir, FGMM_ERR_FORMAT);
        EXPECT_NE(m.find("manifest.json"), std::string::npos) << m;
    }
}

// SIGKILL in the middle of a conversion: whatever the kill interrupted is
// not visible as output (no manifest, so no reader takes the directory for
// a complete one), and running the same conversion again completes it to
// the bytes of an uninterrupted one.
TEST(ShardConvert, KilledConversionLeavesNoVisibleOutputAndResumes)
{
    const int64_t n = 400000;
    const int d = 16;
    auto rows = make_rows(FGMM_F32, n, d, 12);
    std::string in = fresh("kill") + ".fbin", out = fresh("killed"), clean = fresh("clean");
    write_bin(in, rows, (uint32_t)n, d);
    auto o = small_opts(500, 4); // 200 shards, each fsynced
    o.level = 1;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        fgmm_error e = {};
        _exit(convert(in, out, o, &e) == FGMM_OK ? 0 : 1);
    }
    // Kill once a few shards are complete: later ones are being written.
    for (int i = 0; i < 20000 && !exists(out + "/shard-00003.fgs"); i++) usleep(500);
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the conversion finished before it could be killed";
    EXPECT_FALSE(exists(out + "/manifest.json"));
    std::string m = open_error(out, FGMM_ERR_FORMAT);
    EXPECT_NE(m.find("unfinished conversion"), std::string::npos) << m;
    int complete = 0;
    for (const std::string &f : listing(out))
        if (f.size() == strlen("shard-00000.fgs") && f.compare(0, 6, "shard-") == 0) complete++;
    EXPECT_GE(complete, 4);
    fgmm_error err = {};
    fgmm_shard_write_result res;
    ASSERT_EQ(convert(in, out, o, &err, &res), FGMM_OK) << err.msg;
    EXPECT_TRUE(res.complete);
    EXPECT_EQ(res.shards_resumed, complete); // every renamed shard was whole
    ASSERT_EQ(convert(in, clean, o, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(listing(out), listing(clean));
    for (const std::string &f : listing(clean))
        EXPECT_EQ(read_bytes(out + "/" + f), read_bytes(clean + "/" + f)) << f;
}

} // namespace
