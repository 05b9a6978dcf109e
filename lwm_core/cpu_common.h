// What lwm's C++ CPU kernels share (cpu_decode.cc, cpu_attention.cc; built into one library by
// lwm_core/cpu_decode.py): 16-lane vectors, their loads and sums, exp for the softmaxes, and the work
// splitter over XLA's intra-op pool.
//
// Written with GCC/Clang vector extensions, compiled with -march=native on the machine that runs it:
// 16 floats are one AVX-512 register, two AVX2 registers, or four NEON registers.

#ifndef LWM_CORE_CPU_COMMON_H_
#define LWM_CORE_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace lwm_cpu {

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // aligned(4): loads need no alignment
typedef int32_t i16 __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 x;
  std::memcpy(&x, p, sizeof(v16));
  return x;
}

inline void store(float* p, v16 x) { std::memcpy(p, &x, sizeof(v16)); }

// x in every lane: one broadcast load when x comes from memory. Not `v16{} + x`: without -ffast-math the
// compiler must compute 0 + x (it differs from x for -0.0), a scalar add and a register shuffle for every
// use; in the attention micro-kernel those shuffles took the port of the second FMA unit of Intel's
// AVX-512 cores.
inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

inline i16 load_i(const int32_t* p) {
  i16 x;
  std::memcpy(&x, p, sizeof(i16));
  return x;
}

inline float sum16(v16 v) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// exp(x) for x <= 0, 16 lanes: 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its Taylor
// series to r^6 (relative error < 2e-7); 0 below -87.3 (where float32 would underflow), also for -inf.
// (In the decode attention kernel the scalar std::exp, one call per visible slot and head, took most of
// its time.)
inline v16 exp_nonpositive(v16 x) {
  const v16 lowest = v16{} - 87.3f;
  const v16 magic = v16{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  v16 clamped = x < lowest ? lowest : x;
  v16 n = (clamped * 1.44269504f + magic) - magic;
  v16 r = clamped - n * 0.693145752f - n * 1.42860677e-6f;  // ln 2 in two parts (Cody-Waite)
  v16 poly = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(v16));
  v16 out = poly * scale;
  return x < lowest ? v16{} : out;
}

// Chunks 0..n-1 of some work, taken from a shared counter by the calling thread and by helpers lent by
// XLA's intra-op pool (its size counts the caller's core). The caller only waits for chunks somebody
// has started, so a pool that is busy (or absent) never deadlocks it: unstarted chunks are its own.
template <typename F>
void parallel_chunks(ffi::ThreadPool& pool, int64_t n, F body) {
  struct Shared {
    F body;
    int64_t n;
    std::atomic<int64_t> next{0}, finished{0};
    explicit Shared(F f, int64_t n) : body(std::move(f)), n(n) {}
    void run() {
      for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
        body(i);
        finished.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto shared = std::make_shared<Shared>(std::move(body), n);
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { shared->run(); });
  shared->run();
  while (shared->finished.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace lwm_cpu

#endif  // LWM_CORE_CPU_COMMON_H_
