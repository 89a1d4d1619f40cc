// ivf_test.cc - the IVF evaluator (ivf/fgmm_ivf.h): recall, distance counts
// with rows in two lists, SOAR's spill against the rule evaluated directly,
// list-size imbalance, the exact top-k; then the whole evaluation on
// embedding-like synthetic data through the library and through the
// flashgmm binary, and the binary's bad-input cases.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "backends/fgmm_backends.h"
#include "core/fgmm.h"
#include "core/synthetic.h"
#include "tests/cli_run.h"
#include "io/fgmm_io.h"
#include "ivf/fgmm_ivf.h"

namespace {

const char kHeader[] =
    "method,nprobe,dist_per_query,recall_at_1,recall_at_10,recall_at_100,index_rows";

// ------------------------------------------------------------ unit cases

TEST(IvfRecall, HandMadeLists)
{
    const int32_t truth[] = {3, 5, 7, 9, 11};
    const int32_t got[] = {5, 3, 8, 9};
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 4, truth, 5, 1), 0.0);   // 5 is not the nearest
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 4, truth, 5, 2), 1.0);   // {5,3} = {3,5}
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 4, truth, 5, 3), 2.0 / 3);
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 4, truth, 5, 4), 3.0 / 4);
    // Fewer results than k: the missing ones count as misses.
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 2, truth, 5, 4), 2.0 / 4);
    // k beyond the truth's depth is capped at it.
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 4, truth, 5, 100), 3.0 / 5);
    EXPECT_DOUBLE_EQ(fgmm_ivf_recall(got, 0, truth, 5, 10), 0.0);
}

TEST(IvfGini, KnownListSizes)
{
    const int64_t equal[] = {5, 5, 5, 5};
    const int64_t one[] = {0, 0, 0, 12};
    const int64_t ramp[] = {4, 1, 3, 2};
    EXPECT_DOUBLE_EQ(fgmm_ivf_gini(equal, 4), 0.0);
    EXPECT_DOUBLE_EQ(fgmm_ivf_gini(one, 4), 0.75);  // (k-1)/k
    EXPECT_DOUBLE_EQ(fgmm_ivf_gini(ramp, 4), 0.25);  // mean |xi-xj| / (2 mean) = 1.25 / 5

    // Lists of sizes 1, 2, 3, 4 over 7 rows, three of them in two lists.
    const int32_t assign[] = {0, 1,  1, 2,  2, 3,  3, -1, 3, -1, 2, -1, 3, -1};
    fgmm_ivf_lists l;
    fgmm_error err{};
    ASSERT_EQ(fgmm_ivf_lists_build(4, 7, 2, assign, &l, &err), FGMM_OK) << err.msg;
    fgmm_ivf_list_stats s;
    ASSERT_EQ(fgmm_ivf_lists_stats(&l, &s, &err), FGMM_OK);
    EXPECT_EQ(s.entries, 10);
    EXPECT_DOUBLE_EQ(s.multi_list_share, 3.0 / 7);
    EXPECT_DOUBLE_EQ(s.size_max_over_mean, 4.0 / 2.5);
    EXPECT_DOUBLE_EQ(s.gini, 0.25);
    // Rows ascending inside a list.
    EXPECT_EQ(std::vector<int32_t>(l.ids + l.offsets[3], l.ids + l.offsets[4]),
              (std::vector<int32_t>{2, 3, 4, 6}));
    fgmm_ivf_lists_free(&l);

    const int32_t twice[] = {1, 1};
    EXPECT_EQ(fgmm_ivf_lists_build(4, 1, 2, twice, &l, &err), FGMM_ERR_ARGUMENT);
    const int32_t none[] = {-1, -1};
    EXPECT_EQ(fgmm_ivf_lists_build(4, 1, 2, none, &l, &err), FGMM_ERR_ARGUMENT);
}

// A model with the given means (spherical, unit variances, equal weights).
fgmm_model *model_with_means(int k, int d, const std::vector<double> &means)
{
    fgmm_model *m = nullptr;
    fgmm_error err{};
    EXPECT_EQ(fgmm_model_create(k, d, FGMM_COV_SPHERICAL, &m, &err), FGMM_OK);
    memcpy(fgmm_model_means(m), means.data(), sizeof(double) * k * d);
    return m;
}

