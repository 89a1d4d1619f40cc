/*
 * dataset.c - fuzz targets of the dataset readers (io/dataset.c): .npy
 * headers (dataset_npy), big-ann .fbin/.u8bin/.i8bin (dataset_bin) and
 * texmex .fvecs/.bvecs (dataset_vecs), chosen at build time by
 * FUZZ_FORMAT. An input is a file's bytes (after a byte choosing the
 * extension where a target has several). It is probed, opened and read
 * through a whole pass and by random access; an accepted file yields
 * exactly the rows its header promises.
 */
#include "fuzz/fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/fgmm_io.h"

#if FUZZ_FORMAT == 0
const char fuzz_target_name[] = "dataset_npy";
static const char *const EXT[] = {"npy"};
#elif FUZZ_FORMAT == 1
const char fuzz_target_name[] = "dataset_bin";
static const char *const EXT[] = {"fbin", "u8bin", "i8bin"};
#else
const char fuzz_target_name[] = "dataset_vecs";
static const char *const EXT[] = {"fvecs", "bvecs"};
#endif
#define N_EXT (sizeof EXT / sizeof EXT[0])

/* Reads the whole source; returns its status (refusals are checked by the
 * caller) and checks what an accepted pass must hold. */
static fgmm_status read_all(fgmm_source *src, const char *path, fgmm_error *err)
{
    const int64_t n = fgmm_source_rows(src);
    const int d = fgmm_source_dim(src);
    if (n < 0 || d <= 0) fuzz_fail("%s: opened with %lld rows of %d values", path, (long long)n, d);
    fgmm_status st = fgmm_source_rewind(src, err);
    int64_t seen = 0;
    fgmm_chunk c;
    while (!st && !(st = fgmm_source_next(src, &c, err)) && c.n_rows > 0) {
        if (c.first_row != seen) fuzz_fail("%s: chunk starts at row %lld, expected %lld", path,
                                           (long long)c.first_row, (long long)seen);
        /* Touch every value: a chunk must lie inside the mapping. */
        float *row = malloc(sizeof(float) * (size_t)d);
        for (int64_t i = 0; i < c.n_rows; i++) {
            fgmm_convert_row(c.dtype, (const char *)c.rows + (size_t)i * c.row_stride, (size_t)d,
                             row);
        }
        free(row);
        seen += c.n_rows;
    }
    if (!st && seen != n)
        fuzz_fail("%s: a pass gave %lld rows, the header %lld", path, (long long)seen,
                  (long long)n);
    if (!st && n > 0) {
        int64_t idx[2] = {0, n - 1};
        float *out = malloc(sizeof(float) * 2 * (size_t)d);
        st = fgmm_source_read_rows(src, idx, 2, out, err);
        free(out);
    }
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t ext = 0;
    if (N_EXT > 1) {
        if (size < 1) return 0;
        ext = data[0] % N_EXT;
        data++, size--;
    }
    char path[600];
    char name[32];
    snprintf(name, sizeof name, "input.%s", EXT[ext]);
    fuzz_path(path, sizeof path, name);
    fuzz_write_file(path, data, size);

    fgmm_error err = {0};
    fgmm_dataset_info info;
    fgmm_status st = fgmm_dataset_probe(path, &info, &err);
    fuzz_check_refusal(st, &err, path);
    fgmm_source *src = NULL;
    fgmm_error err2 = {0};
    fgmm_status st2 = fgmm_dataset_open(path, &src, &err2);
    fuzz_check_refusal(st2, &err2, path);
    if ((st == FGMM_OK) != (st2 == FGMM_OK))
        fuzz_fail("%s: probe says %s, open says %s", path, fgmm_status_name(st),
                  fgmm_status_name(st2));
    if (st2) return 0;
    if (info.rows != fgmm_source_rows(src) || info.dim != fgmm_source_dim(src))
        fuzz_fail("%s: probe and open disagree on the shape", path);
    fgmm_error err3 = {0};
    fgmm_status st3 = read_all(src, path, &err3);
    fuzz_check_refusal(st3, &err3, path);
    fgmm_source_close(src);
    return 0;
}

/* Valid files of every extension: a few rows of known values. */
int fuzz_write_seeds(const char *dir)
{
    const int n = 5, d = 3;
    int count = 0;
    for (size_t e = 0; e < N_EXT; e++) {
        uint8_t buf[4096];
        size_t len = 0;
        if (N_EXT > 1) buf[len++] = (uint8_t)e;
        const char *x = EXT[e];
        int ebytes = !strcmp(x, "fbin") || !strcmp(x, "fvecs") || !strcmp(x, "npy") ? 4 : 1;
        if (!strcmp(x, "npy")) {
            const char hdr[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 3), }";
            size_t hl = sizeof hdr - 1, total = 10 + hl + 1;
            size_t pad = (64 - total % 64) % 64;
            memcpy(buf + len, "\x93NUMPY\x01\x00", 8);
            uint16_t h16 = (uint16_t)(hl + pad + 1);
            memcpy(buf + len + 8, &h16, 2);
            memcpy(buf + len + 10, hdr, hl);
            memset(buf + len + 10 + hl, ' ', pad);
            buf[len + 10 + hl + pad] = '\n';
            len += 10 + hl + pad + 1;
        } else if (strstr(x, "bin")) {
            uint32_t nd[2] = {(uint32_t)n, (uint32_t)d};
            memcpy(buf + len, nd, 8);
            len += 8;
        }
        for (int i = 0; i < n; i++) {
            if (strstr(x, "vecs")) {
                int32_t dd = d;
                memcpy(buf + len, &dd, 4);
                len += 4;
            }
            for (int j = 0; j < d; j++) {
                if (ebytes == 4) {
                    float v = (float)(i * d + j) * 0.5f - 2.0f;
                    memcpy(buf + len, &v, 4);
                } else {
                    buf[len] = (uint8_t)(i * 7 + j * 3);
                }
                len += (size_t)ebytes;
            }
        }
        char p[1024];
        snprintf(p, sizeof p, "%s/valid.%s", dir, x);
        fuzz_write_file(p, buf, len);
        count++;
    }
    return count;
}
