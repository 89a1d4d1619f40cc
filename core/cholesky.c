/*
 * cholesky.c - the factorisations behind the full and tied covariances:
 * the M-step's positive-definiteness check and the E-step's precision
 * factor, through LAPACK (OpenBLAS's dpotrf and dtrtri).
 *
 * Matrices are row-major D x D. A symmetric row-major matrix's lower
 * triangle is the column-major upper one, so LAPACK is called with 'U':
 * dpotrf's column-major upper factor U_c (A = U_c^T U_c) is the row-major
 * lower L = U_c^T (A = L L^T), and dtrtri's inverse of U_c is, read
 * row-major, L^-1.
 */
#include "core/backend.h"

#include <math.h>
#include <string.h>

void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda,
             int *info);

/* Zeroes the strict upper triangle of the row-major d x d a. */
static void clear_upper(double *a, int d)
{
    for (int i = 0; i < d; i++)
        memset(a + (size_t)i * d + i + 1, 0, sizeof(double) * (size_t)(d - 1 - i));
}

int fgmm_cholesky(const double *a, int d, double *l)
{
    memcpy(l, a, sizeof(double) * (size_t)d * d);
    int info = 0;
    dpotrf_("U", &d, l, &d, &info);
    if (info < 0) return d; /* an argument LAPACK refused: cannot happen for d >= 1 */
    if (info > 0) return info;
    clear_upper(l, d);
    /* dpotrf passes NaN through silently on some inputs. */
    for (int j = 0; j < d; j++)
        if (!(l[(size_t)j * d + j] > 0) || !isfinite(l[(size_t)j * d + j])) return j + 1;
    return 0;
}

int fgmm_precision_factor(const double *a, int d, double *w, double *half_logdet)
{
    int minor = fgmm_cholesky(a, d, w);
    if (minor) return minor;
    int info = 0;
    dtrtri_("U", "N", &d, w, &d, &info);
    if (info != 0) return info > 0 ? info : d;
    clear_upper(w, d);
    double s = 0;
    for (int j = 0; j < d; j++) s += log(w[(size_t)j * d + j]);
    *half_logdet = s;
    return 0;
}
