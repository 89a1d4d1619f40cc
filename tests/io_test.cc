// io_test.cc - io/: every dataset format read back bit-exactly, every bad
// file giving one clear line naming the file, .npy round trips, and model
// directories that round-trip and are never left half-written.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ftw.h>
#include <string>
#include <vector>

#include "core/fgmm.h"
#include "io/fgmm_io.h"

namespace {

typedef std::vector<unsigned char> Bytes;

template <typename T> void put(Bytes &b, T v)
{
    const unsigned char *p = (const unsigned char *)&v;
    b.insert(b.end(), p, p + sizeof v);
}

template <typename T> void put_all(Bytes &b, const std::vector<T> &v)
{
    for (const T &x : v) put(b, x);
}

void write_file(const std::string &p, const Bytes &b)
{
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr) << p;
    if (!b.empty()) {
        ASSERT_EQ(fwrite(b.data(), 1, b.size(), f), b.size());
    }
    fclose(f);
}

void write_text(const std::string &p, const std::string &s)
{
    write_file(p, Bytes(s.begin(), s.end()));
}

std::string read_text(const std::string &p)
{
    std::string s;
    FILE *f = fopen(p.c_str(), "rb");
    if (!f) return s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

// .fbin-like: uint32 n, uint32 d, then the values.
template <typename T> Bytes bin_file(uint32_t n, uint32_t d, const std::vector<T> &v)
{
    Bytes b;
    put(b, n);
    put(b, d);
    put_all(b, v);
    return b;
}

// .fvecs/.bvecs: per row int32 d then d values.
template <typename T> Bytes texmex_file(int n, int d, const std::vector<T> &v)
{
    Bytes b;
    for (int i = 0; i < n; i++) {
        put(b, (int32_t)d);
        for (int j = 0; j < d; j++) put(b, v[(size_t)i * d + j]);
    }
    return b;
}

// An .npy by hand, in any version, with any descr and shape text.
Bytes npy_file(int major, const std::string &descr, const std::string &shape, const Bytes &data,
               bool fortran = false)
{
    std::string dict = "{'descr': '" + descr + "', 'fortran_order': " +
                       (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
    size_t pre = major == 1 ? 10 : 12;
    size_t total = pre + dict.size() + 1;
    total = (total + 63) / 64 * 64;
    dict.append(total - pre - dict.size() - 1, ' ');
    dict += '\n';
    Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)major, 0};
    if (major == 1) put(b, (uint16_t)dict.size());
    else put(b, (uint32_t)dict.size());
    b.insert(b.end(), dict.begin(), dict.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

template <typename T> Bytes raw(const std::vector<T> &v)
{
    Bytes b;
    put_all(b, v);
    return b;
}

int rm_entry(const char *p, const struct stat *, int, struct FTW *) { return remove(p); }

class Io : public ::testing::Test {
  protected:
    std::string dir;
    fgmm_error err;

    void SetUp() override
    {
        const char *t = getenv("TEST_TMPDIR");
        std::string tmpl = std::string(t ? t : "/tmp") + "/fgmm_io_XXXXXX";
        std::vector<char> buf(tmpl.begin(), tmpl.end());
        buf.push_back('\0');
        ASSERT_NE(mkdtemp(buf.data()), nullptr);
        dir = buf.data();
        memset(&err, 0, sizeof err);
    }
    void TearDown() override { nftw(dir.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

    std::string path(const std::string &name) const { return dir + "/" + name; }

    // Names under dir (recursively) containing ".tmp.".
    int tmp_leftovers(const std::string &d = "")
    {
        std::string at = d.empty() ? dir : d;
        int n = 0;
        DIR *dp = opendir(at.c_str());
        if (!dp) return 0;
        while (struct dirent *e = readdir(dp)) {
            std::string name = e->d_name;
            if (name == "." || name == "..") continue;
            if (name.find(".tmp.") != std::string::npos) n++;
            struct stat st;
            std::string full = at + "/" + name;
            if (stat(full.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) n += tmp_leftovers(full);
        }
        closedir(dp);
        return n;
    }

    // Opens path, runs one full pass and returns the rows as float (raw
    // float32 bits for float32 files, so the comparison is bit-exact).
    std::vector<float> read_all(const std::string &p, int64_t *n, int *d, int *chunks = nullptr)
    {
        std::vector<float> out;
        fgmm_source *s = nullptr;
        fgmm_status st = fgmm_dataset_open(p.c_str(), &s, &err);
        EXPECT_EQ(st, FGMM_OK) << err.msg;
        if (st) return out;
        *n = fgmm_source_rows(s);
        *d = fgmm_source_dim(s);
        out.resize((size_t)*n * *d);
        int nc = 0;
        int64_t expect_first = 0;
        for (;;) {
            fgmm_chunk c;
            st = fgmm_source_next(s, &c, &err);
            EXPECT_EQ(st, FGMM_OK) << err.msg;
            if (st || c.n_rows == 0) break;
            EXPECT_EQ(c.first_row, expect_first);
            EXPECT_EQ(c.dtype, fgmm_source_dtype(s));
            for (int64_t i = 0; i < c.n_rows; i++)
                fgmm_convert_row(c.dtype, (const char *)c.rows + i * c.row_stride, (size_t)*d,
                                 &out[(size_t)(c.first_row + i) * *d]);
            expect_first += c.n_rows;
            nc++;
        }
        EXPECT_EQ(expect_first, *n);
        if (chunks) *chunks = nc;
        fgmm_source_close(s);
        return out;
    }

    // Full pass + read_rows on a few rows, compared bit-exactly to want.
    void expect_rows(const std::string &p, int64_t n, int d, fgmm_dtype dtype,
                     const std::vector<float> &want)
    {
        int64_t gn = 0;
        int gd = 0;
        std::vector<float> got = read_all(p, &gn, &gd);
        ASSERT_EQ(gn, n);
        ASSERT_EQ(gd, d);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << p;

        fgmm_source *s;
        ASSERT_EQ(fgmm_dataset_open(p.c_str(), &s, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_source_dtype(s), dtype);
        std::vector<int64_t> idx = {n - 1, 0, n / 2, n - 1};
        std::vector<float> rr(idx.size() * d);
        ASSERT_EQ(fgmm_source_read_rows(s, idx.data(), (int64_t)idx.size(), rr.data(), &err),
                  FGMM_OK)
            << err.msg;
        for (size_t i = 0; i < idx.size(); i++)
            EXPECT_EQ(memcmp(&rr[i * d], &want[(size_t)idx[i] * d], d * sizeof(float)), 0)
                << p << " row " << idx[i];
        fgmm_source_close(s);
    }

    // Expects fgmm_dataset_open (and probe) to fail with code and every needle.
    void expect_open_fails(const std::string &p, fgmm_status code,
                           const std::vector<std::string> &needles)
    {
        fgmm_source *s = nullptr;
        memset(&err, 0, sizeof err);
        EXPECT_EQ(fgmm_dataset_open(p.c_str(), &s, &err), code) << err.msg;
        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(err.code, code);
        EXPECT_EQ(strchr(err.msg, '\n'), nullptr);
        for (const std::string &nd : needles)
            EXPECT_NE(std::string(err.msg).find(nd), std::string::npos)
                << "'" << nd << "' not in: " << err.msg;
        fgmm_dataset_info info;
        fgmm_error e2;
        EXPECT_EQ(fgmm_dataset_probe(p.c_str(), &info, &e2), code);
        EXPECT_STREQ(e2.msg, err.msg);
    }

    // Expects a pass over p to fail with code and every needle.
    void expect_pass_fails(const std::string &p, fgmm_status code,
                           const std::vector<std::string> &needles)
    {
        fgmm_source *s = nullptr;
        ASSERT_EQ(fgmm_dataset_open(p.c_str(), &s, &err), FGMM_OK) << err.msg;
        fgmm_status st = FGMM_OK;
        for (;;) {
            fgmm_chunk c;
            st = fgmm_source_next(s, &c, &err);
            if (st || c.n_rows == 0) break;
        }
        EXPECT_EQ(st, code);
        for (const std::string &nd : needles)
            EXPECT_NE(std::string(err.msg).find(nd), std::string::npos)
                << "'" << nd << "' not in: " << err.msg;
        fgmm_source_close(s);
    }
};

// Values that would expose any conversion: signs, -0, a denormal, big ones.
std::vector<float> sample_floats(int n, int d)
{
    std::vector<float> v((size_t)n * d);
    for (size_t i = 0; i < v.size(); i++) v[i] = (float)((double)i * 1.37 - 5.0) / 3.0f;
    v[0] = -0.0f;
    v[1] = 1e-40f; // denormal
    v[2] = 3.4e38f;
    return v;
}

// ------------------------------------------------------------ round trips

TEST_F(Io, FvecsRoundTrip)
{
    std::vector<float> v = sample_floats(7, 5);
    write_file(path("a.fvecs"), texmex_file(7, 5, v));
    expect_rows(path("a.fvecs"), 7, 5, FGMM_F32, v);
    fgmm_dataset_info info;
    ASSERT_EQ(fgmm_dataset_probe(path("a.fvecs").c_str(), &info, &err), FGMM_OK) << err.msg;
    EXPECT_STREQ(info.format, "fvecs");
    EXPECT_EQ(info.rows, 7);
    EXPECT_EQ(info.dim, 5);
    EXPECT_EQ(info.dtype, FGMM_F32);
    EXPECT_EQ(info.file_bytes, 7u * 24u);
    EXPECT_EQ(info.data_offset, 4u);
    EXPECT_EQ(info.row_stride, 24u);
}

TEST_F(Io, BvecsRoundTrip)
{
    std::vector<uint8_t> v(6 * 3);
    std::vector<float> want(v.size());
    for (size_t i = 0; i < v.size(); i++) want[i] = v[i] = (uint8_t)(i * 37 + 200);
    write_file(path("a.bvecs"), texmex_file(6, 3, v));
    expect_rows(path("a.bvecs"), 6, 3, FGMM_U8, want);
}

TEST_F(Io, FbinRoundTrip)
{
    std::vector<float> v = sample_floats(9, 4);
    write_file(path("a.fbin"), bin_file(9, 4, v));
    expect_rows(path("a.fbin"), 9, 4, FGMM_F32, v);
    fgmm_dataset_info info;
    ASSERT_EQ(fgmm_dataset_probe(path("a.fbin").c_str(), &info, &err), FGMM_OK);
    EXPECT_STREQ(info.format, "fbin");
    EXPECT_EQ(info.data_offset, 8u);
    EXPECT_EQ(info.row_stride, 16u);
}

TEST_F(Io, U8binAndI8binRoundTrip)
{
    std::vector<uint8_t> u(4 * 6);
    std::vector<int8_t> s(4 * 6);
    std::vector<float> wu(u.size()), ws(s.size());
    for (size_t i = 0; i < u.size(); i++) {
        wu[i] = u[i] = (uint8_t)(255 - i * 11);
        ws[i] = s[i] = (int8_t)((int)i * 13 - 128);
    }
    write_file(path("a.u8bin"), bin_file(4, 6, u));
    write_file(path("a.i8bin"), bin_file(4, 6, s));
    expect_rows(path("a.u8bin"), 4, 6, FGMM_U8, wu);
    expect_rows(path("a.i8bin"), 4, 6, FGMM_I8, ws);
}

TEST_F(Io, NpyRoundTripEveryVersionAndDtype)
{
    std::vector<float> f = sample_floats(5, 3);
    for (int major = 1; major <= 3; major++) {
        std::string p = path("v" + std::to_string(major) + ".npy");
        write_file(p, npy_file(major, "<f4", "(5, 3)", raw(f)));
        expect_rows(p, 5, 3, FGMM_F32, f);
    }
    std::vector<uint8_t> u = {0, 1, 2, 127, 128, 255};
    std::vector<float> wu = {0, 1, 2, 127, 128, 255};
    for (const char *descr : {"|u1", "<u1", ">u1"}) {
        write_file(path("u.npy"), npy_file(1, descr, "(2, 3)", raw(u)));
        expect_rows(path("u.npy"), 2, 3, FGMM_U8, wu);
    }
    std::vector<int8_t> s = {-128, -1, 0, 1, 127, 5};
    std::vector<float> wsf = {-128, -1, 0, 1, 127, 5};
    write_file(path("s.npy"), npy_file(1, "|i1", "(3, 2)", raw(s)));
    expect_rows(path("s.npy"), 3, 2, FGMM_I8, wsf);
}

TEST_F(Io, Float16Conversion)
{
    // 1, -2, 1.5, 65504 (largest), 2^-24 (smallest subnormal), -0, 1/3 rounded.
    std::vector<uint16_t> h = {0x3C00, 0xC000, 0x3E00, 0x7BFF, 0x0001, 0x8000};
    std::vector<float> want = {1.0f, -2.0f, 1.5f, 65504.0f, std::ldexp(1.0f, -24), -0.0f};
    write_file(path("h.npy"), npy_file(1, "<f2", "(3, 2)", raw(h)));
    expect_rows(path("h.npy"), 3, 2, FGMM_F16, want);
    fgmm_dataset_info info;
    ASSERT_EQ(fgmm_dataset_probe(path("h.npy").c_str(), &info, &err), FGMM_OK);
    EXPECT_EQ(info.dtype, FGMM_F16);
    EXPECT_EQ(info.data_offset % 64, 0u);
    EXPECT_EQ(info.row_stride, 4u);
}

TEST_F(Io, ManyChunksAndRepeatedPasses)
{
    const int n = 65536 * 2 + 5, d = 2;
    std::vector<float> v((size_t)n * d);
    for (size_t i = 0; i < v.size(); i++) v[i] = (float)i;
    write_file(path("big.fbin"), bin_file(n, d, v));
    int64_t gn;
    int gd, chunks;
    std::vector<float> got = read_all(path("big.fbin"), &gn, &gd, &chunks);
    EXPECT_EQ(chunks, 3);
    EXPECT_EQ(got, v);

    fgmm_source *s;
    ASSERT_EQ(fgmm_dataset_open(path("big.fbin").c_str(), &s, &err), FGMM_OK);
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_EQ(fgmm_source_rewind(s, &err), FGMM_OK);
        int64_t rows = 0;
        fgmm_chunk c;
        while (fgmm_source_next(s, &c, &err) == FGMM_OK && c.n_rows) rows += c.n_rows;
        EXPECT_EQ(rows, n);
    }
    fgmm_source_close(s);
}

// A chunk is scanned for NaN only the first time it is produced: a value
// that turns NaN under a live mapping after the first pass is not seen
// again, while a new source sees it.
TEST_F(Io, FinitenessScannedOncePerChunk)
{
    std::vector<float> v(10 * 2, 1.0f);
    write_file(path("x.fbin"), bin_file(10, 2, v));
    fgmm_source *s;
    ASSERT_EQ(fgmm_dataset_open(path("x.fbin").c_str(), &s, &err), FGMM_OK);
    fgmm_chunk c;
    ASSERT_EQ(fgmm_source_next(s, &c, &err), FGMM_OK);
    ASSERT_EQ(c.n_rows, 10);
    int fd = open(path("x.fbin").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    float nan = NAN;
    ASSERT_EQ(pwrite(fd, &nan, 4, 8 + 4 * 7), 4);
    close(fd);
    ASSERT_EQ(fgmm_source_rewind(s, &err), FGMM_OK);
    EXPECT_EQ(fgmm_source_next(s, &c, &err), FGMM_OK) << err.msg;
    fgmm_source_close(s);
    expect_pass_fails(path("x.fbin"), FGMM_ERR_DATA, {"x.fbin", "row 3", "NaN"});
}

// ------------------------------------------------------------ bad inputs

TEST_F(Io, MissingFile)
{
    expect_open_fails(path("nope.fbin"), FGMM_ERR_IO, {"nope.fbin", "No such file"});
}

TEST_F(Io, UnknownExtension)
{
    write_text(path("data.csv"), "1,2\n");
    expect_open_fails(path("data.csv"), FGMM_ERR_ARGUMENT,
                      {"data.csv", "'.csv'", ".fvecs", ".bvecs", ".fbin", ".u8bin", ".i8bin",
                       ".npy"});
    write_text(path("noext"), "x");
    expect_open_fails(path("noext"), FGMM_ERR_ARGUMENT, {"noext", "extension"});
}

TEST_F(Io, DirectoryIsNotADataset)
{
    mkdir(path("d.fbin").c_str(), 0755);
    expect_open_fails(path("d.fbin"), FGMM_ERR_IO, {"d.fbin", "directory"});
}

TEST_F(Io, EmptyFiles)
{
    for (const char *name : {"e.fvecs", "e.bvecs", "e.fbin", "e.u8bin", "e.i8bin", "e.npy"}) {
        write_file(path(name), Bytes());
        expect_open_fails(path(name), FGMM_ERR_FORMAT, {name, "empty"});
    }
}

TEST_F(Io, TruncatedFbin)
{
    Bytes b = bin_file<float>(1000, 16, std::vector<float>(1500));
    write_file(path("x.fbin"), b);
    expect_open_fails(path("x.fbin"), FGMM_ERR_FORMAT,
                      {"x.fbin: header says 1000 rows x 16 dims = 64008 bytes, file has 6008 "
                       "bytes"});
    // One byte too many is as wrong as one too few.
    write_file(path("y.u8bin"), bin_file<uint8_t>(2, 3, std::vector<uint8_t>(7)));
    expect_open_fails(path("y.u8bin"), FGMM_ERR_FORMAT, {"y.u8bin", "= 14 bytes, file has 15"});
    write_file(path("short.fbin"), Bytes{1, 0, 0});
    expect_open_fails(path("short.fbin"), FGMM_ERR_FORMAT, {"short.fbin", "3 bytes", "header"});
}

TEST_F(Io, HeaderOverflowIsCaught)
{
    // 2^32-1 rows x 2^32-1 dims x 4 bytes overflows 64 bits.
    write_file(path("o.fbin"), bin_file<float>(0xFFFFFFFFu, 0xFFFFFFFFu, {1.0f}));
    expect_open_fails(path("o.fbin"), FGMM_ERR_FORMAT, {"o.fbin", "4294967295 rows"});
}

// rows x dims x element size is computed in 64 bits with every product
// checked: a header whose sizes overflow is a clear error naming the
// shape, never a wrapped size that happens to match a small file.
TEST_F(Io, ShapeProductOverflowIsAClearError)
{
    Bytes f4 = raw(std::vector<float>(8, 1.0f));
    // 2^62 rows x 8 dims x 4 bytes = 2^67.
    write_file(path("big.npy"), npy_file(1, "<f4", "(4611686018427387904, 8)", f4));
    expect_open_fails(path("big.npy"), FGMM_ERR_FORMAT,
                      {"big.npy", "4611686018427387904 rows x 8 dims = more than 2^64 bytes"});
    // Each factor alone fits; the product wraps to exactly 0 mod 2^64.
    write_file(path("wrap.npy"), npy_file(1, "<f4", "(4294967296, 1073741824)", f4));
    expect_open_fails(path("wrap.npy"), FGMM_ERR_FORMAT, {"wrap.npy", "more than 2^64"});
    // A dimension past int, and a dimension past int64.
    write_file(path("wide.npy"), npy_file(1, "<f4", "(1, 4294967296)", f4));
    expect_open_fails(path("wide.npy"), FGMM_ERR_FORMAT, {"wide.npy", "too large"});
    write_file(path("huge.npy"), npy_file(1, "<f4", "(1, 99999999999999999999)", f4));
    expect_open_fails(path("huge.npy"), FGMM_ERR_FORMAT, {"huge.npy", "malformed .npy header"});
    // Big-ann headers: uint32 n and d can reach 2^64 only with 4-byte
    // elements; with 1-byte ones the size is merely wrong.
    write_file(path("o.u8bin"), bin_file<uint8_t>(0xFFFFFFFFu, 0x7FFFFFFFu, {1}));
    expect_open_fails(path("o.u8bin"), FGMM_ERR_FORMAT,
                      {"o.u8bin", "4294967295 rows x 2147483647 dims = 9223372030412324873 "
                                  "bytes, file has 9 bytes"});
    write_file(path("o.i8bin"), bin_file<int8_t>(0xFFFFFFFFu, 0x80000000u, {1}));
    expect_open_fails(path("o.i8bin"), FGMM_ERR_FORMAT, {"o.i8bin", "too large"});
    write_file(path("half.fbin"), bin_file<float>(0xFFFFFFFFu, 0x7FFFFFFFu, {1.0f}));
    expect_open_fails(path("half.fbin"), FGMM_ERR_FORMAT, {"half.fbin", "more than 2^64"});
    // fgmm_npy_read (models): element counts whose bytes, or bytes plus the
    // header, pass 2^64.
    double *data = nullptr;
    int ndim = 0;
    int64_t shape[2];
    write_file(path("r1.npy"), npy_file(1, "<f8", "(2305843009213693952, 8)", Bytes(8)));
    EXPECT_EQ(fgmm_npy_read(path("r1.npy").c_str(), &data, &ndim, shape, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(std::string(err.msg).find("r1.npy: shape (2305843009213693952, 8) is too large"),
              std::string::npos)
        << err.msg;
    write_file(path("r2.npy"), npy_file(1, "<f8", "(2305843009213693951,)", Bytes(8)));
    EXPECT_EQ(fgmm_npy_read(path("r2.npy").c_str(), &data, &ndim, shape, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(std::string(err.msg).find("r2.npy: shape (2305843009213693951,) is too large"),
              std::string::npos)
        << err.msg;
    EXPECT_EQ(data, nullptr);
}

TEST_F(Io, ZeroRowsOrDims)
{
    write_file(path("n0.fbin"), bin_file<float>(0, 4, {}));
    expect_open_fails(path("n0.fbin"), FGMM_ERR_FORMAT, {"n0.fbin", "0 rows"});
    write_file(path("d0.i8bin"), bin_file<int8_t>(5, 0, {}));
    expect_open_fails(path("d0.i8bin"), FGMM_ERR_FORMAT, {"d0.i8bin", "0 dims"});
    write_file(path("n0.npy"), npy_file(1, "<f4", "(0, 4)", Bytes()));
    expect_open_fails(path("n0.npy"), FGMM_ERR_FORMAT, {"n0.npy", "0 rows"});
}

TEST_F(Io, FvecsSizeNotAMultipleOfRows)
{
    Bytes b = texmex_file(3, 4, std::vector<float>(12, 1.0f));
    b.resize(b.size() - 3);
    write_file(path("t.fvecs"), b);
    expect_open_fails(path("t.fvecs"), FGMM_ERR_FORMAT,
                      {"t.fvecs", "57 bytes", "not a multiple of the row size 20"});
}

TEST_F(Io, FvecsNonPositiveDimension)
{
    Bytes b;
    put(b, (int32_t)-1);
    put(b, 1.0f);
    write_file(path("neg.fvecs"), b);
    expect_open_fails(path("neg.fvecs"), FGMM_ERR_FORMAT, {"neg.fvecs", "row 0", "dimension -1"});
    Bytes z;
    put(z, (int32_t)0);
    write_file(path("zero.bvecs"), z);
    expect_open_fails(path("zero.bvecs"), FGMM_ERR_FORMAT, {"zero.bvecs", "dimension 0"});
}

TEST_F(Io, FvecsRowDimensionMismatch)
{
    Bytes b;
    auto row = [&](int32_t d) {
        put(b, d);
        for (int j = 0; j < d; j++) put(b, (float)j);
    };
    for (int i = 0; i < 5; i++) row(4);
    row(3); // row 5 is short,
    row(5); // this one long, so the size stays a multiple of the row size
    for (int i = 0; i < 3; i++) row(4);
    write_file(path("bad.fvecs"), b);
    expect_pass_fails(path("bad.fvecs"), FGMM_ERR_DATA,
                      {"bad.fvecs: row 5 has dimension 3, expected 4 (from row 0)"});
    fgmm_source *s;
    ASSERT_EQ(fgmm_dataset_open(path("bad.fvecs").c_str(), &s, &err), FGMM_OK);
    int64_t idx = 5;
    float out[4];
    EXPECT_EQ(fgmm_source_read_rows(s, &idx, 1, out, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("row 5 has dimension 3"), std::string::npos) << err.msg;
    idx = 4;
    EXPECT_EQ(fgmm_source_read_rows(s, &idx, 1, out, &err), FGMM_OK);
    fgmm_source_close(s);
}

TEST_F(Io, NaNAndInfNameTheRow)
{
    std::vector<float> v(6 * 3, 0.5f);
    v[3 * 3 + 1] = NAN;
    write_file(path("nan.fbin"), bin_file(6, 3, v));
    expect_pass_fails(path("nan.fbin"), FGMM_ERR_DATA, {"nan.fbin", "row 3", "column 1", "NaN"});
    // Random access (initialisation samples rows before any pass) too.
    fgmm_source *s;
    ASSERT_EQ(fgmm_dataset_open(path("nan.fbin").c_str(), &s, &err), FGMM_OK);
    int64_t idx[2] = {0, 3};
    float out[6];
    EXPECT_EQ(fgmm_source_read_rows(s, idx, 2, out, &err), FGMM_ERR_DATA);
    EXPECT_NE(std::string(err.msg).find("row 3"), std::string::npos) << err.msg;
    fgmm_source_close(s);

    v[3 * 3 + 1] = 0;
    v[4 * 3] = -INFINITY;
    write_file(path("inf.fvecs"), texmex_file(6, 3, v));
    expect_pass_fails(path("inf.fvecs"), FGMM_ERR_DATA, {"inf.fvecs", "row 4", "inf"});

    std::vector<uint16_t> h = {0x3C00, 0x3C00, 0x7C00, 0x3C00};
    write_file(path("inf.npy"), npy_file(1, "<f2", "(2, 2)", raw(h)));
    expect_pass_fails(path("inf.npy"), FGMM_ERR_DATA, {"inf.npy", "row 1", "inf"});
}

TEST_F(Io, NpyBadArrays)
{
    Bytes f8 = raw(std::vector<double>(6, 1.0));
    write_file(path("f8.npy"), npy_file(1, "<f8", "(2, 3)", f8));
    expect_open_fails(path("f8.npy"), FGMM_ERR_FORMAT, {"f8.npy", "'<f8'", "'<f4'", "'|u1'"});
    Bytes f4 = raw(std::vector<float>(6, 1.0f));
    write_file(path("be.npy"), npy_file(1, ">f4", "(2, 3)", f4));
    expect_open_fails(path("be.npy"), FGMM_ERR_FORMAT, {"be.npy", "'>f4'"});
    write_file(path("one.npy"), npy_file(1, "<f4", "(6,)", f4));
    expect_open_fails(path("one.npy"), FGMM_ERR_FORMAT,
                      {"one.npy", "1 dimension", "(6,)", "expected 2"});
    write_file(path("three.npy"), npy_file(1, "<f4", "(1, 2, 3)", f4));
    expect_open_fails(path("three.npy"), FGMM_ERR_FORMAT, {"three.npy", "3 dimensions"});
    write_file(path("fort.npy"), npy_file(1, "<f4", "(2, 3)", f4, true));
    expect_open_fails(path("fort.npy"), FGMM_ERR_FORMAT, {"fort.npy", "Fortran"});
    write_file(path("trunc.npy"), npy_file(2, "<f4", "(3, 3)", f4));
    expect_open_fails(path("trunc.npy"), FGMM_ERR_FORMAT,
                      {"trunc.npy", "(3, 3)", "file has"});
    write_text(path("magic.npy"), "PK\x03\x04 this is a zip, not an npy file");
    expect_open_fails(path("magic.npy"), FGMM_ERR_FORMAT, {"magic.npy", "NUMPY"});
    Bytes v9 = npy_file(1, "<f4", "(2, 3)", f4);
    v9[6] = 9;
    write_file(path("v9.npy"), v9);
    expect_open_fails(path("v9.npy"), FGMM_ERR_FORMAT, {"v9.npy", "version 9.0"});
    Bytes junk = npy_file(1, "<f4", "(2, 3)", f4);
    memcpy(&junk[10], "{'descr' ; ", 11);
    write_file(path("junk.npy"), junk);
    expect_open_fails(path("junk.npy"), FGMM_ERR_FORMAT, {"junk.npy", "header"});
    Bytes longhdr = npy_file(1, "<f4", "(2, 3)", f4);
    longhdr.resize(40);
    write_file(path("hdr.npy"), longhdr);
    expect_open_fails(path("hdr.npy"), FGMM_ERR_FORMAT, {"hdr.npy", "header"});
}

// ------------------------------------------------------------------- npy

TEST_F(Io, NpyWriteReadRoundTrip)
{
    std::vector<double> w = {0.1, -2.5, 1e-300, 3.0, 1.0 / 3.0};
    int64_t sh1[1] = {5};
    ASSERT_EQ(fgmm_npy_write(path("w.npy").c_str(), FGMM_NPY_F64, w.data(), 1, sh1, &err),
              FGMM_OK)
        << err.msg;
    std::string text = read_text(path("w.npy"));
    EXPECT_NE(text.find("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }"),
              std::string::npos);
    EXPECT_EQ((text.size() - 5 * 8) % 64, 0u);
    EXPECT_EQ(text[text.size() - 5 * 8 - 1], '\n');
    double *data;
    int ndim;
    int64_t shape[2];
    ASSERT_EQ(fgmm_npy_read(path("w.npy").c_str(), &data, &ndim, shape, &err), FGMM_OK)
        << err.msg;
    EXPECT_EQ(ndim, 1);
    EXPECT_EQ(shape[0], 5);
    EXPECT_EQ(shape[1], 1);
    EXPECT_EQ(memcmp(data, w.data(), sizeof(double) * 5), 0);
    free(data);

    std::vector<double> m = {1.1, 2.2, 3.3, -4.4, 5.5, 6.6};
    int64_t sh2[2] = {2, 3};
    ASSERT_EQ(fgmm_npy_write(path("m.npy").c_str(), FGMM_NPY_F32, m.data(), 2, sh2, &err),
              FGMM_OK);
    EXPECT_NE(read_text(path("m.npy")).find("'descr': '<f4'"), std::string::npos);
    EXPECT_NE(read_text(path("m.npy")).find("'shape': (2, 3), }"), std::string::npos);
    ASSERT_EQ(fgmm_npy_read(path("m.npy").c_str(), &data, &ndim, shape, &err), FGMM_OK);
    EXPECT_EQ(ndim, 2);
    EXPECT_EQ(shape[0], 2);
    EXPECT_EQ(shape[1], 3);
    for (int i = 0; i < 6; i++) EXPECT_EQ(data[i], (double)(float)m[i]);
    free(data);

    std::vector<float> f = {0.5f, -1e-40f, 7.0f};
    int64_t sh3[1] = {3};
    ASSERT_EQ(fgmm_npy_write_f32(path("f.npy").c_str(), f.data(), 1, sh3, &err), FGMM_OK);
    ASSERT_EQ(fgmm_npy_read(path("f.npy").c_str(), &data, &ndim, shape, &err), FGMM_OK);
    for (int i = 0; i < 3; i++) EXPECT_EQ(data[i], (double)f[i]);
    free(data);
    // Written files are valid .npy datasets when 2-D float32.
    int64_t sh4[2] = {3, 1};
    ASSERT_EQ(fgmm_npy_write_f32(path("f2.npy").c_str(), f.data(), 2, sh4, &err), FGMM_OK);
    expect_rows(path("f2.npy"), 3, 1, FGMM_F32, f);
    // An empty array is still an array.
    int64_t sh0[1] = {0};
    ASSERT_EQ(fgmm_npy_write(path("e.npy").c_str(), FGMM_NPY_F64, nullptr, 1, sh0, &err), FGMM_OK);
    ASSERT_EQ(fgmm_npy_read(path("e.npy").c_str(), &data, &ndim, shape, &err), FGMM_OK);
    EXPECT_EQ(shape[0], 0);
    free(data);
    EXPECT_EQ(tmp_leftovers(), 0);
}

TEST_F(Io, NpyReadOtherDtypes)
{
    double *data;
    int ndim;
    int64_t shape[2];
    struct Case {
        const char *descr;
        Bytes bytes;
        std::vector<double> want;
    } cases[] = {
        {"<i4", raw(std::vector<int32_t>{-7, 2147483647}), {-7, 2147483647}},
        {"<i8", raw(std::vector<int64_t>{-1, 1LL << 40}), {-1, (double)(1LL << 40)}},
        {"<f2", raw(std::vector<uint16_t>{0x3E00, 0xC000}), {1.5, -2}},
        {"|u1", raw(std::vector<uint8_t>{255, 0}), {255, 0}},
        {"|i1", raw(std::vector<int8_t>{-128, 3}), {-128, 3}},
        {"<f4", raw(std::vector<float>{0.25f, 8.0f}), {0.25, 8}},
    };
    for (const Case &c : cases) {
        write_file(path("o.npy"), npy_file(3, c.descr, "(2,)", c.bytes));
        ASSERT_EQ(fgmm_npy_read(path("o.npy").c_str(), &data, &ndim, shape, &err), FGMM_OK)
            << c.descr << ": " << err.msg;
        EXPECT_EQ(ndim, 1);
        EXPECT_EQ(data[0], c.want[0]) << c.descr;
        EXPECT_EQ(data[1], c.want[1]) << c.descr;
        free(data);
    }
}

TEST_F(Io, NpyReadAndWriteErrors)
{
    double *data = nullptr;
    int ndim;
    int64_t shape[2];
    EXPECT_EQ(fgmm_npy_read(path("none.npy").c_str(), &data, &ndim, shape, &err), FGMM_ERR_IO);
    EXPECT_NE(std::string(err.msg).find("none.npy"), std::string::npos);
    write_file(path("c.npy"), npy_file(1, "<c8", "(2,)", Bytes(16)));
    EXPECT_EQ(fgmm_npy_read(path("c.npy").c_str(), &data, &ndim, shape, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(std::string(err.msg).find("'<c8'"), std::string::npos) << err.msg;
    write_file(path("3d.npy"), npy_file(1, "<f8", "(1, 1, 2)", Bytes(16)));
    EXPECT_EQ(fgmm_npy_read(path("3d.npy").c_str(), &data, &ndim, shape, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(std::string(err.msg).find("3 dimensions"), std::string::npos) << err.msg;
    EXPECT_EQ(data, nullptr);
    int64_t shape3[3];  // full covariances' (K, D, D)
    ASSERT_EQ(fgmm_npy_read3(path("3d.npy").c_str(), &data, &ndim, shape3, &err), FGMM_OK)
        << err.msg;
    EXPECT_EQ(ndim, 3);
    EXPECT_EQ(shape3[2], 2);
    free(data);
    data = nullptr;

    double v[2] = {1, 2};
    int64_t sh[1] = {2};
    EXPECT_EQ(fgmm_npy_write(path("nodir/x.npy").c_str(), FGMM_NPY_F64, v, 1, sh, &err),
              FGMM_ERR_IO);
    EXPECT_NE(std::string(err.msg).find("nodir/x.npy"), std::string::npos) << err.msg;
    EXPECT_EQ(fgmm_npy_write(path("x.npy").c_str(), FGMM_NPY_F64, v, 4, sh, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_EQ(tmp_leftovers(), 0);
}

// A write that fails half-way (file size limit) leaves no temporary file
// and does not replace what was there.
TEST_F(Io, NpyWriteFailureLeavesNothing)
{
    std::vector<double> big(4096, 1.0);
    int64_t sh[1] = {4096};
    write_text(path("keep.npy"), "old");
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1000;
    signal(SIGXFSZ, SIG_IGN);
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fgmm_status st = fgmm_npy_write(path("keep.npy").c_str(), FGMM_NPY_F64, big.data(), 1, sh,
                                    &err);
    setrlimit(RLIMIT_FSIZE, &old);
    EXPECT_EQ(st, FGMM_ERR_IO);
    EXPECT_NE(std::string(err.msg).find("keep.npy.tmp."), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("failed: File too large"), std::string::npos) << err.msg;
    EXPECT_EQ(read_text(path("keep.npy")), "old");
    EXPECT_EQ(tmp_leftovers(), 0);
}

// ----------------------------------------------------------------- models

fgmm_model *make_model(int k, int d, fgmm_covariance cov)
{
    fgmm_model *m = nullptr;
    fgmm_error e;
    EXPECT_EQ(fgmm_model_create(k, d, cov, &m, &e), FGMM_OK);
    double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m), *v = fgmm_model_variances(m);
    double sum = 0;
    for (int i = 0; i < k; i++) sum += (w[i] = 1.0 + i * 0.7);
    for (int i = 0; i < k; i++) w[i] /= sum;
    for (int i = 0; i < k * d; i++) mu[i] = std::sin(i + 0.5) * 10.0;
    for (size_t i = 0; i < fgmm_covariance_len(cov, k, d); i++) v[i] = 0.1 + std::cos(i) * 0.05 + 0.05;
    fgmm_model_meta *mt = fgmm_model_meta_get(m);
    mt->reg_covar = 1e-6;
    mt->iterations = 3;
    mt->converged = 1;
    mt->seed = 18446744073709551615ull; // 2^64-1: must not pass through a double
    mt->rows = 123456789012345ll;
    mt->reseeded = 2;
    mt->seconds = 1.25;
    fgmm_model_set_text(m, FGMM_TEXT_SOURCE, "data/\"quoted\" \\ path\n\ttab é.fbin", &e);
    fgmm_model_set_text(m, FGMM_TEXT_INIT, "kmeans++", &e);
    fgmm_model_set_text(m, FGMM_TEXT_DEVICE, "cpu", &e);
    fgmm_model_push_loglik(m, -12.345678901234567, &e);
    fgmm_model_push_loglik(m, -11.0, &e);
    fgmm_model_push_loglik(m, -10.999999999999998, &e);
    return m;
}

void expect_same_model(const fgmm_model *a, const fgmm_model *b)
{
    int k = fgmm_model_k(a), d = fgmm_model_d(a);
    ASSERT_EQ(fgmm_model_k(b), k);
    ASSERT_EQ(fgmm_model_d(b), d);
    ASSERT_EQ(fgmm_model_covariance(b), fgmm_model_covariance(a));
    for (int i = 0; i < k; i++) EXPECT_EQ(fgmm_model_weights_c(b)[i], fgmm_model_weights_c(a)[i]);
    // Means and variances are stored as float32.
    for (int i = 0; i < k * d; i++)
        EXPECT_EQ(fgmm_model_means_c(b)[i], (double)(float)fgmm_model_means_c(a)[i]);
    for (size_t i = 0; i < fgmm_covariance_len(fgmm_model_covariance(a), k, d); i++)
        EXPECT_EQ(fgmm_model_variances_c(b)[i], (double)(float)fgmm_model_variances_c(a)[i]);
    const fgmm_model_meta *x = fgmm_model_meta_c(a), *y = fgmm_model_meta_c(b);
    EXPECT_EQ(y->reg_covar, x->reg_covar);
    EXPECT_EQ(y->iterations, x->iterations);
    EXPECT_EQ(y->converged, x->converged);
    EXPECT_EQ(y->seed, x->seed);
    EXPECT_EQ(y->rows, x->rows);
    EXPECT_EQ(y->reseeded, x->reseeded);
    EXPECT_EQ(y->seconds, x->seconds);
    EXPECT_STREQ(y->source, x->source);
    EXPECT_STREQ(y->init, x->init);
    EXPECT_STREQ(y->device, x->device);
    ASSERT_EQ(fgmm_model_loglik_count(b), fgmm_model_loglik_count(a));
    for (int i = 0; i < fgmm_model_loglik_count(a); i++)
        EXPECT_EQ(fgmm_model_loglik(b)[i], fgmm_model_loglik(a)[i]);
}

TEST_F(Io, ModelRoundTripDiag)
{
    fgmm_model *m = make_model(3, 4, FGMM_COV_DIAG), *back = nullptr;
    std::string md = path("model");
    EXPECT_FALSE(fgmm_path_exists(md.c_str()));
    ASSERT_EQ(fgmm_model_save(m, md.c_str(), &err), FGMM_OK) << err.msg;
    EXPECT_TRUE(fgmm_path_exists(md.c_str()));
    EXPECT_TRUE(fgmm_is_model_dir(md.c_str()));
    EXPECT_FALSE(fgmm_is_model_dir(path("nothing").c_str()));
    ASSERT_EQ(fgmm_model_load(md.c_str(), &back, &err), FGMM_OK) << err.msg;
    expect_same_model(m, back);
    EXPECT_EQ(tmp_leftovers(), 0);

    std::string js = read_text(md + "/model.json");
    for (const char *line :
         {"\n  \"format\": \"flashgmm-model\",\n", "\n  \"version\": 1,\n", "\n  \"k\": 3,\n",
          "\n  \"d\": 4,\n", "\n  \"covariance\": \"diag\",\n", "\n  \"converged\": true,\n",
          "\n  \"final_log_likelihood\": -10.999999999999998,\n",
          "\n  \"seed\": \"18446744073709551615\",\n", "\n  \"device\": \"cpu\"\n"})
        EXPECT_NE(js.find(line), std::string::npos) << line << "\n" << js;
    EXPECT_NE(js.find("\"data/\\\"quoted\\\" \\\\ path\\n\\ttab é.fbin\""), std::string::npos)
        << js;
    EXPECT_NE(read_text(md + "/weights.npy").find("'descr': '<f8', 'fortran_order': False, "
                                                  "'shape': (3,), }"),
              std::string::npos);
    EXPECT_NE(read_text(md + "/means.npy").find("'shape': (3, 4), }"), std::string::npos);
    EXPECT_NE(read_text(md + "/variances.npy").find("'shape': (3, 4), }"), std::string::npos);
    fgmm_model_free(m);
    fgmm_model_free(back);
}

TEST_F(Io, ModelRoundTripSpherical)
{
    fgmm_model *m = make_model(2, 5, FGMM_COV_SPHERICAL), *back = nullptr;
    // No iterations yet: final_log_likelihood is null; trailing '/' is fine.
    fgmm_model *fresh;
    ASSERT_EQ(fgmm_model_create(2, 5, FGMM_COV_SPHERICAL, &fresh, &err), FGMM_OK);
    ASSERT_EQ(fgmm_model_save(m, (path("sph") + "/").c_str(), &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_model_load(path("sph").c_str(), &back, &err), FGMM_OK) << err.msg;
    expect_same_model(m, back);
    EXPECT_NE(read_text(path("sph/variances.npy")).find("'shape': (2,), }"), std::string::npos);
    EXPECT_NE(read_text(path("sph/model.json")).find("\"covariance\": \"spherical\""),
              std::string::npos);
    ASSERT_EQ(fgmm_model_save(fresh, path("fresh").c_str(), &err), FGMM_OK) << err.msg;
    EXPECT_NE(read_text(path("fresh/model.json")).find("\"final_log_likelihood\": null"),
              std::string::npos);
    EXPECT_NE(read_text(path("fresh/model.json")).find("\"log_likelihood\": []"),
              std::string::npos);
    fgmm_model *fb;
    ASSERT_EQ(fgmm_model_load(path("fresh").c_str(), &fb, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_model_loglik_count(fb), 0);
    EXPECT_EQ(tmp_leftovers(), 0);
    fgmm_model_free(fb);
    fgmm_model_free(fresh);
    fgmm_model_free(m);
    fgmm_model_free(back);
}

TEST_F(Io, SaveOntoExistingDirFailsAndLeavesItAlone)
{
    fgmm_model *m = make_model(2, 3, FGMM_COV_DIAG);
    std::string md = path("taken");
    mkdir(md.c_str(), 0755);
    write_text(md + "/keep.txt", "mine");
    EXPECT_EQ(fgmm_model_save(m, md.c_str(), &err), FGMM_ERR_EXISTS);
    EXPECT_NE(std::string(err.msg).find("taken: already exists; choose another directory or remove it"),
              std::string::npos)
        << err.msg;
    EXPECT_EQ(read_text(md + "/keep.txt"), "mine");
    EXPECT_FALSE(fgmm_path_exists((md + "/model.json").c_str()));
    // An empty directory and a plain file count as existing too.
    mkdir(path("empty").c_str(), 0755);
    EXPECT_EQ(fgmm_model_save(m, path("empty").c_str(), &err), FGMM_ERR_EXISTS);
    write_text(path("file"), "x");
    EXPECT_EQ(fgmm_model_save(m, path("file").c_str(), &err), FGMM_ERR_EXISTS);
    EXPECT_EQ(read_text(path("file")), "x");
    EXPECT_EQ(tmp_leftovers(), 0);
    fgmm_model_free(m);
}

TEST_F(Io, SaveFailuresLeaveNoTemporaries)
{
    fgmm_model *m = make_model(3, 100, FGMM_COV_DIAG);
    EXPECT_EQ(fgmm_model_save(m, path("no/such/parent").c_str(), &err), FGMM_ERR_IO);
    EXPECT_NE(std::string(err.msg).find("no/such/parent"), std::string::npos) << err.msg;
    // Fail half-way: weights.npy (152 bytes) fits under the limit, means.npy
    // (1328 bytes) does not.
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1000;
    signal(SIGXFSZ, SIG_IGN);
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fgmm_status st = fgmm_model_save(m, path("m").c_str(), &err);
    setrlimit(RLIMIT_FSIZE, &old);
    EXPECT_EQ(st, FGMM_ERR_IO);
    EXPECT_NE(std::string(err.msg).find("means.npy"), std::string::npos) << err.msg;
    EXPECT_FALSE(fgmm_path_exists(path("m").c_str()));
    EXPECT_EQ(tmp_leftovers(), 0);
    fgmm_model_free(m);
}

class IoModel : public Io {
  protected:
    std::string md;
    void SetUp() override
    {
        Io::SetUp();
        fgmm_model *m = make_model(3, 4, FGMM_COV_DIAG);
        md = path("m");
        ASSERT_EQ(fgmm_model_save(m, md.c_str(), &err), FGMM_OK) << err.msg;
        fgmm_model_free(m);
    }
    void set_json(const std::string &from, const std::string &to)
    {
        std::string js = read_text(md + "/model.json");
        size_t at = js.find(from);
        ASSERT_NE(at, std::string::npos) << from;
        js.replace(at, from.size(), to);
        write_text(md + "/model.json", js);
    }
    void expect_load_fails(fgmm_status code, const std::vector<std::string> &needles)
    {
        fgmm_model *m = nullptr;
        EXPECT_EQ(fgmm_model_load(md.c_str(), &m, &err), code) << err.msg;
        EXPECT_EQ(m, nullptr);
        EXPECT_EQ(strchr(err.msg, '\n'), nullptr);
        for (const std::string &nd : needles)
            EXPECT_NE(std::string(err.msg).find(nd), std::string::npos)
                << "'" << nd << "' not in: " << err.msg;
    }
};

TEST_F(IoModel, CorruptJson)
{
    set_json("\"d\": 4,", "\"d\": 4");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "line 6", "'}' expected"});
}

TEST_F(IoModel, TruncatedJson)
{
    std::string js = read_text(md + "/model.json");
    write_text(md + "/model.json", js.substr(0, js.size() / 2));
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "line"});
}

TEST_F(IoModel, JsonEscapesAreDecoded)
{
    set_json("\"init\": \"kmeans++\"", "\"init\": \"a\\u00e9\\ud83d\\ude00\\/\\\"\"");
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_load(md.c_str(), &m, &err), FGMM_OK) << err.msg;
    EXPECT_STREQ(fgmm_model_meta_c(m)->init, "a\xc3\xa9\xf0\x9f\x98\x80/\"");
    fgmm_model_free(m);
}

TEST_F(IoModel, BadEscape)
{
    set_json("\"init\": \"kmeans++\"", "\"init\": \"a\\q\"");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "line 21", "escape"});
}

TEST_F(IoModel, WrongFormatOrVersion)
{
    set_json("\"flashgmm-model\"", "\"something-else\"");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "\"format\"", "something-else",
                                        "flashgmm-model"});
    set_json("\"something-else\"", "\"flashgmm-model\"");
    set_json("\"version\": 1", "\"version\": 2");
    expect_load_fails(FGMM_ERR_UNSUPPORTED, {"m/model.json", "version 2"});
}

TEST_F(IoModel, BadKeys)
{
    set_json("\"k\": 3", "\"k\": -3");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "\"k\"", "-3"});
    set_json("\"k\": -3", "\"kk\": 3");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "missing key \"k\""});
    set_json("\"kk\": 3", "\"k\": 3");
    set_json("\"covariance\": \"diag\"", "\"covariance\": \"blocky\"");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "blocky"});
    set_json("\"covariance\": \"blocky\"", "\"covariance\": \"diag\"");
    set_json("\"converged\": true", "\"converged\": \"yes\"");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "\"converged\"", "boolean"});
}

// Seeds are uint64; jansson's integers are int64. Seeds up to 2^63-1 are
// JSON integers, larger ones decimal strings; a bare integer above 2^63-1
// (how such seeds were written before) still reads exactly.
TEST_F(IoModel, SeedEncodings)
{
    // make_model's seed is 2^64-1, saved as a string.
    std::string cur = "\"seed\": \"18446744073709551615\"";
    for (const char *bare : {"18446744073709551615", "9223372036854775808"}) {
        std::string next = std::string("\"seed\": ") + bare;
        set_json(cur, next);
        cur = next;
        fgmm_model *m = nullptr;
        ASSERT_EQ(fgmm_model_load(md.c_str(), &m, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_model_meta_c(m)->seed, strtoull(bare, nullptr, 10)) << bare;
        fgmm_model_free(m);
    }
    set_json(cur, "\"seed\": \"9223372036854775808\"");
    fgmm_model *m = nullptr;
    ASSERT_EQ(fgmm_model_load(md.c_str(), &m, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_model_meta_c(m)->seed, 9223372036854775808ull);
    // Saved again below 2^63: a JSON integer.
    fgmm_model_meta_get(m)->seed = 9223372036854775807ull;
    ASSERT_EQ(fgmm_model_save(m, path("m2").c_str(), &err), FGMM_OK) << err.msg;
    EXPECT_NE(read_text(path("m2/model.json")).find("\n  \"seed\": 9223372036854775807,\n"),
              std::string::npos);
    fgmm_model_free(m);
    set_json("\"seed\": \"9223372036854775808\"", "\"seed\": -1");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "\"seed\" is -1"});
    set_json("\"seed\": -1", "\"seed\": \"12x\"");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "\"seed\" is \"12x\"", "decimal digits"});
    set_json("\"seed\": \"12x\"", "\"seed\": 18446744073709551616");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "too big integer"});
    set_json("\"seed\": 18446744073709551616", "\"seed\": -18446744073709551615");
    expect_load_fails(FGMM_ERR_FORMAT, {"m/model.json", "too big negative integer"});
}

