/*
 * json_file.c - JSON files through jansson: loading with messages that
 * name the file, line and key, typed getters, and uint64 values beyond
 * jansson's signed integers (see json_file.h).
 */
#include "io/json_file.h"
#include "io/file.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bare integers above INT64_MAX in one file: the seed is the only one
 * io/ ever wrote, so a handful is plenty and bounds the re-parsing. */
#define MAX_REQUOTES 16

/* jansson stops right after an integer literal it cannot hold. If that
 * literal is an unsigned integer that fits 64 bits, returns a copy of text
 * with the literal quoted (a string the uint64 getter reads); else NULL. */
static char *quote_big_integer(const char *text, size_t len, size_t pos, size_t *out_len)
{
    if (pos > len) return NULL;
    size_t end = pos, start;
    while (end > 0 && !isdigit((unsigned char)text[end - 1]) && pos - end < 2) end--;
    start = end;
    while (start > 0 && isdigit((unsigned char)text[start - 1])) start--;
    if (start == end || end - start > 20 || (start > 0 && text[start - 1] == '-')) return NULL;
    char digits[24];
    memcpy(digits, text + start, end - start);
    digits[end - start] = '\0';
    errno = 0;
    char *e;
    strtoull(digits, &e, 10);
    if (errno || *e) return NULL;
    char *q = malloc(len + 3);
    if (!q) return NULL;
    memcpy(q, text, start);
    q[start] = '"';
    memcpy(q + start + 1, text + start, end - start);
    q[end + 1] = '"';
    memcpy(q + end + 2, text + end, len - end);
    q[len + 2] = '\0';
    *out_len = len + 2;
    return q;
}

fgmm_status fgmm_json_parse(const char *text, size_t len, const char *path, json_t **out,
                            fgmm_error *err)
{
    *out = NULL;
    char *own = NULL;
    for (int tries = 0;; tries++) {
        json_error_t je;
        json_t *root = json_loadb(text, len, 0, &je);
        if (root) {
            free(own);
            *out = root;
            return FGMM_OK;
        }
        size_t qlen = 0;
        char *q = tries < MAX_REQUOTES && json_error_code(&je) == json_error_numeric_overflow
                      ? quote_big_integer(text, len, (size_t)je.position, &qlen)
                      : NULL;
        if (!q) {
            free(own);
            return fgmm_fail(err, FGMM_ERR_FORMAT, "%s: line %d, column %d: %s", path, je.line,
                             je.column, je.text);
        }
        free(own);
        own = q;
        text = q;
        len = qlen;
    }
}

fgmm_status fgmm_json_load_file(const char *path, size_t max, const char *what, json_t **out,
                                fgmm_error *err)
{
    char *text;
    size_t len;
    *out = NULL;
    fgmm_status st = fgmm_io_read_file(path, max, what, &text, &len, err);
    if (st) return st;
    st = fgmm_json_parse(text, len, path, out, err);
    free(text);
    return st;
}

char *fgmm_json_text(const json_t *root)
{
    char *t = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!t) return NULL;
    size_t n = strlen(t);
    char *r = realloc(t, n + 2);
    if (!r) {
        free(t);
        return NULL;
    }
    r[n] = '\n';
    r[n + 1] = '\0';
    return r;
}

fgmm_status fgmm_json_write_file(const char *path, const json_t *root, fgmm_error *err)
{
    char *t = fgmm_json_text(root);
    if (!t) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory serialising JSON", path);
    fgmm_status st = fgmm_io_write_file(path, t, strlen(t), err);
    free(t);
    return st;
}

json_t *fgmm_json_u64(uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX) return json_integer((json_int_t)v);
    char b[24];
    snprintf(b, sizeof b, "%" PRIu64, v);
    return json_string(b);
}

const char *fgmm_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

static const char *want_name(json_type t)
{
    switch (t) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "value";
}

static int type_ok(const json_t *v, json_type want)
{
    switch (want) {
    case JSON_REAL: return json_is_number(v);
    case JSON_TRUE:
    case JSON_FALSE: return json_is_boolean(v);
    default: return json_typeof(v) == want;
    }
}

/* "path: where: " or "path: " for messages. */
static void prefix(const fgmm_json_ctx *c, char *b, size_t cap)
{
    if (c->where) snprintf(b, cap, "%s: %s", c->path, c->where);
    else snprintf(b, cap, "%s", c->path);
}

fgmm_status fgmm_json_get(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                          json_type want, int required, const json_t **out)
{
    char at[1200];
    *out = NULL;
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v) {
        if (!required) return FGMM_OK;
        prefix(c, at, sizeof at);
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: missing key \"%s\"", at, key);
    }
    if (!type_ok(v, want)) {
        prefix(c, at, sizeof at);
        return fgmm_fail(c->err, FGMM_ERR_FORMAT, "%s: \"%s\" is a%s %s; expected a%s %s", at,
                         key, json_is_integer(v) || json_is_array(v) || json_is_object(v) ? "n" : "",
                         fgmm_json_kind(v), want == JSON_INTEGER || want == JSON_ARRAY ||
                                                    want == JSON_OBJECT ? "n" : "",
                         want_name(want));
    }
    *out = v;
    return FGMM_OK;
}

fgmm_status fgmm_json_get_i64(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, int64_t lo, int64_t hi, int64_t *out)
{
    const json_t *v;
    fgmm_status st = fgmm_json_get(c, obj, key, JSON_INTEGER, required, &v);
    if (st || !v) return st;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        char at[1200];
        prefix(c, at, sizeof at);
        return fgmm_fail(c->err, FGMM_ERR_FORMAT,
                         "%s: \"%s\" is %lld; expected an integer in [%lld, %lld]", at, key,
                         (long long)x, (long long)lo, (long long)hi);
    }
    *out = (int64_t)x;
    return FGMM_OK;
}

fgmm_status fgmm_json_get_u64(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char at[1200];
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || !json_is_string(v)) {
        /* Absent, or an integer: the common case, checked as one. */
        int64_t x = 0;
        fgmm_status st = fgmm_json_get_i64(c, obj, key, required, INT64_MIN, INT64_MAX, &x);
        if (st || !v) return st;
        if (x < 0 || (uint64_t)x < lo || (uint64_t)x > hi) {
            prefix(c, at, sizeof at);
            return fgmm_fail(c->err, FGMM_ERR_FORMAT,
                             "%s: \"%s\" is %lld; expected an integer in [%" PRIu64 ", %" PRIu64
                             "]",
                             at, key, (long long)x, lo, hi);
        }
        *out = (uint64_t)x;
        return FGMM_OK;
    }
    const char *s = json_string_value(v);
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || errno || *end || x < lo || x > hi) {
        prefix(c, at, sizeof at);
        return fgmm_fail(c->err, FGMM_ERR_FORMAT,
                         "%s: \"%s\" is \"%s\"; expected an integer in [%" PRIu64 ", %" PRIu64
                         "] (a number, or a string of decimal digits)",
                         at, key, s, lo, hi);
    }
    *out = x;
    return FGMM_OK;
}

fgmm_status fgmm_json_get_str(const fgmm_json_ctx *c, const json_t *obj, const char *key,
                              int required, const char **out)
{
    const json_t *v;
    fgmm_status st = fgmm_json_get(c, obj, key, JSON_STRING, required, &v);
    if (st || !v) return st;
    *out = json_string_value(v);
    return FGMM_OK;
}