TEST(IvfSearch, CountsEveryScanAndDeduplicates)
{
    // Six rows on a line; list 0 = {0,1,2,3}, list 1 = {2,3,4,5}: rows 2
    // and 3 are in both.
    const int d = 2;
    const float base[] = {0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0};
    const int32_t assign[] = {0, -1, 0, -1, 0, 1, 0, 1, 1, -1, 1, -1};
    fgmm_ivf_lists l;
    fgmm_error err{};
    ASSERT_EQ(fgmm_ivf_lists_build(2, 6, 2, assign, &l, &err), FGMM_OK) << err.msg;
    fgmm_model *m = model_with_means(2, d, {1.5, 0, 3.5, 0});
    fgmm_ivf_coarse c;
    ASSERT_EQ(fgmm_ivf_coarse_from_model(m, &c, &err), FGMM_OK);
    // Query at x = 0.9: list 0 first. Its truth: all six rows by distance.
    const float q[] = {0.9f, 0};
    int32_t gt[6];
    ASSERT_EQ(fgmm_ivf_exact_topk(base, 6, d, q, 1, 6, 1, gt, &err), FGMM_OK);
    EXPECT_EQ(std::vector<int32_t>(gt, gt + 6), (std::vector<int32_t>{1, 0, 2, 3, 4, 5}));
    const int nprobe[] = {1, 2};
    fgmm_ivf_sweep s;
    ASSERT_EQ(fgmm_ivf_search_sweep(&l, &c, FGMM_IVF_PROBE_L2, base, q, 1, gt, 6, nprobe, 2, 1,
                                    &s, &err),
              FGMM_OK)
        << err.msg;
    EXPECT_DOUBLE_EQ(s.dist[0], 2 + 4);
    EXPECT_DOUBLE_EQ(s.dist_dedup[0], 2 + 4);
    EXPECT_DOUBLE_EQ(s.dist[1], 2 + 8);        // rows 2 and 3 counted twice
    EXPECT_DOUBLE_EQ(s.dist_dedup[1], 2 + 6);  // and once here
    EXPECT_DOUBLE_EQ(s.recall[0][0], 1.0);     // row 1 is in list 0
    EXPECT_DOUBLE_EQ(s.recall[2][0], 4.0 / 6); // 4 of 6 rows seen
    EXPECT_DOUBLE_EQ(s.recall[2][1], 1.0);     // all, each once
    // An nprobe above K or not increasing is refused.
    const int bad[] = {2, 3};
    EXPECT_EQ(fgmm_ivf_search_sweep(&l, &c, FGMM_IVF_PROBE_L2, base, q, 1, gt, 6, bad, 2, 1, &s,
                                    &err),
              FGMM_ERR_ARGUMENT);
    fgmm_ivf_coarse_free(&c);
    fgmm_model_free(m);
    fgmm_ivf_lists_free(&l);
}

TEST(IvfProbe, PosteriorOrderFollowsWeightsAndVariances)
{
    // Two components equally far from q: the heavier one comes first; the
    // third, far away and broad, last.
    const int d = 3;
    fgmm_model *m = model_with_means(3, d, {1, 0, 0, -1, 0, 0, 0, 5, 0});
    double *w = fgmm_model_weights(m), *v = fgmm_model_variances(m);
    w[0] = 0.2, w[1] = 0.7, w[2] = 0.1;
    v[0] = v[1] = 1, v[2] = 4;
    fgmm_ivf_coarse c;
    fgmm_error err{};
    ASSERT_EQ(fgmm_ivf_coarse_from_model(m, &c, &err), FGMM_OK);
    const float q[] = {0, 0, 0};
    std::vector<double> scratch(2 * 3);
    int32_t order[3];
    fgmm_ivf_rank_lists(&c, FGMM_IVF_PROBE_POSTERIOR, q, scratch.data(), order);
    EXPECT_EQ(std::vector<int32_t>(order, order + 3), (std::vector<int32_t>{1, 0, 2}));
    fgmm_ivf_rank_lists(&c, FGMM_IVF_PROBE_L2, q, scratch.data(), order);
    // A tie in distance: the smaller index first.
    EXPECT_EQ(std::vector<int32_t>(order, order + 3), (std::vector<int32_t>{0, 1, 2}));
    fgmm_ivf_coarse_free(&c);
    fgmm_model_free(m);
}

