// lwm's fused CPU attention (flash-style), called from jitted code through XLA's FFI (see
// lwm_core/attention/cpu_flash.py, which also holds its reference, attention.reference.dense_attention):
// - lwm_flash_attention_f32: out and log-sum-exp of softmax(q k^T / sqrt(H)) v;
// - lwm_flash_attention_bwd_f32: dq, dk, dv from the saved log-sum-exp (FlashAttention-2, Dao 2023).
//
// Why this exists: XLA's CPU attention (the blockwise and causal-block paths in JAX) writes every
// (query tile x key tile) of scores to memory, reads it back for the exp, writes the probabilities and
// reads them again for the second product, and its dots on those small tiles run far below the sgemm
// rate. At long context attention is nearly all of the work (a 2-layer, 256-wide model at 128K tokens:
// ~97% of the FLOPs), so it ran there at a few percent of the roofline. Here one thread takes one tile
// of queries of one kv head and streams key tiles past it: the scores, probabilities and output
// accumulator of the tile stay in the core's L2, and both products run on a register-blocked
// micro-kernel.
//
// Contract (as dense_attention): q (B, T, N, H), k, v (B, S, K, H) with K dividing N (grouped-query:
// the G = N / K query heads n = kh * G + g share kv head kh); q_slot (T,), k_slot (S,) time indices
// (key visible iff k_slot <= q_slot when causal); q_seg (B, T), k_seg (B, S) segment ids (visible iff
// equal). A query that sees no key gets zeros and log-sum-exp -inf (the reference spreads it evenly
// over every key it masked; no model query is in that state: each sees at least itself).
//
// Tiles: a work item is (b, kh, tile of block_q query positions), all G heads of kh together: its rows
// r = t * G + g (M = block_q * G of them). Key tiles of block_k slots are skipped when the causal mask or
// the segments hide them from every row of the item (from per-tile min/max of slots and segments), and
// masked element by element only where they hide part of it. Everything else, softmax included, is in
// float32; bf16 inputs are widened by the caller.
//
// Written with GCC/Clang vector extensions (v16 = 16 floats: one AVX-512 register, two AVX2 registers,
// four NEON registers) and compiled with -march=native on the machine that runs it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace lwm_cpu;  // NOLINT: the shared vector helpers

constexpr float kInf = std::numeric_limits<float>::infinity();

// The micro-kernel's register block: MR rows x NV vectors of 16 columns, NR = 16 NV the padding unit of
// every tile; panels of WIDE columns where a tile has them. AVX-512 has 32 registers: a WIDE panel keeps
// 6 x 4 accumulators, its four B vectors and the broadcast A value; AVX2 has 16 ymm, and a v16 takes two.
#if defined(__AVX512F__)
constexpr int64_t MR = 6, NV = 2, WIDE = 64;
#else
constexpr int64_t MR = 4, NV = 1, WIDE = 16;
#endif
constexpr int64_t NR = 16 * NV;  // columns per micro-tile

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }


// C[MR x 16 W] (+)= A[MR x kc] B[kc x 16 W]: B and C row-major with row strides ldb, ldc; A row-major with
// row stride lda, or with kTransA stored transposed (element (r, p) at A[p * lda + r]).
template <int64_t W, bool kAccumulate, bool kTransA>
inline void micro(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t kc) {
  v16 c[MR][W];
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t j = 0; j < W; ++j) c[r][j] = kAccumulate ? load(C + r * ldc + 16 * j) : v16{};
  for (int64_t p = 0; p < kc; ++p) {
    v16 b[W];
    for (int64_t j = 0; j < W; ++j) b[j] = load(B + p * ldb + 16 * j);
    for (int64_t r = 0; r < MR; ++r) {
      const v16 a = splat(kTransA ? A[p * lda + r] : A[r * lda + p]);
      for (int64_t j = 0; j < W; ++j) c[r][j] += a * b[j];
    }
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t j = 0; j < W; ++j) store(C + r * ldc + 16 * j, c[r][j]);
}

// C (M x N) (+)= A (M x kc) B (kc x N), with M a multiple of MR and N of NR (the callers pad their tiles).
// Column panels outside, rows inside: a panel of B (kc x 16 W) stays in L1 while A streams past. Panels
// are WIDE columns where they fit (each broadcast of A feeds WIDE / 16 FMAs), NR for the rest.
template <bool kAccumulate, bool kTransA = false>
void gemm(int64_t M, int64_t N, int64_t kc, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc) {
  int64_t j = 0;
  for (; j + WIDE <= N; j += WIDE)
    for (int64_t i = 0; i < M; i += MR)
      micro<WIDE / 16, kAccumulate, kTransA>(A + (kTransA ? i : i * lda), lda, B + j, ldb, C + i * ldc + j, ldc, kc);
  for (; j < N; j += NR)
    for (int64_t i = 0; i < M; i += MR)
      micro<NV, kAccumulate, kTransA>(A + (kTransA ? i : i * lda), lda, B + j, ldb, C + i * ldc + j, ldc, kc);
}

