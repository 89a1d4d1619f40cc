// cli_test.cc - the flashgmm binary end to end: a fit that numpy can read,
// one exact E+M step from a model, every bad input giving one clear line
// and a non-zero exit with nothing left behind, a fit killed at any moment
// leaving no model, and fits that repeat bit for bit.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/fgmm.h"
#include "tests/cli_run.h"
#include "core/synthetic.h"

namespace {

std::string g_dir;


std::string path(const char *name) { return g_dir + "/" + name; }

void write_file(const std::string &p, const void *data, size_t n)
{
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fwrite(data, 1, n, f);
    fclose(f);
}

// A .fbin of n rows from three well-separated clusters.
void write_fbin(const std::string &p, uint32_t n, uint32_t d, uint64_t seed, int nan_row = -1)
{
    std::vector<unsigned char> buf(8 + (size_t)n * d * 4);
    memcpy(&buf[0], &n, 4);
    memcpy(&buf[4], &d, 4);
    fgmm_rng r;
    fgmm_rng_seed(&r, seed);
    float *x = (float *)&buf[8];
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++)
            x[(size_t)i * d + j] = (float)(10.0 * (i % 3) + fgmm_rng_normal(&r));
    if (nan_row >= 0) x[(size_t)nan_row * d] = NAN;
    write_file(p, buf.data(), buf.size());
}

