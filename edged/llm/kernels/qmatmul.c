/* edged.llm QMatMul: y = x @ W.T for GGUF block weights (Q4_0, Q4_1, Q8_0) on int8 dot products.
 *
 * The activations are quantized per block of 32 like llama.cpp's q8 (d = amax / 127,
 * q = round-half-even(x * 127 / amax)), and each block contributes
 *     d_w * d_x * sum(q_w * q_x)          (+ m_w * s_x for Q4_1; s_x: the block's sum)
 * summed in fp32.  Two modes (attribute ``precise``):
 *   0  llama.cpp's arithmetic: d_x and s_x = d_x * sum(q_x) rounded to fp16 as in its q8_1.
 *   1  two int8 passes: the residual x - d q (at most d / 2) is coded again in units of d / 128,
 *      so x = d / 128 * (128 q + q2) to within d / 256 (about 14 bits), s_x is the fp32 sum, and
 *      the results are within ~1e-3 relative of the fp32 product of the dequantized weights.
 * The int8 products run on AVX-512 VNNI, on AVX-VNNI or plain AVX2 (256-bit) where the compiler
 * targets them (-march=native on such a CPU), in portable C otherwise.  Python side, layout and
 * a numpy reference: edged/llm/qkernel.py.
 *
 * Inputs   X float [..., K]
 *          W uint8 [G, K/32, S, 64]  weight codes of 16 rows side by side (qkernel.pack), G = ceil(N/16)
 *                                     groups, the last one padded: S = 4 for 4-bit, 8 for 8-bit
 *          D fp16 [G, K/32, 16]      per-block scales d_w (GGUF's fp16, so no more bytes than GGUF)
 *          M fp16 [G, K/32, 16]      per-block mins m_w (Q4_1), a [0] tensor otherwise
 * Attrs    K, N, bits (4 | 8), zero_point (codes are q_w + zero_point: 0 for Q4_1, 8 for Q4_0,
 *          128 for Q8_0), precise (0 | 1)
 * Output   Y float [..., N]
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

#if defined(__AVX512F__) || defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QMM_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QMM_AVX2 1
#endif

#define QMM_ORT_API 17
#define TINY 1e-30f /* blocks whose largest |x| is below this count as zeros */
#define QK 32
#define ROWS 16 /* rows of W per group: one 512-bit register of int32 sums */
#define GROUPS(n) (((n) + ROWS - 1) / ROWS)

static const OrtApi *g_api;

typedef struct {
  int64_t k, n, bits, zero_point, precise;
} QKernel;

/* ---- activation quantization (llama.cpp's quantize_row_q8_1 / q8_0 arithmetic) ---------- */

static float fp16_round(float f) {
#if defined(__F16C__)
  return _cvtsh_ss(_cvtss_sh(f, 0)); /* 0: round to nearest even, like GGML_FP32_TO_FP16 */
#else
  return (float)(_Float16)f;
#endif
}

static inline float half(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  _Float16 f;
  memcpy(&f, &h, 2);
  return (float)f;
#endif
}

#ifdef QMM_AVX512
static inline __m512 half16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
#endif

/* 4 activation bytes as one int32 (memcpy: no type punning) */
static inline int32_t four(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

static inline int32_t round_half_even(float v) {
  /* llama.cpp rounds with _mm256_round_ps(_MM_ROUND_NEAREST): ties to even */
  float r = __builtin_rintf(v); /* default rounding mode: nearest, ties to even */
  return (int32_t)r;
}

typedef struct {
  int8_t *q;     /* [M, K] */
  int8_t *q2;    /* [M, K] precise mode: the residual's codes, else NULL */
  float *d;      /* [M, nb] scale of one unit of sum (llama: fp16-rounded d; precise: d / 128) */
  float *s;      /* [M, nb] block sum of x (llama: fp16(d * sum q); precise: the fp32 sum) */
  int32_t *sum;  /* [M, nb] sum of the codes (precise: of 128 q + q2) */
} QAct;

/* One block of 32: largest |x| into *amax; 0 if a value is NaN or infinite. */
static inline int block_amax(const float *xb, float *amax) {
#ifdef QMM_AVX512
  __m512 a0 = _mm512_abs_ps(_mm512_loadu_ps(xb)), a1 = _mm512_abs_ps(_mm512_loadu_ps(xb + 16));
  const __m512 big = _mm512_set1_ps(3.402823466e38f);
  if ((_mm512_cmp_ps_mask(a0, big, _CMP_LE_OQ) & _mm512_cmp_ps_mask(a1, big, _CMP_LE_OQ)) != 0xFFFF) return 0;
  *amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
  return 1;
#elif defined(QMM_AVX2)
  const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.402823466e38f);
  __m256 m = _mm256_setzero_ps();
  int ok = 0xFF;
  for (int i = 0; i < QK; i += 8) {
    __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + i));
    ok &= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_LE_OQ));
    m = _mm256_max_ps(m, a);
  }
  if (ok != 0xFF) return 0;
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  *amax = _mm_cvtss_f32(h);
  return 1;