// The shapes of one call and the per-tile ranges that decide which (query tile, key tile) pairs are
// computed, masked or skipped.
struct Problem {
  int64_t B, T, N, H, S, K, G;
  int64_t bq, bk;    // tile sizes in positions
  int64_t nq, nk;    // tiles
  int64_t M, Mp;     // rows of a query tile (bq * G) and padded to MR
  int64_t Bk, Hp;    // a key tile's slots padded to NR (bk rounded up), H padded to NR
  bool causal;
  float scale;
  const int32_t *q_slot, *k_slot, *q_seg, *k_seg;
  // per query tile: min/max slot; per (b, tile): min/max segment; the same for key tiles
  std::vector<int32_t> q_lo, q_hi, k_lo, k_hi, qs_lo, qs_hi, ks_lo, ks_hi;

  int64_t q_len(int64_t i) const { return std::min(bq, T - i * bq); }

  // Columns of key tile j that query tile i needs: up to its last key not in every query's future, in
  // whole micro-tiles (a diagonal tile of a causal mask is computed up to the diagonal, not to its end).
  int64_t key_cols(int64_t i, int64_t j, int state) const {
    int64_t last = k_len(j);
    if (causal && state == 1)
      while (last > 0 && k_slot[j * bk + last - 1] > q_hi[i]) --last;
    return round_up(last, NR);
  }

  // The first row of query tile i that may see a key of tile j (the rows before it come before every key
  // of the tile), rounded down to a whole micro-tile: the keys-major backward pass starts there.
  int64_t first_row(int64_t i, int64_t j, int state) const {
    int64_t first = 0;
    const int64_t len = q_len(i);
    if (causal && state == 1)
      while (first < len && q_slot[i * bq + first] < k_lo[j]) ++first;
    return first * G / NR * NR;
  }
  int64_t k_len(int64_t j) const { return std::min(bk, S - j * bk); }

  // 0: no row of query tile i sees key tile j; 1: some do; 2: every (row, key) pair is visible.
  int visibility(int64_t b, int64_t i, int64_t j) const {
    const int64_t qi = b * nq + i, kj = b * nk + j;
    if (causal && k_lo[j] > q_hi[i]) return 0;
    if (qs_hi[qi] < ks_lo[kj] || ks_hi[kj] < qs_lo[qi]) return 0;
    const bool all_causal = !causal || k_hi[j] <= q_lo[i];
    const bool one_segment = qs_lo[qi] == qs_hi[qi] && ks_lo[kj] == ks_hi[kj] && qs_lo[qi] == ks_lo[kj];
    return all_causal && one_segment ? 2 : 1;
  }
};

void ranges(const int32_t* v, int64_t n, int64_t block, std::vector<int32_t>& lo, std::vector<int32_t>& hi) {
  const int64_t tiles = (n + block - 1) / block;
  lo.assign(tiles, std::numeric_limits<int32_t>::max());
  hi.assign(tiles, std::numeric_limits<int32_t>::min());
  for (int64_t i = 0; i < n; ++i) {
    lo[i / block] = std::min(lo[i / block], v[i]);
    hi[i / block] = std::max(hi[i / block], v[i]);
  }
}

Problem make_problem(int64_t B, int64_t T, int64_t N, int64_t H, int64_t S, int64_t K, int64_t bq, int64_t bk,
                     bool causal, const int32_t* q_slot, const int32_t* k_slot, const int32_t* q_seg,
                     const int32_t* k_seg) {
  Problem p{};
  p.B = B, p.T = T, p.N = N, p.H = H, p.S = S, p.K = K, p.G = N / K;
  p.bq = std::min(bq, T), p.bk = std::min(bk, S);
  p.nq = (T + p.bq - 1) / p.bq, p.nk = (S + p.bk - 1) / p.bk;
  p.M = p.bq * p.G, p.Mp = round_up(p.M, MR);
  p.Bk = round_up(p.bk, NR), p.Hp = round_up(H, NR);
  p.causal = causal;
  p.scale = 1.0f / std::sqrt(static_cast<float>(H));
  p.q_slot = q_slot, p.k_slot = k_slot, p.q_seg = q_seg, p.k_seg = k_seg;
  ranges(q_slot, T, p.bq, p.q_lo, p.q_hi);
  ranges(k_slot, S, p.bk, p.k_lo, p.k_hi);
  p.qs_lo.clear(), p.qs_hi.clear(), p.ks_lo.clear(), p.ks_hi.clear();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> lo, hi;
    ranges(q_seg + b * T, T, p.bq, lo, hi);
    p.qs_lo.insert(p.qs_lo.end(), lo.begin(), lo.end());
    p.qs_hi.insert(p.qs_hi.end(), hi.begin(), hi.end());
    ranges(k_seg + b * S, S, p.bk, lo, hi);
    p.ks_lo.insert(p.ks_lo.end(), lo.begin(), lo.end());
    p.ks_hi.insert(p.ks_hi.end(), hi.begin(), hi.end());
  }
  return p;
}

