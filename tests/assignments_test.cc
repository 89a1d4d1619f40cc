// assignments_test.cc - IVF lists: the list rule (fgmm_list_select) against
// its definition, the cap on extra copies, and assignment directories
// written, read back, exported and refused when damaged.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "dist/fgmm_dist.h"
#include "io/fgmm_io.h"
#include "tests/reference.h"

namespace {

// ------------------------------------------------------------- the rule

// The weights of the definition: exp(lresp/T) normalised over the first m.
std::vector<double> tempered(const std::vector<float> &lresp, int m, double T)
{
    std::vector<double> w(m);
    double s = 0;
    for (int j = 0; j < m; j++) s += (w[j] = std::exp((double)lresp[j] / T));
    for (double &v : w) v /= s;
    return w;
}

TEST(ListRule, WeightsAndThresholdsFollowTheDefinition)
{
    fgmm_list_rule r;
    fgmm_list_rule_default(&r);
    const int32_t idx[4] = {7, 3, 9, 1};
    // Posteriors 0.6, 0.25, 0.1, 0.05 (the tail beyond 4 is not seen).
    const std::vector<float> lr = {std::log(0.6f), std::log(0.25f), std::log(0.1f),
                                   std::log(0.05f)};
    int32_t lists[FGMM_MAX_TOP_M];
    float w[FGMM_MAX_TOP_M];
    double amb;

    r.max_lists = 1;
    EXPECT_EQ(fgmm_list_select(&r, idx, lr.data(), lists, w, &amb), 1);
    EXPECT_EQ(lists[0], 7);
    EXPECT_FLOAT_EQ(w[0], 1.0f);
    EXPECT_EQ(amb, 0);

    r.max_lists = 4;
    r.min_resp = 0.09;  // 0.6, 0.25, 0.1 pass; 0.05 does not
    std::vector<double> want = tempered(lr, 4, 1);
    int n = fgmm_list_select(&r, idx, lr.data(), lists, w, &amb);
    ASSERT_EQ(n, 3);
    for (int j = 0; j < 3; j++) {
        EXPECT_EQ(lists[j], idx[j]);
        EXPECT_NEAR(w[j], want[j], 1e-6);
    }
    EXPECT_NEAR(amb, want[1], 1e-12);

    r.min_resp = 0.3;  // nothing but the best
    EXPECT_EQ(fgmm_list_select(&r, idx, lr.data(), lists, w, nullptr), 1);
    r.ratio = 0.4;  // 0.25 >= 0.4 * 0.6 = 0.24 passes, 0.1 does not
    EXPECT_EQ(fgmm_list_select(&r, idx, lr.data(), lists, w, nullptr), 2);
    r.ratio = 0;

    // A temperature flattens: with T = 4 the third candidate passes 0.2.
    r.min_resp = 0.2;
    r.temperature = 4;
    want = tempered(lr, 4, 4);
    n = fgmm_list_select(&r, idx, lr.data(), lists, w, nullptr);
    int expect = 1;
    while (expect < 4 && want[expect] >= 0.2) expect++;
    ASSERT_GE(expect, 3);
    EXPECT_EQ(n, expect);
    for (int j = 0; j < n; j++) EXPECT_NEAR(w[j], want[j], 1e-6);

    // Far below the best: a log-responsibility of -500 underflows as a
    // responsibility but not as a log, and a high temperature brings it in.
    const std::vector<float> far = {0.0f, -500.0f};
    r.max_lists = 2;
    r.min_resp = 0.1;
    r.temperature = 1000;
    EXPECT_EQ(fgmm_list_select(&r, idx, far.data(), lists, w, &amb), 2);
    EXPECT_NEAR(amb, 1 / (1 + std::exp(0.5)), 1e-7);

    // Fewer components than max_lists: the tail is -1 and ignored.
    const int32_t short_idx[3] = {2, -1, -1};
    const float short_lr[3] = {0.0f, -INFINITY, -INFINITY};
    r.max_lists = 3;
    EXPECT_EQ(fgmm_list_select(&r, short_idx, short_lr, lists, w, &amb), 1);
    EXPECT_EQ(amb, 0);
}

TEST(ListRule, OutOfRangeFieldsAreNamed)
{
    fgmm_error err{};
    fgmm_list_rule r;
    fgmm_list_rule_default(&r);
    EXPECT_EQ(fgmm_list_rule_check(&r, &err), FGMM_OK);
    auto bad = [&](fgmm_list_rule b, const char *needle) {
        EXPECT_EQ(fgmm_list_rule_check(&b, &err), FGMM_ERR_ARGUMENT) << needle;
        EXPECT_NE(strstr(err.msg, needle), nullptr) << err.msg;
    };
    fgmm_list_rule b = r;
    b.max_lists = 0;
    bad(b, "max lists");
    b = r, b.max_lists = FGMM_MAX_TOP_M + 1;
    bad(b, "max lists");
    b = r, b.min_resp = 0;
    bad(b, "minimum responsibility");
    b = r, b.min_resp = 1.5;
    bad(b, "minimum responsibility");
    b = r, b.ratio = -0.1;
    bad(b, "ratio");
    b = r, b.temperature = 0;
    bad(b, "temperature");
    b = r, b.temperature = INFINITY;
    bad(b, "temperature");
    fgmm_list_budget *bud;
    EXPECT_EQ(fgmm_list_budget_create(-1, &bud, &err), FGMM_ERR_ARGUMENT);
    EXPECT_EQ(fgmm_list_budget_create(NAN, &bud, &err), FGMM_ERR_ARGUMENT);
}

TEST(ListBudget, CapsExtrasAndKeepsTheMostAmbiguous)
{
    uint64_t seed = (uint64_t)time(nullptr);
    printf("  seed %llu\n", (unsigned long long)seed);
    fgmm_rng rng;
    fgmm_rng_seed(&rng, seed);
    const int64_t n = 50000;
    std::vector<double> amb(n);
    std::vector<int> extras(n);
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        amb[i] = 0.5 * fgmm_rng_uniform(&rng);
        extras[i] = amb[i] > 0.05 ? 1 + (int)(fgmm_rng_next(&rng) % 3) : 0;
        total += extras[i];
    }
    for (double beta : {0.0, 0.05, 0.3, 10.0}) {
        fgmm_error err{};
        fgmm_list_budget *b;
        ASSERT_EQ(fgmm_list_budget_create(beta, &b, &err), FGMM_OK);
        for (int64_t i = 0; i < n; i++) fgmm_list_budget_count(b, amb[i], extras[i]);
        int64_t cap = fgmm_list_budget_plan(b);
        EXPECT_EQ(cap, (int64_t)std::floor(beta * n));
        int64_t kept = 0;
        double min_full = 1, max_none = 0;
        for (int64_t i = 0; i < n; i++) {
            int k = fgmm_list_budget_admit(b, amb[i], extras[i]);
            ASSERT_GE(k, 0);
            ASSERT_LE(k, extras[i]);
            kept += k;
            if (extras[i] && k == extras[i]) min_full = std::min(min_full, amb[i]);
            if (extras[i] && k == 0) max_none = std::max(max_none, amb[i]);
        }
        // The cap is met exactly when there is more to give than it allows.
        EXPECT_EQ(kept, std::min(cap, total)) << "beta " << beta;
        // Nobody refused is more ambiguous than somebody served, beyond one
        // bin's width (1/8192).
        if (kept > 0 && kept < total) {
            EXPECT_LE(max_none, min_full + 1.0 / 8192) << "beta " << beta;
        }
        fgmm_list_budget_free(b);
    }
}