bool exists(const std::string &p)
{
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

int count_tmp_leftovers()
{
    int n = 0;
    DIR *d = opendir(g_dir.c_str());
    while (struct dirent *e = readdir(d))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

class Cli : public ::testing::Test {
  protected:
    static void SetUpTestSuite()
    {
        const char *t = getenv("TEST_TMPDIR");
        char tmpl[] = "/tmp/fgmm_cli_XXXXXX";
        g_dir = t ? std::string(t) + "/cli" : std::string(mkdtemp(tmpl));
        mkdir(g_dir.c_str(), 0755);
        write_fbin(path("good.fbin"), 3000, 4, 1);
        write_fbin(path("d5.fbin"), 100, 5, 2);
        write_fbin(path("nan.fbin"), 500, 4, 3, 321);
    }
    void expect_fail(const std::string &args, int code, const std::string &needle)
    {
        Result r = run(args);
        EXPECT_EQ(r.code, code) << args << "\n" << r.out;
        EXPECT_NE(r.out.find(needle), std::string::npos)
            << "flashgmm " << args << "\nprinted: " << r.out << "\nexpected: " << needle;
        // The message is one line of its own, starting with the program's name.
        size_t at = r.out.find(needle);
        if (at != std::string::npos) {
            size_t bol = r.out.rfind('\n', at);
            bol = bol == std::string::npos ? 0 : bol + 1;
            EXPECT_EQ(r.out.compare(bol, 8, "flashgmm"), 0) << r.out;
        }
    }
};

TEST_F(Cli, FitVerboseSaysWhereEachStepsTimeWent)
{
    Result r = run("fit --verbose --device cpu --data " + path("good.fbin") +
                   " --k 3 --max-iter 2 --tol 0 --out " + path("mv"));
    ASSERT_EQ(r.code, 0) << r.out;
    size_t lines = 0;
    for (size_t at = r.out.find("iter "); at != std::string::npos;
         at = r.out.find("iter ", at + 1)) {
        const size_t eol = r.out.find('\n', at);
        const std::string line = r.out.substr(at, eol - at);
        EXPECT_NE(line.find("[setup "), std::string::npos) << line;
        EXPECT_NE(line.find(", M-step "), std::string::npos) << line;
        lines++;
    }
    EXPECT_EQ(lines, 2u) << r.out;
    const size_t wall = r.out.find("wall time: ");
    ASSERT_NE(wall, std::string::npos) << r.out;
    EXPECT_NE(r.out.find("s writing the model, ", wall), std::string::npos) << r.out;
    /* --quiet wins over --verbose. */
    Result q = run("fit --quiet --verbose --device cpu --data " + path("good.fbin") +
                   " --k 3 --max-iter 2 --out " + path("mq"));
    ASSERT_EQ(q.code, 0) << q.out;
    EXPECT_EQ(q.out.find("[setup "), std::string::npos) << q.out;
    EXPECT_EQ(q.out.find("wall time: "), std::string::npos) << q.out;
}

TEST_F(Cli, FitWritesAModelNumpyReads)
{
    Result r = run("fit --quiet --data " + path("good.fbin") + " --k 3 --out " + path("m1"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("fitted K=3"), std::string::npos) << r.out;
    std::string py = "/usr/bin/python3 -c \"import numpy as np, json; d='" + path("m1") +
                     "'; w=np.load(d+'/weights.npy'); m=np.load(d+'/means.npy'); "
                     "v=np.load(d+'/variances.npy'); j=json.load(open(d+'/model.json')); "
                     "assert w.shape==(3,) and m.shape==(3,4) and v.shape==(3,4), (w.shape, m.shape); "
                     "assert m.dtype==np.float32 and abs(w.sum()-1)<1e-6; "
                     "assert j['k']==3 and j['d']==4 and j['covariance']=='diag'; "
                     "assert sorted(np.round(m[:,0]/10).astype(int).tolist())==[0,1,2], m; print('ok')\"";
    EXPECT_EQ(system(py.c_str()), 0);
    Result info = run("info " + path("m1"));
    EXPECT_EQ(info.code, 0);
    EXPECT_NE(info.out.find("components K     3"), std::string::npos) << info.out;
    Result s = run("score --model " + path("m1") + " --data " + path("good.fbin") +
                   " --per-row " + path("ll.npy"));
    EXPECT_EQ(s.code, 0) << s.out;
    EXPECT_NE(s.out.find("mean log-likelihood per row: -"), std::string::npos) << s.out;
    EXPECT_TRUE(exists(path("ll.npy")));
}

TEST_F(Cli, InitFromModelWithOneIterationIsOneEStepAndOneMStep)
{
    ASSERT_EQ(run("fit --quiet --data " + path("good.fbin") + " --k 3 --max-iter 2 --out " +
                  path("m2")).code, 0);
    Result r = run("fit --quiet --data " + path("good.fbin") + " --init " + path("m2") +
                   " --max-iter 1 --out " + path("m3"));
    ASSERT_EQ(r.code, 0) << r.out;
    // The E-step ran under m2: its log-likelihood equals score(m2).
    Result s = run("score --model " + path("m2") + " --data " + path("good.fbin"));
    double ll_score = atof(s.out.substr(s.out.find(": ") + 2).c_str());
    std::string py = "/usr/bin/python3 -c \"import json; j=json.load(open('" + path("m3") +
                     "/model.json')); assert j['iterations']==1 and len(j['log_likelihood'])==1; "
                     "print(repr(j['log_likelihood'][0]))\"";
    FILE *p = popen(py.c_str(), "r");
    double ll = NAN;
    ASSERT_EQ(fscanf(p, "%lf", &ll), 1);
    EXPECT_EQ(pclose(p), 0);
    EXPECT_NEAR(ll, ll_score, 1e-7 * std::fabs(ll_score));
}

TEST_F(Cli, MissingFile) { expect_fail("fit --data " + path("nope.fbin") + " --k 2 --out " + path("x"), 1, "nope.fbin"); }

TEST_F(Cli, UnknownExtension)
{
    write_file(path("data.csv"), "1,2\n", 4);
    expect_fail("fit --data " + path("data.csv") + " --k 2 --out " + path("x"), 2, "data.csv");
}

TEST_F(Cli, TruncatedFile)
{
    uint32_t hdr[2] = {1000, 16};
    std::vector<unsigned char> b(8 + 6000);
    memcpy(b.data(), hdr, 8);
    write_file(path("trunc.fbin"), b.data(), b.size());
    expect_fail("fit --data " + path("trunc.fbin") + " --k 2 --out " + path("x"), 1, "trunc.fbin");
}

TEST_F(Cli, InconsistentFvecsDimension)
{
    std::vector<unsigned char> b;
    auto row = [&](int32_t d) {
        b.insert(b.end(), (unsigned char *)&d, (unsigned char *)&d + 4);
        for (int j = 0; j < d; j++) {
            float v = (float)j;
            b.insert(b.end(), (unsigned char *)&v, (unsigned char *)&v + 4);
        }
    };
    for (int i = 0; i < 5; i++) row(4);
    row(3);  // row 5 is short: 4 + 12 bytes
    row(5);  // and this one long, so the total stays a multiple of the row size
    for (int i = 0; i < 3; i++) row(4);
    write_file(path("bad.fvecs"), b.data(), b.size());
    expect_fail("fit --data " + path("bad.fvecs") + " --k 2 --out " + path("x"), 1, "row 5");
}

TEST_F(Cli, NaNNamesTheRow)
{
    expect_fail("fit --data " + path("nan.fbin") + " --k 2 --out " + path("x"), 1, "row 321");
    EXPECT_FALSE(exists(path("x")));
    EXPECT_EQ(count_tmp_leftovers(), 0);
}

TEST_F(Cli, KOutOfRange)
{
    expect_fail("fit --data " + path("good.fbin") + " --k 0 --out " + path("x"), 2, "--k must be > 0");
    expect_fail("fit --data " + path("good.fbin") + " --k 3001 --out " + path("x"), 2,
                "exceeds the 3000 rows");
    EXPECT_FALSE(exists(path("x")));
}

TEST_F(Cli, ModelAndDataDimensionsDisagree)
{
    ASSERT_EQ(run("fit --quiet --data " + path("good.fbin") + " --k 2 --max-iter 1 --out " +
                  path("m4")).code, 0);
    expect_fail("fit --data " + path("d5.fbin") + " --init " + path("m4") + " --out " + path("x"), 1,
                "D=4");
    expect_fail("score --model " + path("m4") + " --data " + path("d5.fbin"), 1, "dimension 5");
}

TEST_F(Cli, OutputThatExistsIsRefusedAndUntouched)
{
    mkdir(path("taken").c_str(), 0755);
    write_file(path("taken/keep.txt"), "mine", 4);
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --out " + path("taken"), 1, "already exists");
    EXPECT_TRUE(exists(path("taken/keep.txt")));
    EXPECT_FALSE(exists(path("taken/model.json")));
}

TEST_F(Cli, UsageErrors)
{
    expect_fail("fit --data " + path("good.fbin") + " --k 2", 2, "--out are required");
    expect_fail("fit --bogus 1", 2, "unknown flag '--bogus'");
    expect_fail("fit --data " + path("good.fbin") + " --k two --out " + path("x"), 2, "--k expects an integer");
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --covariance full2 --out " + path("x"), 2,
                "unknown covariance 'full2'");
    expect_fail("frobnicate", 2, "unknown command 'frobnicate'");
    EXPECT_EQ(run("fit --help").code, 0);
    EXPECT_EQ(run("score --help").code, 0);
    EXPECT_EQ(run("demo --help").code, 0);
    EXPECT_EQ(run("info --help").code, 0);
}

TEST_F(Cli, AssignThenExport)
{
    ASSERT_EQ(run("fit --quiet --data " + path("good.fbin") + " --k 3 --max-iter 3 --out " +
                  path("am")).code, 0);
    Result r = run("assign --model " + path("am") + " --data " + path("good.fbin") + " --out " +
                   path("asg") + " --max-lists 3 --temperature 50 --min-resp 0.05 --budget 0.1");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("assigned 3000 rows to 3 lists"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("capped at 300"), std::string::npos) << r.out;
    EXPECT_TRUE(exists(path("asg/manifest.json")));
    EXPECT_TRUE(exists(path("asg/assign-000000000000.fga")));
    r = run("info " + path("asg") + " --verify");
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("verified"), std::string::npos) << r.out;
    r = run("export --assignments " + path("asg") + " --model " + path("am") + " --out " +
            path("asg_npy"));
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char *f : {"primary.npy", "offsets.npy", "lists.npy", "weights.npy", "loglik.npy",
                          "means.npy"})
        EXPECT_TRUE(exists(path("asg_npy/") + f)) << f;
    EXPECT_EQ(count_tmp_leftovers(), 0);

    // Bad values, an existing output, another dimension, a damaged shard.
    const std::string base = "assign --model " + path("am") + " --data " + path("good.fbin") +
                             " --out " + path("asg2");
    expect_fail(base + " --min-resp 0", 2, "--min-resp expects a number in (0, 1]");
    expect_fail(base + " --ratio 1.5", 2, "--ratio expects a number in [0, 1]");
    expect_fail(base + " --temperature 0", 2, "--temperature expects a number > 0");
    expect_fail(base + " --max-lists 33", 2, "--max-lists");
    expect_fail(base + " --budget -1", 2, "--budget");
    expect_fail("assign --model " + path("am") + " --data " + path("good.fbin") + " --out " +
                    path("asg"), 1, "already exists");
    expect_fail("assign --model " + path("am") + " --data " + path("d5.fbin") + " --out " +
                    path("asg2"), 1, "dimension 5");
    EXPECT_FALSE(exists(path("asg2")));
    {
        int fd = open(path("asg/assign-000000000000.fga").c_str(), O_RDWR);
        ASSERT_GE(fd, 0);
        struct stat sb;
        fstat(fd, &sb);
        unsigned char b;
        ASSERT_EQ(pread(fd, &b, 1, sb.st_size - 5), 1);
        b ^= 1;
        ASSERT_EQ(pwrite(fd, &b, 1, sb.st_size - 5), 1);
        close(fd);
    }
    expect_fail("export --assignments " + path("asg") + " --out " + path("asg_npy2"), 1,
                "assign-000000000000.fga: checksum mismatch");
    expect_fail("info --verify " + path("asg"), 1, "assign-000000000000.fga: checksum mismatch");
    EXPECT_FALSE(exists(path("asg_npy2")));
    EXPECT_EQ(count_tmp_leftovers(), 0);
    EXPECT_EQ(run("assign --help").code, 0);
    EXPECT_EQ(run("export --help").code, 0);
}


