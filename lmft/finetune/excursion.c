/* One chunk's part of an excursion pass (lmft/finetune/excursion.py), float32 on a CPU, in one call.
 *
 * The torch path makes about a dozen passes over each chunk (draw, move, move back into a buffer,
 * xor, cast, count, nonzero, ...), each a dispatch and a sweep of memory. Here one sweep does a
 * pass: 32 elements at a time, in registers, it expands their signs (Rademacher), moves them back
 * (restoring the kept ones), then moves them out (finding the ones to keep) or updates them. The
 * arithmetic is the torch path's, operation for operation (correctly rounded adds, the update's
 * fused multiply-add as torch's add with alpha does it), so both paths give the same bits:
 * tests/test_native.py checks it. Built with -ffp-contract=off (no other contraction); floats are
 * read as bit patterns through memcpy.
 */
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

#define B 32  /* elements per block: one word of Rademacher signs */
#define INLINE static inline __attribute__((always_inline))  /* a call per block would cost more than the block */

static int64_t pad4(int64_t k) { return (k + 3) / 4 * 4; }

static uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* Appends the nonzero deltas of blk [16] (elements i .. i + 15 of the chunk) to off and diff at k;
 * returns the new k. Kept elements are too many to predict (7% of a random initialisation's), so
 * no branch per element: AVX-512 compresses them in a few instructions, else a branch-free loop. */
INLINE int64_t append16(const int32_t *blk, int64_t i, uint16_t *off, int32_t *diff, int64_t k, int *fits)
{
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    /* two 256-bit loads, as the vectorised loops store blk: one 512-bit load would stall on store forwarding */
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)blk)),
                                   _mm256_loadu_si256((const __m256i *)(blk + 8)), 1);
    __mmask16 m = _mm512_test_epi32_mask(v, v);
    __mmask16 first = (__mmask16)((1u << __builtin_popcount(m)) - 1);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)i),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_mask_storeu_epi32(diff + k, first, _mm512_maskz_compress_epi32(m, v));
    _mm256_mask_storeu_epi16(off + k, first, _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(m, idx)));
    *fits &= !(_mm512_cmplt_epi32_mask(v, _mm512_set1_epi32(-32768)) |
               _mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(32767)));
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

/* A pass over one chunk: its arguments, and where it stands in the kept elements it restores. */
struct pass {
    const uint32_t *words;  /* Rademacher: d[32 w + j] = -mag where bit j of words[w] is set, else +mag */
    float mag;
    int back;               /* undo c = theta + back d (0: c is theta) */
    const uint16_t *kept_off;
    const int16_t *kept16;  /* deltas: bits the move back lands on + delta = theta's bits */
    const int32_t *kept32;
    int64_t k_back, next;   /* kept elements, and the first not yet restored */
    int out;                /* move out to theta + out d, or else update: */
    int decays, steps;      /* theta <- fl(theta decay) (decays), then fma(d, step, theta) (steps) */
    float decay, step;
};

/* Block i (elements 32 i ..) at cb [B]: theta into x and d into dx, from db [B] or the block's word. */
INLINE void block_in(const struct pass *p, const float *restrict cb, const float *restrict db, int64_t i,
                     float *restrict x, float *restrict dx)
{
    if (p->words) {
        uint32_t w = p->words[i], m = bits_of(p->mag) & 0x7fffffffu;
        for (int j = 0; j < B; j++) dx[j] = float_of(m | ((w >> j) << 31));
    } else {
        for (int j = 0; j < B; j++) dx[j] = db[j];
    }
    if (p->back > 0)
        for (int j = 0; j < B; j++) x[j] = cb[j] - dx[j];
    else if (p->back < 0)
        for (int j = 0; j < B; j++) x[j] = cb[j] + dx[j];
    else
        for (int j = 0; j < B; j++) x[j] = cb[j];
}

/* The kept elements of block i back to theta's bits (offsets ascend: a cursor walks them). */
INLINE void restore(struct pass *p, int64_t i, float *x)
{
    for (; p->next < p->k_back && p->kept_off[p->next] < B * (i + 1); p->next++) {
        int64_t j = p->kept_off[p->next] - B * i;
        int32_t delta = p->kept32 ? p->kept32[p->next] : p->kept16[p->next];
        x[j] = float_of(bits_of(x[j]) + (uint32_t)delta);
    }
}

