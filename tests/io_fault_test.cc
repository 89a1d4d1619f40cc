// io_fault_test.cc - a full disk at every step of every write io/ makes:
// the write, the fsync and the rename of shard files, the manifest, the
// conversion journal, .npy arrays, model directories and assignment
// shards. Each must be a
// clear error naming the file and saying the disk is full, and must leave
// no partial output: no half file under a final name, no temporary file,
// and for a conversion, a state that the same call completes later.
//
// The failures are injected by interposition: this binary defines pwrite,
// fsync, rename and renameat2, which io/'s calls resolve to, and they pass
// through to the C library's unless a fault is armed for a file whose name
// contains a given part.
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "io/fgmm_io.h"

namespace {

enum Op { NONE, PWRITE, FSYNC, RENAME };

struct Fault {
    Op op = NONE;
    std::string part; // fails calls on files whose path contains this
    bool suffix;      // ... or ends with it
    int hits = 0;     // calls failed so far
} g_fault;

bool path_matches(const char *p)
{
    const std::string &q = g_fault.part;
    size_t n = strlen(p);
    if (g_fault.suffix) return n >= q.size() && q == p + (n - q.size());
    return strstr(p, q.c_str()) != nullptr;
}

bool fd_matches(int fd)
{
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return false;
    target[n] = '\0';
    return path_matches(target);
}

bool inject(Op op, bool matches)
{
    if (g_fault.op != op || !matches) return false;
    g_fault.hits++;
    errno = ENOSPC;
    return true;
}

template <typename F> F real(const char *name)
{
    return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" {

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    static auto f = real<ssize_t (*)(int, const void *, size_t, off_t)>("pwrite");
    if (inject(PWRITE, g_fault.op == PWRITE && fd_matches(fd))) return -1;
    return f(fd, buf, n, off);
}

int fsync(int fd)
{
    static auto f = real<int (*)(int)>("fsync");
    if (inject(FSYNC, g_fault.op == FSYNC && fd_matches(fd))) return -1;
    return f(fd);
}

int rename(const char *from, const char *to)
{
    static auto f = real<int (*)(const char *, const char *)>("rename");
    if (inject(RENAME, g_fault.op == RENAME && path_matches(from))) return -1;
    return f(from, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned flags)
{
    static auto f = real<int (*)(int, const char *, int, const char *, unsigned)>("renameat2");
    if (inject(RENAME, g_fault.op == RENAME && path_matches(from))) return -1;
    return f(fromfd, from, tofd, to, flags);
}

} // extern "C"

namespace {

struct Armed {
    Armed(Op op, const std::string &part, bool suffix = false)
    {
        g_fault.op = op;
        g_fault.part = part;
        g_fault.suffix = suffix;
        g_fault.hits = 0;
    }
    ~Armed() { g_fault.op = NONE; }
};

const char *op_name(Op op)
{
    return op == PWRITE ? "write" : op == FSYNC ? "fsync" : "rename";
}

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

bool exists(const std::string &p)
{
    struct stat sb;
    return lstat(p.c_str(), &sb) == 0;
}

std::vector<std::string> listing(const std::string &dir)
{
    std::vector<std::string> v;
    std::string cmd = "ls -a " + dir + " 2>/dev/null";
    FILE *p = popen(cmd.c_str(), "r");
    char line[512];
    while (p && fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, ".") && strcmp(line, "..")) v.push_back(line);
    }
    if (p) pclose(p);
    return v;
}

int temporaries(const std::string &dir)
{
    int n = 0;
    for (const std::string &f : listing(dir))
        if (f.find(".tmp") != std::string::npos) n++;
    return n;
}

