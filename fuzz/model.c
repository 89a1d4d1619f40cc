/*
 * model.c - fuzz target of model directories (io/model_dir.c, io/npy.c):
 * model.json and weights.npy, means.npy, variances.npy or covariances.npy.
 * An input is a byte choosing a template (bits 7-6: diag, spherical, full,
 * tied) and a file (the low bits), then that file's bytes; the other files
 * are the valid model's. An accepted directory must hold a valid model:
 * weights summing to one, finite means, positive variances (full and tied:
 * symmetric positive definite matrices), the shapes model.json states.
 */
#include "fuzz/fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/fgmm_io.h"

const char fuzz_target_name[] = "model";

#define TEMPLATES 4
static const fgmm_covariance template_cov[TEMPLATES] = {FGMM_COV_DIAG, FGMM_COV_SPHERICAL,
                                                       FGMM_COV_FULL, FGMM_COV_TIED};
static fuzz_dir_template templates[TEMPLATES];

static void make_templates(void)
{
    static int done;
    if (done) return;
    done = 1;
    for (int t = 0; t < TEMPLATES; t++) {
        fgmm_covariance cov = template_cov[t];
        fgmm_model *m = NULL;
        fgmm_error err = {0};
        const int k = 3, d = 4;
        if (fgmm_model_create(k, d, cov, &m, &err)) fuzz_fail("model_create: %s", err.msg);
        for (int i = 0; i < k; i++) fgmm_model_weights(m)[i] = 1.0 / k;
        for (int i = 0; i < k * d; i++) fgmm_model_means(m)[i] = 0.25 * i - 1.0;
        if (fgmm_covariance_is_matrix(cov)) { /* diagonally dominant: positive definite */
            const int nm = cov == FGMM_COV_FULL ? k : 1;
            for (int c = 0; c < nm; c++)
                for (int i = 0; i < d; i++)
                    for (int j = 0; j < d; j++)
                        fgmm_model_variances(m)[((size_t)c * d + i) * d + j] =
                            i == j ? 1.0 + 0.1 * c : 0.05 * (i + j + 1);
        } else {
            for (size_t i = 0; i < fgmm_covariance_len(cov, k, d); i++)
                fgmm_model_variances(m)[i] = 0.5 + 0.1 * (double)i;
        }
        fgmm_model_push_loglik(m, -3.5, &err);
        fgmm_model_meta_get(m)->iterations = 1;
        char dir[600];
        char name[64];
        snprintf(name, sizeof name, "template-%s", fgmm_covariance_name(cov));
        fuzz_path(dir, sizeof dir, name);
        if (fgmm_model_save(m, dir, &err)) fuzz_fail("model_save: %s", err.msg);
        fgmm_model_free(m);
        fuzz_template_load(&templates[t], dir);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    make_templates();
    const fuzz_dir_template *t = &templates[data[0] >> 6];
    int file = (data[0] & 0x3f) % t->n;
    char dir[600];
    fuzz_path(dir, sizeof dir, "model");
    fuzz_template_write(t, dir, file, data + 1, size - 1);
    fgmm_model *m = NULL;
    fgmm_error err = {0};
    fgmm_status st = fgmm_model_load(dir, &m, &err);
    fuzz_check_refusal(st, &err, dir);
    if (st) return 0;
    fgmm_error verr = {0};
    if (fgmm_model_validate(m, "model", &verr)) fuzz_fail("accepted an invalid model: %s", verr.msg);
    fgmm_model_free(m);
    return 0;
}

int fuzz_write_seeds(const char *dir)
{
    make_templates();
    int n = 0;
    for (int t = 0; t < TEMPLATES; t++) {
        char sub[1024];
        for (int i = 0; i < templates[t].n; i++) {
            uint8_t *b = malloc(templates[t].size[i] + 1);
            b[0] = (uint8_t)((t << 6) | i);
            memcpy(b + 1, templates[t].data[i], templates[t].size[i]);
            snprintf(sub, sizeof sub, "%s/%s-%s", dir, fgmm_covariance_name(template_cov[t]),
                     templates[t].name[i]);
            fuzz_write_file(sub, b, templates[t].size[i] + 1);
            free(b);
            n++;
        }
    }
    return n;
}
