/*
 * fgmm_io.h - flashgmm io: dataset files, .npy arrays and model directories.
 *
 * One public header for io/. Every call reports failures through fgmm_error
 * with the file's path and what was expected; outputs are written under a
 * temporary name and renamed into place, so a failed call leaves nothing
 * half-written and never replaces what a user had.
 */
#ifndef FGMM_IO_H
#define FGMM_IO_H

#include "core/fgmm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- datasets */

/* Supported inputs, chosen by extension:
 *   .fvecs  per row: int32 d, then d float32            (texmex)
 *   .bvecs  per row: int32 d, then d uint8              (texmex)
 *   .fbin / .u8bin / .i8bin: uint32 n, uint32 d, then n*d float32/uint8/int8
 *   .npy    2-D C-order array of float32, float16, uint8 or int8 (v1-v3)
 * All little-endian. */
typedef struct {
    char format[8];     /* "fvecs", "bvecs", "fbin", "u8bin", "i8bin", "npy" */
    int64_t rows;
    int dim;
    fgmm_dtype dtype;
    uint64_t file_bytes;
    uint64_t data_offset; /* byte offset of row 0's first value */
    uint64_t row_stride;  /* bytes from one row's first value to the next */
} fgmm_dataset_info;

/* Reads the header and checks it against the file size, without reading
 * the rows. Errors: missing/unreadable file (IO), unknown extension
 * (ARGUMENT), truncated file or header that disagrees with the size
 * (FORMAT), unsupported .npy dtype or order (FORMAT). */
fgmm_status fgmm_dataset_probe(const char *path, fgmm_dataset_info *info, fgmm_error *err);

/* Opens a dataset as a source (memory-mapped). Per-row checks happen as
 * chunks are produced: an .fvecs/.bvecs row whose dimension differs from
 * the first row's, or a NaN/Inf value, fails with the file and the row. */
fgmm_status fgmm_dataset_open(const char *path, fgmm_source **out, fgmm_error *err);

/* --------------------------------------------------------------------- npy */

typedef enum {
    FGMM_NPY_F32 = 0,
    FGMM_NPY_F64 = 1,
    FGMM_NPY_I32 = 2, /* fgmm_npy_stream only */
    FGMM_NPY_I64 = 3  /* fgmm_npy_stream only */
} fgmm_npy_type;

/* Writes a C-order .npy (format 1.0) of ndim (1 to 3) dimensions from
 * doubles, stored as `type`. Written to path.tmp.<pid> then renamed over
 * path. */
fgmm_status fgmm_npy_write(const char *path, fgmm_npy_type type, const double *data, int ndim,
                           const int64_t *shape, fgmm_error *err);
/* Same, from floats stored as float32. */
fgmm_status fgmm_npy_write_f32(const char *path, const float *data, int ndim,
                               const int64_t *shape, fgmm_error *err);

/* A .npy written in pieces, for arrays larger than memory: open with the
 * final shape, append values of the stream's type (host order is
 * little-endian on every supported platform) until the shape is full,
 * then commit (path.tmp.<pid> renamed over path; committing short of the
 * shape is an error and leaves nothing). */
typedef struct fgmm_npy_stream fgmm_npy_stream;
fgmm_status fgmm_npy_stream_open(const char *path, fgmm_npy_type type, int ndim,
                                 const int64_t *shape, fgmm_npy_stream **out, fgmm_error *err);
fgmm_status fgmm_npy_stream_append(fgmm_npy_stream *s, const void *values, int64_t count,
                                   fgmm_error *err);
/* Releases s either way. */
fgmm_status fgmm_npy_stream_commit(fgmm_npy_stream *s, fgmm_error *err);
void fgmm_npy_stream_abort(fgmm_npy_stream *s);

/* Reads a 1-D or 2-D .npy of float32/float64/float16/uint8/int8/int32/int64
 * into newly malloc'd doubles. shape[1] is 1 for 1-D arrays. */
fgmm_status fgmm_npy_read(const char *path, double **data, int *ndim, int64_t shape[2],
                          fgmm_error *err);
/* The same for 1-D to 3-D arrays; shape[i] is 1 past ndim. */
fgmm_status fgmm_npy_read3(const char *path, double **data, int *ndim, int64_t shape[3],
                           fgmm_error *err);

