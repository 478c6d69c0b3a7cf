/* Fuzz target: the JSON readers (fixture files and call dumps). The first
 * byte picks the reader; the rest is the text. */
#include "tinkerloss_io.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void ignore_case(void *user, const tl_case_report *r)
{
    (void)user;
    (void)r;
}

static void ignore_finding(void *user, const tl_finding *f)
{
    (void)user;
    (void)f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    tl_error err;
    int64_t a, b;
    if (data[0] & 1)
        (void)tl_verify_text(NULL, text, NULL, ignore_finding, NULL, &a, &err);
    else
        (void)tl_fixture_check_text(NULL, text, ignore_case, NULL, &a, &b, &err);
    free(text);
    return 0;
}
