/*
 * shard_probe.c - recognising a shard directory and checking one: the
 * cheap check of the manifest against every header and index, and the
 * full verification that decodes every chunk.
 */
#include "io/shard_source.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fgmm_is_shard_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) return 0;
    char p[4200];
    snprintf(p, sizeof p, "%s/" SHARD_MANIFEST, path);
    if (access(p, F_OK) == 0) return 1;
    snprintf(p, sizeof p, "%s/" SHARD_JOURNAL, path);
    return access(p, F_OK) == 0;
}

fgmm_status fgmm_shards_probe(const char *dir, int verify, int threads, fgmm_shards_info *info,
                              fgmm_error *err)
{
    memset(info, 0, sizeof *info);
    fgmm_shard_read_options o;
    fgmm_shard_read_options_default(&o);
    o.cache_budget = 0;
    o.threads = verify ? threads : 1;
    o.queue_depth = verify ? 0 : 1;
    fgmm_source *src;
    fgmm_status st = fgmm_shards_open(dir, &o, &src, err);
    if (st) return st;
    shard_source *s = fgmm_source_impl(src);
    shard_manifest m;
    if ((st = shard_manifest_read(dir, &m, err))) goto done;
    info->dim = m.dim;
    info->dtype = m.dtype;
    info->rows = (int64_t)m.rows;
    info->shards = m.n_shards;
    info->chunks = s->n_chunks;
    info->rows_per_chunk = (int64_t)m.rows_per_chunk;
    info->level = m.level;
    info->raw_bytes = m.raw_bytes;
    info->stored_bytes = m.stored_bytes;
    snprintf(info->source, sizeof info->source, "%s", m.source);
    shard_manifest_free(&m);
    if (verify) {
        int64_t rows = 0;
        for (;;) {
            fgmm_chunk c;
            if ((st = fgmm_source_next(src, &c, err))) goto done;
            if (c.n_rows == 0) break;
            rows += c.n_rows;
        }
        if (rows != info->rows)
            st = fgmm_fail(err, FGMM_ERR_FORMAT, "%s: decoded %lld rows; manifest says %lld", dir,
                           (long long)rows, (long long)info->rows);
    }
done:
    fgmm_source_close(src);
    return st;
}