#else
  int finite = 1;
  float m = 0.0f;
  for (int i = 0; i < QK; i++) {
    float v = fabsf(xb[i]);
    finite &= isfinite(v);
    m = v > m ? v : m;
  }
  *amax = m;
  return finite;
#endif
}

/* codes q = round(x * id) into qb; and in precise mode (rb != NULL) the residual's codes
 * round((x - d q) * inv), clamped to +-127, into rb.  Returns the sum of q (and of 128 q + q2
 * into *sum2, the fp32 sum of x into *xs, in precise mode). */
static inline int32_t block_codes(const float *xb, float d, float id, float inv, int8_t *qb, int8_t *rb,
                                  int32_t *sum2, float *xs) {
#ifdef QMM_AVX512
  int32_t sum = 0, rsum = 0;
  float xsum = 0.0f;
  for (int h = 0; h < 2; h++) {
    __m512 x = _mm512_loadu_ps(xb + 16 * h);
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(id))); /* nearest, ties to even */
    _mm_storeu_si128((__m128i *)(qb + 16 * h), _mm512_cvtepi32_epi8(q));
    sum += _mm512_reduce_add_epi32(q);
    if (rb) {
      __m512 res = _mm512_sub_ps(x, _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(q)));
      __m512i q2 = _mm512_cvtps_epi32(_mm512_mul_ps(res, _mm512_set1_ps(inv)));
      q2 = _mm512_max_epi32(_mm512_min_epi32(q2, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
      _mm_storeu_si128((__m128i *)(rb + 16 * h), _mm512_cvtepi32_epi8(q2));
      rsum += _mm512_reduce_add_epi32(q2);
      xsum += _mm512_reduce_add_ps(x);
    }
  }
  if (rb) {
    *sum2 = 128 * sum + rsum;
    *xs = xsum;
  }
  return sum;
#elif defined(QMM_AVX2)
  int32_t q32[QK], r32[QK];
  __m256i qsum = _mm256_setzero_si256(), rsumv = _mm256_setzero_si256();
  __m256 xsumv = _mm256_setzero_ps();
  for (int i = 0; i < QK; i += 8) {
    __m256 x = _mm256_loadu_ps(xb + i);
    __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(x, _mm256_set1_ps(id))); /* nearest, ties to even */
    _mm256_storeu_si256((__m256i *)(q32 + i), q);
    qsum = _mm256_add_epi32(qsum, q);
    if (rb) {
      __m256 res = _mm256_sub_ps(x, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q)));
      __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(res, _mm256_set1_ps(inv)));
      q2 = _mm256_max_epi32(_mm256_min_epi32(q2, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
      _mm256_storeu_si256((__m256i *)(r32 + i), q2);
      rsumv = _mm256_add_epi32(rsumv, q2);
      xsumv = _mm256_add_ps(xsumv, x);
    }
  }
  int32_t lanes[8];
  float flanes[8];
  int32_t sum = 0, rsum = 0;
  float xsum = 0.0f;
  _mm256_storeu_si256((__m256i *)lanes, qsum);
  for (int i = 0; i < 8; i++) sum += lanes[i];
  for (int i = 0; i < QK; i++) qb[i] = (int8_t)q32[i];
  if (rb) {
    _mm256_storeu_si256((__m256i *)lanes, rsumv);
    _mm256_storeu_ps(flanes, xsumv);
    for (int i = 0; i < 8; i++) {
      rsum += lanes[i];
      xsum += flanes[i];
    }
    for (int i = 0; i < QK; i++) rb[i] = (int8_t)r32[i];
    *sum2 = 128 * sum + rsum;
    *xs = xsum;
  }
  return sum;