// Row r = t * G + g of a query tile is head n = kh * G + g at position t0 + t: x (B, T, N, H) -> rows
// (Mp, ld), scaled, zero-padded (rows past the tile and columns past H).
void pack_rows(const Problem& p, const float* x, int64_t b, int64_t kh, int64_t t0, int64_t len, float scale,
               float* out, int64_t ld) {
  std::fill(out, out + p.Mp * ld, 0.0f);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t g = 0; g < p.G; ++g) {
      const float* src = x + (((b * p.T + t0 + t) * p.N) + kh * p.G + g) * p.H;
      float* dst = out + (t * p.G + g) * ld;
      for (int64_t h = 0; h < p.H; ++h) dst[h] = src[h] * scale;
    }
}

// The same rows transposed: (H, ld) with ld >= Mp.
void pack_rows_t(const Problem& p, const float* x, int64_t b, int64_t kh, int64_t t0, int64_t len, float scale,
                 float* out, int64_t ld) {
  std::fill(out, out + p.H * ld, 0.0f);
  for (int64_t t = 0; t < len; ++t)
    for (int64_t g = 0; g < p.G; ++g) {
      const float* src = x + (((b * p.T + t0 + t) * p.N) + kh * p.G + g) * p.H;
      const int64_t r = t * p.G + g;
      for (int64_t h = 0; h < p.H; ++h) out[h * ld + r] = src[h] * scale;
    }
}

// Key tile j of kv head kh: y (B, S, K, H) -> (Bk, ld) rows, or transposed (H, ld) with ld >= Bk; zero-padded.
void pack_keys(const Problem& p, const float* y, int64_t b, int64_t kh, int64_t s0, int64_t len, float* out,
               int64_t ld) {
  std::fill(out, out + p.Bk * ld, 0.0f);
  for (int64_t s = 0; s < len; ++s) std::memcpy(out + s * ld, y + ((b * p.S + s0 + s) * p.K + kh) * p.H, p.H * 4);
}

void pack_keys_t(const Problem& p, const float* y, int64_t b, int64_t kh, int64_t s0, int64_t len, float* out,
                 int64_t ld) {
  std::fill(out, out + p.H * ld, 0.0f);
  for (int64_t s = 0; s < len; ++s) {
    const float* src = y + ((b * p.S + s0 + s) * p.K + kh) * p.H;
    for (int64_t h = 0; h < p.H; ++h) out[h * ld + s] = src[h];
  }
}

// Key tile j's slots and segments, padded to Bk (padding: slots past every query's, so hidden when causal;
// `valid` marks the real keys for the rest).
struct KeyTile {
  std::vector<int32_t> slot, seg, valid;
  void load(const Problem& p, int64_t b, int64_t s0, int64_t len) {
    slot.assign(p.Bk, std::numeric_limits<int32_t>::max()), seg.assign(p.Bk, 0), valid.assign(p.Bk, 0);
    for (int64_t s = 0; s < len; ++s) slot[s] = p.k_slot[s0 + s], seg[s] = p.k_seg[b * p.S + s0 + s], valid[s] = -1;
  }
};


// Which of keys [s, s + 16) of `keys` query t sees: lanes of -1 (visible) or 0.
inline i16 visible16(const Problem& p, const KeyTile& keys, int64_t b, int64_t t, int64_t s) {
  i16 vis = (load_i(keys.seg.data() + s) == p.q_seg[b * p.T + t]) & load_i(keys.valid.data() + s);
  if (p.causal) vis &= load_i(keys.slot.data() + s) <= p.q_slot[t];
  return vis;
}

// The first `cols` rows x keys scores (ld Bk) of a tile the mask cuts through (`state` 1) or that ends
// before `cols`: -inf where hidden.
void mask_scores(const Problem& p, const KeyTile& keys, float* scores, int64_t b, int64_t t0, int64_t qlen,
                 int64_t cols) {
  const v16 hidden = v16{} - kInf;
  for (int64_t t = 0; t < qlen; ++t)
    for (int64_t s = 0; s < cols; s += 16) {
      const i16 vis = visible16(p, keys, b, t0 + t, s);
      for (int64_t g = 0; g < p.G; ++g) {
        float* at = scores + (t * p.G + g) * p.Bk + s;
        store(at, vis ? load(at) : hidden);
      }
    }
}

