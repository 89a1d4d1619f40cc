// faiss_client_test.cc - a real IVF client: FAISS (python3-faiss) builds an
// IndexIVFFlat from `flashgmm export`'s means and primary lists and finds
// the recall@10 the evaluator (ivf/) finds for the same lists, nprobe and
// queries.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/fgmm.h"
#include "core/synthetic.h"
#include "io/fgmm_io.h"
#include "ivf/fgmm_ivf.h"

namespace {

std::string runfile(const char *rel)
{
    const char *srcdir = getenv("TEST_SRCDIR"), *ws = getenv("TEST_WORKSPACE");
    if (srcdir && ws) return std::string(srcdir) + "/" + ws + "/" + rel;
    return rel;
}

void write_fbin(const std::string &p, const std::vector<float> &x, uint32_t n, uint32_t d)
{
    FILE *f = fopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fwrite(&n, 4, 1, f);
    fwrite(&d, 4, 1, f);
    fwrite(x.data(), 4, x.size(), f);
    fclose(f);
}


int sh(const std::string &cmd)
{
    int st = system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(FaissClient, IndexFromExportedFilesHasTheEvaluatorsRecall)
{
    const char *t = getenv("TEST_TMPDIR");
    std::string dir = std::string(t ? t : "/tmp") + "/faiss_client";
    ASSERT_EQ(sh("rm -rf '" + dir + "' && mkdir -p '" + dir + "'"), 0);
    const int n = 6000, nq = 300, d = 48, c = 24, K = 32;
    fgmm_rng r;
    fgmm_rng_seed(&r, 11);
    std::vector<float> base((size_t)n * d), query((size_t)nq * d);
    fgmm_error err{};
    ASSERT_EQ(fgmm_synthetic_embeddings(5, c, d, 1.0, 2.0, &r, n, base.data(), &err), FGMM_OK);
    ASSERT_EQ(fgmm_synthetic_embeddings(5, c, d, 1.0, 2.0, &r, nq, query.data(), &err), FGMM_OK);
    write_fbin(dir + "/base.fbin", base, n, d);
    write_fbin(dir + "/query.fbin", query, nq, d);

    const std::string F = "tools/flashgmm ";
    ASSERT_EQ(sh(F + "fit --quiet --device cpu --data " + dir + "/base.fbin --k " +
                 std::to_string(K) + " --covariance spherical --max-iter 20 --out " + dir +
                 "/model > /dev/null"), 0);
    ASSERT_EQ(sh(F + "assign --device cpu --model " + dir + "/model --data " + dir +
                 "/base.fbin --max-lists 1 --out " + dir + "/lists > /dev/null"), 0);
    ASSERT_EQ(sh(F + "export --assignments " + dir + "/lists --model " + dir + "/model --out " +
                 dir + "/npy > /dev/null"), 0);

    // The evaluator's search over the same lists.
    fgmm_model *m;
    ASSERT_EQ(fgmm_model_load((dir + "/model").c_str(), &m, &err), FGMM_OK) << err.msg;
    double *prim = nullptr;
    int nd = 0;
    int64_t shape[2];
    ASSERT_EQ(fgmm_npy_read((dir + "/npy/primary.npy").c_str(), &prim, &nd, shape, &err), FGMM_OK)
        << err.msg;
    ASSERT_EQ(shape[0], n);
    std::vector<int32_t> primary(n);
    for (int i = 0; i < n; i++) primary[i] = (int32_t)prim[i];
    free(prim);
    fgmm_ivf_lists lists{};
    ASSERT_EQ(fgmm_ivf_lists_build(K, n, 1, primary.data(), &lists, &err), FGMM_OK) << err.msg;
    fgmm_ivf_coarse coarse{};
    ASSERT_EQ(fgmm_ivf_coarse_from_model(m, &coarse, &err), FGMM_OK) << err.msg;
    std::vector<int32_t> gt((size_t)nq * FGMM_IVF_TOPK);
    ASSERT_EQ(fgmm_ivf_exact_topk(base.data(), n, d, query.data(), nq, FGMM_IVF_TOPK, 2,
                                  gt.data(), &err), FGMM_OK) << err.msg;
    ASSERT_EQ(fgmm_ivf_gt_write((dir + "/gt.ivecs").c_str(), gt.data(), nq, FGMM_IVF_TOPK, &err),
              FGMM_OK) << err.msg;
    const int nprobe[3] = {1, 2, 4};
    fgmm_ivf_sweep sw;
    ASSERT_EQ(fgmm_ivf_search_sweep(&lists, &coarse, FGMM_IVF_PROBE_L2, base.data(), query.data(),
                                    nq, gt.data(), FGMM_IVF_TOPK, nprobe, 3, 2, &sw, &err),
              FGMM_OK) << err.msg;

    // FAISS over the exported files.
    std::string cmd = "/usr/bin/python3 '" + runfile("tests/faiss_client.py") + "' " + dir +
                      "/base.fbin " + dir + "/query.fbin " + dir + "/gt.ivecs " + dir +
                      "/npy 1 2 4";
    FILE *p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::vector<double> faiss_recall;
    double v;
    while (fscanf(p, "%lf", &v) == 1) faiss_recall.push_back(v);
    ASSERT_EQ(pclose(p), 0) << "the FAISS client failed (python3-faiss installed?): " << cmd;
    ASSERT_EQ(faiss_recall.size(), 3u);
    for (int i = 0; i < 3; i++) {
        printf("  nprobe %d: recall@10 evaluator %.4f, faiss %.4f\n", nprobe[i], sw.recall[1][i],
               faiss_recall[i]);
        // Equal but for a neighbour whose float32 distance ties another's
        // in one summation order and not the other: at most one per query
        // in a thousand.
        EXPECT_NEAR(faiss_recall[i], sw.recall[1][i], 1e-3) << "nprobe " << nprobe[i];
    }
    // Probing more lists finds more: the comparison is not of constants.
    EXPECT_LT(sw.recall[1][0], sw.recall[1][2]);
    EXPECT_GT(sw.recall[1][0], 0.2);
    fgmm_ivf_lists_free(&lists);
    fgmm_ivf_coarse_free(&coarse);
    fgmm_model_free(m);
}

}  // namespace
