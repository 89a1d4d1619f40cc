/*
 * fuzz.h - what every fuzz target shares: the libFuzzer entry point each
 * defines, the seed inputs each writes, scratch files, and the properties
 * every parser must keep.
 *
 * A target is one parser or decoder of the product, driven through the
 * public io/ API exactly as the CLI drives it. An input is either refused
 * (an error whose message is one line naming the file) or accepted, and
 * what an accepted input yields must be what its checksums vouch for:
 * the targets of checksummed formats compare every value they read with
 * the valid original. A broken property aborts (fuzz_fail), which both
 * libFuzzer and the replay driver report as a crash.
 *
 * The same sources build two ways: with clang's -fsanitize=fuzzer for
 * campaigns (fuzz/campaign.sh), and with replay.c's main() as a plain
 * binary that replays files and deterministic mutations of the seeds
 * (the CI test, also under --config=asan).
 */
#ifndef FGMM_FUZZ_H
#define FGMM_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Defined by each target. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Writes the target's valid inputs into dir (one file each); returns how
 * many, or -1 after printing why it could not. */
int fuzz_write_seeds(const char *dir);
/* The target's name, for messages. */
extern const char fuzz_target_name[];

/* A scratch directory of this process (made on first use, removed at
 * exit). */
const char *fuzz_scratch(void);
/* path = scratch/name. */
void fuzz_path(char *out, size_t cap, const char *name);
/* Writes exactly data[0..n) to path (aborts if it cannot: the harness,
 * not the product, failed). */
void fuzz_write_file(const char *path, const void *data, size_t n);
/* Reads a whole file into *data (malloc'd); aborts if it cannot. */
size_t fuzz_read_file(const char *path, uint8_t **data);
/* Empties directory path (made if missing). */
void fuzz_reset_dir(const char *path);

/* Aborts with the target's name and a message: a broken property. */
void fuzz_fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
/* The refusal property: a status other than FGMM_OK carries one line of
 * message that names `what` (a file or directory path). */
void fuzz_check_refusal(fgmm_status st, const fgmm_error *err, const char *what);

/* Refusals seen since the counter was last read (fuzz_check_refusal
 * counts them): the replay driver reports how many inputs were refused. */
long fuzz_take_refusals(void);

/* A directory of files that a target rebuilds for every input, replacing
 * one file with the input: the valid originals kept in memory. */
typedef struct {
    int n;
    char name[8][64];
    uint8_t *data[8];
    size_t size[8];
} fuzz_dir_template;
/* Loads every regular file of dir (at most 8) into t, in name order. */
void fuzz_template_load(fuzz_dir_template *t, const char *dir);
/* Writes t into dir (emptied first), file `replace` (an index into t, or
 * -1) holding data[0..n) instead of its original. */
void fuzz_template_write(const fuzz_dir_template *t, const char *dir, int replace,
                         const uint8_t *data, size_t n);
/* Writes one seed per file of t into seeds/: a byte selecting the file,
 * then the file's bytes (the input format of the directory targets).
 * Returns the count. */
int fuzz_template_seeds(const fuzz_dir_template *t, const char *seeds);

#ifdef __cplusplus
}
#endif
#endif