struct ForwardScratch {
  std::vector<float> q, scores, acc, m, l;
  KeyTile keys;
};

// Every key tile of every (b, kh), packed once per call: k^T (H, Bk) and v (Bk, Hp), zero-padded. Packed
// per (query tile, key tile) pair instead, the forward took twice as long (8192 tokens, 4 heads of 64:
// 445-481 ms against 225-228; benchmarks/README.md#design-measurements).
struct PackedKeys {
  int64_t kt_size, v_size;
  std::vector<float> kt, v;
  PackedKeys(const Problem& p, ffi::ThreadPool& pool, const float* k, const float* vs)
      : kt_size(p.H * p.Bk), v_size(p.Bk * p.Hp), kt(p.B * p.K * p.nk * kt_size), v(p.B * p.K * p.nk * v_size) {
    parallel_chunks(pool, p.B * p.K * p.nk, [&](int64_t item) {
      const int64_t j = item % p.nk, bk = item / p.nk;
      pack_keys_t(p, k, bk / p.K, bk % p.K, j * p.bk, p.k_len(j), kt.data() + item * kt_size, p.Bk);
      pack_keys(p, vs, bk / p.K, bk % p.K, j * p.bk, p.k_len(j), v.data() + item * v_size, p.Hp);
    });
  }
  const float* key_t(const Problem& p, int64_t b, int64_t kh, int64_t j) const {
    return kt.data() + ((b * p.K + kh) * p.nk + j) * kt_size;
  }
  const float* value(const Problem& p, int64_t b, int64_t kh, int64_t j) const {
    return v.data() + ((b * p.K + kh) * p.nk + j) * v_size;
  }
};

// One work item of the forward: query tile i of (b, kh).
void forward_item(const Problem& p, const float* q, const PackedKeys& keys, float* out, float* lse, int64_t b,
                  int64_t kh, int64_t i, ForwardScratch& w) {
  const int64_t t0 = i * p.bq, qlen = p.q_len(i), rows = qlen * p.G;
  w.q.resize(p.Mp * p.H), w.scores.resize(p.Mp * p.Bk);
  w.acc.assign(p.Mp * p.Hp, 0.0f), w.m.assign(p.Mp, -kInf), w.l.assign(p.Mp, 0.0f);
  pack_rows(p, q, b, kh, t0, qlen, p.scale, w.q.data(), p.H);
  for (int64_t j = 0; j < p.nk; ++j) {
    const int state = p.visibility(b, i, j);
    if (state == 0) continue;
    const int64_t s0 = j * p.bk, klen = p.k_len(j);
    const int64_t cols = p.key_cols(i, j, state);
    gemm<false>(p.Mp, cols, p.H, w.q.data(), p.H, keys.key_t(p, b, kh, j), p.Bk, w.scores.data(), p.Bk);
    if (state == 1 || klen < cols) {
      w.keys.load(p, b, s0, klen);
      mask_scores(p, w.keys, w.scores.data(), b, t0, qlen, cols);
    }
    // Online softmax (Milakov & Gimelshein 2018): rescale what the row has by exp(old max - new max).
    for (int64_t r = 0; r < rows; ++r) {
      float* row = w.scores.data() + r * p.Bk;
      v16 top = v16{} - kInf;
      for (int64_t s = 0; s < cols; s += 16) {
        const v16 x = load(row + s);
        top = x > top ? x : top;
      }
      float m_new = w.m[r];
      for (int e = 0; e < 16; ++e) m_new = std::max(m_new, top[e]);
      if (m_new == -kInf) {  // nothing visible yet: probabilities 0 (exp(-inf - -inf) would be NaN)
        std::fill(row, row + cols, 0.0f);
        continue;
      }
      const float correction = w.m[r] == -kInf ? 0.0f : std::exp(w.m[r] - m_new);
      v16 sum = {};
      for (int64_t s = 0; s < cols; s += 16) {
        const v16 e = exp_nonpositive(load(row + s) - m_new);
        store(row + s, e);
        sum += e;
      }
      float total = 0;
      for (int e = 0; e < 16; ++e) total += sum[e];
      w.l[r] = w.l[r] * correction + total;
      w.m[r] = m_new;
      if (correction != 1.0f)
        for (int64_t h = 0; h < p.Hp; ++h) w.acc[r * p.Hp + h] *= correction;
    }
    for (int64_t r = rows; r < p.Mp; ++r) std::fill(w.scores.data() + r * p.Bk, w.scores.data() + r * p.Bk + cols, 0.0f);
    gemm<true>(p.Mp, p.Hp, cols, w.scores.data(), p.Bk, keys.value(p, b, kh, j), p.Hp, w.acc.data(), p.Hp);
  }
  for (int64_t t = 0; t < qlen; ++t)
    for (int64_t g = 0; g < p.G; ++g) {
      const int64_t r = t * p.G + g, n = kh * p.G + g;
      float* dst = out + ((b * p.T + t0 + t) * p.N + n) * p.H;
      const float inv = w.l[r] > 0 ? 1.0f / w.l[r] : 0.0f;
      for (int64_t h = 0; h < p.H; ++h) dst[h] = w.acc[r * p.Hp + h] * inv;
      lse[(b * p.N + n) * p.T + t0 + t] = w.l[r] > 0 ? w.m[r] + std::log(w.l[r]) : -kInf;
    }
}

