/* Runtime dispatch: detection agrees with the compiler's view of the CPU,
 * TL_ISA lowers the tier, tl_isa_set forces it. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tl_isa expected_best(void)
{
#if defined(__aarch64__)
    return TL_ISA_NEON; /* every AArch64 CPU a Linux or macOS runs on */
#endif
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return TL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return TL_ISA_AVX2;
#endif
    return TL_ISA_SCALAR;
}

START_TEST(test_best_matches_cpu)
{
    ck_assert_int_eq(tl_isa_best(), expected_best());
}
END_TEST

START_TEST(test_env_lowers_tier)
{
    const char *env = getenv("TL_ISA");
    tl_isa want = tl_isa_best(), forced;
    if (env && tl_isa_parse(env, &forced) == TL_OK && tl_isa_supported(forced))
        want = forced;
    ck_assert_msg(tl_isa_active() == want, "TL_ISA=%s: active %s, want %s",
                  env ? env : "(unset)", tl_isa_name(tl_isa_active()),
                  tl_isa_name(want));
}
END_TEST

/* The tiers of this architecture are those that can be supported; those
 * of the other architecture never are, and asking for one changes
 * nothing. */
static int of_this_architecture(tl_isa isa)
{
#if defined(__x86_64__)
    return isa != TL_ISA_NEON;
#elif defined(__aarch64__)
    return isa == TL_ISA_SCALAR || isa == TL_ISA_NEON;
#else
    return isa == TL_ISA_SCALAR;
#endif
}

START_TEST(test_set_and_names)
{
    ck_assert(tl_isa_supported(TL_ISA_SCALAR));
    ck_assert(tl_isa_supported(tl_isa_best()));
    for (int i = TL_ISA_SCALAR; i <= TL_ISA_NEON; i++) {
        tl_isa p;
        ck_assert_int_eq(tl_isa_parse(tl_isa_name((tl_isa)i), &p), TL_OK);
        ck_assert_int_eq(p, i);
        if (!of_this_architecture((tl_isa)i))
            ck_assert_msg(!tl_isa_supported((tl_isa)i), "%s",
                          tl_isa_name((tl_isa)i));
        if (tl_isa_supported((tl_isa)i)) {
            ck_assert_int_eq(tl_isa_set((tl_isa)i), TL_OK);
            ck_assert_int_eq(tl_isa_active(), i);
        } else {
            const tl_isa before = tl_isa_active();
            tl_error e;
            tl_ctx *c = tl_ctx_new();
            ck_assert_int_eq(tl_isa_set((tl_isa)i), TL_ERR_UNSUPPORTED);
            ck_assert_int_eq(tl_ctx_set(c, TL_PARAM_ISA, i, &e),
                             TL_ERR_UNSUPPORTED);
            ck_assert_int_eq(tl_isa_active(), before);
            tl_ctx_free(c);
        }
    }
    ck_assert_int_eq(tl_isa_set((tl_isa)4), TL_ERR_VALUE);
    ck_assert_str_eq(tl_isa_name((tl_isa)4), "unknown");
    ck_assert_int_eq(tl_isa_set(tl_isa_best()), TL_OK);
}
END_TEST

START_TEST(test_version)
{
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TL_VERSION_MAJOR, TL_VERSION_MINOR,
             TL_VERSION_PATCH);
    ck_assert_str_eq(tl_version(), want);
}
END_TEST

/* bfloat16 helpers: exact round trip, round to nearest even, NaN kept. */
START_TEST(test_bf16)
{
    ck_assert_uint_eq(tl_f32_to_bf16(1.0f), 0x3f80);
    ck_assert(tl_bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1) */
    ck_assert_uint_eq(tl_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is up */
    ck_assert_uint_eq(tl_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    ck_assert_uint_eq(tl_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert(isnan(tl_bf16_to_f32(tl_f32_to_bf16(NAN))));
    ck_assert(tl_bf16_to_f32(tl_f32_to_bf16(-INFINITY)) == -INFINITY);
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float f = tl_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            ck_assert_uint_eq(tl_f32_to_bf16(f), h);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dispatch");
    TCase *tc = tcase_create("dispatch");
    tcase_add_test(tc, test_best_matches_cpu);
    tcase_add_test(tc, test_env_lowers_tier);
    tcase_add_test(tc, test_set_and_names);
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_bf16);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