#else
  int32_t sum = 0, rsum = 0;
  float xsum = 0.0f;
  for (int i = 0; i < QK; i++) {
    int32_t q = round_half_even(xb[i] * id);
    qb[i] = (int8_t)q;
    sum += q;
    if (rb) {
      int32_t q2 = round_half_even((xb[i] - d * (float)q) * inv);
      q2 = q2 > 127 ? 127 : (q2 < -127 ? -127 : q2);
      rb[i] = (int8_t)q2;
      rsum += q2;
      xsum += xb[i];
    }
  }
  if (rb) {
    *sum2 = 128 * sum + rsum;
    *xs = xsum;
  }
  return sum;
#endif
}

static void quantize_rows(const float *x, int64_t m, int64_t k, QAct *a) {
  int64_t nb = k / QK;
  for (int64_t r = 0; r < m; r++) {
    for (int64_t b = 0; b < nb; b++) {
      const float *xb = x + r * k + b * QK;
      const int64_t ab = r * nb + b;
      int8_t *qb = a->q + r * k + b * QK, *rb = a->q2 ? a->q2 + r * k + b * QK : NULL;
      float amax;
      if (!block_amax(xb, &amax)) { /* a NaN or an infinity: the block's products are NaN, as fp32's would be */
        memset(qb, 0, QK);
        if (rb) memset(rb, 0, QK);
        a->d[ab] = a->s[ab] = NAN;
        a->sum[ab] = 0;
        continue;
      }
      if (amax < TINY) amax = 0.0f; /* 127 / amax would overflow: such a block adds nothing anyway */
      float d = amax / 127.f;
      float id = amax != 0.0f ? 127.f / amax : 0.0f;
      /* precise: x = d/128 * (128 q + q2) to within d/256: the residual x - d q (at most d/2) in
       * units of d/128 fits int8.  unit is 0 only when amax is */
      float unit = d / 128.f, inv = unit != 0.0f ? 1.0f / unit : 0.0f, xs = 0.0f;
      int32_t sum2 = 0;
      int32_t sum = block_codes(xb, d, id, inv, qb, rb, &sum2, &xs);
      if (rb) {
        a->d[ab] = unit;
        a->s[ab] = xs;
        a->sum[ab] = sum2;
      } else {
        a->d[ab] = fp16_round(d);
        a->s[ab] = fp16_round(d * (float)sum);
        a->sum[ab] = sum;
      }
    }
  }
}

/* ---- the product, one group of 16 weight rows at a time ------------------------------------ */

typedef struct {
  const QKernel *kern;
  const uint8_t *w;
  const uint16_t *dw, *mw; /* fp16, as GGUF stores them */
  const QAct *act;
  float *y;
  int64_t m;
} Job;

#ifdef QMM_AVX512
/* Two weight row groups at a time: two independent chains of dot products, and each
 * activation broadcast used twice. */
