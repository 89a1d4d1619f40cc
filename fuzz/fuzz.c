/*
 * fuzz.c - the shared harness of the fuzz targets (fuzz.h).
 */
#include "fuzz/fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char scratch[512];

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        char p[1024];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", path, de->d_name);
            remove_tree(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void remove_scratch(void)
{
    if (scratch[0]) remove_tree(scratch);
}

const char *fuzz_scratch(void)
{
    if (!scratch[0]) {
        const char *base = getenv("TEST_TMPDIR");
        snprintf(scratch, sizeof scratch, "%s/fgmm-fuzz-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(scratch)) {
            fprintf(stderr, "fuzz: cannot make a scratch directory %s: %s\n", scratch,
                    strerror(errno));
            abort();
        }
        atexit(remove_scratch);
    }
    return scratch;
}

void fuzz_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", fuzz_scratch(), name);
}

void fuzz_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
}

size_t fuzz_read_file(const char *path, uint8_t **data)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot read %s: %s\n", path, strerror(errno));
        abort();
    }
    size_t cap = 4096, n = 0;
    uint8_t *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) b = realloc(b, cap *= 2);
    }
    fclose(f);
    if (!b) abort();
    *data = b;
    return n;
}

void fuzz_reset_dir(const char *path)
{
    remove_tree(path);
    if (mkdir(path, 0755)) {
        fprintf(stderr, "fuzz: cannot make %s: %s\n", path, strerror(errno));
        abort();
    }
}

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz %s: property broken: ", fuzz_target_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static long refusals;

long fuzz_take_refusals(void)
{
    long n = refusals;
    refusals = 0;
    return n;
}

void fuzz_check_refusal(fgmm_status st, const fgmm_error *err, const char *what)
{
    if (st == FGMM_OK) return;
    refusals++;
    if (st == FGMM_ERR_INTERNAL) fuzz_fail("internal error (a broken invariant): %s", err->msg);
    if (!err->msg[0]) fuzz_fail("refused (%s) without a message", fgmm_status_name(st));
    if (strchr(err->msg, '\n')) fuzz_fail("message of more than one line: %s", err->msg);
    if (!strstr(err->msg, what)) fuzz_fail("message does not name %s: %s", what, err->msg);
}

#ifdef FUZZ_LIBFUZZER
/* Under libFuzzer: FGMM_FUZZ_SEEDS=DIR writes the seed corpus and exits
 * (campaign.sh's first step for each target). */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = getenv("FGMM_FUZZ_SEEDS");
    if (!dir) return 0;
    mkdir(dir, 0755);
    int n = fuzz_write_seeds(dir);
    exit(n < 0);
}
#endif

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void fuzz_template_load(fuzz_dir_template *t, const char *dir)
{
    memset(t, 0, sizeof *t);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "fuzz: cannot open %s\n", dir);
        abort();
    }
    char *names[8];
    struct dirent *de;
    while ((de = readdir(d))) {
        char p[1024];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (stat(p, &sb) || !S_ISREG(sb.st_mode)) continue;
        if (t->n == 8) abort();
        names[t->n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)t->n, sizeof names[0], by_name);
    for (int i = 0; i < t->n; i++) {
        char p[1024];
        snprintf(t->name[i], sizeof t->name[i], "%s", names[i]);
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        t->size[i] = fuzz_read_file(p, &t->data[i]);
        free(names[i]);
    }
}

void fuzz_template_write(const fuzz_dir_template *t, const char *dir, int replace,
                         const uint8_t *data, size_t n)
{
    fuzz_reset_dir(dir);
    for (int i = 0; i < t->n; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, t->name[i]);
        if (i == replace) fuzz_write_file(p, data, n);
        else fuzz_write_file(p, t->data[i], t->size[i]);
    }
}

int fuzz_template_seeds(const fuzz_dir_template *t, const char *seeds)
{
    for (int i = 0; i < t->n; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%02d%s", seeds, i, t->name[i]);
        uint8_t *b = malloc(t->size[i] + 1);
        if (!b) abort();
        b[0] = (uint8_t)i;
        memcpy(b + 1, t->data[i], t->size[i]);
        fuzz_write_file(p, b, t->size[i] + 1);
        free(b);
    }
    return t->n;
}