// ------------------------------------------------- assignment directories

std::string tmp_root()
{
    const char *t = getenv("TEST_TMPDIR");
    static std::string root;
    if (root.empty()) {
        char tmpl[] = "/tmp/fgmm_asg_XXXXXX";
        root = t ? std::string(t) + "/asg" : std::string(mkdtemp(tmpl));
        mkdir(root.c_str(), 0755);
    }
    return root;
}

struct Row {
    std::vector<int32_t> lists;
    std::vector<float> weights;
    float ll;
};

struct Direct {
    const fgmm_list_rule *rule;
    std::vector<Row> rows;
};

fgmm_status direct_sink(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                        const float *lresp, const float *ll, fgmm_error *)
{
    Direct *d = static_cast<Direct *>(user);
    EXPECT_EQ(first_row, (int64_t)d->rows.size());
    for (int64_t i = 0; i < n; i++) {
        int32_t l[FGMM_MAX_TOP_M];
        float w[FGMM_MAX_TOP_M];
        int c = fgmm_list_select(d->rule, idx + i * m, lresp + i * m, l, w, nullptr);
        d->rows.push_back(Row{std::vector<int32_t>(l, l + c), std::vector<float>(w, w + c), ll[i]});
    }
    return FGMM_OK;
}

struct ReadBack {
    std::vector<Row> rows;
    int shards = 0;
};