#define GP 2
static inline __attribute__((always_inline)) void run_pair_impl(const Job *job, int64_t g0, int ng, const int precise) {
  const QKernel *kern = job->kern;
  const int64_t k = kern->k, nb = k / QK;
  const int64_t zp = kern->zero_point;
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t r = 0; r < job->m; r++) {
    __m512 acc[GP], macc[GP];
    for (int j = 0; j < GP; j++) acc[j] = macc[j] = _mm512_setzero_ps();
    const int8_t *arow = job->act->q + r * k;
    const int8_t *rrow = precise ? job->act->q2 + r * k : NULL;
    for (int64_t b = 0; b < nb; b++) {
      const int64_t ab = r * nb + b;
      const int8_t *ap = arow + b * QK, *rp = precise ? rrow + b * QK : NULL;
      __m512i isa[GP], isb[GP], isc[GP], isd[GP];
      for (int j = 0; j < GP; j++) isa[j] = isb[j] = isc[j] = isd[j] = _mm512_setzero_si512();
      if (kern->bits == 4) {
        for (int s = 0; s < 4; s++) {
          __m512i a0 = _mm512_set1_epi32(four(ap + 8 * s));
          __m512i a1 = _mm512_set1_epi32(four(ap + 8 * s + 4));
          __m512i r0 = precise ? _mm512_set1_epi32(four(rp + 8 * s)) : a0;
          __m512i r1 = precise ? _mm512_set1_epi32(four(rp + 8 * s + 4)) : a1;
          for (int j = 0; j < ng; j++) {
            const uint8_t *wp = job->w + ((g0 + j) * nb + b) * 256 + s * 64;
            __m512i w = _mm512_loadu_si512((const void *)wp);
            __m512i lo = _mm512_and_si512(w, low), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
            isa[j] = _mm512_dpbusd_epi32(isa[j], lo, a0);
            isb[j] = _mm512_dpbusd_epi32(isb[j], hi, a1);
            if (precise) {
              isc[j] = _mm512_dpbusd_epi32(isc[j], lo, r0);
              isd[j] = _mm512_dpbusd_epi32(isd[j], hi, r1);
            }
          }
        }
      } else {
        for (int s = 0; s < 8; s += 2) {
          __m512i a0 = _mm512_set1_epi32(four(ap + 4 * s));
          __m512i a1 = _mm512_set1_epi32(four(ap + 4 * s + 4));
          __m512i r0 = precise ? _mm512_set1_epi32(four(rp + 4 * s)) : a0;
          __m512i r1 = precise ? _mm512_set1_epi32(four(rp + 4 * s + 4)) : a1;
          for (int j = 0; j < ng; j++) {
            const uint8_t *wp = job->w + ((g0 + j) * nb + b) * 512 + s * 64;
            __m512i w0 = _mm512_loadu_si512((const void *)wp), w1 = _mm512_loadu_si512((const void *)(wp + 64));
            isa[j] = _mm512_dpbusd_epi32(isa[j], w0, a0);
            isb[j] = _mm512_dpbusd_epi32(isb[j], w1, a1);
            if (precise) {
              isc[j] = _mm512_dpbusd_epi32(isc[j], w0, r0);
              isd[j] = _mm512_dpbusd_epi32(isd[j], w1, r1);
            }
          }
        }
      }
      const __m512 da = _mm512_set1_ps(job->act->d[ab]);
      for (int j = 0; j < ng; j++) {
        const int64_t gb = (g0 + j) * nb + b;
        __m512i is = _mm512_add_epi32(isa[j], isb[j]);
        if (precise) is = _mm512_add_epi32(_mm512_slli_epi32(is, 7), _mm512_add_epi32(isc[j], isd[j]));
        if (zp) is = _mm512_sub_epi32(is, _mm512_set1_epi32((int32_t)(zp * job->act->sum[ab])));
        __m512 dd = _mm512_mul_ps(half16(job->dw + gb * ROWS), da);
        acc[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(is), acc[j]);
        if (job->mw) macc[j] = _mm512_fmadd_ps(half16(job->mw + gb * ROWS), _mm512_set1_ps(job->act->s[ab]), macc[j]);
      }
    }
    for (int j = 0; j < ng; j++) {
      int64_t left = kern->n - (g0 + j) * ROWS; /* the last group may be partly padding */
      __mmask16 keep = left >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
      _mm512_mask_storeu_ps(job->y + r * kern->n + (g0 + j) * ROWS, keep, _mm512_add_ps(acc[j], macc[j]));
    }
  }
}

/* Several activation rows (a prompt): one group's codes for a block are unpacked once into
 * registers and used for up to TM rows. */
