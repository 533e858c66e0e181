/* Gaussian noise for DP-SGD on the CPU: Philox4x32-10 counter-based bits, Box-Muller transform.
 *
 * Why not torch's generator: on the CPU it draws one normal at a time from a sequential Mersenne Twister, and for a
 * 6.5M-parameter denoiser that costs as much as the forward pass. Here each Philox block depends only on
 * (key, counter), so blocks are computed 16 (AVX-512) or 8 (AVX2) at a time, one per 32-bit lane, the transform is
 * a loop of polynomials the compiler vectorizes, and any split of the output across threads gives the same numbers.
 *
 * Philox4x32-10 is the generator of cuRAND and of torch's CUDA normal_ (Salmon et al., SC'11, "Parallel random
 * numbers: as easy as 1, 2, 3"); philox_bits() exposes the raw words (scalar code) for the known-answer test, and
 * box_muller_words() the transform, so the tests check the normals against a float64 Box-Muller of those words.
 *
 * The tail: the radius uniform u1 is built from two words (64 bits), u1 = (k + 1) 2^-64 in (0, 1], and ln u1 is
 * computed in double, so |z| reaches sqrt(-2 ln 2^-64) = sqrt(128 ln 2) = 9.41928 (k = 0 and angle 0 give it).
 * A 24-bit u1, as in torch's float normal_ and this kernel's first version, caps |z| at 5.77: a truncated
 * Gaussian, whose DP guarantee holds only with a much larger delta. The angle takes 24 bits of a third word.
 *
 * Output layout: batch b uses the BATCH_BLOCKS blocks at counters ctr_lo + b*BATCH_BLOCKS + i, i < BATCH_BLOCKS,
 * their words laid out word-major, W[w*BATCH_BLOCKS + i] = word w of block i, and makes BATCH_PAIRS =
 * 4*BATCH_BLOCKS/3 Box-Muller pairs, three words each (96 of a block's 128 bits per pair, not one pair per block:
 * a quarter fewer Philox blocks, which cost more than the transform): pair j takes k = W[j] 2^32 + W[BATCH_PAIRS + j]
 * and the angle from W[2*BATCH_PAIRS + j]. It fills out[b*BATCH_NORMALS ...] with the cos halves of its pairs
 * (pair j at j), then the sin halves (pair j at BATCH_PAIRS + j).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define BATCH_BLOCKS 768  /* a multiple of 3 and of the vector lanes */
#define BATCH_PAIRS (4 * BATCH_BLOCKS / 3)
#define BATCH_NORMALS (2 * BATCH_PAIRS)
#define MASK32 0xFFFFFFFFull

int64_t philox_batch_normals(void) { return BATCH_NORMALS; }
int64_t philox_batch_blocks(void) { return BATCH_BLOCKS; }

/* One Philox4x32-10 block (the reference; the batch loop below uses the vector version where it can). */
static inline void philox_block(uint64_t ctr_lo, uint64_t ctr_hi, uint64_t key, uint32_t out[4]) {
  uint64_t c0 = ctr_lo & MASK32, c1 = ctr_lo >> 32, c2 = ctr_hi & MASK32, c3 = ctr_hi >> 32;
  uint64_t k0 = key & MASK32, k1 = key >> 32;
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = 0xD2511F53ull * c0, p1 = 0xCD9E8D57ull * c2;
    uint64_t n0 = ((p1 >> 32) ^ c1 ^ k0) & MASK32, n2 = ((p0 >> 32) ^ c3 ^ k1) & MASK32;
    c1 = p1 & MASK32;
    c3 = p0 & MASK32;
    c0 = n0;
    c2 = n2;
    k0 = (k0 + 0x9E3779B9ull) & MASK32;
    k1 = (k1 + 0xBB67AE85ull) & MASK32;
  }
  out[0] = (uint32_t)c0; out[1] = (uint32_t)c1; out[2] = (uint32_t)c2; out[3] = (uint32_t)c3;
}

/* out[4*j + w] = word w of the block at counter (ctr_lo + j, ctr_hi), j < n_blocks. */
void philox_bits(uint32_t *out, int64_t n_blocks, uint64_t key, uint64_t ctr_lo, uint64_t ctr_hi) {
  for (int64_t j = 0; j < n_blocks; j++) philox_block(ctr_lo + (uint64_t)j, ctr_hi, key, out + 4 * j);
}


/* Vector Philox: LANES blocks at once, block k of the group in lane k. mulhilo (the 32x32->64 products) takes two
 * even-lane multiplies, one of them on the odd lanes shifted down, and blends the halves back into lanes. */
