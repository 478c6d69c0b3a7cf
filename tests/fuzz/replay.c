/* Replays a fuzz corpus through a fuzz target without libFuzzer: every
 * file under the directories given is one input (one test case).
 * usage: replay_TARGET DIR... */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, fileno, fstat, dirent */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static long run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    const size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)n) {
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return n;
}

int main(int argc, char **argv)
{
    long ok = 0, bad = 0;
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (!d) {
            fprintf(stderr, "replay: cannot open %s\n", argv[i]);
            bad++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            if (run_file(path) < 0) {
                fprintf(stderr, "replay: cannot read %s\n", path);
                bad++;
            } else {
                ok++;
            }
        }
        closedir(d);
    }
    /* an input that crashes never gets here: the test fails */
    printf("tl-check: %ld passed, %ld failed\n", ok, bad);
    return bad || ok == 0;
}