TEST(IvfProbe, MatrixCovarianceThatIsNotPositiveDefiniteIsNamed)
{
    const int d = 2;
    fgmm_error err{};
    for (fgmm_covariance cov : {FGMM_COV_FULL, FGMM_COV_TIED}) {
        fgmm_model *m = nullptr;
        ASSERT_EQ(fgmm_model_create(2, d, cov, &m, &err), FGMM_OK);
        double *w = fgmm_model_weights(m), *v = fgmm_model_variances(m);
        w[0] = w[1] = 0.5;
        for (int i = 0; i < 2 * d; i++) fgmm_model_means(m)[i] = i;
        // Component 0 (full) or the shared matrix (tied): eigenvalues 3, -1.
        const double good[4] = {1, 0, 0, 1}, bad[4] = {1, 2, 2, 1};
        memcpy(v, bad, sizeof bad);
        if (cov == FGMM_COV_FULL) {
            memcpy(v, good, sizeof good);
            memcpy(v + 4, bad, sizeof bad);
        }
        fgmm_ivf_coarse c;
        EXPECT_EQ(fgmm_ivf_coarse_from_model(m, &c, &err), FGMM_ERR_ARGUMENT);
        const char *want =
            cov == FGMM_COV_FULL
                ? "covariance of component 1 is not positive definite (leading minor 2)"
                : "tied covariance is not positive definite (leading minor 2)";
        EXPECT_NE(strstr(err.msg, want), nullptr) << err.msg;
        fgmm_model_free(m);
    }
}

struct Top1 {
    std::vector<int32_t> idx;
};

fgmm_status collect_top1(void *user, int64_t first_row, int64_t n, int m, const int32_t *idx,
                         const float *lresp, const float *ll, fgmm_error *err)
{
    (void)lresp, (void)ll, (void)err;
    Top1 *t = static_cast<Top1 *>(user);
    for (int64_t i = 0; i < n; i++) t->idx[first_row + i] = idx[i * m];
    return FGMM_OK;
}