#if defined(__AVX512F__)
#define LANES 16
typedef __m512i vec;
#define V_SET1(x) _mm512_set1_epi32((int)(uint32_t)(x))
#define V_IOTA _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define V_MUL_EVEN(a, b) _mm512_mul_epu32(a, b)
#define V_SRL32(a) _mm512_srli_epi64(a, 32)
#define V_SLL32(a) _mm512_slli_epi64(a, 32)
#define V_ODD_FROM(even, odd) _mm512_mask_blend_epi32((__mmask16)0xAAAA, even, odd)
#define V_XOR(a, b) _mm512_xor_si512(a, b)
#define V_ADD(a, b) _mm512_add_epi32(a, b)
#define V_WRAPPED(sum, addend) _mm512_maskz_mov_epi32(_mm512_cmplt_epu32_mask(sum, addend), V_SET1(1))
#define V_STORE(p, a) _mm512_storeu_si512((void *)(p), a)
#elif defined(__AVX2__)
#define LANES 8
typedef __m256i vec;
#define V_SET1(x) _mm256_set1_epi32((int)(uint32_t)(x))
#define V_IOTA _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define V_MUL_EVEN(a, b) _mm256_mul_epu32(a, b)
#define V_SRL32(a) _mm256_srli_epi64(a, 32)
#define V_SLL32(a) _mm256_slli_epi64(a, 32)
#define V_ODD_FROM(even, odd) _mm256_blend_epi32(even, odd, 0xAA)
#define V_XOR(a, b) _mm256_xor_si256(a, b)
#define V_ADD(a, b) _mm256_add_epi32(a, b)
/* unsigned sum < addend <=> the add wrapped; AVX2 compares signed, so flip the sign bits first */
#define V_WRAPPED(sum, addend) _mm256_and_si256(V_SET1(1), _mm256_cmpgt_epi32( \
    _mm256_xor_si256(addend, V_SET1(0x80000000u)), _mm256_xor_si256(sum, V_SET1(0x80000000u))))
#define V_STORE(p, a) _mm256_storeu_si256((__m256i *)(p), a)
#endif

#ifdef LANES
static inline void mulhilo(vec a, vec m, vec *hi, vec *lo) {
  vec even = V_MUL_EVEN(a, m), odd = V_MUL_EVEN(V_SRL32(a), m);
  *lo = V_ODD_FROM(even, V_SLL32(odd));
  *hi = V_ODD_FROM(V_SRL32(even), odd);
}

/* Blocks at counters (ctr + k, ctr_hi), k < LANES: word w of block k into words[w][k]. */
static inline void philox_lanes(uint64_t ctr, uint64_t ctr_hi, uint64_t key, uint32_t *words[4], int offset) {
  const vec m0 = V_SET1(0xD2511F53u), m1 = V_SET1(0xCD9E8D57u), iota = V_IOTA;
  vec c0 = V_ADD(V_SET1(ctr), iota);
  vec c1 = V_ADD(V_SET1(ctr >> 32), V_WRAPPED(c0, iota));  /* carry into the high word */
  vec c2 = V_SET1(ctr_hi), c3 = V_SET1(ctr_hi >> 32);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    vec hi0, lo0, hi1, lo1;
    mulhilo(c0, m0, &hi0, &lo0);
    mulhilo(c2, m1, &hi1, &lo1);
    c0 = V_XOR(V_XOR(hi1, c1), V_SET1(k0));
    c2 = V_XOR(V_XOR(hi0, c3), V_SET1(k1));
    c1 = lo1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  V_STORE(words[0] + offset, c0); V_STORE(words[1] + offset, c1);
  V_STORE(words[2] + offset, c2); V_STORE(words[3] + offset, c3);
}
#endif

static inline double bits_to_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
static inline uint64_t double_to_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
/* An integer 0 <= x < 2^52 as a double, exactly, by integer ops and one subtraction: unlike an unsigned-to-double
 * conversion, this vectorizes without AVX-512. */
static inline double exact_double(uint64_t x) { return bits_to_double(0x4330000000000000ull | x) - 0x1p52; }

/* z[j] = r_j cos(theta_j), z[n + j] = r_j sin(theta_j), j < n, with r_j = sqrt(-2 ln u1), u1 = (k + 1) 2^-64 for
 * k = hi[j] 2^32 + lo[j], and theta_j = 2 pi a / 2^24 for the top 24 bits a of angle[j]. log, sin and cos are
 * polynomials (below) rather than libm calls, which the compiler would not vectorize. */