/* ------------------------------------------------------------------ shards */

/* A shard directory holds manifest.json and shard-NNNNN.fgs files: rows
 * split into independently zstd-compressed, checksummed chunks on
 * 4096-byte boundaries (docs/formats.md has the bytes). It is what
 * `flashgmm shard` writes and what fitting on data larger than RAM reads. */

typedef struct {
    int64_t rows_per_chunk; /* 0: about 4 MiB of rows per chunk */
    int chunks_per_shard;   /* 0: 256 */
    int level;              /* zstd level, default 3 (1..19) */
    int dtype;              /* -1: keep the input's; else an fgmm_dtype */
    int threads;            /* compression threads; 0: all cores */
    /* Stop after completing this many shards in this call (0: no limit),
     * leaving the resumable state an interruption would: for tests and for
     * converting in installments. */
    int max_shards;
} fgmm_shard_write_options;

void fgmm_shard_write_options_default(fgmm_shard_write_options *o);

typedef struct {
    int64_t rows;           /* rows in the directory when done */
    int shards;             /* shard files in the directory */
    int shards_resumed;     /* of those, kept from an interrupted run */
    uint64_t raw_bytes;     /* decoded row bytes */
    uint64_t stored_bytes;  /* shard file bytes */
    int complete;           /* 1 when manifest.json was written */
} fgmm_shard_write_result;

/* Converts datasets (fgmm_dataset_open's formats; a single directory path
 * means every dataset file in it, in name order) into the shard directory
 * out_dir. out_dir must not exist, be empty, or hold an unfinished
 * conversion of the same inputs with the same options, which is resumed
 * from its last complete shard. Each shard is written as NAME.tmp and
 * renamed when complete; manifest.json is written last, so a manifest
 * never names a partial shard. Fails before writing anything on mixed
 * dimensions, mixed dtypes (with dtype -1), or bad rows (named by file and
 * row). */
fgmm_status fgmm_shard_convert(const char *const *inputs, int n_inputs, const char *out_dir,
                               const fgmm_shard_write_options *o, fgmm_shard_write_result *res,
                               fgmm_error *err);

/* The writer behind fgmm_shard_convert, for producers of rows that are not
 * files (the benchmarks' generators). fingerprint identifies the input for
 * resumption. *resume_rows receives the rows already stored by an
 * interrupted run: append rows from there. */
typedef struct fgmm_shard_writer fgmm_shard_writer;
fgmm_status fgmm_shard_writer_create(const char *out_dir, int dim, fgmm_dtype dtype,
                                     const fgmm_shard_write_options *o, const char *fingerprint,
                                     fgmm_shard_writer **out, int64_t *resume_rows,
                                     fgmm_error *err);
/* Appends n packed rows of the writer's dtype. Returns FGMM_OK with *stopped
 * set (may be NULL) when max_shards was reached: later rows are ignored. */
fgmm_status fgmm_shard_writer_append(fgmm_shard_writer *w, const void *rows, int64_t n,
                                     int *stopped, fgmm_error *err);
/* Flushes the last shard and writes manifest.json (unless stopped). */
fgmm_status fgmm_shard_writer_finish(fgmm_shard_writer *w, const char *source,
                                     fgmm_shard_write_result *res, fgmm_error *err);
/* Frees the writer; an unfinished shard's temporary file is removed, the
 * complete ones stay for resumption. */
void fgmm_shard_writer_free(fgmm_shard_writer *w);

typedef struct {
    int queue_depth;   /* io_uring reads in flight; 0: 16 */
    int threads;       /* decompression threads; 0: all cores */
    int ring_slots;    /* decoded-chunk buffers (>= 2); 0: ~256 MiB of chunks, 16 to 64
                        * slots, and at least threads + 2 */
    int buffered;      /* 1: never O_DIRECT; 0: O_DIRECT where the file system allows */
    /* Niceness of the decompression threads (Linux, per thread); 0 keeps
     * the caller's. A CPU engine that uses every core runs best with its
     * decoders at a lower priority (the CLI sets 10 for --device cpu). */
    int decoder_nice;
    /* Bytes of decoded rows kept in memory across passes: when the whole
     * dataset fits, the first pass fills the cache and later passes read
     * memory. -1: half of the memory available now; 0: stream every pass. */
    int64_t cache_budget;
    /* Allocator for the ring and cache (pinned memory for a GPU engine,
     * see fgmm_engine_host_alloc); NULL: 4096-aligned malloc. */
    void *(*host_alloc)(void *ctx, size_t bytes);
    void (*host_free)(void *ctx, void *p);
    void *alloc_ctx;
} fgmm_shard_read_options;