TEST(IvfProbe, PosteriorOrderAgreesWithTheEnginesTopComponent)
{
    // The posterior ranking is computed in ivf/, not by the engine: its
    // first list must be fgmm_assign's top component for every row.
    const int n = 600, d = 6, k = 8;
    fgmm_rng r;
    fgmm_rng_seed(&r, 5);
    for (fgmm_covariance cov :
         {FGMM_COV_DIAG, FGMM_COV_SPHERICAL, FGMM_COV_FULL, FGMM_COV_TIED}) {
        fgmm_model *m = nullptr;
        fgmm_error err{};
        ASSERT_EQ(fgmm_model_create(k, d, cov, &m, &err), FGMM_OK);
        double *w = fgmm_model_weights(m), *mu = fgmm_model_means(m),
               *v = fgmm_model_variances(m);
        double tot = 0;
        for (int c = 0; c < k; c++) tot += w[c] = 0.2 + fgmm_rng_uniform(&r);
        for (int c = 0; c < k; c++) w[c] /= tot;
        for (int i = 0; i < k * d; i++) mu[i] = 2 * fgmm_rng_normal(&r);
        if (fgmm_covariance_is_matrix(cov)) {
            // B B^T + 0.3 I: symmetric positive definite, correlated.
            for (int f = 0; f < (cov == FGMM_COV_FULL ? k : 1); f++) {
                std::vector<double> b(d * d);
                for (auto &e : b) e = fgmm_rng_normal(&r);
                double *a = v + (size_t)f * d * d;
                for (int i = 0; i < d; i++)
                    for (int j = 0; j < d; j++) {
                        double s = i == j ? 0.3 : 0.0;
                        for (int l = 0; l < d; l++) s += b[i * d + l] * b[j * d + l];
                        a[i * d + j] = s;
                    }
            }
        } else {
            for (size_t i = 0; i < fgmm_covariance_len(cov, k, d); i++)
                v[i] = 0.3 + 2 * fgmm_rng_uniform(&r);
        }
        std::vector<float> x(n * d);
        for (auto &e : x) e = (float)(2.5 * fgmm_rng_normal(&r));
        fgmm_engine *e = nullptr;
        ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
        fgmm_source *src = nullptr;
        ASSERT_EQ(fgmm_source_memory(x.data(), FGMM_F32, n, d, "rows", &src, &err), FGMM_OK);
        Top1 t;
        t.idx.assign(n, -1);
        ASSERT_EQ(fgmm_assign(e, src, m, 1, collect_top1, &t, &err), FGMM_OK) << err.msg;
        fgmm_ivf_coarse c;
        ASSERT_EQ(fgmm_ivf_coarse_from_model(m, &c, &err), FGMM_OK);
        std::vector<double> scratch(2 * k);
        std::vector<int32_t> order(k);
        int differs_from_l2 = 0;
        for (int i = 0; i < n; i++) {
            fgmm_ivf_rank_lists(&c, FGMM_IVF_PROBE_POSTERIOR, &x[i * d], scratch.data(),
                                order.data());
            EXPECT_EQ(order[0], t.idx[i]) << "row " << i << " " << fgmm_covariance_name(cov);
            int p0 = order[0];
            fgmm_ivf_rank_lists(&c, FGMM_IVF_PROBE_L2, &x[i * d], scratch.data(), order.data());
            differs_from_l2 += order[0] != p0;
        }
        // Unequal weights and variances: the two orders must differ somewhere.
        EXPECT_GT(differs_from_l2, 0) << fgmm_covariance_name(cov);
        fgmm_ivf_coarse_free(&c);
        fgmm_source_close(src);
        fgmm_engine_free(e);
        fgmm_model_free(m);
    }
}

TEST(IvfSoar, SpillEqualsTheRuleEvaluatedDirectly)
{
    const int n = 400, d = 7, k = 9;
    fgmm_rng r;
    fgmm_rng_seed(&r, 11);
    std::vector<float> x(n * d), c(k * d);
    for (auto &v : c) v = (float)fgmm_rng_normal(&r);
    for (auto &v : x) v = (float)fgmm_rng_normal(&r);
    // Row 0 sits exactly on centroid 4: no residual, plain second nearest.
    for (int j = 0; j < d; j++) x[j] = c[4 * d + j];
    std::vector<int32_t> primary(n), spill(n);
    fgmm_error err{};
    ASSERT_EQ(fgmm_ivf_nearest(x.data(), n, d, c.data(), k, 3, primary.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmm_ivf_soar_spill(x.data(), n, d, c.data(), k, primary.data(), 1.0, 3,
                                  spill.data(), &err),
              FGMM_OK);
    EXPECT_EQ(primary[0], 4);
    int differs_from_second = 0;
    for (int i = 0; i < n; i++) {
        const float *xi = &x[i * d];
        auto dist = [&](int cc) {
            double s = 0;
            for (int j = 0; j < d; j++) {
                double y = (double)xi[j] - c[cc * d + j];
                s += y * y;
            }
            return s;
        };
        int p = 0;
        for (int cc = 1; cc < k; cc++)
            if (dist(cc) < dist(p)) p = cc;
        ASSERT_EQ(primary[i], p) << "row " << i;
        double rr = 0;
        std::vector<double> res(d);
        for (int j = 0; j < d; j++) {
            res[j] = (double)xi[j] - c[p * d + j];
            rr += res[j] * res[j];
        }
        int best = -1, second = -1;
        double bl = INFINITY, sd = INFINITY;
        for (int cc = 0; cc < k; cc++) {
            if (cc == p) continue;
            double dot = 0;
            for (int j = 0; j < d; j++) dot += res[j] * ((double)xi[j] - c[cc * d + j]);
            double loss = dist(cc) + (rr > 0 ? dot * dot / rr : 0);
            if (loss < bl) bl = loss, best = cc;
            if (dist(cc) < sd) sd = dist(cc), second = cc;
        }
        ASSERT_EQ(spill[i], best) << "row " << i;
        EXPECT_NE(spill[i], primary[i]);
        if (i == 0) {
            EXPECT_EQ(spill[0], second);
        }
        differs_from_second += best != second;
    }
    // The rule is not the plain second nearest (else the test proves little).
    EXPECT_GT(differs_from_second, n / 20);
}

TEST(IvfTruth, ExactTopKOrdersByDistanceThenId)
{
    // Rows 1 and 3 are equally far from q: the smaller id comes first.
    const float base[] = {5, 1, 9, 1, 0};
    const float q[] = {0};
    int32_t ids[4];
    fgmm_error err{};
    ASSERT_EQ(fgmm_ivf_exact_topk(base, 5, 1, q, 1, 4, 2, ids, &err), FGMM_OK);
    EXPECT_EQ(std::vector<int32_t>(ids, ids + 4), (std::vector<int32_t>{4, 1, 3, 0}));
}

// ------------------------------------------------------ synthetic embeddings

std::string g_dir;
const int kN = 20000, kQ = 200, kD = 96, kK = 64;

std::string path(const std::string &name) { return g_dir + "/" + name; }

void write_fbin(const std::string &p, const std::vector<float> &x, uint32_t n, uint32_t d)
{
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr) << p;
    fwrite(&n, 4, 1, f);
    fwrite(&d, 4, 1, f);
    fwrite(x.data(), 4, (size_t)n * d, f);
    fclose(f);
}