std::string read_all(const std::string &p)
{
    std::string s;
    FILE *f = fopen(p.c_str(), "rb");
    if (!f) return s;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

// 3000 rows of 8 float32 values, a deterministic pattern.
std::string make_input()
{
    std::string p = fresh("in") + ".fbin";
    uint32_t n = 3000, d = 8;
    std::vector<float> v((size_t)n * d);
    for (size_t i = 0; i < v.size(); i++) v[i] = (float)((i * 2654435761u) % 1000) / 7.0f;
    FILE *f = fopen(p.c_str(), "wb");
    fwrite(&n, 4, 1, f);
    fwrite(&d, 4, 1, f);
    fwrite(v.data(), 4, v.size(), f);
    fclose(f);
    return p;
}

fgmm_status convert(const std::string &in, const std::string &out, fgmm_error *err,
                    fgmm_shard_write_result *res)
{
    fgmm_shard_write_options o;
    fgmm_shard_write_options_default(&o);
    o.rows_per_chunk = 100;
    o.chunks_per_shard = 5; // 6 shards
    o.threads = 2;
    const char *p = in.c_str();
    return fgmm_shard_convert(&p, 1, out.c_str(), &o, res, err);
}

void expect_disk_full(const fgmm_error &err, const std::string &names)
{
    EXPECT_EQ(err.code, FGMM_ERR_IO) << err.msg;
    EXPECT_NE(strstr(err.msg, names.c_str()), nullptr) << names << " not in: " << err.msg;
    EXPECT_NE(strstr(err.msg, "No space left on device (disk full)"), nullptr) << err.msg;
    EXPECT_EQ(strchr(err.msg, '\n'), nullptr);
}

// A shard, the manifest: every step of writing them fails once, and the
// same conversion run again completes to the bytes of one that never
// failed.
TEST(DiskFull, ShardConversionAtEveryStep)
{
    std::string in = make_input(), clean = fresh("clean");
    fgmm_error err = {};
    fgmm_shard_write_result res;
    ASSERT_EQ(convert(in, clean, &err, &res), FGMM_OK) << err.msg;
    for (const char *file : {"shard-00002.fgs.tmp", "manifest.json.tmp"}) {
        for (Op op : {PWRITE, FSYNC, RENAME}) {
            SCOPED_TRACE(std::string(op_name(op)) + " of " + file);
            std::string out = fresh("out");
            fgmm_status st;
            {
                Armed a(op, file);
                st = convert(in, out, &err, &res);
                EXPECT_EQ(g_fault.hits, 1);
            }
            EXPECT_EQ(st, FGMM_ERR_IO);
            expect_disk_full(err, file);
            EXPECT_FALSE(exists(out + "/manifest.json"));
            EXPECT_EQ(temporaries(out), 0);
            EXPECT_FALSE(exists(out + "/shard-00002.fgs") && strstr(file, "shard"));
            fgmm_source *s = nullptr;
            EXPECT_NE(fgmm_shards_open(out.c_str(), nullptr, &s, &err), FGMM_OK);
            ASSERT_EQ(convert(in, out, &err, &res), FGMM_OK) << err.msg;
            EXPECT_EQ(res.shards_resumed, strstr(file, "shard") ? 2 : 6);
            EXPECT_EQ(listing(out), listing(clean));
            for (const std::string &f : listing(clean))
                EXPECT_EQ(read_all(out + "/" + f), read_all(clean + "/" + f)) << f;
        }
    }
}

// The journal is the first thing written: failing it leaves nothing at all.
TEST(DiskFull, ConversionJournal)
{
    std::string in = make_input();
    for (Op op : {PWRITE, FSYNC, RENAME}) {
        SCOPED_TRACE(op_name(op));
        std::string out = fresh("jout");
        fgmm_error err = {};
        fgmm_shard_write_result res;
        fgmm_status st;
        {
            Armed a(op, ".conversion.json.tmp");
            st = convert(in, out, &err, &res);
            EXPECT_EQ(g_fault.hits, 1);
        }
        EXPECT_EQ(st, FGMM_ERR_IO);
        expect_disk_full(err, ".conversion.json");
        EXPECT_FALSE(exists(out));
    }
}

fgmm_model *make_model()
{
    fgmm_model *m = nullptr;
    fgmm_error e;
    EXPECT_EQ(fgmm_model_create(3, 4, FGMM_COV_DIAG, &m, &e), FGMM_OK);
    for (int i = 0; i < 3; i++) fgmm_model_weights(m)[i] = 1.0 / 3;
    for (int i = 0; i < 12; i++) {
        fgmm_model_means(m)[i] = i;
        fgmm_model_variances(m)[i] = 1.0 + i;
    }
    return m;
}

// Every file of a model directory, and the rename of the directory itself.
TEST(DiskFull, ModelSaveAtEveryStep)
{
    fgmm_model *m = make_model();
    struct Case {
        Op op;
        const char *part;
    } cases[] = {{PWRITE, "means.npy"},       {FSYNC, "weights.npy"},
                 {RENAME, "variances.npy"},   {PWRITE, "model.json"},
                 {FSYNC, "model.json"},       {RENAME, "model.json"},
                 {RENAME, nullptr}}; // the directory itself
    for (const Case &c : cases) {
        std::string parent = fresh("parent");
        ASSERT_EQ(mkdir(parent.c_str(), 0755), 0);
        std::string base = "mdir_" + std::to_string(g_counter), dir = parent + "/" + base;
        // The directory is built as the hidden .base.tmp.<pid>, the files
        // inside it as name.tmp.<pid>: only the directory's own name ends so.
        std::string part =
            c.part ? c.part : parent + "/." + base + ".tmp." + std::to_string(getpid());
        SCOPED_TRACE(std::string(op_name(c.op)) + " of " + part);
        fgmm_error err = {};
        fgmm_status st;
        {
            Armed a(c.op, part, c.part == nullptr);
            st = fgmm_model_save(m, dir.c_str(), &err);
            EXPECT_EQ(g_fault.hits, 1);
        }
        EXPECT_EQ(st, FGMM_ERR_IO);
        expect_disk_full(err, part);
        EXPECT_FALSE(exists(dir));
        EXPECT_EQ(listing(parent), std::vector<std::string>{});
        ASSERT_EQ(fgmm_model_save(m, dir.c_str(), &err), FGMM_OK) << err.msg;
        fgmm_model *back = nullptr;
        ASSERT_EQ(fgmm_model_load(dir.c_str(), &back, &err), FGMM_OK) << err.msg;
        EXPECT_EQ(fgmm_model_means_c(back)[11], 11.0);
        fgmm_model_free(back);
    }
    fgmm_model_free(m);
}

// An assignment directory whose second shard cannot be written: the
// writer thread fails while the engine is still delivering rows. The error
// names the shard and says the disk is full, nothing is left, and the same
// call then completes.
TEST(DiskFull, AssignmentShardWhileRowsArrive)
{
    fgmm_model *m = make_model();
    const int64_t n = 300000;
    std::vector<float> x((size_t)n * 4);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)((i * 2654435761u) % 1000) / 80.0f;
    fgmm_error err = {};
    fgmm_source *src = nullptr;
    fgmm_engine *e = nullptr;
    ASSERT_EQ(fgmm_source_memory_chunked(x.data(), FGMM_F32, n, 4, 10000, "mem", &src, &err),
              FGMM_OK);
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
    fgmm_assign_options o;
    fgmm_assign_options_default(&o);
    o.shard_rows = 50000; // six shards, the second from row 50000
    std::string parent = fresh("parent");
    ASSERT_EQ(mkdir(parent.c_str(), 0755), 0);
    std::string dir = parent + "/lists", part = "assign-000000050000.fga";
    fgmm_status st;
    {
        Armed a(PWRITE, part);
        st = fgmm_assignments_write(e, src, m, &o, dir.c_str(), nullptr, &err);
        EXPECT_EQ(g_fault.hits, 1);
    }
    EXPECT_EQ(st, FGMM_ERR_IO);
    expect_disk_full(err, part);
    EXPECT_FALSE(exists(dir));
    EXPECT_EQ(listing(parent), std::vector<std::string>{});
    fgmm_assign_summary sum;
    ASSERT_EQ(fgmm_assignments_write(e, src, m, &o, dir.c_str(), &sum, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(sum.rows, n);
    EXPECT_EQ(sum.shards, 6);
    fgmm_engine_free(e);
    fgmm_source_close(src);
    fgmm_model_free(m);
}

// An .npy written over an existing one: the old file stays as it was.
TEST(DiskFull, NpyOverwriteKeepsTheOldFile)
{
    std::vector<double> v(100, 2.5);
    int64_t shape[1] = {100};
    for (Op op : {PWRITE, FSYNC, RENAME}) {
        SCOPED_TRACE(op_name(op));
        std::string dir = fresh("npy");
        ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
        std::string p = dir + "/a.npy";
        fgmm_error err = {};
        ASSERT_EQ(fgmm_npy_write(p.c_str(), FGMM_NPY_F64, v.data(), 1, shape, &err), FGMM_OK);
        std::string before = read_all(p);
        std::vector<double> w(50, -1.0);
        int64_t s2[1] = {50};
        fgmm_status st;
        {
            Armed a(op, "a.npy.tmp");
            st = fgmm_npy_write(p.c_str(), FGMM_NPY_F32, w.data(), 1, s2, &err);
            EXPECT_EQ(g_fault.hits, 1);
        }
        EXPECT_EQ(st, FGMM_ERR_IO);
        expect_disk_full(err, "a.npy");
        EXPECT_EQ(read_all(p), before);
        EXPECT_EQ(listing(dir), std::vector<std::string>{"a.npy"});
    }
}

} // namespace
