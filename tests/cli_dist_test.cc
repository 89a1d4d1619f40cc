// cli_dist_test.cc - flashgmm fit across processes and with checkpoints,
// end to end through the binary: mpirun jobs of 1, 2 and 3 ranks agree,
// a rank count repeats bit for bit, a job or a single process killed
// mid-fit resumes from its checkpoint to the uninterrupted model's bytes,
// a killed rank fails the job with no model, and --gpus without a GPU is a
// clear error.
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "tests/cli_run.h"

namespace {

std::string g_dir, g_bin, g_mpirun;
uint64_t g_seed;

std::string path(const std::string &name) { return g_dir + "/" + name; }

bool exists(const std::string &p)
{
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}


std::string mpi(int ranks)
{
    return g_mpirun + " --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " ";
}

// The fit every test runs: CPU, one thread per rank, no early stop.
std::string fit_args(const std::string &out, int iters)
{
    return g_bin + " fit --quiet --device cpu --threads 1 --data " + path("shards") +
           " --k 4 --tol 0 --max-iter " + std::to_string(iters) + " --seed " +
           std::to_string(g_seed) + " --out " + out;
}

// A float64 .npy's values (format 1.0, little-endian '<f8').
std::vector<double> read_f64(const std::string &p)
{
    std::string s = read_all(p);
    std::vector<double> v;
    if (s.size() < 10 || s.compare(0, 6, "\x93NUMPY") != 0) return v;
    size_t hlen = (unsigned char)s[8] | ((size_t)(unsigned char)s[9] << 8);
    if (s.find("'<f8'") == std::string::npos) return v;
    size_t off = 10 + hlen;
    v.resize((s.size() - off) / 8);
    memcpy(v.data(), s.data() + off, v.size() * 8);
    return v;
}

// model.json without its wall-clock "seconds" line.
std::string json_sans_time(const std::string &dir)
{
    std::istringstream in(read_all(dir + "/model.json"));
    std::string line, out;
    while (std::getline(in, line))
        if (line.find("\"seconds\"") == std::string::npos) out += line + "\n";
    return out;
}

void expect_same_model(const std::string &a, const std::string &b)
{
    for (const char *f : {"weights.npy", "means.npy", "variances.npy"}) {
        std::string x = read_all(a + "/" + f), y = read_all(b + "/" + f);
        EXPECT_FALSE(x.empty()) << a << "/" << f;
        EXPECT_TRUE(x == y) << a << " and " << b << " differ in " << f;
    }
    EXPECT_EQ(json_sans_time(a), json_sans_time(b));
}

// A process group running cmd (sh -c), so the whole job can be killed.
pid_t spawn(const std::string &cmd, const std::string &log)
{
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >" + log + " 2>&1").c_str(),
              (char *)nullptr);
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

// Waits up to timeout_s for path to exist while pid runs; false when pid
// ended first or time ran out.
bool wait_for(const std::string &p, pid_t pid, double timeout_s)
{
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
        if (exists(p)) return true;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
}

int wait_exit(pid_t pid)
{
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

class CliDist : public ::testing::Test {
  protected:
    static void SetUpTestSuite()
    {
        const char *env = getenv("FGMM_TEST_SEED");
        g_seed = env ? strtoull(env, nullptr, 10) : std::random_device{}() % 100000;
        printf("cli_dist_test seed %llu (FGMM_TEST_SEED=%llu repeats it)\n",
               (unsigned long long)g_seed, (unsigned long long)g_seed);
        const char *t = getenv("TEST_TMPDIR");
        char tmpl[] = "/tmp/fgmm_cli_dist_XXXXXX";
        g_dir = t ? std::string(t) + "/cli_dist" : std::string(mkdtemp(tmpl));
        mkdir(g_dir.c_str(), 0755);
        char *bin = realpath("tools/flashgmm", nullptr);
        g_bin = bin ? bin : "tools/flashgmm";
        free(bin);
        const char *pathenv = getenv("PATH");
        std::stringstream ps(pathenv ? pathenv : "");
        for (std::string d; std::getline(ps, d, ':');)
            if (!d.empty() && access((d + "/mpirun").c_str(), X_OK) == 0) {
                g_mpirun = d + "/mpirun";
                break;
            }
        // Four clusters in 6 dimensions, 8000 rows, sharded in chunks of
        // 500 rows so that every rank of 3 has several.
        const uint32_t n = 8000, d = 6;
        std::vector<unsigned char> buf(8 + (size_t)n * d * 4);
        memcpy(&buf[0], &n, 4);
        memcpy(&buf[4], &d, 4);
        fgmm_rng r;
        fgmm_rng_seed(&r, g_seed);
        float *x = (float *)&buf[8];
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < d; j++)
                x[(size_t)i * d + j] = (float)(6.0 * ((i + j) % 4) + fgmm_rng_normal(&r));
        std::ofstream(path("data.fbin"), std::ios::binary)
            .write((const char *)buf.data(), (std::streamsize)buf.size());
        Result s = run_shell(g_bin + " shard --input " + path("data.fbin") + " --out " +
                      path("shards") + " --rows-per-chunk 500 --chunks-per-shard 4");
        ASSERT_EQ(s.code, 0) << s.out;
    }
    void SetUp() override
    {
        if (g_mpirun.empty()) GTEST_SKIP() << "no mpirun on PATH";
    }
};

// Per-step log-likelihoods and parameters of 1, 2 and 3 ranks, from the
// float64 files of the checkpoint of the last step.
TEST_F(CliDist, RankCountsAgree)
{
    const int iters = 12;
    std::vector<std::vector<double>> ll(4), w(4), mu(4), var(4);
    for (int r = 1; r <= 3; r++) {
        std::string out = path("agree" + std::to_string(r));
        Result res = run_shell(mpi(r) + fit_args(out, iters) + " --checkpoint-every " +
                        std::to_string(iters));
        ASSERT_EQ(res.code, 0) << res.out;
        ASSERT_TRUE(exists(out + "/model.json"));
        std::string step = out + ".checkpoint/step-" + std::to_string(iters);
        ll[r] = read_f64(step + "/log_likelihood.f64.npy");
        w[r] = read_f64(step + "/weights.npy");
        mu[r] = read_f64(step + "/means.f64.npy");
        var[r] = read_f64(step + "/variances.f64.npy");
        ASSERT_EQ(ll[r].size(), (size_t)iters);
        ASSERT_EQ(mu[r].size(), 4u * 6u);
    }
    auto close = [](const std::vector<double> &a, const std::vector<double> &b, double rel,
                    bool per_array) {
        double scale = 0;
        for (double v : a) scale = std::fmax(scale, std::fabs(v));
        for (size_t i = 0; i < a.size(); i++) {
            double ref = per_array ? scale : std::fabs(a[i]);
            if (!(std::fabs(a[i] - b[i]) <= rel * ref)) return false;
        }
        return a.size() == b.size();
    };
    for (int r = 2; r <= 3; r++) {
        EXPECT_TRUE(close(ll[1], ll[r], 1e-12, false)) << r << " ranks: log-likelihoods";
        EXPECT_TRUE(close(w[1], w[r], 1e-9, true)) << r << " ranks: weights";
        EXPECT_TRUE(close(mu[1], mu[r], 1e-9, true)) << r << " ranks: means";
        EXPECT_TRUE(close(var[1], var[r], 1e-9, true)) << r << " ranks: variances";
    }
}

// fit --assign-out under mpirun: each rank writes its share's shards and
// rank 0 the manifest; from the same model (--max-iter 0 keeps the
// initial model) 2 and 3 ranks give one process's lists, weights and list
// sizes exactly, a budget (one cap over all rows) included.
TEST_F(CliDist, RanksWriteTheAssignmentsOneProcessWrites)
{
    Result m0 = run_shell(fit_args(path("asg_m0"), 3));
    ASSERT_EQ(m0.code, 0) << m0.out;
    auto assign_args = [&](const std::string &name) {
        return g_bin + " fit --quiet --device cpu --threads 1 --data " + path("shards") +
               " --init " + path("asg_m0") + " --max-iter 0 --out " + path(name + "_model") +
               " --assign-out " + path(name) +
               " --max-lists 3 --temperature 200 --min-resp 0.05 --budget 0.05 --shard-rows 1000";
    };
    Result one = run_shell(assign_args("asg1"));
    ASSERT_EQ(one.code, 0) << one.out;
    EXPECT_NE(one.out.find("capped at 400"), std::string::npos) << one.out;
    ASSERT_EQ(run_shell(g_bin + " export --assignments " + path("asg1") + " --out " +
                        path("asg1_npy")).code,
              0);
    for (int r = 2; r <= 3; r++) {
        std::string name = "asg" + std::to_string(r);
        Result res = run_shell(mpi(r) + assign_args(name));
        ASSERT_EQ(res.code, 0) << res.out;
        Result v = run_shell(g_bin + " info --verify " + path(name));
        ASSERT_EQ(v.code, 0) << v.out;
        ASSERT_EQ(run_shell(g_bin + " export --assignments " + path(name) + " --out " +
                     path(name + "_npy")).code, 0);
        for (const char *f : {"primary.npy", "offsets.npy", "lists.npy", "weights.npy",
                              "loglik.npy"}) {
            std::string a = read_all(path("asg1_npy/") + f), b = read_all(path(name + "_npy/") + f);
            EXPECT_FALSE(a.empty()) << f;
            EXPECT_TRUE(a == b) << r << " ranks: " << f << " differs";
        }
        // The manifests agree but for the shards' names and ranges.
        auto sizes = [&](const std::string &dir) {
            std::string j = read_all(dir + "/manifest.json");
            size_t a = j.find("\"list_sizes\""), b = j.find("]", a);
            return j.substr(a, b - a);
        };
        EXPECT_EQ(sizes(path("asg1")), sizes(path(name))) << r << " ranks";
    }
    // The budget bound: 8000 rows, at most 400 extra copies in all.
    std::string primary = read_all(path("asg1_npy/primary.npy")),
                lists = read_all(path("asg1_npy/lists.npy"));
    EXPECT_EQ(lists.size() - primary.size(), 400u * 4);
}

TEST_F(CliDist, SameRankCountRepeatsBitForBit)
{
    for (const char *name : {"rep_a", "rep_b"}) {
        Result res = run_shell(mpi(2) + fit_args(path(name), 10));
        ASSERT_EQ(res.code, 0) << res.out;
    }
    expect_same_model(path("rep_a"), path("rep_b"));
}

// The processes whose parent is pid.
std::vector<pid_t> children(pid_t pid)
{
    std::vector<pid_t> out;
    std::istringstream in(read_all("/proc/" + std::to_string(pid) + "/task/" +
                                   std::to_string(pid) + "/children"));
    for (long c; in >> c;) out.push_back((pid_t)c);
    return out;
}

// pid's descendants, deepest first.
void descendants(pid_t pid, std::vector<pid_t> *out)
{
    for (pid_t c : children(pid)) {
        descendants(c, out);
        out->push_back(c);
    }
}

// Kills cmd (mpirun and every rank, or the one process) once `when`
// exists, checks that no model was written, then resumes (resume_cmd) and
// compares with reference.
void kill_then_resume(const std::string &cmd, const std::string &when, const std::string &out,
                      const std::string &resume_cmd, const std::string &reference)
{
    pid_t pid = spawn(cmd, out + ".log");
    ASSERT_TRUE(wait_for(when, pid, 60)) << read_all(out + ".log");
    // The ranks first (the launcher may have put them in process groups of
    // their own), then the launcher.
    std::vector<pid_t> procs;
    descendants(pid, &procs);
    for (pid_t p : procs) kill(p, SIGKILL);
    kill(-pid, SIGKILL);
    wait_exit(pid);
    for (pid_t p : procs)
        for (int i = 0; i < 200 && kill(p, 0) == 0; i++)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_FALSE(exists(out)) << "the fit finished before it was killed; make it longer";
    Result res = run_shell(resume_cmd);
    ASSERT_EQ(res.code, 0) << res.out;
    expect_same_model(reference, out);
}

TEST_F(CliDist, KilledJobResumesToTheSameModel)
{
    const int iters = 150;
    std::string ref = path("ck_ref"), out = path("ck_job");
    Result res = run_shell(mpi(2) + fit_args(ref, iters));
    ASSERT_EQ(res.code, 0) << res.out;
    std::string cmd = mpi(2) + fit_args(out, iters) + " --checkpoint-every 1";
    kill_then_resume(cmd, out + ".checkpoint/step-3", out,
                     cmd + " --resume " + out + ".checkpoint", ref);
}

TEST_F(CliDist, KilledProcessResumesToTheSameModel)
{
    const int iters = 150;
    std::string ref = path("single_ref"), out = path("single");
    Result res = run_shell(fit_args(ref, iters));
    ASSERT_EQ(res.code, 0) << res.out;
    std::string cmd = fit_args(out, iters) + " --checkpoint-every 2 --checkpoint-dir " +
                      path("single_ck");
    kill_then_resume(cmd, path("single_ck/step-4"), out,
                     cmd + " --resume " + path("single_ck"), ref);
    // Only the newest step is kept.
    int steps = 0;
    DIR *d = opendir(path("single_ck").c_str());
    while (struct dirent *e = readdir(d)) steps += strncmp(e->d_name, "step-", 5) == 0;
    closedir(d);
    EXPECT_EQ(steps, 1);
}

TEST_F(CliDist, KilledRankFailsTheJobWithoutAModel)
{
    std::string out = path("rank_killed");
    pid_t pid = spawn(mpi(2) + fit_args(out, 400) + " --timeout 20 --checkpoint-every 1",
                      out + ".log");
    ASSERT_TRUE(wait_for(out + ".checkpoint/step-2", pid, 60)) << read_all(out + ".log");
    std::vector<pid_t> ranks = children(pid);
    ASSERT_FALSE(ranks.empty());
    kill(ranks.back(), SIGKILL);
    int code = wait_exit(pid);
    EXPECT_NE(code, 0) << read_all(out + ".log");
    EXPECT_FALSE(exists(out)) << read_all(out + ".log");
}

TEST_F(CliDist, GpusWithoutADevice)
{
    std::string out = path("gpus");
    Result cpu = run_shell(fit_args(out, 2) + " --gpus 1");
    EXPECT_EQ(cpu.code, 2) << cpu.out; // --device cpu with --gpus
    Result bad = run_shell(fit_args(out, 2) + " --device cuda --gpus 0,x");
    EXPECT_EQ(bad.code, 2) << bad.out;
    Result bad2 = run_shell(g_bin + " fit --data " + path("shards") + " --k 4 --out " + out +
                     " --gpus 0,,1");
    EXPECT_EQ(bad2.code, 2) << bad2.out;
    EXPECT_NE(bad2.out.find("--gpus expects"), std::string::npos) << bad2.out;
    Result missing = run_shell(g_bin + " fit --data " + path("shards") + " --k 4 --out " + out +
                        " --gpus 4000,");
    EXPECT_EQ(missing.code, 1) << missing.out;
    EXPECT_NE(missing.out.find("no CUDA device"), std::string::npos) << missing.out;
    int count = 0;
    fgmm_error err;
    if (fgmm_device_count(FGMM_DEVICE_CUDA, &count, &err) == FGMM_OK && count == 0) {
        Result all = run_shell(g_bin + " fit --data " + path("shards") + " --k 4 --out " + out +
                        " --gpus all");
        EXPECT_EQ(all.code, 1) << all.out;
        EXPECT_NE(all.out.find("there is no CUDA device on this machine"), std::string::npos)
            << all.out;
    }
    EXPECT_FALSE(exists(out));
}

} // namespace