fgmm_status read_sink(void *user, int64_t first_row, int64_t rows, const uint8_t *counts,
                      const float *loglik, const int32_t *lists, const float *weights, fgmm_error *)
{
    ReadBack *r = static_cast<ReadBack *>(user);
    EXPECT_EQ(first_row, (int64_t)r->rows.size());
    r->shards++;
    int64_t e = 0;
    for (int64_t i = 0; i < rows; i++) {
        Row row{std::vector<int32_t>(lists + e, lists + e + counts[i]),
                std::vector<float>(weights + e, weights + e + counts[i]), loglik[i]};
        r->rows.push_back(row);
        e += counts[i];
    }
    return FGMM_OK;
}

class Assignments : public ::testing::Test {
  protected:
    void SetUp() override
    {
        seed = (uint64_t)time(nullptr);
        printf("  seed %llu\n", (unsigned long long)seed);
        fgmm_rng rng;
        fgmm_rng_seed(&rng, seed);
        // Overlapping components: many rows sit on borders.
        model = random_mixture(&rng, K, D, FGMM_COV_DIAG, 1.0, n, x);
        ASSERT_EQ(fgmm_source_memory_chunked(x.data(), FGMM_F32, n, D, 1000, "mem", &src, &err),
                  FGMM_OK);
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
        fgmm_assign_options_default(&o);
        o.rule.max_lists = 4;
        o.rule.min_resp = 0.05;
        o.rule.temperature = 2;
        o.shard_rows = 3000;  // cut at chunk ends: 3 shards of 3000 and one of 1001
        dir = tmp_root() + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    }
    void TearDown() override
    {
        fgmm_source_close(src);
        fgmm_engine_free(e);
        fgmm_model_free(model);
    }
    std::vector<Row> direct()
    {
        Direct d{&o.rule, {}};
        EXPECT_EQ(fgmm_assign(e, src, model, o.rule.max_lists, direct_sink, &d, &err), FGMM_OK)
            << err.msg;
        return d.rows;
    }

    const int64_t n = 10001;
    const int K = 24, D = 6;
    uint64_t seed = 0;
    std::vector<float> x;
    fgmm_model *model = nullptr;
    fgmm_source *src = nullptr;
    fgmm_engine *e = nullptr;
    fgmm_error err{};
    fgmm_assign_options o;
    std::string dir;
};

