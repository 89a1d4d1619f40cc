/*
 * kmeans_driver.cu - greedy k-means++ seeding on the device (fgmmc_pp_*):
 * the rows and their squared distances d2 stay on the device, the caller
 * runs the loop and the draws, and each call moves only a few values.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/context.h"

fgmm_status fgmmc_pp_begin(fgmmc_context *ctx, const float *x, int64_t s, int d,
                            const double *shift, fgmm_error *err)
{
    if (!ctx || !x || !shift || s < 1 || d < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pp_begin: need ctx, x, shift, s >= 1, d >= 1");
    FGMMC_CHECK(cudaSetDevice(ctx->device), err);
    /* A previous seeding's last commit may still be writing d2. */
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    const int nb = fgmmc_pp_blocks(s);
    fgmm_status st;
    if ((st = DEV_RESERVE(ctx, ctx->d_pp_x, ctx->cap_pp_x, (size_t)s * d * sizeof(float), "k-means++ rows", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_dist, ctx->cap_pp_dist, (size_t)s * FGMMC_PP_MAX_L * sizeof(float), "k-means++ distances", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_cand, ctx->cap_pp_cand, (size_t)FGMMC_PP_MAX_L * d * sizeof(float), "k-means++ candidates", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_d2, ctx->cap_pp_d2, (size_t)s * sizeof(double), "k-means++ d2", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_bsum, ctx->cap_pp_bsum, (size_t)nb * sizeof(double), "k-means++ sums", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_prefix, ctx->cap_pp_prefix, (size_t)(nb + 1) * sizeof(double), "k-means++ prefix", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_thresh, ctx->cap_pp_thresh, FGMMC_PP_MAX_L * sizeof(double), "k-means++ draws", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_potpart, ctx->cap_pp_potpart, fgmmc_pp_pot_part_elems(FGMMC_PP_MAX_L) * sizeof(double), "k-means++ potentials", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_pot, ctx->cap_pp_pot, FGMMC_PP_MAX_L * sizeof(double), "k-means++ potentials", err)) ||
        (st = DEV_RESERVE(ctx, ctx->d_pp_pick, ctx->cap_pp_pick, FGMMC_PP_MAX_L * sizeof(int64_t), "k-means++ picks", err)))
        return st;
    free(ctx->pp_prefix);
    free(ctx->pp_shift);
    free(ctx->pp_cand);
    ctx->pp_prefix = (double *)malloc(sizeof(double) * (size_t)(nb + 1));
    ctx->pp_shift = (double *)malloc(sizeof(double) * (size_t)d);
    ctx->pp_cand = (float *)malloc(sizeof(float) * (size_t)FGMMC_PP_MAX_L * d);
    float *xc = (float *)malloc(sizeof(float) * (size_t)s * d);
    double *inf = (double *)malloc(sizeof(double) * (size_t)s);
    if (!ctx->pp_prefix || !ctx->pp_shift || !ctx->pp_cand || !xc || !inf) {
        ctx->pp_s = 0;
        free(xc);
        free(inf);
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "fgmmc_pp_begin: out of host memory");
    }
    /* Centred rows: fp32 distances keep their precision. */
    for (int64_t i = 0; i < s; i++)
        for (int j = 0; j < d; j++) xc[(size_t)i * d + j] = (float)((double)x[(size_t)i * d + j] - shift[j]);
    for (int64_t i = 0; i < s; i++) inf[i] = INFINITY;
    cudaError_t e1 = cudaMemcpy(ctx->d_pp_x, xc, (size_t)s * d * sizeof(float), cudaMemcpyHostToDevice);
    cudaError_t e2 = cudaMemcpy(ctx->d_pp_d2, inf, (size_t)s * sizeof(double), cudaMemcpyHostToDevice);
    free(xc);
    free(inf);
    FGMMC_CHECK(e1, err);
    FGMMC_CHECK(e2, err);
    memcpy(ctx->pp_shift, shift, sizeof(double) * (size_t)d);
    ctx->pp_s = s;
    ctx->pp_d = d;
    return FGMM_OK;
}

