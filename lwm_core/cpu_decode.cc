// The CPU decode kernels of lwm, called from jitted code through XLA's FFI (see cpu_decode.py):
// - lwm_matvec_f32: matrix-vector products over panel-packed float32 weights (lwm_matvec_i8, lwm_matvec_q4:
//   int8 and int4 weights);
// - lwm_decode_attention_f32: one new query per row against the KV cache, reading only the slots the
//   query may see;
// - lwm_argmax_f32: greedy decoding's choice, each row's first largest logit (its first NaN if any), in
//   one pass (XLA's two reductions over 32000 logits took 40-75 us of a ~1.3 ms int4 step).
//
// ---- matvec
//
// Why this exists: batch-1 decode reads every weight once per token, so it runs at memory speed or not
// at all. XLA's CPU matvec reads a (N, K) row-major weight as 4-8 interleaved rows of K floats; at
// decode sizes (K = 512 on bench-50m, 4096 on 7B) each of those streams is a few KB long, too short
// for the hardware prefetchers, which also stop at every 4 KB page. Here the weight is stored as panels
// of 8 rows, and inside a panel as chunks of 16 columns of those 8 rows one after the other, so each
// thread reads one long contiguous stream, and cpu_decode.py puts all weights on 2 MB pages. Measured on the
// 2-core AMD EPYC, bench-50m's chain of 33 weights in one jitted function: XLA's dots 23 GB/s, this
// kernel 29-30 GB/s, against 32-34 GB/s for XLA's matvec over one 384 MB matrix (the roofline probe).
// Variants that did not help there: two panels per thread at once, software prefetch 2-4 KB ahead,
// chunks of 4 or 64 panels (all within 3%).
//
// Layout (see lwm_core/cpu_decode.py, `pack`): a weight is (N/8, K/16, 8, 16) floats with
// w[p, c, r, j] = W[8p + r, 16c + j] for the (N, K) matrix W (output row, contracted column); N and K
// are padded with zeros to multiples of 8 and 16 by the packer. x is (M, K) and y = x W^T is (M, N).
//
// Threads: rows are split into contiguous chunks of panels, run by `parallel_chunks` on XLA's intra-op
// pool. (A pool of our own whose workers spin between calls, to skip the wake-up of XLA's sleeping
// threads, measured the same.)
//
// Written with GCC/Clang vector extensions, compiled with -march=native on the machine that runs it:
// 16 floats are one AVX-512 register, two AVX2 registers, or four NEON registers.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace lwm_cpu;  // NOLINT: the shared vector helpers

constexpr int64_t kRows = 8;   // rows per panel
constexpr int64_t kCols = 16;  // columns per chunk (one v16)
// Rows per chunk of work: big enough that a thread streams a long run of memory, small enough that the
// two threads of a small weight (512 x 512) still split it.
constexpr int64_t kPanelsPerChunk = 16;


inline float dot(const float* a, const float* b, int64_t n) {
  v16 acc = {};
  int64_t i = 0;
  for (; i + kCols <= n; i += kCols) {
    v16 x, y;
    std::memcpy(&x, a + i, sizeof(v16));
    std::memcpy(&y, b + i, sizeof(v16));
    acc += x * y;
  }
  float s = sum16(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// ---- int8 weights
//
// The same panels holding int8 weights with one float32 scale per output row (symmetric, per output
// channel: W[n, k] ~ scale[n] * Q[n, k]), so decode reads a quarter of the bytes: y[m, n] = scale[n] *
// sum_k Q[n, k] x[m, k], the products in float32 (activations are not quantized). A chunk of 8 rows x 16
// columns is 128 bytes; each 16 int8 are widened to a v16 of floats (vpmovsxbd + vcvtdq2ps on x86) and
// multiplied into the row's accumulator (`widen16`); `panels` and `matvec` below serve both kinds.
//
// 16 int8 at p -> 16 floats. Intrinsics on x86: GCC 12 compiles the vector-extension conversion
// (__builtin_convertvector) into lane-by-lane inserts, which made this kernel slower than float32.
inline v16 widen16(const int8_t* p) {
  v16 out;
#if defined(__AVX512F__)
  const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&out, &f, sizeof(v16));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256 f[2] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
  std::memcpy(&out, f, sizeof(v16));
#else
  for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(p[i]);
#endif
  return out;
}

inline v16 load_weights(const float* p) { return load(p); }
inline v16 load_weights(const int8_t* p) { return widen16(p); }

// y[m, 8p .. 8p+8) for panels [p0, p1) and every row m of x; `scales`: int8 weights' scale per output row,
// nullptr for float32 weights.
template <typename W>
void panels(const W* w, const float* scales, const float* x, float* y, int64_t p0, int64_t p1, int64_t M, int64_t C,
            int64_t N) {
  const int64_t panel = kRows * kCols * C;  // weights per panel
  for (int64_t p = p0; p < p1; ++p) {
    const W* a = w + p * panel;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * C * kCols;
      v16 acc[kRows] = {};
      for (int64_t c = 0; c < C; ++c) {
        const v16 xv = load(xm + c * kCols);
        const W* b = a + c * kRows * kCols;
        for (int r = 0; r < kRows; ++r) acc[r] += load_weights(b + r * kCols) * xv;
      }
      for (int r = 0; r < kRows; ++r) {
        const float sum = sum16(acc[r]);
        y[m * N + p * kRows + r] = scales ? sum * scales[p * kRows + r] : sum;
      }
    }
  }
}