TEST_F(Assignments, WrittenShardsReadBackAsTheRuleSays)
{
    fgmm_assign_summary s;
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), &s, &err), FGMM_OK) << err.msg;
    std::vector<Row> want = direct();
    EXPECT_EQ(s.rows, n);
    EXPECT_EQ(s.shards, 4);
    EXPECT_EQ(s.passes, 1);
    EXPECT_EQ(s.budget_cap, -1);

    fgmm_assignments *a;
    ASSERT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_assignments_k(a), K);
    EXPECT_EQ(fgmm_assignments_dim(a), D);
    EXPECT_EQ(fgmm_assignments_rows(a), n);
    EXPECT_EQ(fgmm_assignments_entries(a), s.entries);
    ReadBack r;
    ASSERT_EQ(fgmm_assignments_read(a, read_sink, &r, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(r.shards, 4);
    ASSERT_EQ(r.rows.size(), want.size());
    std::vector<int64_t> sizes(K, 0);
    int64_t multi = 0, entries = 0;
    for (size_t i = 0; i < want.size(); i++) {
        ASSERT_EQ(r.rows[i].lists, want[i].lists) << "row " << i;
        ASSERT_EQ(r.rows[i].weights, want[i].weights) << "row " << i;
        ASSERT_EQ(r.rows[i].ll, want[i].ll) << "row " << i;
        for (int32_t l : want[i].lists) sizes[l]++;
        multi += want[i].lists.size() > 1;
        entries += (int64_t)want[i].lists.size();
    }
    EXPECT_EQ(s.multi_rows, multi);
    EXPECT_EQ(s.entries, entries);
    // Border rows exist in this data, so the rule was exercised.
    EXPECT_GT(multi, n / 20);
    for (int k = 0; k < K; k++) EXPECT_EQ(fgmm_assignments_list_sizes(a)[k], sizes[k]) << k;
    fgmm_assignments_close(a);
}

TEST_F(Assignments, BudgetCapsTheExtraCopies)
{
    o.budget = 0.05;
    fgmm_assign_summary s;
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), &s, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(s.passes, 2);
    EXPECT_EQ(s.budget_cap, (int64_t)std::floor(0.05 * n));
    std::vector<Row> uncapped = direct();
    int64_t extras = 0;
    for (const Row &r : uncapped) extras += (int64_t)r.lists.size() - 1;
    ASSERT_GT(extras, s.budget_cap) << "the cap must bind for this test to mean anything";
    EXPECT_EQ(s.entries - s.rows, s.budget_cap);
    // Every row keeps its primary and a prefix of its uncapped lists.
    fgmm_assignments *a;
    ASSERT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_OK) << err.msg;
    ReadBack r;
    ASSERT_EQ(fgmm_assignments_read(a, read_sink, &r, &err), FGMM_OK) << err.msg;
    fgmm_assignments_close(a);
    ASSERT_EQ(r.rows.size(), uncapped.size());
    for (size_t i = 0; i < r.rows.size(); i++) {
        ASSERT_GE(r.rows[i].lists.size(), 1u);
        ASSERT_LE(r.rows[i].lists.size(), uncapped[i].lists.size());
        for (size_t j = 0; j < r.rows[i].lists.size(); j++)
            ASSERT_EQ(r.rows[i].lists[j], uncapped[i].lists[j]) << "row " << i;
    }
}

TEST_F(Assignments, ExportWritesCsrThatMatches)
{
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), nullptr, &err), FGMM_OK)
        << err.msg;
    std::string out = dir + ".npy";
    ASSERT_EQ(fgmm_assignments_export(dir.c_str(), model, out.c_str(), &err), FGMM_OK) << err.msg;
    std::vector<Row> want = direct();
    auto load = [&](const char *name, int64_t want_len) {
        double *v = nullptr;
        int nd = 0;
        int64_t shape[2];
        EXPECT_EQ(fgmm_npy_read((out + "/" + name).c_str(), &v, &nd, shape, &err), FGMM_OK)
            << err.msg;
        std::vector<double> r;
        if (v) r.assign(v, v + shape[0] * shape[1]);
        free(v);
        EXPECT_EQ(shape[0], want_len) << name;
        return r;
    };
    int64_t E = 0;
    for (const Row &r : want) E += (int64_t)r.lists.size();
    std::vector<double> primary = load("primary.npy", n), offsets = load("offsets.npy", n + 1),
                        lists = load("lists.npy", E), weights = load("weights.npy", E),
                        ll = load("loglik.npy", n), means = load("means.npy", K);
    ASSERT_EQ(means.size(), (size_t)K * D);
    for (int64_t i = 0; i < K * D; i++)
        EXPECT_EQ((float)means[i], (float)fgmm_model_means_c(model)[i]);
    ASSERT_EQ(offsets[0], 0);
    for (int64_t i = 0; i < n; i++) {
        const Row &r = want[i];
        ASSERT_EQ(primary[i], r.lists[0]) << i;
        ASSERT_EQ(offsets[i + 1] - offsets[i], (double)r.lists.size()) << i;
        for (size_t j = 0; j < r.lists.size(); j++) {
            ASSERT_EQ(lists[(size_t)offsets[i] + j], r.lists[j]);
            ASSERT_EQ((float)weights[(size_t)offsets[i] + j], r.weights[j]);
        }
        ASSERT_EQ((float)ll[i], r.ll);
    }
    // The output exists now: a second export is refused.
    EXPECT_EQ(fgmm_assignments_export(dir.c_str(), model, out.c_str(), &err), FGMM_ERR_EXISTS);
}

int count_tmp(const std::string &parent)
{
    int c = 0;
    DIR *d = opendir(parent.c_str());
    while (struct dirent *de = readdir(d))
        if (strstr(de->d_name, ".tmp.")) c++;
    closedir(d);
    return c;
}

