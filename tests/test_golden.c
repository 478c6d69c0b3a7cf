/* Every case of every committed golden fixture, on the tier under test.
 * usage: test_golden FIXTURE.json... (each case is one test case) */
#include "common.h"
#include "tinkerloss_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char file[256];
    tl_case_report rep;
} entry;

static entry *entries;
static int nentries, cap;
static const char *current_file;

static void collect(void *user, const tl_case_report *r)
{
    (void)user;
    if (nentries == cap) {
        cap = cap ? 2 * cap : 64;
        entries = realloc(entries, (size_t)cap * sizeof *entries);
    }
    snprintf(entries[nentries].file, sizeof entries[0].file, "%s",
             current_file);
    entries[nentries++].rep = *r;
}

START_TEST(test_case)
{
    const entry *e = &entries[_i];
    ck_assert_msg(e->rep.passed, "%s: case %s failed: %s (regenerate with "
                  "/usr/bin/python3 golden/generate.py if the format changed)",
                  e->file, e->rep.name, e->rep.detail);
    ck_assert_int_gt(e->rep.nq, 0); /* something was compared */
}
END_TEST

int main(int argc, char **argv)
{
    if (tier_unsupported())
        return 77;
    int unreadable = 0;
    for (int i = 1; i < argc; i++) {
        tl_error err;
        current_file = argv[i];
        if (tl_fixture_check_file(NULL, argv[i], collect, NULL, NULL, NULL, &err)) {
            fprintf(stderr, "%s\n", err.message);
            unreadable++;
        }
    }
    if (argc < 2 || unreadable || nentries == 0) {
        printf("tl-check: 0 passed, %d failed\n", unreadable ? unreadable : 1);
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("golden");
    TCase *tc = tcase_create("golden");
    tcase_add_loop_test(tc, test_case, 0, nentries);
    suite_add_tcase(s, tc);
    const int rc = run_suite(s);
    free(entries);
    return rc;
}