TEST_F(Cli, FitAssignOutEqualsAssignAfterwards)
{
    Result r = run("fit --quiet --data " + path("good.fbin") + " --k 3 --max-iter 3 --out " +
                   path("fam") + " --assign-out " + path("fasg") + " --max-lists 2");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("assigned 3000 rows"), std::string::npos) << r.out;
    ASSERT_EQ(run("assign --model " + path("fam") + " --data " + path("good.fbin") +
                  " --max-lists 2 --out " + path("fasg2")).code, 0);
    ASSERT_EQ(run("export --assignments " + path("fasg") + " --out " + path("fnpy")).code, 0);
    ASSERT_EQ(run("export --assignments " + path("fasg2") + " --out " + path("fnpy2")).code, 0);
    std::string a = read_all(path("fnpy/primary.npy")), b = read_all(path("fnpy2/primary.npy"));
    EXPECT_GT(a.size(), 3000u * 4);
    EXPECT_EQ(a, b);
    expect_fail("fit --data " + path("good.fbin") + " --k 3 --out " + path("fam2") +
                    " --max-lists 2", 2, "need --assign-out");
    expect_fail("fit --data " + path("good.fbin") + " --k 3 --out " + path("fam2") +
                    " --assign-out " + path("fasg"), 1, "already exists");
    EXPECT_FALSE(exists(path("fam2")));
}