#define TM 4
static inline __attribute__((always_inline)) void run_rows_impl(const Job *job, int64_t g, const int precise) {
  const QKernel *kern = job->kern;
  const int64_t k = kern->k, nb = k / QK, zp = kern->zero_point;
  const __m512i low = _mm512_set1_epi8(0x0F);
  int64_t left = kern->n - g * ROWS;
  __mmask16 keep = left >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
  for (int64_t r0 = 0; r0 < job->m; r0 += TM) {
    const int tm = job->m - r0 < TM ? (int)(job->m - r0) : TM;
    __m512 acc[TM], macc[TM];
    for (int t = 0; t < TM; t++) acc[t] = macc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
      const int64_t gb = g * nb + b;
      __m512i c[8]; /* the block's codes: c[j] holds codes 4j..4j+3 of each row */
      if (kern->bits == 4) {
        const uint8_t *wp = job->w + gb * 256;
        for (int s = 0; s < 4; s++) {
          __m512i w = _mm512_loadu_si512((const void *)(wp + s * 64));
          c[2 * s] = _mm512_and_si512(w, low);
          c[2 * s + 1] = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
        }
      } else {
        const uint8_t *wp = job->w + gb * 512;
        for (int s = 0; s < 8; s++) c[s] = _mm512_loadu_si512((const void *)(wp + s * 64));
      }
      const __m512 dw = half16(job->dw + gb * ROWS);
      const __m512 mw = job->mw ? half16(job->mw + gb * ROWS) : _mm512_setzero_ps();
      for (int t = 0; t < tm; t++) {
        const int64_t ab = (r0 + t) * nb + b;
        const int8_t *ap = job->act->q + (r0 + t) * k + b * QK;
        __m512i is0 = _mm512_setzero_si512(), is1 = _mm512_setzero_si512();
        for (int j = 0; j < 8; j += 2) {
          is0 = _mm512_dpbusd_epi32(is0, c[j], _mm512_set1_epi32(four(ap + 4 * j)));
          is1 = _mm512_dpbusd_epi32(is1, c[j + 1], _mm512_set1_epi32(four(ap + 4 * j + 4)));
        }
        __m512i is = _mm512_add_epi32(is0, is1);
        if (precise) {
          const int8_t *rp = job->act->q2 + (r0 + t) * k + b * QK;
          __m512i rs0 = _mm512_setzero_si512(), rs1 = _mm512_setzero_si512();
          for (int j = 0; j < 8; j += 2) {
            rs0 = _mm512_dpbusd_epi32(rs0, c[j], _mm512_set1_epi32(four(rp + 4 * j)));
            rs1 = _mm512_dpbusd_epi32(rs1, c[j + 1], _mm512_set1_epi32(four(rp + 4 * j + 4)));
          }
          is = _mm512_add_epi32(_mm512_slli_epi32(is, 7), _mm512_add_epi32(rs0, rs1));
        }
        if (zp) is = _mm512_sub_epi32(is, _mm512_set1_epi32((int32_t)(zp * job->act->sum[ab])));
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(job->act->d[ab])), _mm512_cvtepi32_ps(is), acc[t]);
        if (job->mw) macc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(job->act->s[ab]), macc[t]);
      }
    }
    for (int t = 0; t < tm; t++)
      _mm512_mask_storeu_ps(job->y + (r0 + t) * kern->n + g * ROWS, keep, _mm512_add_ps(acc[t], macc[t]));
  }
}

static void run_pair(const Job *job, int64_t g0, int ng) {
  const int precise = job->act->q2 != NULL;
  if (job->m == 1) {
    if (precise) run_pair_impl(job, g0, ng, 1);
    else run_pair_impl(job, g0, ng, 0);
    return;
  }
  for (int j = 0; j < ng; j++) {
    if (precise) run_rows_impl(job, g0 + j, 1);
    else run_rows_impl(job, g0 + j, 0);
  }
}

static void run_group(void *user, size_t i) {
  const Job *job = (const Job *)user;
  int64_t groups = GROUPS(job->kern->n), g0 = (int64_t)i * GP;
  run_pair(job, g0, groups - g0 < GP ? (int)(groups - g0) : GP);
}
#define TASKS(n) ((GROUPS(n) + GP - 1) / GP)
#elif defined(QMM_AVX2)
/* The same layout on 256-bit registers: each 64-byte step is rows 0-7 then rows 8-15.  Without
 * AVX-VNNI, maddubs multiplies unsigned codes by signed bytes into 16-bit pair sums (at most
 * 2 * 15 * 127: no saturation for 4-bit codes; 8-bit codes are split into nibbles first) and
 * madd with ones adds the pairs into one int32 per row. */
static inline __m256i dot4(__m256i acc, __m256i codes, __m256i act) {
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, codes, act);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, act), _mm256_set1_epi16(1)));
#endif
}

