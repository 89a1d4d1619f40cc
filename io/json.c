/*
 * json.c - a small JSON reader for model.json.
 *
 * Recursive descent over the whole text, building a tree. Strict RFC 8259
 * (no comments, no trailing commas) because the files are machine-written;
 * a hand edit that breaks them should get a message naming the line rather
 * than a guess. Nesting is capped so a hostile file cannot exhaust the stack.
 */
#include "io/json.h"

#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *p, *end;
    const char *name;
    int line;
    fgmm_error *err;
} parser;

static fgmm_status perr(parser *ps, const char *what)
{
    return fgmm_fail(ps->err, FGMM_ERR_FORMAT, "%s: line %d: %s", ps->name, ps->line, what);
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') ps->line++;
        else if (c != ' ' && c != '\t' && c != '\r') return;
        ps->p++;
    }
}

/* Appends bytes to a growing buffer; returns 0 when out of memory. */
typedef struct {
    char *s;
    size_t len, cap;
} strbuf;

static int sb_put(strbuf *b, const char *src, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (b->len + n + 1 > cap) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) return 0;
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, src, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 1;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t utf8_encode(unsigned cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads a string literal at ps->p (which is '"') into a new C string.
 * \u0000 is refused: the result must be a C string. */
static fgmm_status parse_string(parser *ps, char **out)
{
    strbuf b = {0};
    ps->p++; /* opening quote */
    if (!sb_put(&b, "", 0)) goto oom;
    for (;;) {
        if (ps->p >= ps->end) {
            free(b.s);
            return perr(ps, "unterminated string");
        }
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            *out = b.s;
            return FGMM_OK;
        }
        if (c < 0x20) {
            free(b.s);
            return perr(ps, c == '\n' ? "unterminated string (newline inside a string)"
                                      : "control character inside a string; escape it");
        }
        if (c != '\\') {
            const char *run = ps->p;
            while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' &&
                   (unsigned char)*ps->p >= 0x20)
                ps->p++;
            if (!sb_put(&b, run, (size_t)(ps->p - run))) goto oom;
            continue;
        }
        if (ps->end - ps->p < 2) {
            free(b.s);
            return perr(ps, "unterminated string");
        }
        char e = ps->p[1], ch;
        ps->p += 2;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) {
                free(b.s);
                return perr(ps, "bad \\u escape: expected 4 hex digits");
            }
            ps->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed by \u and a low one. */
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                    !hex4(ps->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    free(b.s);
                    return perr(ps, "bad \\u escape: unpaired surrogate");
                }
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(b.s);
                return perr(ps, "bad \\u escape: unpaired surrogate");
            }
            if (cp == 0) {
                free(b.s);
                return perr(ps, "\\u0000 inside a string is not supported");
            }
            char u[4];
            if (!sb_put(&b, u, utf8_encode(cp, u))) goto oom;
            continue;
        }
        default:
            free(b.s);
            return perr(ps, "bad escape in string: expected one of \\\" \\\\ \\/ \\b \\f \\n \\r "
                            "\\t \\uXXXX");
        }
        if (!sb_put(&b, &ch, 1)) goto oom;
    }
oom:
    free(b.s);
    return fgmm_fail(ps->err, FGMM_ERR_NO_MEMORY, "%s: out of memory parsing JSON", ps->name);
}

/* JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static fgmm_status parse_number(parser *ps, fgmm_json *v)
{
    const char *s = ps->p, *p = s;
    if (p < ps->end && *p == '-') p++;
    if (p >= ps->end || *p < '0' || *p > '9') return perr(ps, "bad number");
    if (*p == '0') p++;
    else
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    if (p < ps->end && *p == '.') {
        p++;
        if (p >= ps->end || *p < '0' || *p > '9') return perr(ps, "bad number: digit expected after '.'");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < ps->end && (*p == '+' || *p == '-')) p++;
        if (p >= ps->end || *p < '0' || *p > '9') return perr(ps, "bad number: digit expected in exponent");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    size_t n = (size_t)(p - s);
    v->text = malloc(n + 1);
    if (!v->text)
        return fgmm_fail(ps->err, FGMM_ERR_NO_MEMORY, "%s: out of memory parsing JSON", ps->name);
    memcpy(v->text, s, n);
    v->text[n] = '\0';
    v->type = FGMM_JSON_NUMBER;
    /* Overflow gives +-HUGE_VAL; callers range-check the values they use. */
    v->number = strtod(v->text, NULL);
    ps->p = p;
    return FGMM_OK;
}

static int match_word(parser *ps, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n)) return 0;
    ps->p += n;
    return 1;
}

static void free_members(fgmm_json *v);