TEST_F(Cli, ShardThenFitAndScoreFromShards)
{
    Result r = run("shard --input " + path("good.fbin") + " --out " + path("sh") +
                   " --rows-per-chunk 256 --chunks-per-shard 3");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("3000 rows in 4 shards"), std::string::npos) << r.out;
    Result info = run("info " + path("sh") + " --verify");
    EXPECT_EQ(info.code, 0) << info.out;
    EXPECT_NE(info.out.find("chunks           12 (256 rows each)"), std::string::npos) << info.out;
    EXPECT_NE(info.out.find("verified         all 12 chunks"), std::string::npos) << info.out;
    Result a = run("fit --quiet --data " + path("good.fbin") + " --k 3 --max-iter 4 --out " +
                   path("mf"));
    Result b = run("fit --quiet --data " + path("sh") + " --k 3 --max-iter 4 --cache-budget 0 "
                   "--queue-depth 2 --read-threads 1 --out " + path("ms"));
    ASSERT_EQ(a.code, 0) << a.out;
    ASSERT_EQ(b.code, 0) << b.out;
    // Same rows, same tiles (256-row chunks): the same printed fit.
    auto ll_of = [](const std::string &out) {
        size_t at = out.find("mean log-likelihood ");
        return at == std::string::npos ? std::string("?") : out.substr(at, 32);
    };
    EXPECT_EQ(ll_of(a.out), ll_of(b.out)) << a.out << b.out;
    Result s = run("score --model " + path("ms") + " --data " + path("sh") + " --buffered-io");
    EXPECT_EQ(s.code, 0) << s.out;
    // Running the conversion again refuses to touch the finished directory.
    expect_fail("shard --input " + path("good.fbin") + " --out " + path("sh"), 1,
                "already holds a complete shard directory");
    expect_fail("fit --data " + path("sh") + " --k 2 --cache-budget lots --out " + path("x"), 2,
                "--cache-budget expects a byte count");
    expect_fail("shard --input " + path("good.fbin") + " --out " + path("x") + " --dtype int4",
                2, "--dtype expects keep, float32 or float16");
    EXPECT_FALSE(exists(path("x")));
}

TEST_F(Cli, PrecisionFlag)
{
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --device cpu --precision fast --out " +
                    path("p1"),
                1, "--precision fast applies to --device cuda");
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --precision half --out " + path("p2"),
                2, "unknown precision 'half'; expected auto, default, fast, fp32 or fp64");
    EXPECT_FALSE(exists(path("p1")));
    Result r = run("fit --quiet --data " + path("good.fbin") + " --k 2 --max-iter 2 --device cpu "
                   "--precision fp32 --out " + path("p3"));
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("[cpu]"), std::string::npos) << r.out;
    // fp64 on the CPU: the statistics in float64 too, and the summary says so.
    r = run("fit --quiet --data " + path("good.fbin") + " --k 2 --max-iter 2 --device cpu "
            "--precision fp64 --out " + path("p4"));
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("[cpu, float64 statistics]"), std::string::npos) << r.out;
}

