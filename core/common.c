/*
 * common.c - dtypes, half floats and the deterministic RNG.
 */
#include "core/fgmm.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t fgmm_dtype_size(fgmm_dtype t)
{
    switch (t) {
    case FGMM_F32: return 4;
    case FGMM_F16: return 2;
    case FGMM_U8:
    case FGMM_I8: return 1;
    }
    return 0;
}

const char *fgmm_dtype_name(fgmm_dtype t)
{
    switch (t) {
    case FGMM_F32: return "float32";
    case FGMM_F16: return "float16";
    case FGMM_U8: return "uint8";
    case FGMM_I8: return "int8";
    }
    return "unknown";
}

float fgmm_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: value = man * 2^-24, exact in float */
            float v = (float)man * 5.9604644775390625e-8f;
            memcpy(&bits, &v, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t fgmm_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0);
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa. */
        float m = nearbyintf(a * 16777216.0f);
        return sign | (uint16_t)m;
    }
    uint32_t mant = ax & 0x7fffffu;
    uint32_t e = (ax >> 23) - 112;
    uint32_t h = (e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

/* Rows may lie at any address (a mapped file's data need not start on an
 * element boundary: .npy headers are not always padded), so multi-byte
 * values are read with memcpy, which compiles to plain unaligned loads. */
void fgmm_convert_row(fgmm_dtype t, const void *src, size_t n, float *dst)
{
    switch (t) {
    case FGMM_F32: memcpy(dst, src, n * 4); break;
    case FGMM_F16: {
        const unsigned char *s = (const unsigned char *)src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = fgmm_half_to_float(h);
        }
        break;
    }
    case FGMM_U8: {
        const uint8_t *s = (const uint8_t *)src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    case FGMM_I8: {
        const int8_t *s = (const int8_t *)src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    }
}

fgmm_status fgmm_chunk_check_finite(const fgmm_chunk *c, int d, const char *name,
                                    fgmm_error *err)
{
    if (c->dtype == FGMM_F32) {
        for (int64_t i = 0; i < c->n_rows; i++) {
            const unsigned char *r = (const unsigned char *)c->rows + (size_t)i * c->row_stride;
            /* An all-ones exponent is NaN or Inf. Testing the bits with an OR
             * reduction vectorises (8 values a cycle with AVX2); a float sum
             * would be one dependent add per value, which made this scan the
             * largest CPU cost of streaming shards. On a hit, look for the
             * column to name. */
            uint32_t bad = 0;
            for (int j = 0; j < d; j++) {
                uint32_t u;
                memcpy(&u, r + 4 * (size_t)j, 4);
                bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
            }
            if (bad) {
                for (int j = 0; j < d; j++) {
                    float v;
                    memcpy(&v, r + 4 * (size_t)j, 4);
                    if (!isfinite(v))
                        return fgmm_fail(err, FGMM_ERR_DATA,
                                         "%s: row %lld column %d is %s; data must be finite",
                                         name, (long long)(c->first_row + i), j,
                                         isnan(v) ? "NaN" : "inf");
                }
            }
        }
    } else if (c->dtype == FGMM_F16) {
        for (int64_t i = 0; i < c->n_rows; i++) {
            const unsigned char *r = (const unsigned char *)c->rows + (size_t)i * c->row_stride;
            uint32_t bad = 0;
            for (int j = 0; j < d; j++) {
                uint16_t h;
                memcpy(&h, r + 2 * (size_t)j, 2);
                bad |= (uint32_t)((h & 0x7c00u) == 0x7c00u);
            }
            if (!bad) continue;
            for (int j = 0; j < d; j++) {
                uint16_t h;
                memcpy(&h, r + 2 * (size_t)j, 2);
                if ((h & 0x7c00u) == 0x7c00u)
                    return fgmm_fail(err, FGMM_ERR_DATA,
                                     "%s: row %lld column %d is %s; data must be finite", name,
                                     (long long)(c->first_row + i), j,
                                     (h & 0x3ffu) ? "NaN" : "inf");
            }
        }
    }
    return FGMM_OK;
}

/* ------------------------------------------------------------------- rng */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fgmm_rng_seed(fgmm_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fgmm_rng_next(fgmm_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double fgmm_rng_uniform(fgmm_rng *r) { return (double)(fgmm_rng_next(r) >> 11) * 0x1.0p-53; }

double fgmm_rng_normal(fgmm_rng *r)
{
    /* Box-Muller, one value per call: simple and deterministic. */
    double u1 = fgmm_rng_uniform(r), u2 = fgmm_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