/* theta + out d into cb, with blk = theta's bits minus those of fl(theta + out d) - out d. */
INLINE void block_out(const struct pass *p, float *restrict cb, const float *restrict x, const float *restrict dx,
                      int32_t *restrict blk)
{
    float s = p->out > 0 ? 1.0f : -1.0f;  /* x + s d is x + d or x - d exactly, as the torch path computes */
    for (int j = 0; j < B; j++) {
        float e = s * dx[j], t = x[j] + e;
        blk[j] = (int32_t)(bits_of(x[j]) - bits_of(t - e));
        cb[j] = t;
    }
}

INLINE void block_update(const struct pass *p, float *restrict cb, float *restrict x, const float *restrict dx)
{
    if (p->decays)
        for (int j = 0; j < B; j++) x[j] = x[j] * p->decay;
    if (p->steps)
        for (int j = 0; j < B; j++) x[j] = fmaf(dx[j], p->step, x[j]);
    for (int j = 0; j < B; j++) cb[j] = x[j];
}

/* Block i of the pass at cb (its first m elements real); returns the kept count, appending to off and diff. */
INLINE int64_t block(struct pass *p, float *restrict cb, const float *restrict db, int64_t i, int m,
                     uint16_t *off, int32_t *diff, int64_t k, int *fits)
{
    float x[B], dx[B];
    int32_t blk[B];
    block_in(p, cb, db, i, x, dx);
    if (p->back)
        restore(p, i, x);
    if (!p->out) {
        block_update(p, cb, x, dx);
        return k;
    }
    block_out(p, cb, x, dx, blk);
    for (int j = m; j < B; j++) blk[j] = 0;
    k = append16(blk, B * i, off, diff, k, fits);
    return append16(blk + 16, B * i + 16, off, diff, k, fits);
}

/* The stored form of k kept elements (offsets off [k], deltas diff [k]) at dst: pad4(k) + 2 k int16 at most. */
void lmft_pack(const uint16_t *off, const int32_t *diff, int64_t k, int wide, int16_t *dst)
{
    memcpy(dst, off, 2 * k);
    if (wide)
        memcpy(dst + pad4(k), diff, 4 * k);
    else
        for (int64_t j = 0; j < k; j++) dst[k + j] = (int16_t)diff[j];
}

/* One chunk c [n] of a walk (n <= 65536) with d = fl(eps z): words (Rademacher signs, d = +-mag) or d [n];
 *   back != 0: undo the excursion c = theta + back d, restoring the k_back kept elements at kept
 *              (offsets, then int16 deltas, or (wide_back) int32 deltas from 4 ceil(k / 4));
 *   then out != 0: move out to theta + out d; returns k, the elements that moving back will not
 *              restore, stored (lmft_pack) at dst if room (int16 elements) holds them, else left in
 *              off [k] and diff [k]; *flags: 1 = the deltas are int32 (some is not an int16), 2 = not stored;
 *   or else the update: theta <- fl(theta decay) (if decays), then fma(d, step, theta) (if steps). */
int64_t lmft_walk(float *c, int64_t n, const uint32_t *words, float mag, const float *d, int back, const int16_t *kept,
                  int64_t k_back, int wide_back, int out, int32_t *diff, uint16_t *off, int *flags, int decays,
                  float decay, int steps, float step, int16_t *dst, int64_t room)
{
    struct pass p = {words, mag, back, (const uint16_t *)kept, NULL, NULL, k_back, 0, out, decays, steps, decay, step};
    if (kept && wide_back)
        p.kept32 = (const int32_t *)(kept + pad4(k_back));
    else if (kept)
        p.kept16 = kept + k_back;
    int64_t k = 0, i = 0;
    int fits = 1;
    for (; B * (i + 1) <= n; i++)
        k = block(&p, c + B * i, words ? NULL : d + B * i, i, B, off, diff, k, &fits);
    int m = (int)(n - B * i);
    if (m) {  /* the tail, in a block padded with zeros */
        float ct[B] = {0}, dt[B] = {0};
        memcpy(ct, c + B * i, 4 * m);
        if (!words)
            memcpy(dt, d + B * i, 4 * m);
        k = block(&p, ct, dt, i, m, off, diff, k, &fits);
        memcpy(c + B * i, ct, 4 * m);
    }
    int stored = k && (fits ? 2 * k : pad4(k) + 2 * k) <= room;
    if (stored)
        lmft_pack(off, diff, k, !fits, dst);
    *flags = !fits | (k && !stored) << 1;
    return k;
}