void fgmm_shard_read_options_default(fgmm_shard_read_options *o);

/* Opens a shard directory as a source after checking the manifest against
 * every shard's header and chunk index (missing, truncated or mismatched
 * shards are errors naming the file). Chunks are read with io_uring,
 * checked against their checksums and decompressed by a thread pool into a
 * ring of reusable buffers; a failing chunk is reported with its shard
 * file and chunk index. */
fgmm_status fgmm_shards_open(const char *dir, const fgmm_shard_read_options *o,
                             fgmm_source **out, fgmm_error *err);

/* What a shard source has done so far. */
typedef struct {
    int64_t chunks_read;       /* chunks read from disk and decoded, all passes */
    int64_t chunks_cached;     /* chunks served from the cache */
    int64_t chunks_self_decoded; /* of chunks_read: decoded by the consumer while it waited */
    uint64_t bytes_read;       /* bytes read from disk for those chunks */
    uint64_t bytes_decoded;    /* decoded row bytes produced */
    int ring_slots;            /* size of the ring */
    int ring_max_in_use;       /* most ring buffers ever in use at once */
    int direct_io;             /* 1 when shards are read with O_DIRECT */
    int cache_enabled;         /* the dataset fits the cache budget */
    int cache_complete;        /* every chunk is in the cache */
    uint64_t cache_bytes;      /* bytes allocated for the cache */
    /* Where the time went, all passes, in seconds: the consumer waiting for
     * a chunk not yet read from disk, and for one read but still being
     * decoded; the disk held below the queue depth because the ring was
     * full of chunks the consumer had not taken (the consumer is the
     * bottleneck then, not the reader). */
    double wait_read_s, wait_decode_s, ring_full_s;
} fgmm_shard_read_stats;

/* FGMM_ERR_ARGUMENT if src is not a shard source. */
fgmm_status fgmm_shards_stats(fgmm_source *src, fgmm_shard_read_stats *out, fgmm_error *err);

typedef struct {
    int dim;
    fgmm_dtype dtype;
    int64_t rows;
    int shards;
    int64_t chunks;
    int64_t rows_per_chunk;
    int level;
    uint64_t raw_bytes, stored_bytes;
    char source[1024];
} fgmm_shards_info;

/* 1 if path is a directory holding manifest.json or an unfinished
 * conversion. */
int fgmm_is_shard_dir(const char *path);
/* Checks the manifest, every shard's header and index (cheap). With
 * verify, also reads and decompresses every chunk and checks its checksum
 * and size. */
fgmm_status fgmm_shards_probe(const char *dir, int verify, int threads, fgmm_shards_info *info,
                              fgmm_error *err);

/* Opens any input: a shard directory (with o, which may be NULL for the
 * defaults) or a dataset file. */
fgmm_status fgmm_data_open(const char *path, const fgmm_shard_read_options *o,
                           fgmm_source **out, fgmm_error *err);

/* ------------------------------------------------------------------ models */

/* A model directory holds weights.npy (K, float64), means.npy (K x D,
 * float32), variances.npy (K x D float32 for diag, K for spherical) and
 * model.json (see docs/formats.md). fgmm_model_save fails with
 * FGMM_ERR_EXISTS if dir exists; it writes dir.tmp.<pid>/ and renames it. */
fgmm_status fgmm_model_save(const fgmm_model *m, const char *dir, fgmm_error *err);
fgmm_status fgmm_model_load(const char *dir, fgmm_model **out, fgmm_error *err);
/* 1 if path is a directory containing model.json. */
int fgmm_is_model_dir(const char *path);

/* ------------------------------------------------------------ assignments */