TEST_F(IoModel, WrongShapes)
{
    std::vector<double> mu(3 * 8, 0.0);
    int64_t sh[2] = {3, 8};
    unlink((md + "/means.npy").c_str());
    ASSERT_EQ(fgmm_npy_write((md + "/means.npy").c_str(), FGMM_NPY_F32, mu.data(), 2, sh, &err),
              FGMM_OK);
    expect_load_fails(FGMM_ERR_FORMAT,
                      {"m/means.npy: shape (3, 8), expected (3, 4) from model.json"});
    std::vector<double> w(4, 0.25);
    int64_t sw[1] = {4};
    ASSERT_EQ(fgmm_npy_write((md + "/weights.npy").c_str(), FGMM_NPY_F64, w.data(), 1, sw, &err),
              FGMM_OK);
    expect_load_fails(FGMM_ERR_FORMAT,
                      {"m/weights.npy: shape (4,), expected (3,) from model.json"});
}

TEST_F(IoModel, MissingFile)
{
    unlink((md + "/variances.npy").c_str());
    expect_load_fails(FGMM_ERR_IO, {"m/variances.npy", "No such file"});
    unlink((md + "/model.json").c_str());
    expect_load_fails(FGMM_ERR_IO, {"m/model.json", "No such file"});
    EXPECT_FALSE(fgmm_is_model_dir(md.c_str()));
}

TEST_F(IoModel, InvalidValuesFailValidation)
{
    std::vector<double> w = {0.5, 0.5, 0.5};
    int64_t sw[1] = {3};
    ASSERT_EQ(fgmm_npy_write((md + "/weights.npy").c_str(), FGMM_NPY_F64, w.data(), 1, sw, &err),
              FGMM_OK);
    expect_load_fails(FGMM_ERR_DATA, {"m", "weights sum"});
}

} // namespace