/* Sum over one block of codes x activations for 8 rows (one half of the group), one pass. */
static inline __m256i half_sums(const uint8_t *wp, int bits, const int8_t *ap, int half) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256i is = _mm256_setzero_si256();
  if (bits == 4) {
    for (int s = 0; s < 4; s++) {
      __m256i w = _mm256_loadu_si256((const __m256i *)(wp + s * 64 + half * 32));
      is = dot4(is, _mm256_and_si256(w, low), _mm256_set1_epi32(four(ap + 8 * s)));
      is = dot4(is, _mm256_and_si256(_mm256_srli_epi16(w, 4), low), _mm256_set1_epi32(four(ap + 8 * s + 4)));
    }
  } else {
    __m256i hi_sum = _mm256_setzero_si256();
    for (int s = 0; s < 8; s++) {
      __m256i w = _mm256_loadu_si256((const __m256i *)(wp + s * 64 + half * 32));
      __m256i a = _mm256_set1_epi32(four(ap + 4 * s));
      is = dot4(is, _mm256_and_si256(w, low), a);
      hi_sum = dot4(hi_sum, _mm256_and_si256(_mm256_srli_epi16(w, 4), low), a);
    }
    is = _mm256_add_epi32(is, _mm256_slli_epi32(hi_sum, 4)); /* code = 16 hi + lo */
  }
  return is;
}

static void run_group(void *user, size_t g) {
  const Job *job = (const Job *)user;
  const QKernel *kern = job->kern;
  const int64_t k = kern->k, nb = k / QK, zp = kern->zero_point;
  const int64_t step_bytes = kern->bits == 4 ? 256 : 512;
  for (int64_t r = 0; r < job->m; r++) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, macc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
      const int64_t ab = r * nb + b, gb = (int64_t)g * nb + b;
      const uint8_t *wp = job->w + gb * step_bytes;
      const __m256 da = _mm256_set1_ps(job->act->d[ab]);
      for (int h = 0; h < 2; h++) {
        __m256i is = half_sums(wp, (int)kern->bits, job->act->q + r * k + b * QK, h);
        if (job->act->q2)
          is = _mm256_add_epi32(_mm256_slli_epi32(is, 7), half_sums(wp, (int)kern->bits, job->act->q2 + r * k + b * QK, h));
        if (zp) is = _mm256_sub_epi32(is, _mm256_set1_epi32((int32_t)(zp * job->act->sum[ab])));
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(job->dw + gb * ROWS + 8 * h)));
        acc[h] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(is), acc[h]);
        if (job->mw) {
          __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(job->mw + gb * ROWS + 8 * h)));
          macc[h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(job->act->s[ab]), macc[h]);
        }
      }
    }
    float out[ROWS];
    _mm256_storeu_ps(out, _mm256_add_ps(acc[0], macc[0]));
    _mm256_storeu_ps(out + 8, _mm256_add_ps(acc[1], macc[1]));
    for (int row = 0; row < ROWS && (int64_t)g * ROWS + row < kern->n; row++) job->y[r * kern->n + (int64_t)g * ROWS + row] = out[row];
  }
}
#define TASKS(n) GROUPS(n)
#else
/* the activation code of element i: q, or 128 q + q2 in precise mode */
static inline int32_t code(const QAct *a, int64_t i) { return a->q2 ? 128 * a->q[i] + a->q2[i] : a->q[i]; }

static void run_group(void *user, size_t g) {
  const Job *job = (const Job *)user;
  const QKernel *kern = job->kern;
  const int64_t k = kern->k, nb = k / QK, steps = kern->bits == 4 ? 4 : 8;
  for (int64_t r = 0; r < job->m; r++) {
    float acc[ROWS] = {0}, macc[ROWS] = {0};
    for (int64_t b = 0; b < nb; b++) {
      const int64_t gb = (int64_t)g * nb + b, ab = r * nb + b;
      const uint8_t *wp = job->w + gb * steps * 64;
      for (int row = 0; row < ROWS; row++) {
        int32_t is = 0;
        for (int s = 0; s < steps; s++)
          for (int e = 0; e < 4; e++) {
            uint8_t byte = wp[s * 64 + row * 4 + e];
            int lo = kern->bits == 4 ? 8 * s + e : 4 * s + e, hi = 8 * s + 4 + e;
            if (kern->bits == 4) {
              is += (byte & 0x0F) * code(job->act, r * k + b * QK + lo) + (byte >> 4) * code(job->act, r * k + b * QK + hi);
            } else {
              is += byte * code(job->act, r * k + b * QK + lo);
            }
          }
        is -= (int32_t)(kern->zero_point * job->act->sum[ab]);
        acc[row] += half(job->dw[gb * ROWS + row]) * job->act->d[ab] * (float)is;
        if (job->mw) macc[row] += half(job->mw[gb * ROWS + row]) * job->act->s[ab];
      }
    }
    for (int row = 0; row < ROWS && (int64_t)g * ROWS + row < kern->n; row++)
      job->y[r * kern->n + (int64_t)g * ROWS + row] = acc[row] + macc[row];
  }
}
#define TASKS(n) GROUPS(n)
#endif