/* An assignment directory (docs/formats.md) holds assign-<first row>.fga shards
 * and manifest.json, written last: each shard covers consecutive rows and
 * holds, per row, its log-likelihood and its lists (the primary, the
 * component of largest posterior, first) with their weights
 * (fgmm_list_select's), zstd-compressed and checksummed. The manifest has
 * the list sizes, the rule and the shards. */

typedef struct {
    fgmm_list_rule rule;
    double budget;      /* beta: extra copies at most beta * N; < 0: no cap */
    int64_t shard_rows; /* a shard ends at the first chunk end at or past this many rows */
    const char *model;  /* recorded in the manifest; may be NULL */
    const char *data;   /* likewise */
} fgmm_assign_options;

/* rule: fgmm_list_rule_default; budget -1; shard_rows 1 << 22. */
void fgmm_assign_options_default(fgmm_assign_options *o);

typedef struct {
    int64_t rows, entries, multi_rows; /* rows in more than one list */
    int64_t shards;
    int64_t budget_cap;                /* -1 without a budget */
    int passes;                        /* over the data: 2 with a budget */
    double seconds;                    /* all of it */
    double select_s, write_s;          /* of which: the list rule, and compressing and
                                        * writing shards (the rest is the engine and the
                                        * data source) */
} fgmm_assign_summary;

/* Assigns every row of src under m with o's rule (fgmm_assign and
 * fgmm_list_select; with a budget, a first pass counts and the second
 * writes) into the new directory dir: FGMM_ERR_EXISTS if it exists; built
 * under a hidden temporary name and renamed into place, so a failure
 * leaves nothing. A model whose D differs from the data's is
 * FGMM_ERR_ARGUMENT. sum may be NULL. */
fgmm_status fgmm_assignments_write(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                   const fgmm_assign_options *o, const char *dir,
                                   fgmm_assign_summary *sum, fgmm_error *err);

/* The same by the ranks of a job (ops/red: its reducer, core/backend.h,
 * on host buffers; NULL: one process), all calling it with the whole src:
 * each rank assigns its share (fgmm_source_partition) and writes its own
 * shards into the directory rank 0 stages; a budget is one cap over all
 * rows; rank 0 writes the manifest once every rank has finished and moves
 * the directory into place. The directory is the one a single process
 * writes, shard for shard where the shards' row ranges coincide, and list
 * for list. A failure on any rank fails every rank and leaves nothing. */
fgmm_status fgmm_assignments_write_ranks(fgmm_engine *e, fgmm_source *src, const fgmm_model *m,
                                         const fgmm_assign_options *o, const char *dir,
                                         const fgmm_reducer_ops *ops, void *red,
                                         fgmm_assign_summary *sum, fgmm_error *err);

typedef struct fgmm_assignments fgmm_assignments;

/* Opens an assignment directory: reads the manifest and checks every
 * shard's header against it (missing, truncated or mismatched shards are
 * FGMM_ERR_FORMAT naming the file). */
fgmm_status fgmm_assignments_open(const char *dir, fgmm_assignments **out, fgmm_error *err);
void fgmm_assignments_close(fgmm_assignments *a);
int fgmm_assignments_k(const fgmm_assignments *a);
int fgmm_assignments_dim(const fgmm_assignments *a);
int64_t fgmm_assignments_rows(const fgmm_assignments *a);
int64_t fgmm_assignments_entries(const fgmm_assignments *a);
int fgmm_assignments_shards(const fgmm_assignments *a);
/* K list sizes from the manifest (valid until close). */
const int64_t *fgmm_assignments_list_sizes(const fgmm_assignments *a);

/* One shard's rows first_row..first_row+rows-1: counts[i] lists for row i
 * (1..FGMM_MAX_TOP_M), the rows' log-likelihoods, and the lists and
 * weights of all rows in row order (sum of counts entries each). Valid
 * during the call only. */
typedef fgmm_status (*fgmm_assignments_visit)(void *user, int64_t first_row, int64_t rows,
                                              const uint8_t *counts, const float *loglik,
                                              const int32_t *lists, const float *weights,
                                              fgmm_error *err);