/* Grows an array/object by one zeroed item; returns it or NULL. */
static fgmm_json *push_item(fgmm_json *v, size_t *cap, int with_key)
{
    if (v->n == *cap) {
        size_t c = *cap ? 2 * *cap : 8;
        fgmm_json *it = realloc(v->items, c * sizeof *it);
        if (!it) return NULL;
        v->items = it;
        if (with_key) {
            char **k = realloc(v->keys, c * sizeof *k);
            if (!k) return NULL;
            v->keys = k;
        }
        *cap = c;
    }
    fgmm_json *it = &v->items[v->n];
    memset(it, 0, sizeof *it);
    if (with_key) v->keys[v->n] = NULL;
    v->n++;
    return it;
}

static fgmm_status parse_value(parser *ps, fgmm_json *v, int depth);

static fgmm_status parse_container(parser *ps, fgmm_json *v, int depth, int object)
{
    char close = object ? '}' : ']';
    size_t cap = 0;
    fgmm_status st;
    v->type = object ? FGMM_JSON_OBJECT : FGMM_JSON_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return FGMM_OK;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"')
                return perr(ps, "expected a string key in object");
            if ((st = parse_string(ps, &key))) return st;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                return perr(ps, "expected ':' after object key");
            }
            ps->p++;
        }
        fgmm_json *it = push_item(v, &cap, object);
        if (!it) {
            free(key);
            return fgmm_fail(ps->err, FGMM_ERR_NO_MEMORY, "%s: out of memory parsing JSON",
                             ps->name);
        }
        if (object) v->keys[v->n - 1] = key;
        if ((st = parse_value(ps, it, depth + 1))) return st;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return FGMM_OK;
        }
        return perr(ps, object ? "expected ',' or '}' after object member"
                               : "expected ',' or ']' after array element");
    }
}

static fgmm_status parse_value(parser *ps, fgmm_json *v, int depth)
{
    if (depth > JSON_MAX_DEPTH) return perr(ps, "nesting too deep");
    skip_ws(ps);
    v->line = ps->line;
    if (ps->p >= ps->end) return perr(ps, "unexpected end of file, expected a value");
    char c = *ps->p;
    if (c == '{' || c == '[') return parse_container(ps, v, depth, c == '{');
    if (c == '"') {
        v->type = FGMM_JSON_STRING;
        return parse_string(ps, &v->text);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(ps, v);
    if (match_word(ps, "true")) {
        v->type = FGMM_JSON_BOOL;
        v->boolean = 1;
        return FGMM_OK;
    }
    if (match_word(ps, "false")) {
        v->type = FGMM_JSON_BOOL;
        return FGMM_OK;
    }
    if (match_word(ps, "null")) {
        v->type = FGMM_JSON_NULL;
        return FGMM_OK;
    }
    return perr(ps, "expected a value (object, array, string, number, true, false or null)");
}

fgmm_status fgmm_json_parse(const char *text, size_t len, const char *name, fgmm_json **out,
                            fgmm_error *err)
{
    *out = NULL;
    fgmm_json *root = calloc(1, sizeof *root);
    if (!root) return fgmm_fail(err, FGMM_ERR_NO_MEMORY, "%s: out of memory parsing JSON", name);
    parser ps = {text, text + len, name, 1, err};
    fgmm_status st = parse_value(&ps, root, 0);
    if (!st) {
        skip_ws(&ps);
        if (ps.p != ps.end) st = perr(&ps, "unexpected text after the JSON value");
    }
    if (st) {
        fgmm_json_free(root);
        return st;
    }
    *out = root;
    return FGMM_OK;
}

/* Frees what v owns, not v itself (items live in their parent's array). */
static void free_members(fgmm_json *v)
{
    for (size_t i = 0; i < v->n; i++) {
        free_members(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->text);
}

void fgmm_json_free(fgmm_json *v)
{
    if (!v) return;
    free_members(v);
    free(v);
}

const fgmm_json *fgmm_json_get(const fgmm_json *obj, const char *key)
{
    if (!obj || obj->type != FGMM_JSON_OBJECT) return NULL;
    for (size_t i = obj->n; i-- > 0;)
        if (obj->keys[i] && !strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

const char *fgmm_json_type_name(fgmm_json_type t)
{
    switch (t) {
    case FGMM_JSON_NULL: return "null";
    case FGMM_JSON_BOOL: return "boolean";
    case FGMM_JSON_NUMBER: return "number";
    case FGMM_JSON_STRING: return "string";
    case FGMM_JSON_ARRAY: return "array";
    case FGMM_JSON_OBJECT: return "object";
    }
    return "unknown";
}