// y (M, N) = x (M, K) times the packed weight that starts `offset` elements into `weights` (a flat buffer
// holding several packed weights: one buffer keeps every weight on huge pages; see cpu_decode.py), and for
// int8 weights its N scales `scale_offset` floats into `scales` (nullptr for float32).
template <typename W>
ffi::Error matvec(ffi::ThreadPool& pool, const char* name, const W* weights, int64_t weight_count,
                  const float* scales, int64_t scale_count, int64_t offset, int64_t scale_offset,
                  ffi::Buffer<ffi::F32>& x, ffi::ResultBuffer<ffi::F32>& y) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0] || xd[1] % kCols || yd[1] % kRows) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string(name) + ": need x (M, K) and y (M, N) with K % 16 == 0 and N % 8 == 0");
  }
  const int64_t M = xd[0], C = xd[1] / kCols, N = yd[1], P = N / kRows;
  if (offset < 0 || offset + P * C * kRows * kCols > weight_count ||
      (scales && (scale_offset < 0 || scale_offset + N > scale_count))) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(name) + ": the weight runs past its buffer");
  }
  const W* w = weights + offset;
  const float* sc = scales ? scales + scale_offset : nullptr;
  const float* xs = x.typed_data();
  float* ys = y->typed_data();
  parallel_chunks(pool, (P + kPanelsPerChunk - 1) / kPanelsPerChunk, [=](int64_t i) {
    const int64_t p0 = i * kPanelsPerChunk;
    panels(w, sc, xs, ys, p0, std::min(P, p0 + kPanelsPerChunk), M, C, N);
  });
  return ffi::Error::Success();
}

ffi::Error Matvec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> x,
                  ffi::ResultBuffer<ffi::F32> y, int64_t offset) {
  return matvec(pool, "lwm_matvec_f32", weights.typed_data(), static_cast<int64_t>(weights.element_count()),
                nullptr, 0, offset, 0, x, y);
}

ffi::Error MatvecI8(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> weights, ffi::Buffer<ffi::F32> scales,
                    ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t offset, int64_t scale_offset) {
  return matvec(pool, "lwm_matvec_i8", weights.typed_data(), static_cast<int64_t>(weights.element_count()),
                scales.typed_data(), static_cast<int64_t>(scales.element_count()), offset, scale_offset, x, y);
}

// ---- int4 weights
//
// Groups of 32 input columns per output row, each with its own float32 scale (lwm_core/quantize.py: W[n, k] ~
// d[n, g] * (Q[n, k] - 8), Q in 0..15, g = k / 32), in panels of 8 rows: for each group, the 8 rows' 16 bytes
// one after the other (byte j of a row holds columns 32g + j in its low nibble and 32g + 16 + j in its high
// one), so a panel is one contiguous stream of 128 bytes per group; the scales are a second stream, 8
// floats per group (rows 0-7). Packed weight: (N/8, K/32, 8, 16) bytes, scales (N/8, K/32, 8) floats.
//
// The products are integer: each 32 of x are rounded to int8 with their own scale (dx = max|x| / 127, as
// llama.cpp's q4_0 x q8_0 does), so y[n] = sum_g d[n, g] dx[g] (sum_k Q[n, k] X[k] - 8 sum_k X[k]). With
// AVX512-VNNI one vpdpbusd multiplies 64 nibbles of 4 rows by their int8 inputs and sums them in fours
// into int32 lanes; AVX2 does the same in two steps (vpmaddubsw, vpmaddwd; at most 2 x 15 x 127 a pair,
// no saturation), 2 rows a register. Float work per group is one scale multiply per 4 (2) rows. (A float
// path, nibbles widened to floats as the int8 kernel widens bytes, was not built: it would convert twice as
// many values per byte read as the int8 kernel does.)

