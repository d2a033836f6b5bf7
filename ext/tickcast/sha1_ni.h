/* SHA-1 blocks with the x86 SHA extensions (SHA-NI), for the upgrade's
 * accept key: about a tenth of the instructions of the portable rounds in
 * _http.pyx, which remain for other processors. tc_sha1_ni_ok() says at run
 * time whether this one has them (a wheel runs on any x86-64).
 *
 * tc_sha1_ni(state, data, blocks): state is h0..h4, data blocks of 64 bytes. */
#ifndef TICKCAST_SHA1_NI_H
#define TICKCAST_SHA1_NI_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

static int tc_sha1_ni_ok(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)))       /* SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;                                             /* SHA */
}

/* Four rounds (group g of twenty, function f = g / 5): W[g & 3] holds the
 * schedule's words 4g..4g+3, computed from the four groups before it once
 * g >= 4; E is the fifth word plus W, from the state saved four rounds ago. */
#define TC_SHA1_4ROUNDS(g, f)                                                          \
    do {                                                                               \
        if ((g) >= 4)                                                                  \
            W[(g) & 3] = _mm_sha1msg2_epu32(                                           \
                _mm_xor_si128(_mm_sha1msg1_epu32(W[(g) & 3], W[((g) + 1) & 3]),        \
                              W[((g) + 2) & 3]),                                       \
                W[((g) + 3) & 3]);                                                     \
        E = (g) == 0 ? _mm_add_epi32(E0, W[0]) : _mm_sha1nexte_epu32(saved, W[(g) & 3]); \
        saved = ABCD;                                                                  \
        ABCD = _mm_sha1rnds4_epu32(ABCD, E, f);                                        \
    } while (0)

__attribute__((target("sha,sse4.1")))
static void tc_sha1_ni(uint32_t *state, const uint8_t *data, size_t blocks) {
    const __m128i order = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
    __m128i ABCD = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)state), 0x1B);
    __m128i E0 = _mm_set_epi32((int)state[4], 0, 0, 0);
    __m128i W[4], E, saved, ABCD0 = ABCD;
    int i;
    for (; blocks; blocks--, data += 64) {
        ABCD0 = saved = ABCD;
        for (i = 0; i < 4; i++)
            W[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), order);
        TC_SHA1_4ROUNDS(0, 0);  TC_SHA1_4ROUNDS(1, 0);  TC_SHA1_4ROUNDS(2, 0);
        TC_SHA1_4ROUNDS(3, 0);  TC_SHA1_4ROUNDS(4, 0);  TC_SHA1_4ROUNDS(5, 1);
        TC_SHA1_4ROUNDS(6, 1);  TC_SHA1_4ROUNDS(7, 1);  TC_SHA1_4ROUNDS(8, 1);
        TC_SHA1_4ROUNDS(9, 1);  TC_SHA1_4ROUNDS(10, 2); TC_SHA1_4ROUNDS(11, 2);
        TC_SHA1_4ROUNDS(12, 2); TC_SHA1_4ROUNDS(13, 2); TC_SHA1_4ROUNDS(14, 2);
        TC_SHA1_4ROUNDS(15, 3); TC_SHA1_4ROUNDS(16, 3); TC_SHA1_4ROUNDS(17, 3);
        TC_SHA1_4ROUNDS(18, 3); TC_SHA1_4ROUNDS(19, 3);
        E0 = _mm_sha1nexte_epu32(saved, E0);      /* e after 80 rounds, plus e before */
        ABCD = _mm_add_epi32(ABCD, ABCD0);
    }
    _mm_storeu_si128((__m128i *)state, _mm_shuffle_epi32(ABCD, 0x1B));
    state[4] = (uint32_t)_mm_extract_epi32(E0, 3);
}
#undef TC_SHA1_4ROUNDS

#else
static int tc_sha1_ni_ok(void) { return 0; }
static void tc_sha1_ni(uint32_t *state, const uint8_t *data, size_t blocks) {
    (void)state; (void)data; (void)blocks;
}
#endif

#endif