// Backward: per tile, p = exp(s - lse) from the scores recomputed, dp = do v^T, ds = p * (dp - delta) with
// delta = rowsum(do * out) (Dao 2023, Alg. 2); exp(s - lse) may exceed 1 by rounding, harmlessly.
// Each row's log-sum-exp and delta of query tile [t0, t0 + qlen) of (b, kh), into lse_r and delta_r (n >=
// the tile's rows; the padded rows keep lse +inf and delta 0: probability 0). A query that saw nothing
// (lse -inf) gets +inf too, so every exp below is 0 for it.
void row_stats(const Problem& p, const float* lse, const float* delta, int64_t b, int64_t kh, int64_t t0,
               int64_t qlen, float* lse_r, float* delta_r, int64_t n) {
  std::fill(lse_r, lse_r + n, kInf), std::fill(delta_r, delta_r + n, 0.0f);
  for (int64_t t = 0; t < qlen; ++t)
    for (int64_t g = 0; g < p.G; ++g) {
      const int64_t at = (b * p.N + kh * p.G + g) * p.T + t0 + t;
      lse_r[t * p.G + g] = lse[at] == -kInf ? kInf : lse[at];
      delta_r[t * p.G + g] = delta[at];
    }
}

// The query side of every (b, kh, query tile), packed once per backward call (each is read against every
// key tile that the tile sees): q^T scaled and do^T (H, Mc), do and q scaled (Mp, Hp), and per row its
// log-sum-exp, delta, slot and segment (the masks of the tiles the mask cuts through). Padding rows are
// zero with lse +inf (probability 0) and slot INT32_MIN (hidden). The rows are the columns of the
// keys-major tiles: Nc (M rounded up to NR) are computed, in rows of ld >= Mp floats whose columns from
// Nc on stay zero (the dq product reads Mp of them). For M = 64: 64 columns, not Mp = 66 rounded to 96.
struct PackedQueries {
  int64_t Nc, ld, t_size, r_size;
  std::vector<float> qt, dot, dorows, qrows, lse_r, delta_r;
  std::vector<int32_t> slot, seg;
  PackedQueries(const Problem& p, ffi::ThreadPool& pool, const float* q, const float* dout, const float* lse,
                const float* delta)
      : Nc(round_up(p.M, NR)), ld(round_up(std::max(Nc, p.Mp), 16)), t_size(p.H * ld), r_size(p.Mp * p.Hp) {
    const int64_t items = p.B * p.K * p.nq;
    qt.resize(items * t_size), dot.resize(items * t_size), dorows.resize(items * r_size),
        qrows.resize(items * r_size), lse_r.resize(items * ld), delta_r.resize(items * ld),
        slot.resize(items * ld), seg.resize(items * ld);
    parallel_chunks(pool, items, [&](int64_t item) {
      const int64_t i = item % p.nq, bk = item / p.nq, b = bk / p.K, kh = bk % p.K;
      const int64_t t0 = i * p.bq, qlen = p.q_len(i);
      pack_rows_t(p, q, b, kh, t0, qlen, p.scale, qt.data() + item * t_size, ld);
      pack_rows_t(p, dout, b, kh, t0, qlen, 1.0f, dot.data() + item * t_size, ld);
      pack_rows(p, dout, b, kh, t0, qlen, 1.0f, dorows.data() + item * r_size, p.Hp);
      pack_rows(p, q, b, kh, t0, qlen, p.scale, qrows.data() + item * r_size, p.Hp);
      row_stats(p, lse, delta, b, kh, t0, qlen, lse_r.data() + item * ld, delta_r.data() + item * ld, ld);
      int32_t* sl = slot.data() + item * ld;
      int32_t* sg = seg.data() + item * ld;
      std::fill(sl, sl + ld, std::numeric_limits<int32_t>::min()), std::fill(sg, sg + ld, 0);
      for (int64_t r = 0; r < qlen * p.G; ++r) sl[r] = p.q_slot[t0 + r / p.G], sg[r] = p.q_seg[b * p.T + t0 + r / p.G];
    });
  }
};

