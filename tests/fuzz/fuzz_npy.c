/* Fuzz target: the .npy reader. */
#define _POSIX_C_SOURCE 200809L
#include "io/json_util.h"

#include <stdint.h>
#include <stdio.h>

#include "fuzz_limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f)
        return 0;
    jt t;
    tl_error err;
    if (tl__npy_read(f, "fuzz.npy", &t, &err) == TL_OK)
        tl__jt_free(&t);
    fclose(f);
    return 0;
}