constexpr int64_t kGroup = 32;  // input columns per scale (quantize.GROUP)

// x (M, K) float -> int8 (M, K) and per group of 32: its scale dx and dx * sum of its int8 values.
struct QuantizedInput {
  std::vector<int8_t> q;
  std::vector<float> scale, scaled_sum;
};

void quantize_input(const float* x, int64_t M, int64_t K, QuantizedInput& out) {
  const int64_t C = K / kGroup;
  out.q.resize(M * K);
  out.scale.resize(M * C);
  out.scaled_sum.resize(M * C);
  for (int64_t i = 0; i < M * C; ++i) {
    const float* xs = x + i * kGroup;
    float top = 0;
    for (int64_t j = 0; j < kGroup; ++j) top = std::max(top, std::fabs(xs[j]));
    const float d = top / 127, inv = top > 0 ? 127 / top : 0;
    int32_t total = 0;
    for (int64_t j = 0; j < kGroup; ++j) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(xs[j] * inv));
      out.q[i * kGroup + j] = static_cast<int8_t>(std::clamp(v, -127, 127));
      total += out.q[i * kGroup + j];
    }
    out.scale[i] = d;
    out.scaled_sum[i] = d * static_cast<float>(total);
  }
}

// y[m, 8p .. 8p+8) for panels [p0, p1) and every row m of the quantized input.
void panels_q4(const uint8_t* w, const float* scales, const QuantizedInput& in, float* y, int64_t p0, int64_t p1,
               int64_t M, int64_t C, int64_t N) {
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* a = w + p * C * kRows * 16;
    const float* sp = scales + p * C * kRows;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xq = in.q.data() + m * C * kGroup;
      const float* dx = in.scale.data() + m * C;
      const float* dxs = in.scaled_sum.data() + m * C;
      float rows[kRows], corr[kRows] = {};
      for (int64_t c = 0; c < C; ++c)  // the -8 offset: sum_g d[n, g] dx[g] sum(X) per row
        for (int r = 0; r < kRows; ++r) corr[r] += sp[c * kRows + r] * dxs[c];
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
      const __m512i low = _mm512_set1_epi8(0x0F);
      const __m512i lanes0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
      const __m512i lanes1 = _mm512_add_epi32(lanes0, _mm512_set1_epi32(4));
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();  // rows 0-3 and 4-7, 4 lanes a row
      for (int64_t c = 0; c < C; ++c) {
        const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + c * kGroup)));
        const __m512i xhi =
            _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + c * kGroup + 16)));
        const __m512i b0 = _mm512_loadu_si512(a + c * 128), b1 = _mm512_loadu_si512(a + c * 128 + 64);
        __m512i i0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b0, low), xlo);
        i0 = _mm512_dpbusd_epi32(i0, _mm512_and_si512(_mm512_srli_epi16(b0, 4), low), xhi);
        __m512i i1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b1, low), xlo);
        i1 = _mm512_dpbusd_epi32(i1, _mm512_and_si512(_mm512_srli_epi16(b1, 4), low), xhi);
        const __m512 s = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_loadu_ps(sp + c * kRows), _mm256_set1_ps(dx[c])));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_permutexvar_ps(lanes0, s), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_permutexvar_ps(lanes1, s), acc1);
      }
      float lanes[32];
      _mm512_storeu_ps(lanes, acc0);
      _mm512_storeu_ps(lanes + 16, acc1);
      for (int r = 0; r < kRows; ++r) rows[r] = lanes[4 * r] + lanes[4 * r + 1] + lanes[4 * r + 2] + lanes[4 * r + 3];
#elif defined(__AVX2__)
      const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t c = 0; c < C; ++c) {  // rows 2k and 2k+1 in register k, 4 lanes a row
        const __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + c * kGroup));
        const __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + c * kGroup + 16));
        const __m256i xlo = _mm256_set_m128i(x0, x0), xhi = _mm256_set_m128i(x1, x1);
        const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(sp + c * kRows), _mm256_set1_ps(dx[c]));
        for (int k = 0; k < 4; ++k) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c * 128 + 32 * k));
          const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b, low), xlo),
                                                 _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), low), xhi));
          const __m256i lanes = _mm256_setr_epi32(2 * k, 2 * k, 2 * k, 2 * k, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1);
          acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), _mm256_permutevar8x32_ps(s, lanes),
                                   acc[k]);
        }
      }
      for (int k = 0; k < 4; ++k) {
        float lanes[8];
        _mm256_storeu_ps(lanes, acc[k]);
        rows[2 * k] = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        rows[2 * k + 1] = lanes[4] + lanes[5] + lanes[6] + lanes[7];
      }