struct BackwardScratch {
  std::vector<float> k, v, s, dp, dk, dv;
};

// One work item of the backward: the key tiles j = c, c + C, c + 2C, ... of (b, kh), each against every
// query tile that sees it, in one pass (FlashAttention-2's loop order). dk and dv of those key tiles are
// the item's alone; its dq contributions go to `dq_part`, this item's (nq, Mp, Hp) buffer, which the
// caller sums over the C items of (b, kh). Tiles are (keys x rows): s^T = k q^T, dp^T = v do^T.
void backward_item(const Problem& p, const PackedQueries& pq, const float* k, const float* v, float* dk, float* dv,
                   float* dq_part, int64_t b, int64_t kh, int64_t c, int64_t C, BackwardScratch& w) {
  const int64_t Nc = pq.Nc, ld = pq.ld, Bkr = round_up(p.Bk, MR);
  w.k.resize(Bkr * p.Hp), w.v.resize(Bkr * p.H);
  w.s.assign(Bkr * ld, 0.0f), w.dp.assign(Bkr * ld, 0.0f);  // columns from Nc stay zero
  for (int64_t j = c; j < p.nk; j += C) {
    const int64_t s0 = j * p.bk, klen = p.k_len(j);
    // k as (Bkr, Hp) rows serves as the A operand of s^T (its first H columns) and the B operand of dq;
    // v as (Bkr, H) rows is the A operand of dp^T. Padding rows and columns are zero.
    std::fill(w.k.begin(), w.k.end(), 0.0f), std::fill(w.v.begin(), w.v.end(), 0.0f);
    for (int64_t s = 0; s < klen; ++s) {
      std::memcpy(w.k.data() + s * p.Hp, k + ((b * p.S + s0 + s) * p.K + kh) * p.H, p.H * 4);
      std::memcpy(w.v.data() + s * p.H, v + ((b * p.S + s0 + s) * p.K + kh) * p.H, p.H * 4);
    }
    w.dk.assign(Bkr * p.Hp, 0.0f), w.dv.assign(Bkr * p.Hp, 0.0f);
    for (int64_t i = 0; i < p.nq; ++i) {
      const int state = p.visibility(b, i, j);
      if (state == 0) continue;
      const int64_t item = (b * p.K + kh) * p.nq + i;
      const float* lse_r = pq.lse_r.data() + item * ld;
      const float* delta_r = pq.delta_r.data() + item * ld;
      const float* qrows = pq.qrows.data() + item * pq.r_size;
      const float* dorows = pq.dorows.data() + item * pq.r_size;
      // Rows before c0 see no key of this tile; the dq product starts at c1 <= c0, a multiple of MR, and
      // the columns [c1, c0) of ds^T are zeroed for it.
      const int64_t c0 = p.first_row(i, j, state), c1 = c0 / MR * MR;
      gemm<false>(Bkr, Nc - c0, p.H, w.k.data(), p.Hp, pq.qt.data() + item * pq.t_size + c0, ld, w.s.data() + c0, ld);
      gemm<false>(Bkr, Nc - c0, p.H, w.v.data(), p.H, pq.dot.data() + item * pq.t_size + c0, ld, w.dp.data() + c0,
                  ld);
      for (int64_t s = 0; s < Bkr; ++s) {
        float* ps = w.s.data() + s * ld;
        float* ds = w.dp.data() + s * ld;
        std::fill(ds + c1, ds + c0, 0.0f);
        if (s >= klen) {  // key rows past the tile
          std::fill(ps + c0, ps + Nc, 0.0f), std::fill(ds + c0, ds + Nc, 0.0f);
          continue;
        }
        for (int64_t r = c0; r < Nc; r += 16) {
          const v16 prob = exp_nonpositive(load(ps + r) - load(lse_r + r));
          store(ps + r, prob);
          store(ds + r, prob * (load(ds + r) - load(delta_r + r)));
        }
      }
      if (state == 1) {  // the hidden pairs of a tile the mask cuts through
        const int32_t* row_slot = pq.slot.data() + item * ld;
        const int32_t* row_seg = pq.seg.data() + item * ld;
        for (int64_t s = 0; s < klen; ++s) {
          const int32_t slot = p.k_slot[s0 + s], seg = p.k_seg[b * p.S + s0 + s];
          for (int64_t r = c0; r < Nc; r += 16) {
            i16 vis = load_i(row_seg + r) == seg;
            if (p.causal) vis &= slot <= load_i(row_slot + r);
            float* ps = w.s.data() + s * ld + r;
            float* ds = w.dp.data() + s * ld + r;
            store(ps, vis ? load(ps) : v16{});
            store(ds, vis ? load(ds) : v16{});
          }
        }
      }
      // dv += p^T do; dk += ds^T q (over the rows from c0); dq += ds k (rows from c1, ds read transposed)
      gemm<true>(Bkr, p.Hp, p.Mp - c0, w.s.data() + c0, ld, dorows + c0 * p.Hp, p.Hp, w.dv.data(), p.Hp);
      gemm<true>(Bkr, p.Hp, p.Mp - c0, w.dp.data() + c0, ld, qrows + c0 * p.Hp, p.Hp, w.dk.data(), p.Hp);
      gemm<true, true>(p.Mp - c1, p.Hp, klen, w.dp.data() + c1, ld, w.k.data(), p.Hp,
                       dq_part + (i * p.Mp + c1) * p.Hp, p.Hp);
    }
    for (int64_t s = 0; s < klen; ++s) {
      const int64_t at = ((b * p.S + s0 + s) * p.K + kh) * p.H;
      for (int64_t h = 0; h < p.H; ++h) dk[at + h] = w.dk[s * p.Hp + h], dv[at + h] = w.dv[s * p.Hp + h];
    }
  }
}

