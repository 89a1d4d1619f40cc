/*
 * shard_convert.c - `fgmm_shard_convert`: dataset files (or a directory of
 * them) through the shard writer, every input probed before anything is
 * written, rows converted to the output dtype on the way.
 */
#include "io/fgmm_io.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>


static int has_dataset_ext(const char *name)
{
    static const char *ext[] = {".fvecs", ".bvecs", ".fbin", ".u8bin", ".i8bin", ".npy"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && !strcasecmp(name + n - e, ext[i])) return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The input list: the paths given, or a directory's dataset files in name
 * order. */
static fgmm_status list_inputs(const char *const *inputs, int n, char ***out, int *count,
                               fgmm_error *err)
{
    struct stat sb;
    if (n == 1 && stat(inputs[0], &sb) == 0 && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(inputs[0]);
        if (!d)
            return fgmm_fail(err, FGMM_ERR_IO, "%s: cannot list: %s", inputs[0], strerror(errno));
        char **v = NULL;
        int c = 0, cap = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!has_dataset_ext(de->d_name)) continue;
            if (c == cap) {
                cap = cap ? 2 * cap : 16;
                char **nv = realloc(v, sizeof *v * (size_t)cap);
                if (!nv) break;
                v = nv;
            }
            size_t len = strlen(inputs[0]) + strlen(de->d_name) + 2;
            if (!(v[c] = malloc(len))) break;
            snprintf(v[c], len, "%s/%s", inputs[0], de->d_name);
            c++;
        }
        closedir(d);
        if (c == 0) {
            free(v);
            return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                             "%s: no dataset files (.fvecs .bvecs .fbin .u8bin .i8bin .npy) in "
                             "this directory",
                             inputs[0]);
        }
        qsort(v, (size_t)c, sizeof *v, cmp_str);
        *out = v;
        *count = c;
        return FGMM_OK;
    }
    char **v = calloc((size_t)n, sizeof *v);
    if (!v) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
    for (int i = 0; i < n; i++) v[i] = strdup(inputs[i]);
    *out = v;
    *count = n;
    return FGMM_OK;
}

/* Converts one row of n values from t to the writer's dtype. Float16 output
 * must hold the value: a float32 beyond +-65504 would become infinity. */
static int convert_out(fgmm_dtype from, fgmm_dtype to, const void *src, size_t n, void *dst,
                       float *tmp)
{
    if (from == to) {
        memcpy(dst, src, n * fgmm_dtype_size(to));
        return -1;
    }
    fgmm_convert_row(from, src, n, tmp);
    if (to == FGMM_F32) {
        memcpy(dst, tmp, n * sizeof(float));
        return -1;
    }
    uint16_t *h = dst;
    for (size_t j = 0; j < n; j++) {
        if (fabsf(tmp[j]) > 65504.0f) return (int)j;
        h[j] = fgmm_float_to_half(tmp[j]);
    }
    return -1;
}

