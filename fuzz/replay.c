/*
 * replay.c - main() of a fuzz target built without libFuzzer: replays
 * files, and deterministic mutations of them, through the target, so that
 * CI checks every target (under sanitizers too) without clang's runtime.
 *
 * usage: TARGET --seeds DIR            write the target's valid inputs
 *        TARGET [--mutate N] PATH...   replay each file (each file of a
 *                                      directory), then N mutations of each
 * A broken property or a crash aborts; at the end one line counts what ran.
 */
#include "fuzz/fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* splitmix64: mutations depend only on the file's place and their number. */
static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One mutation of in[0..n) into out (capacity n + 64); returns its size.
 * Byte 0 of a directory target's input chooses the file, so most
 * mutations spare it. */
static size_t mutate(const uint8_t *in, size_t n, uint8_t *out, uint64_t *s)
{
    memcpy(out, in, n);
    if (n < 2) return n;
    size_t at = 1 + next(s) % (n - 1);
    switch (next(s) % 8) {
    case 0: out[at] ^= (uint8_t)(1u << (next(s) % 8)); return n;        /* a bit */
    case 1: out[at] = (uint8_t)next(s); return n;                         /* a byte */
    case 2: out[at] = (next(s) & 1) ? 0 : 0xff; return n;                /* extremes */
    case 3: return at;                                                    /* truncate */
    case 4: {                                                             /* a 4-byte field */
        uint32_t v[] = {0, 1, 0x7fffffffu, 0xffffffffu, 0x80000000u, 4096};
        size_t w = at + 4 <= n ? at : n - 4;
        memcpy(out + w, &v[next(s) % 6], 4);
        return n;
    }
    case 5: {                                                             /* an 8-byte field */
        uint64_t v = (next(s) & 1) ? ~0ull >> (next(s) % 64) : next(s) % 100000;
        size_t w = n >= 8 ? (at + 8 <= n ? at : n - 8) : 0;
        if (n >= 8) memcpy(out + w, &v, 8);
        return n;
    }
    case 6: {                                                             /* bytes appended */
        size_t extra = 1 + next(s) % 64;
        for (size_t i = 0; i < extra; i++) out[n + i] = (uint8_t)next(s);
        return n + extra;
    }
    default: {                                                            /* a run of bytes */
        size_t len = 1 + next(s) % 16;
        uint8_t v = (uint8_t)next(s);
        for (size_t i = 0; i < len && at + i < n; i++) out[at + i] = v;
        return n;
    }
    }
}

static long inputs, mutations, refused;

static void run_one(const uint8_t *data, size_t n)
{
    fuzz_take_refusals();
    LLVMFuzzerTestOneInput(data, n);
    if (fuzz_take_refusals()) refused++;
}

static void replay_file(const char *path, int n_mut, uint64_t place)
{
    uint8_t *data;
    size_t n = fuzz_read_file(path, &data);
    run_one(data, n);
    inputs++;
    uint8_t *m = malloc(n + 64);
    uint64_t s = place * 1000003u;
    for (int i = 0; i < n_mut; i++) {
        size_t mn = mutate(data, n, m, &s);
        run_one(m, mn);
        mutations++;
    }
    free(m);
    free(data);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--seeds")) {
        mkdir(argv[2], 0755);
        int n = fuzz_write_seeds(argv[2]);
        if (n < 0) return 1;
        printf("%s: %d seeds written to %s\n", fuzz_target_name, n, argv[2]);
        return 0;
    }
    int n_mut = 0, first = 1;
    if (argc > 2 && !strcmp(argv[1], "--mutate")) {
        n_mut = atoi(argv[2]);
        first = 3;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: %s --seeds DIR | [--mutate N] PATH...\n", argv[0]);
        return 2;
    }
    uint64_t place = 0;
    for (int a = first; a < argc; a++) {
        struct stat sb;
        if (stat(argv[a], &sb)) {
            fprintf(stderr, "%s: %s: no such file or directory\n", fuzz_target_name, argv[a]);
            return 1;
        }
        if (!S_ISDIR(sb.st_mode)) {
            replay_file(argv[a], n_mut, ++place);
            continue;
        }
        DIR *d = opendir(argv[a]);
        char *names[4096];
        int k = 0;
        struct dirent *de;
        while (d && (de = readdir(d)) && k < 4096)
            if (de->d_name[0] != '.') names[k++] = strdup(de->d_name);
        if (d) closedir(d);
        qsort(names, (size_t)k, sizeof names[0], by_name);
        for (int i = 0; i < k; i++) {
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", argv[a], names[i]);
            if (!stat(p, &sb) && S_ISREG(sb.st_mode)) replay_file(p, n_mut, ++place);
            free(names[i]);
        }
    }
    printf("%s: %ld inputs and %ld mutations replayed, %ld refused, %ld accepted; every "
           "property held\n",
           fuzz_target_name, inputs, mutations, refused, inputs + mutations - refused);
    return 0;
}