// Shape checks shared by both handlers -> an error message, or nullptr.
const char* check(ffi::Span<const int64_t> qd, ffi::Span<const int64_t> kd, ffi::Span<const int64_t> vd,
                  ffi::Span<const int64_t> qsl, ffi::Span<const int64_t> ksl, ffi::Span<const int64_t> qsg,
                  ffi::Span<const int64_t> ksg, int64_t block_q, int64_t block_k) {
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || qsl.size() != 1 || ksl.size() != 1 || qsg.size() != 2 ||
      ksg.size() != 2)
    return "need q (B, T, N, H), k and v (B, S, K, H), slots (T,) (S,), segments (B, T) (B, S)";
  if (kd[0] != qd[0] || kd[3] != qd[3] || vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] || vd[3] != kd[3] ||
      kd[2] == 0 || qd[2] % kd[2] || qsl[0] != qd[1] || ksl[0] != kd[1] || qsg[0] != qd[0] || qsg[1] != qd[1] ||
      ksg[0] != qd[0] || ksg[1] != kd[1])
    return "q, k, v, slots and segments disagree in shape (B, T, S, H, or K not dividing N)";
  if (block_q < 1 || block_k < 1) return "block_q and block_k must be >= 1";
  return nullptr;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> q_slot, ffi::Buffer<ffi::S32> k_slot, ffi::Buffer<ffi::S32> q_seg,
                   ffi::Buffer<ffi::S32> k_seg, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                   bool causal, int64_t block_q, int64_t block_k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (const char* bad = check(qd, kd, v.dimensions(), q_slot.dimensions(), k_slot.dimensions(), q_seg.dimensions(),
                              k_seg.dimensions(), block_q, block_k))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("lwm_flash_attention_f32: ") + bad);
  const int64_t B = qd[0], T = qd[1], N = qd[2], H = qd[3], S = kd[1], K = kd[2];
  float* o = out->typed_data();
  float* l = lse->typed_data();
  if (T == 0) return ffi::Error::Success();
  if (S == 0) {
    std::fill(o, o + B * T * N * H, 0.0f);
    std::fill(l, l + B * N * T, -kInf);
    return ffi::Error::Success();
  }
  const Problem p = make_problem(B, T, N, H, S, K, block_q, block_k, causal, q_slot.typed_data(),
                                 k_slot.typed_data(), q_seg.typed_data(), k_seg.typed_data());
  const PackedKeys keys(p, pool, k.typed_data(), v.typed_data());
  const float* qs = q.typed_data();
  // Items in reverse query order: under a causal mask the last tiles have the most keys, and starting
  // them first keeps both threads busy to the end.
  parallel_chunks(pool, B * K * p.nq, [&](int64_t item) {
    thread_local ForwardScratch scratch;
    const int64_t i = p.nq - 1 - item % p.nq, bk = item / p.nq;
    forward_item(p, qs, keys, o, l, bk / K, bk % K, i, scratch);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::S32> q_slot, ffi::Buffer<ffi::S32> k_slot, ffi::Buffer<ffi::S32> q_seg,
                    ffi::Buffer<ffi::S32> k_seg, ffi::Buffer<ffi::F32> dout, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> delta, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, bool causal, int64_t block_q, int64_t block_k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (const char* bad = check(qd, kd, v.dimensions(), q_slot.dimensions(), k_slot.dimensions(), q_seg.dimensions(),
                              k_seg.dimensions(), block_q, block_k))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("lwm_flash_attention_bwd_f32: ") + bad);
  const int64_t B = qd[0], T = qd[1], N = qd[2], H = qd[3], S = kd[1], K = kd[2];
  float *dqs = dq->typed_data(), *dks = dk->typed_data(), *dvs = dv->typed_data();
  std::fill(dqs, dqs + B * T * N * H, 0.0f);
  std::fill(dks, dks + B * S * K * H, 0.0f);
  std::fill(dvs, dvs + B * S * K * H, 0.0f);
  if (T == 0 || S == 0) return ffi::Error::Success();
  const Problem p = make_problem(B, T, N, H, S, K, block_q, block_k, causal, q_slot.typed_data(),
                                 k_slot.typed_data(), q_seg.typed_data(), k_seg.typed_data());
  const float *qs = q.typed_data(), *ks = k.typed_data(), *vs = v.typed_data(), *dos = dout.typed_data();
  const float *ls = lse.typed_data(), *ds = delta.typed_data();
  const PackedQueries packed(p, pool, qs, dos, ls, ds);
  // Work items (b, kh, c): item c of (b, kh) takes its key tiles j = c mod C and keeps its own dq
  // partial sums (no atomics). C = 1 when there are at least as many (b, kh) as threads; otherwise C
  // splits each (b, kh) so that every thread has work, at C partial dq buffers per (b, kh).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t C = std::min<int64_t>(p.nk, (threads + B * K - 1) / (B * K));
  const int64_t part = p.nq * p.Mp * p.Hp;
  std::vector<float> dq_parts(B * K * C * part, 0.0f);
  parallel_chunks(pool, B * K * C, [&](int64_t item) {
    thread_local BackwardScratch scratch;
    const int64_t bk = item / C;
    backward_item(p, packed, ks, vs, dks, dvs, dq_parts.data() + item * part, bk / K, bk % K, item % C, C, scratch);
  });
  // dq = scale x the sum of the partials (s = (q * scale) k^T)
  parallel_chunks(pool, B * K * p.nq, [&](int64_t item) {
    const int64_t i = item % p.nq, bk = item / p.nq, b = bk / K, kh = bk % K, t0 = i * p.bq;
    for (int64_t t = 0; t < p.q_len(i); ++t)
      for (int64_t g = 0; g < p.G; ++g) {
        const int64_t r = t * p.G + g;
        float* dst = dqs + ((b * T + t0 + t) * N + kh * p.G + g) * H;
        for (int64_t h = 0; h < H; ++h) {
          float sum = 0;
          for (int64_t c = 0; c < C; ++c) sum += dq_parts[((bk * C + c) * p.nq + i) * p.Mp * p.Hp + r * p.Hp + h];
          dst[h] = sum * p.scale;
        }
      }
  });
  return ffi::Error::Success();
}