TEST_F(Cli, RingSlotsFlag)
{
    Result r = run("shard --input " + path("good.fbin") + " --out " + path("rs") +
                   " --rows-per-chunk 256");
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char *bad : {"1", "0", "many", "5000"})
        expect_fail("fit --data " + path("rs") + " --k 2 --ring-slots " + bad + " --out " + path("r1"), 2,
                    "--ring-slots expects an integer in [2, 4096]");
    EXPECT_FALSE(exists(path("r1")));
    // The smallest ring streams the same fit as the default one.
    Result a = run("fit --quiet --data " + path("rs") + " --k 3 --max-iter 3 --cache-budget 0 "
                   "--ring-slots 2 --out " + path("r2"));
    Result b = run("fit --quiet --data " + path("rs") + " --k 3 --max-iter 3 --cache-budget 0 "
                   "--out " + path("r3"));
    ASSERT_EQ(a.code, 0) << a.out;
    ASSERT_EQ(b.code, 0) << b.out;
    size_t at = a.out.find("mean log-likelihood "), bt = b.out.find("mean log-likelihood ");
    ASSERT_NE(at, std::string::npos) << a.out;
    ASSERT_NE(bt, std::string::npos) << b.out;
    EXPECT_EQ(a.out.substr(at, 32), b.out.substr(bt, 32));
}

// --pin-threads places the CPU engine's threads, nothing else: the same
// fit from shards as without it, and score accepts it too; it takes no
// value.
TEST_F(Cli, PinThreadsFlag)
{
    Result r = run("shard --input " + path("good.fbin") + " --out " + path("pt") +
                   " --rows-per-chunk 256");
    ASSERT_EQ(r.code, 0) << r.out;
    Result a = run("fit --quiet --device cpu --threads 2 --pin-threads --data " + path("pt") +
                   " --k 3 --max-iter 3 --cache-budget 0 --out " + path("p1"));
    Result b = run("fit --quiet --device cpu --threads 2 --data " + path("pt") +
                   " --k 3 --max-iter 3 --cache-budget 0 --out " + path("p2"));
    ASSERT_EQ(a.code, 0) << a.out;
    ASSERT_EQ(b.code, 0) << b.out;
    size_t at = a.out.find("mean log-likelihood "), bt = b.out.find("mean log-likelihood ");
    ASSERT_NE(at, std::string::npos) << a.out;
    ASSERT_NE(bt, std::string::npos) << b.out;
    EXPECT_EQ(a.out.substr(at, 32), b.out.substr(bt, 32));
    Result sc = run("score --device cpu --pin-threads --model " + path("p1") + " --data " + path("pt"));
    EXPECT_EQ(sc.code, 0) << sc.out;
    expect_fail("fit --data " + path("pt") + " --k 2 --pin-threads=no --out " + path("pn"), 2,
                "flag '--pin-threads' takes no value");
    EXPECT_FALSE(exists(path("pn")));
}

TEST_F(Cli, GpuCacheBudgetFlag)
{
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --gpu-cache-budget some --out " +
                    path("g1"),
                2, "--gpu-cache-budget expects a byte count");
    expect_fail("fit --data " + path("good.fbin") + " --k 2 --gpu-cache-budget -1 --out " +
                    path("g1"),
                2, "--gpu-cache-budget expects a byte count");
    EXPECT_FALSE(exists(path("g1")));
    // Accepted, and without effect, on the CPU engine.
    Result r = run("fit --quiet --data " + path("good.fbin") + " --k 2 --max-iter 2 --device cpu "
                   "--gpu-cache-budget 2G --out " + path("g2"));
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(exists(path("g2") + "/model.json"));
}

TEST_F(Cli, CorruptShardFailsTheFitAndWritesNothing)
{
    ASSERT_EQ(run("shard --input " + path("good.fbin") + " --out " + path("shc") +
                  " --rows-per-chunk 500 --chunks-per-shard 2").code, 0);
    // Flip a byte in the second chunk of shard 1 (chunks start at 4096-byte
    // boundaries after the 4096-byte header).
    std::string f = path("shc") + "/shard-00001.fgs";
    FILE *fp = fopen(f.c_str(), "r+b");
    ASSERT_NE(fp, nullptr);
    unsigned char idx[64];
    fseek(fp, 48, SEEK_SET);
    uint64_t index_off;
    ASSERT_EQ(fread(&index_off, 8, 1, fp), 1u);
    fseek(fp, (long)index_off + 32, SEEK_SET);
    ASSERT_EQ(fread(idx, 8, 1, fp), 1u);
    uint64_t chunk_off;
    memcpy(&chunk_off, idx, 8);
    fseek(fp, (long)chunk_off + 10, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)chunk_off + 10, SEEK_SET);
    fputc(c ^ 0xff, fp);
    fclose(fp);
    expect_fail("fit --quiet --data " + path("shc") + " --k 3 --cache-budget 0 --out " +
                    path("mc"),
                1, "shard-00001.fgs: chunk 1 (rows 1500..1999): checksum mismatch");
    EXPECT_FALSE(exists(path("mc")));
    expect_fail("info " + path("shc") + " --verify", 1, "shard-00001.fgs: chunk 1");
    EXPECT_EQ(count_tmp_leftovers(), 0);
}

