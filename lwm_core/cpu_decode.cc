// The CPU decode kernels of lwm, called from jitted code through XLA's FFI (see cpu_decode.py):
// - lwm_matvec_f32: matrix-vector products over panel-packed float32 weights;
// - lwm_decode_attention_f32: one new query per row against the KV cache, reading only the slots the
//   query may see.
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

}  // namespace

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

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmMatvecI8, MatvecI8,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("offset")
                                  .Attr<int64_t>("scale_offset"));