static inline void box_muller(float *z, const uint32_t *hi, const uint32_t *lo, const uint32_t *angle, int64_t n) {
  for (int64_t j = 0; j < n; j++) {
    /* both terms are exact, so u1 is (k + 1) 2^-64 rounded once, and exact for k < 2^53 (the smallest, 2^-64) */
    double u1 = exact_double(hi[j]) * 0x1p-32 + (exact_double(lo[j]) + 1.0) * 0x1p-64;
    /* ln u1 = e ln 2 + ln m, u1 = 2^e m, m in [sqrt(1/2), sqrt(2)): adding 2^52 - (mantissa bits of sqrt(2)) to
     * the bits carries into the exponent field exactly when m would reach sqrt(2). ln m = 2 atanh(s) =
     * 2 (s + s^3/3 + ... + s^15/15), s = (m - 1)/(m + 1), |s| < 0.1716: the omitted terms sum to < 1.2e-14,
     * 3.5e-14 of ln m. */
    uint64_t ub = double_to_bits(u1);
    uint64_t biased_e = (ub + (0x3FF0000000000000ull - 0x3FE6A09E667F3BCDull)) >> 52;
    double m = bits_to_double(ub - ((biased_e - 1023) << 52));
    double e = exact_double(biased_e) - 1023.0;
    double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double ln_m = 2.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (
        1.0 / 11 + s2 * (1.0 / 13 + s2 * (1.0 / 15))))))));
    /* u1 <= 1, so ln u1 <= 0 (u1 = 1 gives e = 0, m = 1, s = 0 exactly) and the square root is real */
    float r = (float)sqrt(-2.0 * (e * 0.693147180559945309 + ln_m));
    /* Writing a + 2^21 = q 2^22 + (t + 2^21) (mod 2^24), with quadrant q and t in [-2^21, 2^21),
     * theta = (pi/2)(q + t/2^22) = q pi/2 + phi, phi in [-pi/4, pi/4), where Taylor series to x^9 (sin) and x^8
     * (cos) are accurate to 3e-8; cos(0) = 1 exactly. */
    uint32_t shifted = ((angle[j] >> 8) + (1u << 21)) & 0x00FFFFFFu;
    uint32_t q = shifted >> 22;
    float phi = (float)((int32_t)(shifted & 0x003FFFFFu) - (1 << 21)) * (1.57079632679489662f / 4194304.0f);
    float p2 = phi * phi;
    float sin_phi = phi * (1.0f + p2 * (-1.0f / 6 + p2 * (1.0f / 120 + p2 * (-1.0f / 5040 + p2 * (1.0f / 362880)))));
    float cos_phi = 1.0f + p2 * (-0.5f + p2 * (1.0f / 24 + p2 * (-1.0f / 720 + p2 * (1.0f / 40320))));
    /* rotate by q quarter turns: (cos, sin) -> (-sin, cos) per quarter */
    float c = (q & 1) ? sin_phi : cos_phi, sn = (q & 1) ? cos_phi : sin_phi;
    c = (q == 1 || q == 2) ? -c : c;
    sn = (q >= 2) ? -sn : sn;
    z[j] = r * c;
    z[n + j] = r * sn;
  }
}

/* The transform alone, on given words (for the tests): out[0..2n) as box_muller() lays it out. */
void box_muller_words(float *out, const uint32_t *hi, const uint32_t *lo, const uint32_t *angle, int64_t n) {
  box_muller(out, hi, lo, angle, n);
}

/* out[0..m), m <= BATCH_NORMALS, <- mean + std * N(0, 1) from the BATCH_BLOCKS blocks at counters ctr, ctr + 1, ...,
 * as the layout above says */
static void normal_batch(float *out, int64_t m, float mean, float std, uint64_t key, uint64_t ctr, uint64_t ctr_hi) {
  uint32_t bits[4 * BATCH_BLOCKS];
  float z[BATCH_NORMALS];
  uint32_t *words[4] = {bits, bits + BATCH_BLOCKS, bits + 2 * BATCH_BLOCKS, bits + 3 * BATCH_BLOCKS};
  int j = 0;
#ifdef LANES
  for (; j + LANES <= BATCH_BLOCKS; j += LANES) philox_lanes(ctr + (uint64_t)j, ctr_hi, key, words, j);
#endif
  for (; j < BATCH_BLOCKS; j++) {
    uint32_t w[4];
    philox_block(ctr + (uint64_t)j, ctr_hi, key, w);
    for (int k = 0; k < 4; k++) words[k][j] = w[k];
  }
  box_muller(z, bits, bits + BATCH_PAIRS, bits + 2 * BATCH_PAIRS, BATCH_PAIRS);
  for (int64_t i = 0; i < m; i++) out[i] = mean + std * z[i];
}

/* out[0..n) <- mean + std * N(0, 1), using the ceil(n / BATCH_NORMALS) * BATCH_BLOCKS counters from ctr_lo on.
 * Built with OpenMP, the batches are split over `threads` threads; inside torch (whose libgomp this library then
 * shares) that is torch's own thread pool, so no extra threads compete with it. */
void philox_normal(float *out, int64_t n, float mean, float std, uint64_t key, uint64_t ctr_lo, uint64_t ctr_hi,
                   int threads) {
  int64_t batches = (n + BATCH_NORMALS - 1) / BATCH_NORMALS;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (threads > 1 && batches > 1)
#endif
  for (int64_t b = 0; b < batches; b++) {
    int64_t start = b * BATCH_NORMALS, m = n - start < BATCH_NORMALS ? n - start : BATCH_NORMALS;
    normal_batch(out + start, m, mean, std, key, ctr_lo + (uint64_t)b * BATCH_BLOCKS, ctr_hi);
  }
  (void)threads;
}