fgmm_status fgmm_shard_convert(const char *const *inputs, int n_inputs, const char *out_dir,
                               const fgmm_shard_write_options *opt, fgmm_shard_write_result *res,
                               fgmm_error *err)
{
    if (res) memset(res, 0, sizeof *res);
    if (n_inputs < 1) return fgmm_fail(err, FGMM_ERR_ARGUMENT, "no input given");
    fgmm_shard_write_options o;
    if (opt) o = *opt;
    else fgmm_shard_write_options_default(&o);
    if (o.dtype >= 0 && o.dtype != FGMM_F32 && o.dtype != FGMM_F16)
        return fgmm_fail(err, FGMM_ERR_ARGUMENT,
                         "%s: output dtype code %d; expected -1 (keep the input's), float32 "
                         "or float16", out_dir, o.dtype);
    char **files = NULL;
    int nf = 0;
    fgmm_status st = list_inputs(inputs, n_inputs, &files, &nf, err);
    if (st) return st;
    fgmm_dataset_info *info = calloc((size_t)nf, sizeof *info);
    size_t fp_cap = 256 + (size_t)nf * 4200, fp_len = 0;
    char *fp = malloc(fp_cap);
    fgmm_shard_writer *w = NULL;
    fgmm_source *src = NULL;
    unsigned char *buf = NULL;
    float *tmp = NULL;
    if (!info || !fp) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    /* Every input is probed before anything is written: mixed dimensions
     * or dtypes are found now, not after hours of conversion. */
    for (int i = 0; i < nf; i++) {
        if ((st = fgmm_dataset_probe(files[i], &info[i], err))) goto done;
        if (info[i].dim != info[0].dim) {
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "mixed dimensions: %s has %d dims but %s has %d; all inputs must "
                           "have the same dimension",
                           files[i], info[i].dim, files[0], info[0].dim);
            goto done;
        }
        if (o.dtype < 0 && info[i].dtype != info[0].dtype) {
            st = fgmm_fail(err, FGMM_ERR_DATA,
                           "mixed dtypes: %s holds %s but %s holds %s; convert them all to "
                           "float32 (or float16) with the output dtype option",
                           files[i], fgmm_dtype_name(info[i].dtype), files[0],
                           fgmm_dtype_name(info[0].dtype));
            goto done;
        }
        struct stat sb;
        if (stat(files[i], &sb) == 0)
            fp_len += (size_t)snprintf(fp + fp_len, fp_cap - fp_len, "%s:%lld:%lld.%09ld;",
                                       files[i], (long long)sb.st_size,
                                       (long long)sb.st_mtim.tv_sec, (long)sb.st_mtim.tv_nsec);
    }
    fgmm_dtype out_t = o.dtype >= 0 ? (fgmm_dtype)o.dtype : info[0].dtype;
    int D = info[0].dim;
    int64_t skip = 0;
    if ((st = fgmm_shard_writer_create(out_dir, D, out_t, &o, fp, &w, &skip, err))) goto done;
    size_t out_row = (size_t)D * fgmm_dtype_size(out_t);
    const int64_t BATCH = 4096;
    buf = malloc((size_t)BATCH * out_row);
    tmp = malloc(sizeof(float) * (size_t)D);
    if (!buf || !tmp) {
        st = fgmm_fail(err, FGMM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    int64_t g = 0; /* global row of the current input's row 0 */
    int stopped = 0;
    for (int i = 0; i < nf && !stopped; i++) {
        if (g + info[i].rows <= skip) { /* stored by an earlier run */
            g += info[i].rows;
            continue;
        }
        if ((st = fgmm_dataset_open(files[i], &src, err))) goto done;
        if ((st = fgmm_source_rewind(src, err))) goto done;
        for (;;) {
            fgmm_chunk c;
            if ((st = fgmm_source_next(src, &c, err))) goto done;
            if (c.n_rows == 0) break;
            int64_t r0 = 0;
            if (g + c.first_row + c.n_rows <= skip) continue;
            if (g + c.first_row < skip) r0 = skip - (g + c.first_row);
            for (int64_t r = r0; r < c.n_rows && !stopped; r += BATCH) {
                int64_t n = c.n_rows - r < BATCH ? c.n_rows - r : BATCH;
                for (int64_t k = 0; k < n; k++) {
                    const char *row = (const char *)c.rows + (size_t)(r + k) * c.row_stride;
                    int bad = convert_out(c.dtype, out_t, row, (size_t)D, buf + (size_t)k * out_row,
                                          tmp);
                    if (bad >= 0) {
                        st = fgmm_fail(err, FGMM_ERR_DATA,
                                       "%s: row %lld, column %d: value %g does not fit float16 "
                                       "(max 65504); expected float32 output for such values",
                                       files[i], (long long)(c.first_row + r + k), bad,
                                       (double)tmp[bad]);
                        goto done;
                    }
                }
                if ((st = fgmm_shard_writer_append(w, buf, n, &stopped, err))) goto done;
            }
            if (stopped) break;
        }
        g += info[i].rows;
        fgmm_source_close(src);
        src = NULL;
    }
    {
        char source[1024];
        if (nf == 1) snprintf(source, sizeof source, "%s", files[0]);
        else snprintf(source, sizeof source, "%s (%d files)", inputs[0], nf);
        st = fgmm_shard_writer_finish(w, source, res, err);
    }
done:
    fgmm_source_close(src);
    fgmm_shard_writer_free(w);
    for (int i = 0; i < nf; i++) free(files[i]);
    free(files);
    free(info);
    free(fp);
    free(buf);
    free(tmp);
    return st;
}