TEST_F(Cli, DemoRunsSmall)
{
    Result r = run("demo --n 20000 --k 4 --d 8");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("components recovered       4 of 4"), std::string::npos) << r.out;
}

// ------------------------------------------------ randomised tests

// The seed of a randomised test: FGMM_TEST_SEED when set (to repeat a
// failure), else a fresh one. Printed either way.
uint64_t test_seed()
{
    const char *e = getenv("FGMM_TEST_SEED");
    uint64_t seed = e ? strtoull(e, nullptr, 10) : ((uint64_t)std::random_device{}() << 32 | std::random_device{}());
    printf("seed %llu (FGMM_TEST_SEED=%llu repeats this test)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    ::testing::Test::RecordProperty("seed", std::to_string(seed));
    return seed;
}

// A .fbin of n rows drawn from a synthetic k-component mixture.
void write_mixture_fbin(const std::string &p, int64_t n, int k, int d, uint64_t seed)
{
    fgmm_synthetic_spec spec = {n, k, d, seed};
    fgmm_model *truth = nullptr;
    float *rows = nullptr;
    fgmm_error err = {};
    ASSERT_EQ(fgmm_synthetic_mixture(&spec, &truth, &rows, &err), FGMM_OK) << err.msg;
    uint32_t hdr[2] = {(uint32_t)n, (uint32_t)d};
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fwrite(hdr, 4, 2, f);
    fwrite(rows, sizeof(float), (size_t)n * d, f);
    fclose(f);
    free(rows);
    fgmm_model_free(truth);
}

std::string read_all(const std::string &p)
{
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// model.json without its wall-clock "seconds" line: everything else in it
// is a function of the data and the flags.
std::string model_json_sans_time(const std::string &dir)
{
    std::string in = read_all(dir + "/model.json"), out;
    std::istringstream ls(in);
    for (std::string line; std::getline(ls, line);)
        if (line.find("\"seconds\"") == std::string::npos) out += line + "\n";
    return out;
}

const char *const kModelFiles[] = {"weights.npy", "means.npy", "variances.npy"};

// Entries of g_dir whose names start with "." + name + ".tmp.": what a save
// builds before renaming it into place.
std::vector<std::string> tmp_siblings(const std::string &name)
{
    std::vector<std::string> v;
    std::string prefix = "." + name + ".tmp.";
    DIR *d = opendir(g_dir.c_str());
    while (struct dirent *e = readdir(d))
        if (!strncmp(e->d_name, prefix.c_str(), prefix.size())) v.push_back(e->d_name);
    closedir(d);
    return v;
}

// tools/flashgmm with args, its stdout discarded and its stderr on a pipe
// (read_fd), so the caller can watch its progress and kill it.
struct Child {
    pid_t pid = -1;
    int read_fd = -1;
};

Child spawn(const std::vector<std::string> &args)
{
    int fds[2];
    Child c;
    if (pipe(fds)) return c;
    c.pid = fork();
    if (c.pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(fds[1], 2);
        close(fds[0]);
        std::vector<char *> argv;
        argv.push_back((char *)"tools/flashgmm");
        for (const std::string &a : args) argv.push_back((char *)a.c_str());
        argv.push_back(nullptr);
        execv("tools/flashgmm", argv.data());
        _exit(127);
    }
    close(fds[1]);
    c.read_fd = fds[0];
    return c;
}

// Reads the child's stderr until it holds needle (true) or the child
// closes it or timeout_s passes (false).
bool wait_for_output(const Child &c, const std::string &needle, double timeout_s, std::string *seen)
{
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    char buf[4096];
    while (seen->find(needle) == std::string::npos) {
        int left = (int)std::chrono::duration_cast<std::chrono::milliseconds>(
                       end - std::chrono::steady_clock::now()).count();
        if (left <= 0) return false;
        struct pollfd p = {c.read_fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0) return false;
        ssize_t n = read(c.read_fd, buf, sizeof buf);
        if (n <= 0) return false;
        seen->append(buf, (size_t)n);
    }
    return true;
}

// SIGKILL and reap; returns the wait status.
int kill_and_reap(Child &c)
{
    kill(c.pid, SIGKILL);
    int st = 0;
    waitpid(c.pid, &st, 0);
    close(c.read_fd);
    return st;
}

// A fit killed in the middle of its EM steps leaves no --out (nor anything
// of a save), and the same command then succeeds.
TEST_F(Cli, FitKilledMidFitLeavesNoModel)
{
    uint64_t seed = test_seed();
    std::string data = path("kill_fit.fbin"), out = path("kf");
    write_mixture_fbin(data, 40000, 8, 16, seed);
    // --tol 0: EM runs until killed.
    Child c = spawn({"fit", "--device", "cpu", "--threads", "1", "--data", data, "--k", "8",
                     "--tol", "0", "--max-iter", "1000000", "--out", out});
    ASSERT_GT(c.pid, 0);
    std::string err;
    bool running = wait_for_output(c, "iter    3", 120, &err);
    int st = kill_and_reap(c);
    ASSERT_TRUE(running) << "no third EM step seen; stderr:\n" << err;
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "status " << st;
    EXPECT_FALSE(exists(out));
    EXPECT_TRUE(tmp_siblings("kf").empty());
    Result r = run("fit --quiet --device cpu --data " + data + " --k 8 --max-iter 2 --out " + out);
    ASSERT_EQ(r.code, 0) << r.out;
    Result info = run("info " + out);
    EXPECT_EQ(info.code, 0) << info.out;
    EXPECT_NE(info.out.find("components K     8"), std::string::npos) << info.out;
}

// A fit killed while it saves (its temporary directory exists, the rename
// has not happened) leaves no --out; the same command then succeeds. The
// kill lands as soon as the temporary directory appears; a save that
// finished first is retried with a new process.
TEST_F(Cli, FitKilledMidSaveLeavesNoModel)
{
    uint64_t seed = test_seed();
    std::string data = path("kill_save.fbin");
    // A large model (K x D = 256 x 256) for a long save; one EM step.
    write_mixture_fbin(data, 2048, 256, 256, seed);
    int hits = 0, attempts = 0;
    for (; attempts < 20 && hits == 0; attempts++) {
        std::string name = "ks" + std::to_string(attempts), out = path(name.c_str());
        Child c = spawn({"fit", "--quiet", "--device", "cpu", "--data", data, "--k", "256",
                         "--init", "random", "--max-iter", "1", "--out", out});
        ASSERT_GT(c.pid, 0);
        std::string tmp = path(("." + name + ".tmp." + std::to_string(c.pid)).c_str());
        bool in_save = false;
        int st = 0;
        for (;;) {
            if (exists(tmp)) {
                in_save = true;
                break;
            }
            if (waitpid(c.pid, &st, WNOHANG) == c.pid) break;
        }
        if (!in_save) {
            close(c.read_fd);
            ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
            continue;
        }
        st = kill_and_reap(c);
        ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "status " << st;
        if (exists(out)) {
            // The rename won the race: the model is whole.
            for (const char *f : kModelFiles) EXPECT_TRUE(exists(out + "/" + f)) << out << "/" << f;
            EXPECT_TRUE(exists(out + "/model.json"));
            continue;
        }
        hits++;
        // Nothing at --out, only the hidden leftover; the same command
        // then succeeds and clears the leftover.
        EXPECT_EQ(tmp_siblings(name).size(), 1u);
        Result r = run("fit --quiet --device cpu --data " + data +
                       " --k 256 --init random --max-iter 1 --out " + out);
        ASSERT_EQ(r.code, 0) << r.out;
        EXPECT_TRUE(tmp_siblings(name).empty()) << "the killed save's leftover is still there";
        Result info = run("info " + out);
        EXPECT_EQ(info.code, 0) << info.out;
        EXPECT_NE(info.out.find("components K     256"), std::string::npos) << info.out;
    }
    printf("%d of %d fits killed mid-save\n", hits, attempts);
    EXPECT_GE(hits, 1) << "no kill landed while the model was being saved in " << attempts
                       << " attempts";
}

// Two fits with the same flags write the same bytes; model.json differs
// only in its wall-clock time.
TEST_F(Cli, FitRepeatsBitForBit)
{
    uint64_t seed = test_seed();
    std::string data = path("repeat.fbin");
    write_mixture_fbin(data, 30000, 6, 12, seed);
    for (const char *threads : {"1", "2"}) {
        std::string a = path((std::string("rep_a") + threads).c_str()),
                    b = path((std::string("rep_b") + threads).c_str());
        std::string args = "fit --quiet --device cpu --threads " + std::string(threads) +
                           " --data " + data + " --k 6 --seed 3 --max-iter 30 --out ";
        Result ra = run(args + a), rb = run(args + b);
        ASSERT_EQ(ra.code, 0) << ra.out;
        ASSERT_EQ(rb.code, 0) << rb.out;
        for (const char *f : kModelFiles) {
            std::string fa = read_all(a + "/" + f), fb = read_all(b + "/" + f);
            EXPECT_FALSE(fa.empty()) << a << "/" << f;
            EXPECT_TRUE(fa == fb) << f << " differs between two runs with --threads " << threads;
        }
        EXPECT_EQ(model_json_sans_time(a), model_json_sans_time(b)) << "--threads " << threads;
    }
}

// The CPU engine sums each chunk's tiles in lanes that depend on K and D
// only, so --threads 1, 2 and 3 write the same bytes.
TEST_F(Cli, FitIsIdenticalAcrossThreadCounts)
{
    uint64_t seed = test_seed();
    std::string data = path("threads.fbin");
    write_mixture_fbin(data, 30000, 6, 12, seed);
    std::string args = " --data " + data + " --k 6 --seed 3 --max-iter 30 --out ";
    std::string first = path("thr1");
    Result r1 = run("fit --quiet --device cpu --threads 1" + args + first);
    ASSERT_EQ(r1.code, 0) << r1.out;
    for (const char *threads : {"2", "3"}) {
        std::string other = path((std::string("thr") + threads).c_str());
        Result r = run("fit --quiet --device cpu --threads " + std::string(threads) + args + other);
        ASSERT_EQ(r.code, 0) << r.out;
        for (const char *f : kModelFiles) {
            std::string fa = read_all(first + "/" + f), fb = read_all(other + "/" + f);
            EXPECT_FALSE(fa.empty()) << first << "/" << f;
            EXPECT_TRUE(fa == fb) << f << " differs between --threads 1 and " << threads;
        }
        EXPECT_EQ(model_json_sans_time(first), model_json_sans_time(other)) << "--threads " << threads;
    }
}

// --covariance spherical through the CLI: one variance per component, the
// three clusters found with their unit variance, and score agreeing with
// numpy's log-likelihood of the saved model.
TEST_F(Cli, SphericalFitThenScore)
{
    uint64_t seed = test_seed();
    std::string data = path("sph.fbin"), m = path("sph");
    write_fbin(data, 3000, 4, seed);
    Result r = run("fit --quiet --data " + data + " --k 3 --covariance spherical --init kmeans "
                   "--max-iter 50 --out " + m);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("fitted K=3 (spherical)"), std::string::npos) << r.out;
    Result info = run("info " + m);
    EXPECT_NE(info.out.find("covariance       spherical"), std::string::npos) << info.out;
    Result s = run("score --model " + m + " --data " + data);
    ASSERT_EQ(s.code, 0) << s.out;
    size_t at = s.out.find("per row: ");
    ASSERT_NE(at, std::string::npos) << s.out;
    double ll = atof(s.out.c_str() + at + 9);
    ASSERT_TRUE(std::isfinite(ll)) << s.out;
    // EM never lowers the likelihood: the saved model scores at least the
    // last E-step's figure.
    size_t ft = r.out.find("mean log-likelihood ");
    ASSERT_NE(ft, std::string::npos) << r.out;
    double ll_fit = atof(r.out.c_str() + ft + 20);
    EXPECT_GE(ll, ll_fit - 1e-6) << r.out << s.out;
    char expect[64];
    snprintf(expect, sizeof expect, "%.17g", ll);
    std::string py = "/usr/bin/python3 -c \"import numpy as np, json\n"
                     "d = '" + m + "'\n"
                     "w, mu, v = np.load(d+'/weights.npy'), np.load(d+'/means.npy').astype(np.float64), np.load(d+'/variances.npy').astype(np.float64)\n"
                     "assert json.load(open(d+'/model.json'))['covariance'] == 'spherical'\n"
                     "assert w.shape == (3,) and mu.shape == (3, 4) and v.shape == (3,), (w.shape, mu.shape, v.shape)\n"
                     "assert sorted(np.round(mu[:, 0] / 10).astype(int).tolist()) == [0, 1, 2], mu\n"
                     "assert np.all((v > 0.8) & (v < 1.25)), v\n"
                     "raw = open('" + data + "', 'rb').read()\n"
                     "n, dim = np.frombuffer(raw[:8], np.uint32)\n"
                     "x = np.frombuffer(raw[8:], np.float32).reshape(n, dim).astype(np.float64)\n"
                     "d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)\n"
                     "lp = np.log(w) - 0.5 * (dim * np.log(2 * np.pi * v) + d2 / v)\n"
                     "top = lp.max(1)\n"
                     "ll = np.mean(top + np.log(np.exp(lp - top[:, None]).sum(1)))\n"
                     "assert abs(ll - " + std::string(expect) + ") <= 1e-7 * abs(ll), (ll, " + expect + ")\n"
                     "print('ok')\"";
    EXPECT_EQ(system(py.c_str()), 0);
}

}  // namespace