/* ---- onnxruntime custom-op plumbing ------------------------------------------------------- */

#define RETURN_IF(expr)               \
  do {                                \
    OrtStatus *st_ = (expr);          \
    if (st_) return st_;              \
  } while (0)

/* Element count of a tensor, into *out. */
static OrtStatus *element_count(const OrtValue *v, size_t *out) {
  OrtTensorTypeAndShapeInfo *info;
  RETURN_IF(g_api->GetTensorTypeAndShape(v, &info));
  OrtStatus *st = g_api->GetTensorShapeElementCount(info, out);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

/* X's dims into dims (rank 1 to 8), or an error. */
static OrtStatus *shape_of(const OrtValue *v, int64_t *dims, size_t *rank) {
  OrtTensorTypeAndShapeInfo *info;
  RETURN_IF(g_api->GetTensorTypeAndShape(v, &info));
  OrtStatus *st = g_api->GetDimensionsCount(info, rank);
  if (!st && (*rank < 1 || *rank > 8)) st = g_api->CreateStatus(ORT_INVALID_ARGUMENT, "QMatMul: X must have rank 1 to 8");
  if (!st) st = g_api->GetDimensions(info, dims, *rank);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

static OrtStatus *compute(void *op_kernel, OrtKernelContext *ctx) {
  const QKernel *kern = (const QKernel *)op_kernel;
  const OrtValue *x, *w, *dw, *mw;
  RETURN_IF(g_api->KernelContext_GetInput(ctx, 0, &x));
  RETURN_IF(g_api->KernelContext_GetInput(ctx, 1, &w));
  RETURN_IF(g_api->KernelContext_GetInput(ctx, 2, &dw));
  RETURN_IF(g_api->KernelContext_GetInput(ctx, 3, &mw));

  size_t rank;
  int64_t dims[8];
  RETURN_IF(shape_of(x, dims, &rank));
  if (dims[rank - 1] != kern->k) return g_api->CreateStatus(ORT_INVALID_ARGUMENT, "QMatMul: X's last dimension is not K");
  int64_t m = 1;
  for (size_t i = 0; i + 1 < rank; i++) m *= dims[i];

  /* the weights must be exactly the size K, N and bits say: the loops trust it */
  const int64_t nb = kern->k / QK, cells = GROUPS(kern->n) * nb;
  size_t w_count, d_count, m_count;
  RETURN_IF(element_count(w, &w_count));
  RETURN_IF(element_count(dw, &d_count));
  RETURN_IF(element_count(mw, &m_count));
  if ((int64_t)w_count != cells * (kern->bits == 4 ? 256 : 512) || (int64_t)d_count != cells * ROWS ||
      (int64_t)m_count != (kern->zero_point == 0 ? cells * ROWS : 0))
    return g_api->CreateStatus(ORT_INVALID_ARGUMENT,
                               "QMatMul: W, D or M does not have the size K, N, bits and zero_point call for");

  dims[rank - 1] = kern->n;
  OrtValue *y;
  RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, dims, rank, &y));
  void *yv;
  RETURN_IF(g_api->GetTensorMutableData(y, &yv));
  if (m == 0) return NULL;

  const void *xv, *wp, *dwp, *mwp;
  RETURN_IF(g_api->GetTensorData(x, &xv));
  RETURN_IF(g_api->GetTensorData(w, &wp));
  RETURN_IF(g_api->GetTensorData(dw, &dwp));
  RETURN_IF(g_api->GetTensorData(mw, &mwp));

  const int64_t code_bytes = (kern->precise ? 2 : 1) * m * kern->k;
  void *buf = malloc((size_t)(m * nb * 3 * 4 + code_bytes));
  if (!buf) return g_api->CreateStatus(ORT_FAIL, "QMatMul: out of memory");
  QAct act;
  act.d = (float *)buf;
  act.s = act.d + m * nb;
  act.sum = (int32_t *)(act.s + m * nb);
  act.q = (int8_t *)(act.sum + m * nb);
  act.q2 = kern->precise ? act.q + m * kern->k : NULL;
  quantize_rows((const float *)xv, m, kern->k, &act);

  Job job = {kern, (const uint8_t *)wp, (const uint16_t *)dwp, m_count ? (const uint16_t *)mwp : NULL, &act, (float *)yv, m};
  OrtStatus *st = g_api->KernelContext_ParallelFor(ctx, run_group, (size_t)TASKS(kern->n), 0, &job);
  free(buf);
  return st;
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  QKernel *kern = (QKernel *)calloc(1, sizeof(QKernel));
  if (!kern) return api->CreateStatus(ORT_FAIL, "QMatMul: out of memory");
  OrtStatus *st = NULL;
  if ((st = api->KernelInfoGetAttribute_int64(info, "K", &kern->k)) ||
      (st = api->KernelInfoGetAttribute_int64(info, "N", &kern->n)) ||
      (st = api->KernelInfoGetAttribute_int64(info, "bits", &kern->bits)) ||
      (st = api->KernelInfoGetAttribute_int64(info, "zero_point", &kern->zero_point)) ||
      (st = api->KernelInfoGetAttribute_int64(info, "precise", &kern->precise))) {
    free(kern);
    return st;
  }
  int codes_ok = (kern->bits == 4 && (kern->zero_point == 0 || kern->zero_point == 8)) ||
                 (kern->bits == 8 && kern->zero_point == 128);
  if (kern->k <= 0 || kern->k % QK || kern->n <= 0 || !codes_ok || (kern->precise != 0 && kern->precise != 1)) {
    free(kern);
    return api->CreateStatus(ORT_INVALID_ARGUMENT,
                             "QMatMul: K must be a positive multiple of 32, N positive, bits/zero_point 4/0 (Q4_1), 4/8 "
                             "(Q4_0) or 8/128 (Q8_0), precise 0 or 1");
  }
  *out = kern;
  return NULL;
}