#else
      std::fill(rows, rows + kRows, 0.0f);
      for (int64_t c = 0; c < C; ++c) {
        for (int r = 0; r < kRows; ++r) {
          const uint8_t* b = a + c * 128 + r * 16;
          int32_t total = 0;
          for (int j = 0; j < 16; ++j)
            total += (b[j] & 15) * xq[c * kGroup + j] + (b[j] >> 4) * xq[c * kGroup + 16 + j];
          rows[r] += static_cast<float>(total) * sp[c * kRows + r] * dx[c];
        }
      }
#endif
      for (int r = 0; r < kRows; ++r) y[m * N + p * kRows + r] = rows[r] - 8 * corr[r];
    }
  }
}

ffi::Error MatvecQ4(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> weights, ffi::Buffer<ffi::F32> scales,
                    ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t offset, int64_t scale_offset) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0] || xd[1] % kGroup || yd[1] % kRows) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lwm_matvec_q4: need x (M, K) and y (M, N) with K % 32 == 0 and N % 8 == 0");
  }
  const int64_t M = xd[0], K = xd[1], C = K / kGroup, N = yd[1], P = N / kRows;
  if (offset < 0 || offset + N * K / 2 > static_cast<int64_t>(weights.element_count()) || scale_offset < 0 ||
      scale_offset + N * C > static_cast<int64_t>(scales.element_count())) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lwm_matvec_q4: the weight runs past its buffer");
  }
  const uint8_t* w = weights.typed_data() + offset;
  const float* sc = scales.typed_data() + scale_offset;
  float* ys = y->typed_data();
  thread_local QuantizedInput in;
  quantize_input(x.typed_data(), M, K, in);
  const QuantizedInput* input = &in;
  parallel_chunks(pool, (P + kPanelsPerChunk - 1) / kPanelsPerChunk, [=](int64_t i) {
    const int64_t p0 = i * kPanelsPerChunk;
    panels_q4(w, sc, *input, ys, p0, std::min(P, p0 + kPanelsPerChunk), M, C, N);
  });
  return ffi::Error::Success();
}

// ---- decode attention
//
// out[x, g] = softmax_s(q[x, g] . k[x, s] / sqrt(H)) v[x, s] over the slots s <= slot with seg[b, s] == 1,
// for rows x = b * K + kv head (the KV cache layout of llama.KVCache: (B*K, S, H)) and the G query heads
// of that kv head. The same arithmetic as attention.reference.cached_attention (float32 scores and
// softmax, normalised after the product), which XLA runs as two batched dots over all S slots: at decode
// sizes those read the cache at ~13 GB/s, and every slot of the buffer, visible or not. Here each row
// reads its keys and values once, only up to the query's slot, for all G heads at a time.