// Embedding-like rows: unit vectors around 40 cluster directions of
// unequal size and spread, the same clusters for base and queries.
void embeddings(fgmm_rng *r, int n, int d, std::vector<float> *out)
{
    out->resize((size_t)n * d);
    fgmm_error err{};
    ASSERT_EQ(fgmm_synthetic_embeddings(2024, 40, d, 0.4, 1.2, r, n, out->data(), &err), FGMM_OK)
        << err.msg;
}



bool exists(const std::string &p)
{
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

struct Row {
    std::string method;
    int nprobe;
    double dist, r1, r10, r100;
    long long index_rows;
};

std::vector<Row> parse_results(const std::string &text, std::string *header)
{
    std::vector<Row> rows;
    std::istringstream in(text);
    std::getline(in, *header);
    std::string line;
    while (std::getline(in, line)) {
        Row r;
        char name[64];
        if (sscanf(line.c_str(), "%63[^,],%d,%lf,%lf,%lf,%lf,%lld", name, &r.nprobe, &r.dist,
                   &r.r1, &r.r10, &r.r100, &r.index_rows) != 7) {
            ADD_FAILURE() << "bad line: " << line;
            continue;
        }
        r.method = name;
        rows.push_back(r);
    }
    return rows;
}

class IvfEval : public ::testing::Test {
  protected:
    static void SetUpTestSuite()
    {
        const char *t = getenv("TEST_TMPDIR");
        char tmpl[] = "/tmp/fgmm_ivf_XXXXXX";
        g_dir = t ? std::string(t) + "/ivf" : std::string(mkdtemp(tmpl));
        mkdir(g_dir.c_str(), 0755);
        fgmm_rng r;
        fgmm_rng_seed(&r, 7);
        std::vector<float> base, query;
        embeddings(&r, kN, kD, &base);
        embeddings(&r, kQ, kD, &query);
        write_fbin(path("base.fbin"), base, kN, kD);
        write_fbin(path("query.fbin"), query, kQ, kD);
        std::vector<float> q5(10 * 5, 0.5f);
        write_fbin(path("d5.fbin"), q5, 10, 5);
    }

    // Every method's curve: the exact header, recall non-decreasing in
    // nprobe, exact search at nprobe = K, and each index's size.
    static void check_results(const std::string &dir)
    {
        std::string header;
        std::vector<Row> rows = parse_results(read_all(dir + "/results.csv"), &header);
        EXPECT_EQ(header, kHeader);
        std::map<std::string, std::vector<Row>> by;
        for (const Row &r : rows) by[r.method].push_back(r);
        const char *methods[] = {"kmeans", "kmeans-soar", "gmm", "gmm/posterior", "gmm-multi",
                                 "gmm-multi/posterior"};
        EXPECT_EQ(by.size(), 6u);
        for (const char *m : methods) {
            const std::vector<Row> &c = by[m];
            ASSERT_EQ(c.size(), 7u) << m;  // 1, 2, ..., 64 = K
            for (size_t i = 1; i < c.size(); i++) {
                EXPECT_GT(c[i].nprobe, c[i - 1].nprobe) << m;
                EXPECT_GE(c[i].r1, c[i - 1].r1) << m << " nprobe " << c[i].nprobe;
                EXPECT_GE(c[i].r10, c[i - 1].r10) << m << " nprobe " << c[i].nprobe;
                EXPECT_GE(c[i].r100, c[i - 1].r100) << m << " nprobe " << c[i].nprobe;
                EXPECT_GE(c[i].dist, c[i - 1].dist) << m;
            }
            EXPECT_EQ(c.back().nprobe, kK);
            EXPECT_EQ(c.back().r1, 1.0) << m;
            EXPECT_EQ(c.back().r10, 1.0) << m;
            EXPECT_EQ(c.back().r100, 1.0) << m;
            // Exhaustive: K centroid distances plus every list entry.
            EXPECT_NEAR(c.back().dist, kK + c.back().index_rows, 0.01) << m;
            // An index that finds nothing would still pass the checks above.
            EXPECT_GT(c[2].r10, 0.5) << m << " at nprobe 4";
        }
        EXPECT_EQ(by["kmeans"][0].index_rows, kN);
        EXPECT_EQ(by["gmm"][0].index_rows, kN);
        EXPECT_EQ(by["kmeans-soar"][0].index_rows, 2LL * kN);
        EXPECT_GT(by["gmm-multi"][0].index_rows, kN);
        EXPECT_EQ(by["gmm-multi"][0].index_rows, by["gmm-multi/posterior"][0].index_rows);
        // SOAR's second copy pays off at equal nprobe.
        EXPECT_GE(by["kmeans-soar"][0].r10, by["kmeans"][0].r10);
        std::string m = read_all(dir + "/methods.csv");
        EXPECT_EQ(m.substr(0, m.find('\n')),
                  "method,train_seconds,index_rows,multi_list_share,list_size_max_over_mean,"
                  "list_size_gini,build_seconds");
        std::string svg = read_all(dir + "/recall.svg");
        EXPECT_NE(svg.find("<svg"), std::string::npos);
        EXPECT_NE(svg.find("recall@10"), std::string::npos);
        EXPECT_NE(svg.find("gmm-multi/posterior"), std::string::npos);
        EXPECT_NE(svg.find("</svg>"), std::string::npos);
        EXPECT_TRUE(exists(dir + "/dedup.csv"));
    }

    void expect_fail(const std::string &args, int code, const std::string &needle)
    {
        Result r = run("ivf-eval " + args);
        EXPECT_EQ(r.code, code) << args << "\n" << r.out;
        EXPECT_NE(r.out.find(needle), std::string::npos)
            << "flashgmm ivf-eval " << args << "\nprinted: " << r.out << "\nexpected: " << needle;
    }
};

TEST_F(IvfEval, LibraryAndBinaryAgree)
{
    fgmm_error err{};
    fgmm_engine *e = nullptr;
    ASSERT_EQ(fgmm_engine_create(FGMM_DEVICE_CPU, 2, &e, &err), FGMM_OK) << err.msg;
    fgmm_source *b = nullptr, *q = nullptr;
    ASSERT_EQ(fgmm_dataset_open(path("base.fbin").c_str(), &b, &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_dataset_open(path("query.fbin").c_str(), &q, &err), FGMM_OK) << err.msg;
    fgmm_ivf_eval_params p;
    fgmm_ivf_eval_params_default(&p);
    p.nlist = kK;
    p.max_iter = 25;
    p.threads = 2;
    p.seed = 3;
    p.rule.temperature = 2;
    ASSERT_EQ(fgmm_ivf_eval(e, b, q, nullptr, &p, path("api").c_str(), &err), FGMM_OK) << err.msg;
    fgmm_source_close(b);
    fgmm_source_close(q);
    fgmm_engine_free(e);
    check_results(path("api"));

    // The cached ground truth is the exact top-100 of every query.
    std::string gt = read_all(path("api/gt.ivecs"));
    ASSERT_EQ(gt.size(), (size_t)kQ * 101 * 4);
    int32_t k0;
    memcpy(&k0, gt.data(), 4);
    EXPECT_EQ(k0, 100);

    // The binary, with one thread and the ground truth it is given: the
    // same results, bit for bit (only the timings of methods.csv differ).
    Result r = run("ivf-eval --quiet --base " + path("base.fbin") + " --query " +
                   path("query.fbin") + " --gt " + path("api/gt.ivecs") +
                   " --nlist 64 --max-iter 25 --seed 3 --temperature 2 --threads 1 --out " +
                   path("cli") + "/");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(read_all(path("cli/results.csv")), read_all(path("api/results.csv")));
    EXPECT_EQ(read_all(path("cli/dedup.csv")), read_all(path("api/dedup.csv")));
    EXPECT_FALSE(exists(path("cli/gt.ivecs")));  // given, not computed
    check_results(path("cli"));
    // Nothing temporary is left beside the outputs.
    DIR *d = opendir(g_dir.c_str());
    while (struct dirent *en = readdir(d))
        EXPECT_EQ(strstr(en->d_name, ".tmp."), nullptr) << en->d_name;
    closedir(d);
}

// The embedding generator: unit rows, clusters shared between calls with
// the same centre seed, the first cluster the largest, bad sizes refused.
TEST(SyntheticEmbeddings, UnitRowsSharedCentresAndBadArguments)
{
    const int n = 4000, d = 16, c = 8;
    std::vector<float> a((size_t)n * d), b((size_t)n * d);
    fgmm_rng r1, r2;
    fgmm_rng_seed(&r1, 1);
    fgmm_rng_seed(&r2, 1);
    fgmm_error err{};
    ASSERT_EQ(fgmm_synthetic_embeddings(9, c, d, 0.1, 0.2, &r1, n, a.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmm_synthetic_embeddings(9, c, d, 0.1, 0.2, &r2, n, b.data(), &err), FGMM_OK);
    EXPECT_EQ(a, b);  // deterministic
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)a[(size_t)i * d + j] * a[(size_t)i * d + j];
        ASSERT_NEAR(s, 1.0, 1e-5) << "row " << i;
    }
    // Tight clusters: the first row's cluster holds at least its share of
    // the smallest weight, (1/c) / H_c (4.6% for c = 8), so that many rows
    // lie close to it; independent directions in 16 dimensions would not.
    int near_first = 0;
    for (int i = 0; i < n; i++) {
        double dot = 0;
        for (int j = 0; j < d; j++) dot += (double)a[(size_t)i * d + j] * a[j];
        near_first += dot > 0.9;
    }
    EXPECT_GT(near_first, n / 50);
    EXPECT_EQ(fgmm_synthetic_embeddings(9, 0, d, 0.1, 0.2, &r1, n, a.data(), &err),
              FGMM_ERR_ARGUMENT);
    EXPECT_NE(strstr(err.msg, "clusters (0)"), nullptr) << err.msg;
    EXPECT_EQ(fgmm_synthetic_embeddings(9, c, d, 0.3, 0.2, &r1, n, a.data(), &err),
              FGMM_ERR_ARGUMENT);
}

// Full and tied mixtures as the GMM methods' model: EM from the k-means
// model's diagonal, lists by the engine, probes by the Mahalanobis
// posterior; exhaustive at nprobe = K, and an index that finds something.
TEST_F(IvfEval, FullAndTiedMixtures)
{
    for (const char *cov : {"full", "tied"}) {
        const std::string out = path(std::string("cov_") + cov);
        Result r = run("ivf-eval --quiet --base " + path("base.fbin") + " --query " +
                       path("query.fbin") + " --queries 50 --train-sample 4000 --nlist 16" +
                       " --methods gmm,gmm-multi --max-iter 4 --nprobe 1,2,4,8,16 --seed 3" +
                       " --covariance " + cov + " --out " + out);
        ASSERT_EQ(r.code, 0) << cov << ": " << r.out;
        std::string header;
        std::vector<Row> rows = parse_results(read_all(out + "/results.csv"), &header);
        EXPECT_EQ(header, kHeader);
        std::map<std::string, std::vector<Row>> by;
        for (const Row &row : rows) by[row.method].push_back(row);
        EXPECT_EQ(by.size(), 4u) << cov;
        for (const char *m : {"gmm", "gmm/posterior", "gmm-multi", "gmm-multi/posterior"}) {
            const std::vector<Row> &c = by[m];
            ASSERT_EQ(c.size(), 5u) << cov << " " << m;
            EXPECT_EQ(c.back().r10, 1.0) << cov << " " << m;
            EXPECT_NEAR(c.back().dist, 16 + c.back().index_rows, 0.01) << cov << " " << m;
            EXPECT_GT(c[2].r10, 0.5) << cov << " " << m << " at nprobe 4";
        }
        EXPECT_EQ(by["gmm"][0].index_rows, kN) << cov;
    }
}

TEST_F(IvfEval, BadInputs)
{
    const std::string bq = " --base " + path("base.fbin") + " --query " + path("query.fbin");
    mkdir(path("taken").c_str(), 0755);
    expect_fail(bq + " --nlist 8 --out " + path("taken"), 1, path("taken") + ": already exists");
    expect_fail(" --base " + path("base.fbin") + " --query " + path("d5.fbin") +
                    " --nlist 8 --out " + path("o1"),
                1, "dimension 5");
    expect_fail(bq + " --nlist 8 --covariance dense --out " + path("o2"), 2,
                "unknown covariance 'dense'; expected diag, spherical, full or tied");
    expect_fail(bq + " --nlist 8 --nprobe 4,2 --out " + path("o2"), 2, "--nprobe");
    expect_fail(bq + " --nlist 8 --nprobe 1,x --out " + path("o2"), 2, "--nprobe");
    expect_fail(bq + " --nlist 8 --nprobe 1,16 --out " + path("o2"), 2,
                "--nprobe 16 exceeds --nlist 8");
    expect_fail(bq + " --nlist 0 --out " + path("o3"), 2, "--nlist");
    expect_fail(bq + " --nlist 30000 --out " + path("o3"), 2, "--nlist 30000");
    expect_fail(bq + " --nlist 8 --methods kmeans,pq --out " + path("o4"), 2,
                "unknown method 'pq'");
    expect_fail(bq + " --nlist 8 --min-resp 0 --out " + path("o4"), 2,
                "--min-resp expects a number in (0, 1]");
    expect_fail(bq + " --nlist 8 --temperature 0 --out " + path("o4"), 2,
                "--temperature expects a number > 0");
    expect_fail(bq + " --nlist 8 --budget -1 --out " + path("o4"), 2, "--budget");
    // Ground truth with fewer rows than queries, and with an id beyond the base.
    {
        std::vector<int32_t> g;
        for (int i = 0; i < 10; i++) {
            g.push_back(3);
            g.insert(g.end(), {0, 1, 2});
        }
        FILE *f = fopen(path("short.ivecs").c_str(), "wb");
        fwrite(g.data(), 4, g.size(), f);
        fclose(f);
        g[2] = kN + 5;
        f = fopen(path("range.ivecs").c_str(), "wb");
        fwrite(g.data(), 4, g.size(), f);
        fclose(f);
    }
    expect_fail(bq + " --gt " + path("short.ivecs") + " --nlist 8 --methods kmeans --out " +
                    path("o5"),
                1, path("short.ivecs") + ": ground truth has 10 rows");
    expect_fail(bq + " --gt " + path("range.ivecs") +
                    " --queries 5 --nlist 8 --methods kmeans --out " + path("o6"),
                1, path("range.ivecs") + ": row 0 names base row 20005");
    for (const char *o : {"o1", "o2", "o3", "o4", "o5", "o6"}) EXPECT_FALSE(exists(path(o))) << o;
    DIR *d = opendir(g_dir.c_str());
    while (struct dirent *en = readdir(d))
        EXPECT_EQ(strstr(en->d_name, ".tmp."), nullptr) << en->d_name;
    closedir(d);
}

}  // namespace
