/* One chunk's part of an excursion pass (lmft/finetune/excursion.py), float32 on a CPU, in one call.
 *
 * The torch path makes about a dozen passes over each chunk (move, move back into a buffer, xor,
 * cast, count, nonzero, ...), each a dispatch and a sweep of memory. Here a pass over a chunk
 * sweeps it once from memory and does the rest while it is in cache. The arithmetic is the torch
 * path's, operation for operation (correctly rounded adds, the update's fused multiply-add as
 * torch's add with alpha does it), so both paths give the same bits: tests/test_native.py checks it.
 * Built with -ffp-contract=off (no other contraction) and -fno-strict-aliasing (floats are read
 * as bit patterns).
 */
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

/* d[32 w + j] = -mag where bit j of words[w] is set, else +mag: |mag|'s bit pattern with the bit as sign. */
static void lmft_signs(const uint32_t *words, int64_t n, float mag, float *d)
{
    uint32_t m, *out = (uint32_t *)d;
    memcpy(&m, &mag, 4);
    m &= 0x7fffffffu;
    int64_t full = n / 32;
    for (int64_t w = 0; w < full; w++) {
        uint32_t b = words[w];
        for (int j = 0; j < 32; j++)
            out[32 * w + j] = m | ((b >> j) << 31);
    }
    for (int64_t i = full * 32; i < n; i++)
        out[i] = m | ((words[i >> 5] >> (i & 31)) << 31);
}

/* Kept elements as stored: k offsets (int16, read modulo 2^16), then their deltas (bits the move
 * back lands on + delta = the element's bits): int16 from kept + k, or (wide) int32 from
 * kept + 4 ceil(k / 4). */
static int64_t pad4(int64_t k) { return (k + 3) / 4 * 4; }

static void move_back(float *c, const float *d, int64_t n, int sign, const int16_t *kept, int64_t k, int wide)
{
    if (sign > 0)
        for (int64_t i = 0; i < n; i++) c[i] = c[i] - d[i];
    else
        for (int64_t i = 0; i < n; i++) c[i] = c[i] + d[i];
    uint32_t *bits = (uint32_t *)c;
    const uint16_t *off = (const uint16_t *)kept;
    if (wide) {
        const int32_t *delta = (const int32_t *)(kept + pad4(k));
        for (int64_t j = 0; j < k; j++) bits[off[j]] += (uint32_t)delta[j];
    } else {
        for (int64_t j = 0; j < k; j++) bits[off[j]] += (uint32_t)(int32_t)kept[k + j];
    }
}

/* Appends the nonzero deltas of blk [16] (elements i .. i + 15 of the chunk) to off and diff at k;
 * returns the new k. Kept elements are too many to predict (7% of a random initialisation's), so
 * no branch per element: AVX-512 compresses them in a few instructions, else a branch-free loop. */
static int64_t append16(const int32_t *blk, int64_t i, uint16_t *off, int32_t *diff, int64_t k, int *fits)
{
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    __m512i v = _mm512_loadu_si512(blk);
    __mmask16 m = _mm512_test_epi32_mask(v, v), first = (__mmask16)((1u << __builtin_popcount(m)) - 1);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)i),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_mask_storeu_epi32(diff + k, first, _mm512_maskz_compress_epi32(m, v));
    _mm256_mask_storeu_epi16(off + k, first, _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(m, idx)));
    *fits &= !(_mm512_cmplt_epi32_mask(v, _mm512_set1_epi32(-32768)) | _mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(32767)));
    return k + __builtin_popcount(m);
#else
    for (int j = 0; j < 16; j++) {
        off[k] = (uint16_t)(i + j), diff[k] = blk[j];
        *fits &= (uint32_t)blk[j] + 32768u < 65536u;
        k += blk[j] != 0;
    }
    return k;
#endif
}

/* c += sign d; returns k, the elements that moving back would not restore: their offsets in
 * off[0, k) and their deltas in diff[0, k) (diff: [n] scratch); *wide = some delta is not an int16.
 * One vectorised sweep writes every element's delta (0 where moving back restores it) to diff, in
 * cache; a second compacts the nonzero ones, 16 at a time. */
static int64_t move_out(float *restrict c, const float *restrict d, int64_t n, int sign, int32_t *restrict diff,
                        uint16_t *restrict off, int *wide)
{
    float s = sign > 0 ? 1.0f : -1.0f;  /* x + s d is x + d or x - d exactly, as the torch path computes */
    for (int64_t i = 0; i < n; i++) {
        float x = c[i], e = s * d[i], t = x + e, b = t - e;
        uint32_t xb, bb;
        memcpy(&xb, &x, 4), memcpy(&bb, &b, 4);
        diff[i] = (int32_t)(xb - bb);
        c[i] = t;
    }
    int64_t k = 0, i = 0;
    int fits = 1;
    for (; i + 16 <= n; i += 16)
        k = append16(diff + i, i, off, diff, k, &fits);  /* writes at k <= i: compacts in place */
    if (i < n) {
        int32_t tail[16] = {0};
        memcpy(tail, diff + i, 4 * (n - i));
        k = append16(tail, i, off, diff, k, &fits);
    }
    *wide = !fits;
    return k;
}

/* The stored form of move_out's k kept elements at dst (pad4(k) + 2 k int16 at most). */
void lmft_pack(const uint16_t *off, const int32_t *diff, int64_t k, int wide, int16_t *dst)
{
    memcpy(dst, off, 2 * k);
    if (wide)
        memcpy(dst + pad4(k), diff, 4 * k);
    else
        for (int64_t j = 0; j < k; j++) dst[k + j] = (int16_t)diff[j];
}

/* One chunk c [n] of a walk with d = fl(eps z) [n] (words: Rademacher signs to expand into d first,
 * d = +-mag; else d as given):
 *   back != 0: undo the excursion c = theta + back d, restoring the k_back kept elements at kept;
 *   then out != 0: move out to theta + out d (returns k; kept left in off and diff for lmft_pack);
 *   or else the update: theta <- fl(theta decay) (if decays), then fma(d, step, theta) (if steps). */
int64_t lmft_walk(float *c, int64_t n, const uint32_t *words, float mag, float *d, int back, const int16_t *kept,
                  int64_t k_back, int wide_back, int out, int32_t *diff, uint16_t *off, int *wide, int decays,
                  float decay, int steps, float step)
{
    if (words)
        lmft_signs(words, n, mag, d);
    if (back)
        move_back(c, d, n, back, kept, k_back, wide_back);
    if (out)
        return move_out(c, d, n, out, diff, off, wide);
    if (decays)
        for (int64_t i = 0; i < n; i++) c[i] = c[i] * decay;
    if (steps)
        for (int64_t i = 0; i < n; i++) c[i] = fmaf(d[i], step, c[i]);
    return 0;
}