void attend_row(const float* q, const float* k, const float* v, const int32_t* seg, float* out, int64_t G,
                int64_t H, int64_t last, std::vector<float>& scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  const int64_t n = last + 1, stride = (n + kCols - 1) / kCols * kCols;  // slots, padded to whole v16
  scores.assign(G * stride, -INFINITY);  // invisible slots (and the padding) stay -inf: probability 0
  std::vector<float> top(G, -INFINITY), total(G, 0.0f);
  for (int64_t s = 0; s < n; ++s) {  // scores: each key read once for the G heads
    if (seg[s] != 1) continue;
    const float* ks = k + s * H;
    for (int64_t g = 0; g < G; ++g) {
      const float score = dot(q + g * H, ks, H) * scale;
      scores[g * stride + s] = score;
      top[g] = std::max(top[g], score);
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // probabilities, unnormalised, in place
    if (top[g] == -INFINITY) continue;  // nothing visible: stays -inf, adds nothing below
    float* row = scores.data() + g * stride;
    v16 sum = {};
    for (int64_t s = 0; s < stride; s += kCols) {
      v16 x;
      std::memcpy(&x, row + s, sizeof(v16));
      v16 p = exp_nonpositive(x - top[g]);
      std::memcpy(row + s, &p, sizeof(v16));
      sum += p;
    }
    total[g] = sum16(sum);
  }
  std::fill(out, out + G * H, 0.0f);
  for (int64_t s = 0; s < n; ++s) {  // values: each read once for the G heads
    if (seg[s] != 1) continue;
    const float* vs = v + s * H;
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * stride + s];
      float* og = out + g * H;
      for (int64_t h = 0; h < H; ++h) og[h] += p * vs[h];
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    if (total[g] == 0) continue;  // no visible slot: zeros (decode always sees its own slot)
    for (int64_t h = 0; h < H; ++h) out[g * H + h] /= total[g];
  }
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k_cache,
                           ffi::Buffer<ffi::F32> v_cache, ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::S32> slot,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions(), kd = k_cache.dimensions(), vd = v_cache.dimensions(), sd = seg.dimensions();
  if (qd.size() != 3 || kd.size() != 3 || sd.size() != 2 || slot.element_count() != 1 || kd[0] != qd[0] ||
      kd[2] != qd[2] || vd.size() != 3 || vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] || sd[1] != kd[1] ||
      sd[0] == 0 || qd[0] % sd[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lwm_decode_attention_f32: need q (B*K, G, H), caches (B*K, S, H), seg (B, S), slot ()");
  }
  const int64_t X = qd[0], G = qd[1], H = qd[2], S = kd[1], K = X / sd[0];
  const int64_t last = std::min<int64_t>(slot.typed_data()[0], S - 1);
  const float *qs = q.typed_data(), *ks = k_cache.typed_data(), *vs = v_cache.typed_data();
  const int32_t* segs = seg.typed_data();
  float* outs = out->typed_data();
  if (last < 0) {
    std::fill(outs, outs + X * G * H, 0.0f);
    return ffi::Error::Success();
  }
  parallel_chunks(pool, X, [=](int64_t x) {
    thread_local std::vector<float> scores;
    attend_row(qs + x * G * H, ks + x * S * H, vs + x * S * H, segs + (x / K) * S, outs + x * G * H, G, H, last,
               scores);
  });
  return ffi::Error::Success();
}

// ---- argmax

// rows x (B, V) -> (B,): jnp.argmax's answer, the first index of the row's maximum, or of its first NaN.
// 16 lanes keep a running maximum and its first index; a NaN anywhere sends the row to a scalar scan for
// the first one (a model's logits have none).
ffi::Error Argmax(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::S32> out) {
  auto d = x.dimensions();
  if (d.size() != 2 || d[1] < 1 || d[1] > INT32_MAX)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lwm_argmax_f32: need logits (B, V) with 1 <= V < 2^31");
  const int64_t B = d[0], V = d[1];
  for (int64_t b = 0; b < B; ++b) {
    const float* row = x.typed_data() + b * V;
    int32_t* best = out->typed_data() + b;
    const int64_t whole = V / 16 * 16;
    v16 top = v16{} - std::numeric_limits<float>::infinity();
    i16 at = i16{} - 1, lane = {}, step = i16{} + 16;
    for (int e = 0; e < 16; ++e) lane[e] = e;
    i16 nan = {};
    for (int64_t i = 0; i < whole; i += 16, lane += step) {
      const v16 v = load(row + i);
      nan |= v != v;
      const i16 more = v > top;  // strictly: an equal value later keeps the earlier index
      top = more ? v : top;
      at = more ? lane : at;
    }
    float m = -std::numeric_limits<float>::infinity();
    int64_t arg = -1;
    bool any_nan = false;
    for (int e = 0; e < 16; ++e) {
      any_nan |= nan[e] != 0;
      if (at[e] >= 0 && (top[e] > m || (top[e] == m && at[e] < arg))) m = top[e], arg = at[e];
    }
    for (int64_t i = whole; i < V; ++i) {
      any_nan |= std::isnan(row[i]);
      if (row[i] > m) m = row[i], arg = i;
    }
    if (any_nan) {
      arg = 0;
      while (!std::isnan(row[arg])) ++arg;
    } else if (arg < 0) {
      arg = 0;  // every logit -inf: the first, as jnp.argmax
    }
    *best = static_cast<int32_t>(arg);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmArgmaxF32, Argmax,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmMatvecF32, Matvec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("offset"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmDecodeAttentionF32, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The quantized matvecs' operands: the weights' bytes (int8, or int4 two a byte), their scales, x.
template <ffi::DataType kWeights>
auto quantized_matvec() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<kWeights>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Attr<int64_t>("offset")
      .template Attr<int64_t>("scale_offset");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmMatvecI8, MatvecI8, quantized_matvec<ffi::DataType::S8>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmMatvecQ4, MatvecQ4, quantized_matvec<ffi::DataType::U8>());
