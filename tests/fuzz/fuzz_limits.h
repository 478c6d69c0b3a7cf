/* Included by the fuzz targets that read files: keep every allocation well
 * inside libFuzzer's memory limit. */
#ifndef TL_FUZZ_LIMITS_H
#define TL_FUZZ_LIMITS_H

#include "tinkerloss_io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tl_io_set_max_bytes((uint64_t)64 << 20);
    return 0;
}

#endif