static void destroy_kernel(void *k) { free(k); }
static const char *op_name(const OrtCustomOp *op) { (void)op; return "QMatMul"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static ONNXTensorElementDataType input_type(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                : i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}
static size_t input_count(const OrtCustomOp *op) { (void)op; return 4; }
static ONNXTensorElementDataType output_type(const OrtCustomOp *op, size_t i) {
  (void)op; (void)i;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static OrtCustomOpInputOutputCharacteristic io_required(const OrtCustomOp *op, size_t i) {
  (void)op; (void)i;
  return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType input_mem(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }

/* Which inner loop this build runs: edged.llm.qkernel.library_path() asks before using the build. */
const char *qmatmul_path(void) {
#if defined(QMM_AVX512)
  return "avx512-vnni";
#elif defined(QMM_AVX2) && defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(QMM_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}

static int start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int end_version(const OrtCustomOp *op) { (void)op; return 1 << 30; }

/* Written once at load and never again: onnxruntime keeps pointers to it from every session. */
static const OrtCustomOp g_op = {
    .version = QMM_ORT_API,
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = io_required,
    .GetOutputCharacteristic = io_required,
    .GetInputMemoryType = input_mem,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
    .GetStartVersion = start_version,
    .GetEndVersion = end_version,
};
static OrtCustomOpDomain *g_domain;
static OrtStatus *g_domain_error;
static pthread_once_t g_domain_once = PTHREAD_ONCE_INIT;

static void make_domain(void) {
  OrtCustomOpDomain *domain = NULL;
  OrtStatus *st = g_api->CreateCustomOpDomain("edged.llm", &domain);
  if (!st) st = g_api->CustomOpDomain_Add(domain, &g_op);
  if (st) g_domain_error = st;
  else g_domain = domain;
}

OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  /* Everything used here exists since API 17 (onnxruntime 1.17), and OrtApi only grows, so
   * asking for 17 works with any newer runtime, whatever header version this was built with.
   * Every call gets the same pointer, so setting it again races with nothing. */
  g_api = base->GetApi(QMM_ORT_API);
  if (!g_api) return NULL; /* older runtime: QMatMul stays unknown and the session says so */
  pthread_once(&g_domain_once, make_domain);
  if (g_domain_error) return g_api->CreateStatus(ORT_FAIL, "QMatMul: could not create the edged.llm op domain");
  return g_api->AddCustomOpDomain(options, g_domain);
}