void flip_byte(const std::string &p, off_t at)
{
    int fd = open(p.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << p;
    unsigned char b;
    ASSERT_EQ(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    ASSERT_EQ(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

TEST_F(Assignments, BadInputIsRefusedAndLeavesNothing)
{
    // The output exists: refused, untouched.
    mkdir(dir.c_str(), 0755);
    EXPECT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), nullptr, &err),
              FGMM_ERR_EXISTS);
    EXPECT_NE(strstr(err.msg, "already exists"), nullptr) << err.msg;
    rmdir(dir.c_str());
    // A model of another dimension.
    std::vector<float> y(100 * (D + 1), 0.5f);
    fgmm_source *wide;
    ASSERT_EQ(fgmm_source_memory(y.data(), FGMM_F32, 100, D + 1, "wide", &wide, &err), FGMM_OK);
    EXPECT_EQ(fgmm_assignments_write(e, wide, model, &o, dir.c_str(), nullptr, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_NE(strstr(err.msg, "dimension 7"), nullptr) << err.msg;
    fgmm_source_close(wide);
    // A rule out of range.
    fgmm_assign_options bad = o;
    bad.rule.temperature = -1;
    EXPECT_EQ(fgmm_assignments_write(e, src, model, &bad, dir.c_str(), nullptr, &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_FALSE(access(dir.c_str(), F_OK) == 0);
    EXPECT_EQ(count_tmp(tmp_root()), 0);

    // Damage, one kind at a time, to a good directory.
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), nullptr, &err), FGMM_OK)
        << err.msg;
    std::string shard1 = dir + "/assign-000000003000.fga";
    struct stat sb;
    ASSERT_EQ(stat(shard1.c_str(), &sb), 0);
    fgmm_assignments *a;
    // A flipped bit in the compressed lists: found by the body checksum.
    flip_byte(shard1, sb.st_size - 10);
    ASSERT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_assignments_read(a, nullptr, nullptr, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "assign-000000003000.fga"), nullptr) << err.msg;
    EXPECT_NE(strstr(err.msg, "checksum"), nullptr) << err.msg;
    fgmm_assignments_close(a);
    flip_byte(shard1, sb.st_size - 10);
    // A flipped bit in the header.
    flip_byte(shard1, 20);
    EXPECT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "header checksum"), nullptr) << err.msg;
    flip_byte(shard1, 20);
    // Truncated.
    ASSERT_EQ(truncate(shard1.c_str(), sb.st_size - 1), 0);
    EXPECT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "truncated"), nullptr) << err.msg;
    // Missing.
    ASSERT_EQ(unlink(shard1.c_str()), 0);
    EXPECT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "assign-000000003000.fga"), nullptr) << err.msg;
    // Nothing is exported from a damaged directory, and nothing is left.
    std::string out = dir + ".npy";
    EXPECT_NE(fgmm_assignments_export(dir.c_str(), model, out.c_str(), &err), FGMM_OK);
    EXPECT_FALSE(access(out.c_str(), F_OK) == 0);
    EXPECT_EQ(count_tmp(tmp_root()), 0);
}

struct RankJob {
    std::vector<fgmm_engine *> engines;
    std::vector<fgmm_source *> sources;
    const fgmm_model *model;
    const fgmm_assign_options *o;
    std::string dir;
};

fgmm_status assign_rank(int rank, const fgmm_dist_reducer *red, void *arg, fgmm_error *err)
{
    RankJob *j = static_cast<RankJob *>(arg);
    fgmm_assign_summary s;
    return fgmm_assignments_write_ranks(j->engines[rank], j->sources[rank], j->model, j->o,
                                        j->dir.c_str(), red->ops, red->self, &s, err);
}