// The arguments both handlers start with (q, k, v, then slots and segments) and the attributes they end
// with: one list, so the forward and the backward cannot disagree on the order cpu_flash.py passes them in.
auto bind_inputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // q
      .Arg<ffi::Buffer<ffi::F32>>()   // k
      .Arg<ffi::Buffer<ffi::F32>>()   // v
      .Arg<ffi::Buffer<ffi::S32>>()   // q_slot
      .Arg<ffi::Buffer<ffi::S32>>()   // k_slot
      .Arg<ffi::Buffer<ffi::S32>>()   // q_seg
      .Arg<ffi::Buffer<ffi::S32>>();  // k_seg
}

template <typename Binding>
auto bind_attributes(Binding binding) {
  return std::move(binding).template Attr<bool>("causal").template Attr<int64_t>("block_q").template Attr<int64_t>(
      "block_k");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmFlashAttentionF32, Forward,
                              bind_attributes(bind_inputs()
                                                  .Ret<ffi::Buffer<ffi::F32>>()    // out
                                                  .Ret<ffi::Buffer<ffi::F32>>()));  // lse

XLA_FFI_DEFINE_HANDLER_SYMBOL(LwmFlashAttentionBwdF32, Backward,
                              bind_attributes(bind_inputs()
                                                  .Arg<ffi::Buffer<ffi::F32>>()    // dout
                                                  .Arg<ffi::Buffer<ffi::F32>>()    // lse
                                                  .Arg<ffi::Buffer<ffi::F32>>()    // delta
                                                  .Ret<ffi::Buffer<ffi::F32>>()    // dq
                                                  .Ret<ffi::Buffer<ffi::F32>>()    // dk
                                                  .Ret<ffi::Buffer<ffi::F32>>()));  // dv