fgmm_status fgmmc_pp_total(fgmmc_context *ctx, double *total, fgmm_error *err)
{
    if (!ctx || !total || ctx->pp_s < 1)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pp_total: no seeding in progress");
    const int nb = fgmmc_pp_blocks(ctx->pp_s);
    fgmm_status st = fgmmc_pp_block_sums_launch(ctx->d_pp_d2, ctx->pp_s, ctx->d_pp_bsum, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(ctx->pp_prefix + 1, ctx->d_pp_bsum, (size_t)nb * sizeof(double),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    /* Prefix in block order on the host: the draws' running sum. */
    ctx->pp_prefix[0] = 0;
    for (int b = 0; b < nb; b++) ctx->pp_prefix[b + 1] += ctx->pp_prefix[b];
    *total = ctx->pp_prefix[nb];
    return FGMM_OK;
}

fgmm_status fgmmc_pp_pick(fgmmc_context *ctx, const double *thresh, int l_count, int64_t *rows,
                           fgmm_error *err)
{
    if (!ctx || !thresh || !rows || ctx->pp_s < 1 || l_count < 1 || l_count > FGMMC_PP_MAX_L)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pp_pick: bad arguments (l=%d)", l_count);
    const int nb = fgmmc_pp_blocks(ctx->pp_s);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_pp_prefix, ctx->pp_prefix, (size_t)(nb + 1) * sizeof(double),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    FGMMC_CHECK(cudaMemcpyAsync(ctx->d_pp_thresh, thresh, (size_t)l_count * sizeof(double),
                                cudaMemcpyHostToDevice, ctx->stream),
                err);
    fgmm_status st = fgmmc_pp_pick_launch(ctx->d_pp_d2, ctx->pp_s, ctx->d_pp_prefix, ctx->d_pp_thresh,
                                           l_count, ctx->d_pp_pick, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(rows, ctx->d_pp_pick, (size_t)l_count * sizeof(int64_t),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMM_OK;
}

fgmm_status fgmmc_pp_potentials(fgmmc_context *ctx, const float *cand, int l_count, double *pot,
                                 fgmm_error *err)
{
    if (!ctx || !cand || !pot || ctx->pp_s < 1 || l_count < 1 || l_count > FGMMC_PP_MAX_L)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pp_potentials: bad arguments (l=%d)", l_count);
    const int d = ctx->pp_d;
    for (int l = 0; l < l_count; l++)
        for (int j = 0; j < d; j++)
            ctx->pp_cand[(size_t)l * d + j] = (float)((double)cand[(size_t)l * d + j] - ctx->pp_shift[j]);
    /* Synchronous: pp_cand is rewritten by the next call. */
    FGMMC_CHECK(cudaMemcpy(ctx->d_pp_cand, ctx->pp_cand, (size_t)l_count * d * sizeof(float),
                           cudaMemcpyHostToDevice),
                err);
    fgmm_status st = fgmmc_pp_dist_launch(ctx->d_pp_x, ctx->pp_s, ctx->pp_d, ctx->d_pp_cand, l_count,
                                           ctx->d_pp_d2, ctx->d_pp_dist, ctx->d_pp_potpart,
                                           ctx->d_pp_pot, ctx->stream, err);
    if (st) return st;
    FGMMC_CHECK(cudaMemcpyAsync(pot, ctx->d_pp_pot, (size_t)l_count * sizeof(double),
                                cudaMemcpyDeviceToHost, ctx->stream),
                err);
    FGMMC_CHECK(cudaStreamSynchronize(ctx->stream), err);
    return FGMM_OK;
}

fgmm_status fgmmc_pp_commit(fgmmc_context *ctx, int l_count, int best, fgmm_error *err)
{
    if (!ctx || ctx->pp_s < 1 || best < 0 || best >= l_count)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "fgmmc_pp_commit: bad arguments");
    return fgmmc_pp_commit_launch(ctx->d_pp_d2, ctx->d_pp_dist, ctx->pp_s, l_count, best,
                                  ctx->stream, err);
}
