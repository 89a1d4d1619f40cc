/*
 * data_open.c - any input as a source: a shard directory or a dataset
 * file.
 */
#include "io/fgmm_io.h"

fgmm_status fgmm_data_open(const char *path, const fgmm_shard_read_options *o,
                           fgmm_source **out, fgmm_error *err)
{
    if (fgmm_is_shard_dir(path)) return fgmm_shards_open(path, o, out, err);
    return fgmm_dataset_open(path, out, err);
}
