/*
 * distance.c - the one squared-L2 distance of ivf/ (fgmm_ivf_l2) and the
 * loading of a source's first rows as float32.
 */
#include "ivf/fgmm_ivf.h"

#include <stdlib.h>
#include <string.h>

/* Eight float lanes: one AVX register under -march=x86-64-v3, and plain
 * element-wise code elsewhere (GCC/Clang vector extension). */
typedef float ivf_v8 __attribute__((vector_size(32)));

float fgmm_ivf_l2(const float *a, const float *b, int d)
{
    /* Eight independent partial sums, reduced in a fixed order: the result
     * is a function of the two rows only, which the exact search and the
     * index scan rely on to agree bit for bit. */
    ivf_v8 s = {0, 0, 0, 0, 0, 0, 0, 0};
    int j = 0;
    for (; j + 8 <= d; j += 8) {
        ivf_v8 va, vb;
        memcpy(&va, a + j, sizeof va);
        memcpy(&vb, b + j, sizeof vb);
        ivf_v8 t = va - vb;
        s += t * t;
    }
    float r[8];
    memcpy(r, &s, sizeof r);
    for (int l = 0; j < d; j++, l++) {
        float t = a[j] - b[j];
        r[l] += t * t;
    }
    return ((r[0] + r[4]) + (r[1] + r[5])) + ((r[2] + r[6]) + (r[3] + r[7]));
}

fgmm_status fgmm_ivf_load_rows(fgmm_source *src, int64_t n, float **out, fgmm_error *err)
{
    *out = NULL;
    const int d = fgmm_source_dim(src);
    if (n < 0 || n > fgmm_source_rows(src))
        return fgmm_fail(err, FGMM_ERR_ARGUMENT, "%s: asked for %lld rows, it has %lld",
                         fgmm_source_name(src), (long long)n,
                         (long long)fgmm_source_rows(src));
    float *x = malloc(sizeof(float) * ((size_t)n * d + 1));
    if (!x)
        return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory for %lld rows of %s",
                         (long long)n, fgmm_source_name(src));
    fgmm_status st = fgmm_source_rewind(src, err);
    int64_t got = 0;
    while (!st && got < n) {
        fgmm_chunk c;
        if ((st = fgmm_source_next(src, &c, err))) break;
        if (c.n_rows == 0) break;
        for (int64_t i = 0; i < c.n_rows && got < n; i++, got++)
            fgmm_convert_row(c.dtype, (const char *)c.rows + (size_t)i * c.row_stride, (size_t)d,
                             x + (size_t)got * d);
    }
    if (!st && got < n)
        st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: a pass ended after %lld of %lld rows",
                       fgmm_source_name(src), (long long)got, (long long)n);
    if (st) {
        free(x);
        return st;
    }
    *out = x;
    return FGMM_OK;
}
