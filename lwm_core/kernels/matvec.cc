// Matrix-vector products over panel-packed float32 weights: the CPU decode kernel of lwm.
//
// Why this exists: batch-1 decode reads every weight once per token, so it runs at memory speed or not
// at all. XLA's CPU matvec reads a (N, K) row-major weight as 4-8 interleaved rows of K floats; at
// decode sizes (K = 512 on bench-50m, 4096 on 7B) each of those streams is a few KB long, too short
// for the hardware prefetchers, which also stop at every 4 KB page. Here the weight is stored as panels
// of 8 rows, and inside a panel as chunks of 16 columns of those 8 rows one after the other, so each
// thread reads one long contiguous stream, and cpu.py puts all weights on 2 MB pages. Measured on the
// 2-core AMD EPYC, bench-50m's chain of 33 weights in one jitted function: XLA's dots 23 GB/s, this
// kernel 29-30 GB/s, against 32-34 GB/s for XLA's matvec over one 384 MB matrix (the roofline probe).
// Variants that did not help there: two panels per thread at once, software prefetch 2-4 KB ahead,
// chunks of 4 or 64 panels (all within 3%).
//
// Layout (see lwm_core/kernels/cpu.py, `pack`): a weight is (N/8, K/16, 8, 16) floats with
// w[p, c, r, j] = W[8p + r, 16c + j] for the (N, K) matrix W (output row, contracted column); N and K
// are padded with zeros to multiples of 8 and 16 by the packer. x is (M, K) and y = x W^T is (M, N).
//
// Threads: rows are split into contiguous chunks that the calling thread and XLA's intra-op pool take
// from a shared counter. The caller only waits for chunks somebody has started, so a pool that is busy
// (or absent) never deadlocks it: unstarted chunks are done by the caller itself. (A pool of our own
// whose workers spin between calls, to skip the wake-up of XLA's sleeping threads, measured the same.)
//
// Written with GCC/Clang vector extensions, compiled with -march=native on the machine that runs it:
// 16 floats are one AVX-512 register, two AVX2 registers, or four NEON registers.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // aligned(4): loads need no alignment

constexpr int64_t kRows = 8;   // rows per panel
constexpr int64_t kCols = 16;  // columns per chunk (one v16)
// Rows per chunk of work: big enough that a thread streams a long run of memory, small enough that the
// two threads of a small weight (512 x 512) still split it.
constexpr int64_t kPanelsPerChunk = 16;

inline float sum16(v16 v) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// y[m, 8p .. 8p+8) for panels [p0, p1) and every row m of x.
void panels(const float* w, const float* x, float* y, int64_t p0, int64_t p1, int64_t M, int64_t C, int64_t N) {
  const int64_t panel = kRows * kCols * C;  // floats per panel
  for (int64_t p = p0; p < p1; ++p) {
    const float* a = w + p * panel;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * C * kCols;
      v16 acc[kRows] = {};
      for (int64_t c = 0; c < C; ++c) {
        v16 xv;
        std::memcpy(&xv, xm + c * kCols, sizeof(v16));
        const float* b = a + c * kRows * kCols;
        for (int r = 0; r < kRows; ++r) {
          v16 wv;
          std::memcpy(&wv, b + r * kCols, sizeof(v16));
          acc[r] += wv * xv;
        }
      }
      for (int r = 0; r < kRows; ++r) y[m * N + p * kRows + r] = sum16(acc[r]);
    }
  }
}

struct Work {
  const float* w;
  const float* x;
  float* y;
  int64_t P, M, C, N, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};

  // Takes and runs chunks until none is left.
  void run() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      int64_t p0 = i * kPanelsPerChunk;
      panels(w, x, y, p0, std::min(P, p0 + kPanelsPerChunk), M, C, N);
      finished.fetch_add(1, std::memory_order_release);
    }
  }
};

// y (M, N) = x (M, K) times the packed weight that starts `offset` floats into `weights` (a flat buffer
// holding several packed weights: one buffer keeps every weight on huge pages; see cpu.py).
ffi::Error Matvec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> x,
                  ffi::ResultBuffer<ffi::F32> y, int64_t offset) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0] || xd[1] % kCols || yd[1] % kRows) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lwm_matvec_f32: need x (M, K) and y (M, N) with K % 16 == 0 and N % 8 == 0");
  }
  const int64_t M = xd[0], C = xd[1] / kCols, N = yd[1], P = N / kRows;
  if (offset < 0 || offset + P * C * kRows * kCols > static_cast<int64_t>(weights.element_count())) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "lwm_matvec_f32: the weight runs past its buffer");
  }
  auto work = std::make_shared<Work>();
  work->w = weights.typed_data() + offset;
  work->x = x.typed_data();
  work->y = y->typed_data();
  work->P = P, work->M = M, work->C = C, work->N = N;
  work->chunks = (P + kPanelsPerChunk - 1) / kPanelsPerChunk;
  // The caller is one worker; XLA's intra-op pool lends the others (its size counts the caller's core).
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, work->chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->finished.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
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