// Three ranks (threads with a group reducer, as fit --gpus runs them), each
// writing its share's shards: the rows read back are one process's, lists,
// weights and log-likelihoods, with one budget over all the rows.
TEST_F(Assignments, RanksWriteWhatOneProcessWrites)
{
    o.budget = 0.05;
    std::string one = dir + "_one";
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, one.c_str(), nullptr, &err), FGMM_OK)
        << err.msg;
    RankJob j{{}, {}, model, &o, dir};
    for (int r = 0; r < 3; r++) {
        fgmm_engine *en;
        fgmm_source *s;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 1, &en, &err), FGMM_OK) << err.msg;
        ASSERT_EQ(fgmm_source_memory_chunked(x.data(), FGMM_F32, n, D, 1000, "mem", &s, &err),
                  FGMM_OK);
        j.engines.push_back(en);
        j.sources.push_back(s);
    }
    ASSERT_EQ(fgmm_dist_run_local(3, 60, assign_rank, &j, &err), FGMM_OK) << err.msg;
    ReadBack a, b;
    fgmm_assignments *h;
    ASSERT_EQ(fgmm_assignments_open(one.c_str(), &h, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_assignments_read(h, read_sink, &a, &err), FGMM_OK) << err.msg;
    fgmm_assignments_close(h);
    ASSERT_EQ(fgmm_assignments_open(dir.c_str(), &h, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_assignments_read(h, read_sink, &b, &err), FGMM_OK) << err.msg;
    int64_t extras = fgmm_assignments_entries(h) - fgmm_assignments_rows(h);
    fgmm_assignments_close(h);
    EXPECT_EQ(extras, (int64_t)std::floor(0.05 * n));
    ASSERT_EQ(a.rows.size(), b.rows.size());
    for (size_t i = 0; i < a.rows.size(); i++) {
        ASSERT_EQ(a.rows[i].lists, b.rows[i].lists) << "row " << i;
        ASSERT_EQ(a.rows[i].weights, b.rows[i].weights) << "row " << i;
        ASSERT_EQ(a.rows[i].ll, b.rows[i].ll) << "row " << i;
    }
    // A rank that fails fails them all and leaves nothing.
    std::string bad = dir + "_bad";
    j.dir = bad;
    fgmm_source_close(j.sources[2]);
    std::vector<float> y((size_t)n * (D + 1), 0.5f);
    ASSERT_EQ(fgmm_source_memory(y.data(), FGMM_F32, n, D + 1, "wide", &j.sources[2], &err),
              FGMM_OK);
    EXPECT_EQ(fgmm_dist_run_local(3, 60, assign_rank, &j, &err), FGMM_ERR_ARGUMENT);
    EXPECT_NE(strstr(err.msg, "rank 2"), nullptr) << err.msg;
    EXPECT_FALSE(access(bad.c_str(), F_OK) == 0);
    EXPECT_EQ(count_tmp(tmp_root()), 0);
    for (int r = 0; r < 3; r++) {
        fgmm_source_close(j.sources[r]);
        fgmm_engine_free(j.engines[r]);
    }
}

TEST_F(Assignments, ListSizesInTheManifestAreChecked)
{
    ASSERT_EQ(fgmm_assignments_write(e, src, model, &o, dir.c_str(), nullptr, &err), FGMM_OK)
        << err.msg;
    // Move one count from a list to another: totals still agree, so only
    // recounting the shards finds it.
    std::string mpath = dir + "/manifest.json";
    FILE *f = fopen(mpath.c_str(), "r");
    ASSERT_NE(f, nullptr);
    std::string text;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
    fclose(f);
    size_t at = text.find("\"list_sizes\": [");
    ASSERT_NE(at, std::string::npos) << text;
    at += strlen("\"list_sizes\": [");
    size_t a0 = text.find_first_of("0123456789", at);
    size_t a1 = text.find_first_not_of("0123456789", a0);
    size_t b0 = text.find_first_of("0123456789", a1);
    size_t b1 = text.find_first_not_of("0123456789", b0);
    long va = std::stol(text.substr(a0, a1 - a0)), vb = std::stol(text.substr(b0, b1 - b0));
    ASSERT_GT(va, 0);
    text = text.substr(0, a0) + std::to_string(va - 1) + text.substr(a1, b0 - a1) +
           std::to_string(vb + 1) + text.substr(b1);
    f = fopen(mpath.c_str(), "w");
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
    fgmm_assignments *a;
    ASSERT_EQ(fgmm_assignments_open(dir.c_str(), &a, &err), FGMM_OK) << err.msg;
    EXPECT_EQ(fgmm_assignments_read(a, nullptr, nullptr, &err), FGMM_ERR_FORMAT);
    EXPECT_NE(strstr(err.msg, "list 0 holds"), nullptr) << err.msg;
    fgmm_assignments_close(a);
}

}  // namespace