/* Reads every shard in row order, checking its checksum, its size and its
 * values (counts in range, lists < K, weights in [0, 1]), and calls fn
 * (NULL: only check). At the end the list sizes counted must equal the
 * manifest's. A damaged shard is FGMM_ERR_FORMAT naming the file. */
fgmm_status fgmm_assignments_read(fgmm_assignments *a, fgmm_assignments_visit fn, void *user,
                                  fgmm_error *err);

/* Writes the new directory out (FGMM_ERR_EXISTS if it exists; staged and
 * renamed into place) with numpy files of the assignments in dir, row i
 * being the assignment's i-th row: primary.npy (int32, N: each row's
 * primary list), the lists as CSR, offsets.npy (int64, N+1), lists.npy
 * (int32, E) and weights.npy (float32, E), and loglik.npy (float32, N);
 * with a model m (K and D must match), means.npy (float32, K x D: a
 * coarse quantizer's centroids for FAISS). */
fgmm_status fgmm_assignments_export(const char *dir, const fgmm_model *m, const char *out,
                                    fgmm_error *err);

/* 1 if path is a directory holding an assignment manifest. */
int fgmm_is_assignment_dir(const char *path);

/* ------------------------------------------------------------------ files */

/* path written with exactly data[0..n): path.tmp.<pid>, fsync, rename over
 * path, fsync of the directory, so a reader sees the old file or the new
 * one. Errors name the file and say what failed (a full disk as such). */
fgmm_status fgmm_file_write(const char *path, const void *data, size_t n, fgmm_error *err);

/* A directory of outputs that appears only when complete: files are
 * written into fgmm_staged_dir_path (the hidden sibling ".<name>.tmp.<pid>"),
 * and commit renames it to dir without replacing anything, so a failure
 * or a crash leaves no dir at all and never touches one that exists. */
typedef struct fgmm_staged_dir fgmm_staged_dir;
/* FGMM_ERR_EXISTS when dir exists. */
fgmm_status fgmm_staged_dir_create(const char *dir, fgmm_staged_dir **out, fgmm_error *err);
const char *fgmm_staged_dir_path(const fgmm_staged_dir *d);
/* fsync, rename, fsync of the parent; on failure the staged files are
 * removed. Releases d either way. */
fgmm_status fgmm_staged_dir_commit(fgmm_staged_dir *d, fgmm_error *err);
/* Removes the staged files; releases d (NULL is a no-op). */
void fgmm_staged_dir_abort(fgmm_staged_dir *d);

/* ------------------------------------------------------------ checkpoints */

/* A fit's checkpoints (docs/formats.md): a directory of step-<N>/
 * subdirectories, the newest complete one kept. Each is a model directory
 * plus means, variances and the log-likelihood history in float64, so a
 * resumed fit starts from exactly the state an uninterrupted one had. */
typedef struct {
    const char *dir; /* the checkpoint directory */
} fgmm_checkpoint;

/* Makes dir (its parent must exist) unless it exists, and removes what a
 * killed writer left there (temporary names of processes that are gone).
 * resumed_step: the step directory a fit resumes from (NULL: a fresh
 * fit). Unless that step lies in dir, dir must not hold steps already
 * (FGMM_ERR_EXISTS naming them: they belong to another fit, and writing
 * there would remove them). */
fgmm_status fgmm_checkpoint_prepare(const char *dir, const char *resumed_step, fgmm_error *err);
/* An fgmm_fit_params.on_step callback (user: an fgmm_checkpoint): writes
 * step-<iteration> atomically, then removes the older steps. */
fgmm_status fgmm_checkpoint_write(void *user, int iteration, const fgmm_model *m,
                                  fgmm_error *err);
/* The newest complete step under path (a checkpoint directory, or one
 * step-<N> directory): the model with its float64 parameters, history and
 * metadata (iterations = its step count). *step_dir (malloc'd; step_dir
 * may be NULL) names the step read. */
fgmm_status fgmm_checkpoint_load(const char *path, fgmm_model **out, char **step_dir,
                                 fgmm_error *err);

/* 1 if path exists (file, directory or anything else). */
int fgmm_path_exists(const char *path);

#ifdef __cplusplus
}
#endif
#endif /* FGMM_IO_H */
