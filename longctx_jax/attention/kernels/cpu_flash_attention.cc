// Fused flash-attention forward for XLA:CPU, called through the XLA FFI.
//
// The FlashAttention recurrence (Dao et al. 2022) with the tiles kept in cache: for a block
// of block_q query rows of one head and each block of block_k keys,
//     s = (q * scale) k^T,  m' = max(m, rowmax s),  p = exp(s - m'),
//     l = l e^(m - m') + rowsum p,  o = o e^(m - m') + p v,
// and at the end out = o / l, lse = m + log l (rows with no allowed key: out 0, lse 0).
// One work item is (batch, query head, query block); the items are spread over XLA's
// intra-op thread pool head by head (concurrent items share that head's keys in cache),
// heaviest (latest causal) blocks of each head first. Keys are repacked once per call into
// panels of 16 keys, [B, K, S/16, H, 16], and values into slices of 16 channels,
// [B, K, H/16, S, 16], so both micro-kernels stream contiguous memory (a [H, S] transpose, or
// V rows read in place, would map a tile's rows onto a few L1 sets when strides are powers of
// two).
//
// One source, one build per instruction set (`cpu_flash_plan.py` picks the flags and the
// constants below from the machine): the micro-kernels use GCC/Clang vector extensions of
// LONGCTX_LANES floats (4: SSE2 / NEON, the portable build; 8: AVX2 + FMA; 16: AVX-512), a
// register tile of LONGCTX_ROWS query rows by one 16-key panel (16 / LANES vectors per row),
// and default blocks LONGCTX_BLOCK_Q x LONGCTX_BLOCK_K sized from the machine's L1d / L2.
// A vector wider than the instruction set is split by the compiler, so the 16-lane tile
// logic also runs (slowly) on AVX2 hardware.
//
// Layouts are those of jax.nn.dot_product_attention: q [B, T, N, H], k / v [B, S, K, H],
// N % K == 0 (grouped-query attention without copying keys), float32, H % 16 == 0 (the
// Python wrapper zero-pads other head dims). Masking: key j is allowed for query i when
// (not causal or j <= i) and (window == 0 or |i - j| < window), with positions 0..T-1 and
// 0..S-1 (a prompt attending to itself, the prefill case).
//
// A second entry point, LongctxCpuDecodeAttention, serves the decode step: a few query rows
// (T small) at explicit positions over a KV cache read in place ([B, S, K, H], no repacking:
// one pass over each key and value row, which a decoded token reads once). Work items are
// (batch, chunk of kDecodeChunk keys), spread over the pool; each computes every query row
// against the keys of its chunk that some row may attend to (partial m, l, o; a cache's empty
// slots are not read), streaming those rows into L2 once and in order, and the partials are
// merged exactly as the recurrence above (`decode_item`). Mask over true positions (attention/masks.py):
//     allowed = (not causal or k <= q) and (window == 0 or |q - k| < window or k < sinks).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "parallel_run.h"
#include "xla/ffi/api/ffi.h"

#if !defined(LONGCTX_LANES) || !defined(LONGCTX_ROWS) || !defined(LONGCTX_BLOCK_Q) || \
    !defined(LONGCTX_BLOCK_K)
#error "build through cpu_flash_plan.py: it defines LONGCTX_LANES, _ROWS, _BLOCK_Q, _BLOCK_K"
#endif

namespace ffi = xla::ffi;
using longctx::parallel_run;

namespace {

constexpr int kLanes = LONGCTX_LANES;
constexpr int kPanel = 16;                 // keys per K panel, channels per V slice
constexpr int kVecs = kPanel / kLanes;     // vectors per register-tile row
constexpr int kRows = LONGCTX_ROWS;        // register-tile rows
constexpr int64_t kBlockQ = LONGCTX_BLOCK_Q;
constexpr int64_t kBlockK = LONGCTX_BLOCK_K;
static_assert(kLanes == 4 || kLanes == 8 || kLanes == 16, "LONGCTX_LANES must be 4, 8 or 16");
static_assert(kRows >= 1 && kRows <= 32, "LONGCTX_ROWS must be in 1..32");
static_assert(kBlockQ >= 1 && kBlockK >= kPanel && kBlockK % kPanel == 0, "bad default blocks");

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
// The same vector type at float alignment, for unaligned loads and stores through pointers.
typedef float vf_unaligned __attribute__((vector_size(4 * kLanes), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf_unaligned*>(p) = x; }
// x in every lane. Written as a braced list of kLanes copies: `vf{} + x` would cost a vector
// add per broadcast (0 + x is not x for x = -0, so the compiler keeps the add), which made the
// attention kernel 1.4x slower in its inner loops.
template <std::size_t... I>
inline vf splat_lanes(float x, std::index_sequence<I...>) { return vf{((void)I, x)...}; }
inline vf splat(float x) { return splat_lanes(x, std::make_index_sequence<kLanes>{}); }

// exp for x <= 0 (Cephes expf polynomial, relative error below 2e-7); 0 below -87.
inline vf exp_nonpositive(vf x) {
  const vf too_small = x < splat(-87.0f) ? splat(1.0f) : splat(0.0f);
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = x * splat(1.44269504088896341f) + shifter;
  n = n - shifter;
  vf r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  p = p * scale;
  return too_small > splat(0.5f) ? splat(0.0f) : p;
}

inline float hmax(vf x) {
  float r = x[0];
  for (int i = 1; i < kLanes; ++i) r = std::max(r, x[i]);
  return r;
}
inline float hsum(vf x) {
  float r = 0.0f;
  for (int i = 0; i < kLanes; ++i) r += x[i];
  return r;
}

struct Problem {
  const float* q;
  const float* v;   // [B, K, H / 16, S, 16]
  const float* kt;  // [B, K, Sp / 16, H, 16], zero beyond S
  float* out;
  float* lse;
  int64_t B, T, S, Sp, N, K, H;
  bool causal;
  int64_t window;
  float scale;
  int64_t block_q, block_k;
};

// The register tile's loops over rows and vectors are unrolled in full, so its accumulators live
// in registers: left to itself GCC 12 did not unroll a 24-row AVX-512 tile; it interchanged the
// loops and kept the accumulators in memory (a load, FMA and store per row and step), 0.56 s
// against 0.50 s unrolled for SmolLM2's 8K layer on a Zen 4 EPYC.
#if defined(__clang__)
#define LONGCTX_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LONGCTX_UNROLL _Pragma("GCC unroll 64")
#else
#define LONGCTX_UNROLL
#endif

// s[r, c] = sum_h qb[r, h] panel[h, c] for kRows rows and the 16 keys of one panel.
inline void qk_tile(const float* qb, int64_t H, const float* panel, float* s, int64_t s_stride) {
  vf acc[kRows][kVecs] = {};
  for (int64_t h = 0; h < H; ++h) {
    vf b[kVecs];
    LONGCTX_UNROLL for (int u = 0; u < kVecs; ++u) b[u] = load(panel + h * kPanel + u * kLanes);
    LONGCTX_UNROLL for (int r = 0; r < kRows; ++r) {
      const vf a = splat(qb[r * H + h]);
      LONGCTX_UNROLL for (int u = 0; u < kVecs; ++u) acc[r][u] += a * b[u];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int u = 0; u < kVecs; ++u) store(s + r * s_stride + u * kLanes, acc[r][u]);
}

// o[r, c..c+16] += sum_j p[r, j] v[j, c..c+16] for kRows rows.
inline void pv_tile(const float* p, int64_t p_stride, int64_t num_keys, const float* v,
                    int64_t v_stride, float* o, int64_t H) {
  vf acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int u = 0; u < kVecs; ++u) acc[r][u] = load(o + r * H + u * kLanes);
  for (int64_t j = 0; j < num_keys; ++j) {
    vf b[kVecs];
    LONGCTX_UNROLL for (int u = 0; u < kVecs; ++u) b[u] = load(v + j * v_stride + u * kLanes);
    LONGCTX_UNROLL for (int r = 0; r < kRows; ++r) {
      const vf a = splat(p[r * p_stride + j]);
      LONGCTX_UNROLL for (int u = 0; u < kVecs; ++u) acc[r][u] += a * b[u];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int u = 0; u < kVecs; ++u) store(o + r * H + u * kLanes, acc[r][u]);
}

struct Scratch {
  std::vector<float> qb, s, o, m, l;
  // Rows rounded up to whole register tiles; the extra rows stay zero.
  Scratch(int64_t bq, int64_t bk, int64_t H)
      : qb(padded(bq) * H), s(padded(bq) * bk), o(padded(bq) * H), m(bq), l(bq) {}
  static int64_t padded(int64_t rows) { return (rows + kRows - 1) / kRows * kRows; }
};

void run_item(const Problem& P, int64_t item, Scratch& w) {
  const int64_t num_q_blocks = (P.T + P.block_q - 1) / P.block_q;
  // Head by head, so concurrent items share one head's packed keys and values in cache, and
  // within a head heaviest first: the last query blocks see the most keys under a causal mask.
  const int64_t head = item / num_q_blocks;
  const int64_t qblk = num_q_blocks - 1 - item % num_q_blocks;
  const int64_t b = head / P.N;
  const int64_t n = head % P.N;
  const int64_t kv_head = n / (P.N / P.K);
  const int64_t H = P.H, bq = P.block_q, bk = P.block_k;
  const int64_t q0 = qblk * bq;
  const int64_t rows = std::min(bq, P.T - q0);

  std::fill(w.qb.begin(), w.qb.end(), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = P.q + ((b * P.T + q0 + r) * P.N + n) * H;
    for (int64_t h = 0; h < H; ++h) w.qb[r * H + h] = src[h] * P.scale;
  }
  std::fill(w.o.begin(), w.o.end(), 0.0f);
  std::fill(w.m.begin(), w.m.end(), -INFINITY);
  std::fill(w.l.begin(), w.l.end(), 0.0f);

  int64_t k_lo = 0, k_hi = P.S;
  if (P.causal) k_hi = std::min(P.S, q0 + rows);
  if (P.window > 0) {
    k_lo = std::max<int64_t>(0, q0 - P.window + 1);
    if (!P.causal) k_hi = std::min(P.S, q0 + rows + P.window - 1);
  }
  const float* kt = P.kt + (b * P.K + kv_head) * H * P.Sp;
  const float* v_head = P.v + (b * P.K + kv_head) * P.S * H;
  const int64_t row_tiles = (rows + kRows - 1) / kRows;

  for (int64_t k0 = (k_lo / 16) * 16; k0 < k_hi; k0 += bk) {
    const int64_t keys = std::min(bk, k_hi - k0);
    const int64_t cols = (keys + 15) / 16 * 16;  // kt is zero-padded to Sp
    // Panel-outer loops keep one 16-key panel (and below one 16-wide slice of V) in L1
    // while every row tile passes over it.
    for (int64_t c = 0; c < cols; c += 16)
      for (int64_t rt = 0; rt < row_tiles; ++rt)
        qk_tile(w.qb.data() + rt * kRows * H, H, kt + (k0 + c) * H, w.s.data() + rt * kRows * bk + c, bk);
    // Masks apply only to tiles that cross the causal diagonal or the window edge.
    const int64_t q_last = q0 + rows - 1;
    const bool needs_mask = cols != keys || (P.causal && k0 + keys - 1 > q0) ||
                            (P.window > 0 && q_last - k0 >= P.window) ||
                            (P.window > 0 && !P.causal && k0 + keys - 1 - q0 >= P.window);
    for (int64_t r = 0; r < rows; ++r) {
      float* s = w.s.data() + r * bk;
      if (needs_mask) {
        const int64_t i = q0 + r;
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t j = k0 + c;
          const bool ok = c < keys && (!P.causal || j <= i) &&
                          (P.window == 0 || (i - j < P.window && j - i < P.window));
          if (!ok) s[c] = -INFINITY;
        }
      }
      vf vmax = splat(-INFINITY);
      for (int64_t c = 0; c < cols; c += kLanes) {
        const vf x = load(s + c);
        vmax = x > vmax ? x : vmax;
      }
      const float m_old = w.m[r];
      const float m_new = std::max(m_old, hmax(vmax));
      if (m_new == -INFINITY) {  // nothing allowed yet: p = 0, state unchanged
        std::fill(s, s + cols, 0.0f);
        continue;
      }
      vf vsum = splat(0.0f);
      for (int64_t c = 0; c < cols; c += kLanes) {
        const vf p = exp_nonpositive(load(s + c) - splat(m_new));
        store(s + c, p);
        vsum += p;
      }
      const float alpha = m_old == -INFINITY ? 0.0f : std::exp(m_old - m_new);
      w.l[r] = w.l[r] * alpha + hsum(vsum);
      w.m[r] = m_new;
      if (alpha != 1.0f)
        for (int64_t h = 0; h < H; ++h) w.o[r * H + h] *= alpha;
    }
    for (int64_t r = rows; r < row_tiles * kRows; ++r)
      std::fill(w.s.data() + r * bk, w.s.data() + r * bk + cols, 0.0f);
    for (int64_t c = 0; c < H; c += 16)
      for (int64_t rt = 0; rt < row_tiles; ++rt)
        pv_tile(w.s.data() + rt * kRows * bk, bk, keys, v_head + (c * P.S + k0 * 16), 16,
                w.o.data() + rt * kRows * H + c, H);
  }

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = q0 + r;
    float* dst = P.out + ((b * P.T + t) * P.N + n) * H;
    const float l = w.l[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t h = 0; h < H; ++h) dst[h] = w.o[r * H + h] * inv;
    P.lse[(b * P.T + t) * P.N + n] = l > 0.0f ? w.m[r] + std::log(l) : 0.0f;
  }
}


ffi::Error FlashAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                              ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                              ffi::ResultBuffer<ffi::F32> lse, bool causal, int64_t window,
                              float scale, int64_t block_q, int64_t block_k) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("q, k, v must be rank 4 [B, T|S, heads, head_dim]");
  Problem P{};
  P.B = qd[0], P.T = qd[1], P.N = qd[2], P.H = qd[3];
  P.S = kd[1], P.K = kd[2];
  if (kd[0] != P.B || kd[3] != P.H || vd[0] != P.B || vd[1] != P.S || vd[2] != P.K || vd[3] != P.H)
    return ffi::Error::InvalidArgument("k and v must both be [B, S, K, H] matching q");
  // Blocks of 0 take the build's defaults (sized from this machine's caches).
  if (block_q == 0) block_q = kBlockQ;
  if (block_k == 0) block_k = kBlockK;
  if (P.K == 0 || P.N % P.K != 0 || P.H % 16 != 0 || block_k % 16 != 0 || block_q <= 0 ||
      block_k <= 0 || window < 0)
    return ffi::Error::InvalidArgument(
        "need N % K == 0, head_dim % 16 == 0, block_q >= 0, block_k % 16 == 0, window >= 0");
  P.Sp = (P.S + 15) / 16 * 16;
  P.causal = causal, P.window = window, P.scale = scale;
  P.block_q = block_q, P.block_k = block_k;
  P.q = q.typed_data();
  P.out = out->typed_data(), P.lse = lse->typed_data();

  const int64_t workers = longctx::pool_workers(pool);
  std::vector<float> kt(P.B * P.K * P.H * P.Sp, 0.0f), vp(P.B * P.K * P.S * P.H);
  const float* kp = k.typed_data();
  const float* vsrc = v.typed_data();
  for (int64_t b = 0; b < P.B; ++b)
    for (int64_t s = 0; s < P.S; ++s)
      for (int64_t kh = 0; kh < P.K; ++kh) {
        const int64_t src = ((b * P.S + s) * P.K + kh) * P.H;
        float* panel = kt.data() + ((b * P.K + kh) * P.Sp + s / 16 * 16) * P.H + s % 16;
        for (int64_t h = 0; h < P.H; ++h) panel[h * 16] = kp[src + h];
        float* v_slices = vp.data() + (b * P.K + kh) * P.S * P.H + s * 16;
        for (int64_t c = 0; c < P.H; c += 16)
          std::memcpy(v_slices + c * P.S, vsrc + src + c, 16 * sizeof(float));
      }
  P.kt = kt.data(), P.v = vp.data();

  const int64_t items = P.B * P.N * ((P.T + block_q - 1) / block_q);
  std::atomic<int64_t> next_item{0};
  parallel_run(pool, workers, [&P, &next_item, items]() {
    Scratch scratch(P.block_q, P.block_k, P.H);
    for (int64_t item = next_item.fetch_add(1); item < items; item = next_item.fetch_add(1))
      run_item(P, item, scratch);
  });
  return ffi::Error::Success();
}

// ---- Decode: few query rows at explicit positions over an in-place KV cache. ----

constexpr int64_t kDecodeChunk = 256;  // keys per work item: its K and V rows (393 KB for SmolLM2) fit L2

struct DecodeProblem {
  const float *q, *k, *v;
  const int32_t *q_pos, *k_pos;  // [B, T], [B, S]
  int64_t B, T, S, N, K, H, G, R, chunks;
  bool causal;
  int64_t window, sinks;
  float scale;
  float *m_part, *l_part, *o_part;  // [B, chunks, R], same, [B, chunks, R, H]; R = T * N
};

inline bool decode_allowed(const DecodeProblem& P, int32_t qp, int32_t kp) {
  if (P.causal && kp > qp) return false;
  if (P.window > 0) {
    const int64_t d = static_cast<int64_t>(qp) - static_cast<int64_t>(kp);
    if ((d < 0 ? -d : d) >= P.window && !(P.sinks > 0 && kp < P.sinks)) return false;
  }
  return true;
}

// Scratch that outlives the call: one growing buffer per thread and use, so a decode step
// (called once per token and layer) allocates nothing once the first step has run.
enum ScratchSlot { kMPart, kLPart, kOPart, kLogits, kScaledQ, kProducts, kScratchSlots };
float* thread_scratch(ScratchSlot slot, int64_t n) {
  thread_local std::vector<float> buffers[kScratchSlots];
  std::vector<float>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Sums of kLanes vectors, one vector out: lane j holds the sum of x[j]'s lanes. Each level
// adds the even and odd lanes of a pair of vectors (x[2i] and x[2i+1] concatenated), halving
// the count: kLanes - 1 pair steps in all instead of kLanes horizontal sums.
#if defined(__clang__) || __GNUC__ >= 12
template <std::size_t... I>
inline vf even_lanes(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}
template <std::size_t... I>
inline vf odd_lanes(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I + 1)...);
}
#else  // GCC before 12: no __builtin_shufflevector; __builtin_shuffle takes an index vector (vi)
template <std::size_t... I>
inline vf even_lanes(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shuffle(a, b, vi{static_cast<int32_t>(2 * I)...});
}
template <std::size_t... I>
inline vf odd_lanes(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shuffle(a, b, vi{static_cast<int32_t>(2 * I + 1)...});
}
#endif
inline vf transpose_sum(vf* x) {
  constexpr auto lanes = std::make_index_sequence<kLanes>{};
  for (int count = kLanes; count > 1; count /= 2)
    LONGCTX_UNROLL for (int i = 0; i < count / 2; ++i)
      x[i] = even_lanes(x[2 * i], x[2 * i + 1], lanes) + odd_lanes(x[2 * i], x[2 * i + 1], lanes);
  return x[0];
}

// Keeps x in a vector register: the compiler would otherwise fold the load into each FMA that
// uses it (a memory operand), loading one K or V vector once per query row instead of once.
#if defined(__x86_64__) || defined(__i386__)
#define LONGCTX_PIN(x) __asm__("" : "+v"(x))
#elif defined(__aarch64__)
#define LONGCTX_PIN(x) __asm__("" : "+w"(x))
#else
#define LONGCTX_PIN(x) (void)0
#endif
// Keeps a value computed (and the loads behind it) that nothing else reads.
#if defined(__x86_64__) || defined(__i386__)
#define LONGCTX_KEEP(x) __asm__ volatile("" : : "v"(x))
#elif defined(__aarch64__)
#define LONGCTX_KEEP(x) __asm__ volatile("" : : "w"(x))
#else
#define LONGCTX_KEEP(x) do { volatile float sink = (x)[0]; (void)sink; } while (0)
#endif

// Vector registers a decode tile may give to query rows (logits) or output rows (p v):
// half the register file (32 on AVX-512, 16 on AVX2 and SSE2; the portable build assumes 16).
constexpr int kTileRegs = kLanes == 16 ? 16 : 8;
constexpr int kMaxTileRows = 4;

// One pair step of transpose_sum: the low half of the lanes holds the sums of a's adjacent lane
// pairs, the high half those of b.
inline vf pair_sum(vf a, vf b) {
  constexpr auto lanes = std::make_index_sequence<kLanes>{};
  return even_lanes(a, b, lanes) + odd_lanes(a, b, lanes);
}
constexpr int kLaneLevels = kLanes == 16 ? 4 : kLanes == 8 ? 3 : 2;  // log2(kLanes)

// logits[row, j : j + kLanes] for NR query rows of one KV head (q held in NR x HV registers)
// against kLanes keys: each key's K vectors are loaded once for the NR rows, and its product
// vectors enter a binary counter of pair sums held in registers (transpose_sum's pairing, as
// the keys arrive), so kLanes keys give one vector of logits per row with no stores between.
template <int NR, int HV>
inline void logits_tile(const float* qs, const int64_t* rows, int64_t H, const float* kg, int64_t KH,
                        int64_t j, float* logits) {
  vf qr[NR][HV];
  LONGCTX_UNROLL for (int r = 0; r < NR; ++r)
    LONGCTX_UNROLL for (int h = 0; h < HV; ++h) qr[r][h] = load(qs + rows[r] * H + h * kLanes);
  vf level[NR][kLaneLevels + 1];
  LONGCTX_UNROLL for (int u = 0; u < kLanes; ++u) {
    const float* kr = kg + (j + u) * KH;
    vf even[NR], odd[NR];  // two chains per row: half the FMA latency per key
    LONGCTX_UNROLL for (int r = 0; r < NR; ++r) even[r] = odd[r] = splat(0.0f);
    LONGCTX_UNROLL for (int h = 0; h < HV; ++h) {
      vf kv = load(kr + h * kLanes);
      LONGCTX_PIN(kv);
      LONGCTX_UNROLL for (int r = 0; r < NR; ++r) {
        if (h % 2 == 0) even[r] += qr[r][h] * kv;
        else odd[r] += qr[r][h] * kv;
      }
    }
    LONGCTX_UNROLL for (int r = 0; r < NR; ++r) {
      vf x = even[r] + odd[r];
      int l = 0;  // bit b of u set: level b holds a pending sum to pair with (u is a constant here)
      LONGCTX_UNROLL for (int b = 0; b < kLaneLevels; ++b) {
        if (!((u >> b) & 1)) break;
        x = pair_sum(level[r][b], x);
        l = b + 1;
      }
      level[r][l] = x;
    }
  }
  LONGCTX_UNROLL for (int r = 0; r < NR; ++r) store(logits + rows[r] * kDecodeChunk + j, level[r][kLaneLevels]);
}

// o[row] += sum_{j in [j0, j1)} p[row, j] v[j] for NR query rows of one KV head, o in NR x HV
// registers: each V vector is loaded once for the NR rows.
template <int NR, int HV>
inline void pv_tile(const float* p, const int64_t* rows, const float* vg, int64_t KH, int64_t j0, int64_t j1,
                    float* o, int64_t H) {
  vf acc[NR][HV];
  LONGCTX_UNROLL for (int r = 0; r < NR; ++r)
    LONGCTX_UNROLL for (int h = 0; h < HV; ++h) acc[r][h] = load(o + rows[r] * H + h * kLanes);
  for (int64_t j = j0; j < j1; ++j) {
    vf pj[NR];
    LONGCTX_UNROLL for (int r = 0; r < NR; ++r) pj[r] = splat(p[rows[r] * kDecodeChunk + j]);
    LONGCTX_UNROLL for (int h = 0; h < HV; ++h) {
      vf vv = load(vg + j * KH + h * kLanes);
      LONGCTX_PIN(vv);
      LONGCTX_UNROLL for (int r = 0; r < NR; ++r) acc[r][h] += pj[r] * vv;
    }
  }
  LONGCTX_UNROLL for (int r = 0; r < NR; ++r)
    LONGCTX_UNROLL for (int h = 0; h < HV; ++h) store(o + rows[r] * H + h * kLanes, acc[r][h]);
}

// Calls MACRO(NR, HV) for the runtime (nr, hv); false where no tile is compiled for them
// (hv = H / kLanes above 16, or nr * hv above kTileRegs: the caller's general loops).
#define LONGCTX_TILE_CASE(NR, HV) \
  case NR * 100 + HV:             \
    if constexpr (NR * HV <= kTileRegs) { MACRO(NR, HV); return true; } else { return false; }
#define LONGCTX_TILE_SWITCH(nr, hv)                                                                    \
  switch ((nr) * 100 + (hv)) {                                                                        \
    LONGCTX_TILE_CASE(1, 1) LONGCTX_TILE_CASE(2, 1) LONGCTX_TILE_CASE(3, 1) LONGCTX_TILE_CASE(4, 1)    \
    LONGCTX_TILE_CASE(1, 2) LONGCTX_TILE_CASE(2, 2) LONGCTX_TILE_CASE(3, 2) LONGCTX_TILE_CASE(4, 2)    \
    LONGCTX_TILE_CASE(1, 4) LONGCTX_TILE_CASE(2, 4) LONGCTX_TILE_CASE(3, 4) LONGCTX_TILE_CASE(4, 4)    \
    LONGCTX_TILE_CASE(1, 8) LONGCTX_TILE_CASE(2, 8) LONGCTX_TILE_CASE(1, 16)                          \
    default: return false;                                                                             \
  }

inline bool logits_tiles(int64_t nr, int64_t hv, const float* qs, const int64_t* rows, int64_t H,
                         const float* kg, int64_t KH, int64_t j, float* logits) {
#define MACRO(NR, HV) logits_tile<NR, HV>(qs, rows, H, kg, KH, j, logits)
  LONGCTX_TILE_SWITCH(nr, hv)
#undef MACRO
}
inline bool pv_tiles(int64_t nr, int64_t hv, const float* p, const int64_t* rows, const float* vg, int64_t KH,
                     int64_t j0, int64_t j1, float* o, int64_t H) {
#define MACRO(NR, HV) pv_tile<NR, HV>(p, rows, vg, KH, j0, j1, o, H)
  LONGCTX_TILE_SWITCH(nr, hv)
#undef MACRO
}

// Keys per tile of the general p v loop (head dims without a register tile): the tile's value
// rows stay in L1 while each query row passes over them, keeping kPvVecs vectors of its output
// in registers across the tile.
constexpr int64_t kDecodeTile = 32;
constexpr int64_t kPvVecs = 4;
static_assert(kDecodeChunk % kDecodeTile == 0 && kDecodeChunk % 16 == 0, "bad decode chunk");

// o[0 : V * kLanes] += sum_{j in [j0, j1)} p[j] v[j * stride : ...], o held in V registers.
template <int V>
inline void pv_rows(const float* p, int64_t j0, int64_t j1, const float* v, int64_t stride, float* o) {
  vf acc[V];
  LONGCTX_UNROLL for (int u = 0; u < V; ++u) acc[u] = load(o + u * kLanes);
  for (int64_t j = j0; j < j1; ++j) {
    const vf a = splat(p[j]);
    LONGCTX_UNROLL for (int u = 0; u < V; ++u) acc[u] += a * load(v + j * stride + u * kLanes);
  }
  LONGCTX_UNROLL for (int u = 0; u < V; ++u) store(o + u * kLanes, acc[u]);
}

// The query rows r = t * N + n that share KV head g, in order.
inline int64_t group_rows(const DecodeProblem& P, int64_t g, int64_t* rows) {
  int64_t count = 0;
  for (int64_t t = 0; t < P.T; ++t)
    for (int64_t n = g * P.G; n < (g + 1) * P.G; ++n) rows[count++] = t * P.N + n;
  return count;
}

// Every query row against the keys of one chunk that some row may attend to: [lo, hi) of the
// chunk, from its first to its last allowed key (keys outside are not read: a cache's empty
// slots, keys outside every window). Writes the chunk's partial m, l and o.
//  1. One sequential pass of loads brings the span's K and V rows into L2 (a streaming read,
//     which the hardware prefetchers follow at the memory's rate); the work below reads them
//     from there.
//  2. Logits, kLanes keys at a time, per KV head: its query rows in registers (`logits_tile`).
//  3. Masked keys -inf, softmax numerators, row max and sum.
//  4. o += p v per KV head, its rows' outputs in registers (`pv_tile`).
// Head dims with no register tile (H / kLanes above 16, or too wide for the registers) take
// general loops: per key and row dot products summed by `transpose_sum`, and `pv_rows`.
void decode_item(const DecodeProblem& P, int64_t item, float* logits, float* qs, vf* prods) {
  const int64_t chunk = item % P.chunks, b = item / P.chunks;
  const int64_t c0 = chunk * kDecodeChunk, c1 = std::min(P.S, c0 + kDecodeChunk);
  const int64_t R = P.R, H = P.H, N = P.N, KH = P.K * P.H, HV = H / kLanes;
  const int64_t base = (b * P.chunks + chunk) * R;
  float* o = P.o_part + base * H;
  std::fill(o, o + R * H, 0.0f);
  int64_t lo = c1, hi = c0;  // the span of keys some query row may attend to
  for (int64_t s = c0; s < c1; ++s) {
    for (int64_t t = 0; t < P.T; ++t) {
      if (decode_allowed(P, P.q_pos[b * P.T + t], P.k_pos[b * P.S + s])) {
        lo = std::min(lo, s), hi = s + 1;
        break;
      }
    }
  }
  if (lo >= hi) {  // nothing to attend to in this chunk
    for (int64_t r = 0; r < R; ++r) P.m_part[base + r] = -INFINITY, P.l_part[base + r] = 0.0f;
    return;
  }
  const int64_t s0 = lo, L = hi - lo;  // keys [s0, s0 + L): logits column j is key s0 + j
  for (int64_t r = 0; r < R; ++r) {  // scaled query rows
    const float* src = P.q + (b * P.T * N + r) * H;
    for (int64_t h = 0; h < H; ++h) qs[r * H + h] = src[h] * P.scale;
  }
  const float* k0 = P.k + (b * P.S + s0) * KH;
  const float* v0 = P.v + (b * P.S + s0) * KH;
  {  // 1. stream the span's K and V rows in (their sum only keeps the loads)
    vf sum0 = splat(0.0f), sum1 = splat(0.0f);
    for (const float* x : {k0, v0}) {  // one load per 64-byte line
      const float* end = x + L * KH;
      for (; x + 16 + kLanes <= end; x += 32) sum0 += load(x), sum1 += load(x + 16);
      if (x + kLanes <= end) sum0 += load(x);
    }
    const vf sum = sum0 + sum1;
    LONGCTX_KEEP(sum);
  }
  const int64_t full = L / kLanes * kLanes;
  int64_t rows[256];  // one KV head's query rows, for the register tiles
  const int64_t tile_rows = std::max<int64_t>(1, std::min<int64_t>(kMaxTileRows, kTileRegs / std::max<int64_t>(1, HV)));
  // Whether register tiles serve this head dim (then every call below finds its tile).
  const bool tiled = (HV == 1 || HV == 2 || HV == 4 || HV == 8 || HV == 16) && tile_rows * HV <= kTileRegs &&
                     P.T * P.G <= 256;
  for (int64_t j = 0; j < full; j += kLanes) {  // 2. logits
    bool done = tiled;
    for (int64_t g = 0; g < P.K && done; ++g) {
      const int64_t count = group_rows(P, g, rows);
      for (int64_t i = 0; i < count && done; i += tile_rows)
        done = logits_tiles(std::min(tile_rows, count - i), HV, qs, rows + i, H, k0 + g * H, KH, j, logits);
    }
    if (done) continue;
    for (int u = 0; u < kLanes; ++u) {  // general head dims
      const float* krow = k0 + (j + u) * KH;
      for (int64_t r = 0; r < R; ++r) {
        const float* qr = qs + r * H;
        const float* kv = krow + ((r % N) / P.G) * H;
        vf acc = splat(0.0f);
        for (int64_t h = 0; h < H; h += kLanes) acc += load(qr + h) * load(kv + h);
        prods[r * kLanes + u] = acc;
      }
    }
    for (int64_t r = 0; r < R; ++r) store(logits + r * kDecodeChunk + j, transpose_sum(prods + r * kLanes));
  }
  for (int64_t r = 0; r < R; ++r) {  // the last L % kLanes keys
    const float* kr = k0 + ((r % N) / P.G) * H;
    for (int64_t j = full; j < L; ++j) {
      vf acc = splat(0.0f);
      for (int64_t h = 0; h < H; h += kLanes) acc += load(qs + r * H + h) * load(kr + j * KH + h);
      logits[r * kDecodeChunk + j] = hsum(acc);
    }
  }
  for (int64_t t = 0; t < P.T; ++t) {  // 3. masked keys: -inf (none in a plain causal decode step)
    const int32_t qp = P.q_pos[b * P.T + t];
    for (int64_t j = 0; j < L; ++j)
      if (!decode_allowed(P, qp, P.k_pos[b * P.S + s0 + j]))
        for (int64_t n = 0; n < N; ++n) logits[(t * N + n) * kDecodeChunk + j] = -INFINITY;
  }
  for (int64_t r = 0; r < R; ++r) {  // softmax numerators, row max and sum
    float* row = logits + r * kDecodeChunk;
    int64_t j = 0;
    vf vmax = splat(-INFINITY);
    for (; j + kLanes <= L; j += kLanes) {
      const vf x = load(row + j);
      vmax = x > vmax ? x : vmax;
    }
    float m = hmax(vmax);
    for (; j < L; ++j) m = std::max(m, row[j]);
    float l = 0.0f;
    if (m == -INFINITY) {
      std::fill(row, row + L, 0.0f);  // a row with no key here: p = 0
    } else {
      vf vsum = splat(0.0f);
      for (j = 0; j + kLanes <= L; j += kLanes) {  // exp(-inf - m) is 0: masked keys drop out
        const vf p = exp_nonpositive(load(row + j) - splat(m));
        store(row + j, p);
        vsum += p;
      }
      l = hsum(vsum);
      for (; j < L; ++j) {
        row[j] = row[j] == -INFINITY ? 0.0f : std::exp(row[j] - m);
        l += row[j];
      }
    }
    P.m_part[base + r] = m;
    P.l_part[base + r] = l;
  }
  for (int64_t g = 0; g < P.K; ++g) {  // 4. o += p v, head by head
    const float* vg = v0 + g * H;
    bool done = tiled;
    if (tiled) {
      const int64_t count = group_rows(P, g, rows);
      for (int64_t i = 0; i < count && done; i += tile_rows)
        done = pv_tiles(std::min(tile_rows, count - i), HV, logits, rows + i, vg, KH, 0, L, o, H);
    }
    if (done) continue;
    for (int64_t j0 = 0; j0 < L; j0 += kDecodeTile) {  // general head dims: a tile of keys at a time
      const int64_t j1 = std::min(L, j0 + kDecodeTile);
      for (int64_t r = 0; r < R; ++r) {
        if ((r % N) / P.G != g) continue;  // rows of other KV heads
        const float* p = logits + r * kDecodeChunk;
        for (int64_t c = 0; c < H; c += kPvVecs * kLanes) {  // kPvVecs vectors of o at a time
          const float* vc = vg + c;
          float* oc = o + r * H + c;
          switch (std::min<int64_t>(kPvVecs, (H - c) / kLanes)) {
            case 4: pv_rows<4>(p, j0, j1, vc, KH, oc); break;
            case 3: pv_rows<3>(p, j0, j1, vc, KH, oc); break;
            case 2: pv_rows<2>(p, j0, j1, vc, KH, oc); break;
            default: pv_rows<1>(p, j0, j1, vc, KH, oc); break;
          }
        }
      }
    }
  }
}

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_pos,
                               ffi::Buffer<ffi::S32> k_pos, ffi::ResultBuffer<ffi::F32> out,
                               ffi::ResultBuffer<ffi::F32> lse, bool causal, int64_t window,
                               int64_t sinks, float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("q, k, v must be rank 4 [B, T|S, heads, head_dim]");
  DecodeProblem P{};
  P.B = qd[0], P.T = qd[1], P.N = qd[2], P.H = qd[3];
  P.S = kd[1], P.K = kd[2];
  if (kd[0] != P.B || kd[3] != P.H || vd[0] != P.B || vd[1] != P.S || vd[2] != P.K || vd[3] != P.H)
    return ffi::Error::InvalidArgument("k and v must both be [B, S, K, H] matching q");
  const auto qpd = q_pos.dimensions(), kpd = k_pos.dimensions();
  if (qpd.size() != 2 || qpd[0] != P.B || qpd[1] != P.T || kpd.size() != 2 || kpd[0] != P.B ||
      kpd[1] != P.S)
    return ffi::Error::InvalidArgument("positions must be q [B, T] and k [B, S] int32");
  if (P.K == 0 || P.N % P.K != 0 || P.H % kPanel != 0 || window < 0 || sinks < 0)
    return ffi::Error::InvalidArgument("need N % K == 0, head_dim % 16 == 0, window >= 0, sinks >= 0");
  P.G = P.N / P.K, P.R = P.T * P.N;
  P.chunks = std::max<int64_t>(1, (P.S + kDecodeChunk - 1) / kDecodeChunk);
  P.causal = causal, P.window = window, P.sinks = sinks, P.scale = scale;
  P.q = q.typed_data(), P.k = k.typed_data(), P.v = v.typed_data();
  P.q_pos = q_pos.typed_data(), P.k_pos = k_pos.typed_data();
  const int64_t parts = P.B * P.chunks * P.R;
  float* m_part = thread_scratch(kMPart, parts);
  float* l_part = thread_scratch(kLPart, parts);
  float* o_part = thread_scratch(kOPart, parts * P.H);
  P.m_part = m_part, P.l_part = l_part, P.o_part = o_part;

  const int64_t items = P.S == 0 ? 0 : P.B * P.chunks;
  std::atomic<int64_t> next_item{0};
  parallel_run(pool, longctx::pool_workers(pool), [&P, &next_item, items]() {
    float* logits = thread_scratch(kLogits, P.R * kDecodeChunk);
    float* qs = thread_scratch(kScaledQ, P.R * P.H);
    // R x kLanes product vectors, vector-aligned within the float buffer.
    float* raw = thread_scratch(kProducts, (P.R + 1) * kLanes * kLanes);
    vf* prods = reinterpret_cast<vf*>((reinterpret_cast<uintptr_t>(raw) + sizeof(vf) - 1) / sizeof(vf) * sizeof(vf));
    for (int64_t item = next_item.fetch_add(1); item < items; item = next_item.fetch_add(1))
      decode_item(P, item, logits, qs, prods);
  });

  float* o_out = out->typed_data();
  float* lse_out = lse->typed_data();
  for (int64_t b = 0; b < P.B; ++b) {  // merge the chunks' partials
    for (int64_t r = 0; r < P.R; ++r) {
      float m = -INFINITY;
      for (int64_t c = 0; c < P.chunks && items; ++c) m = std::max(m, m_part[(b * P.chunks + c) * P.R + r]);
      float* dst = o_out + (b * P.R + r) * P.H;
      std::fill(dst, dst + P.H, 0.0f);
      float l = 0.0f;
      if (m != -INFINITY) {
        for (int64_t c = 0; c < P.chunks; ++c) {
          const int64_t i = (b * P.chunks + c) * P.R + r;
          if (m_part[i] == -INFINITY) continue;
          const float w = std::exp(m_part[i] - m);
          l += w * l_part[i];
          for (int64_t h = 0; h < P.H; ++h) dst[h] += w * o_part[i * P.H + h];
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int64_t h = 0; h < P.H; ++h) dst[h] *= inv;
      }
      lse_out[b * P.R + r] = l > 0.0f ? m + std::log(l) : 0.0f;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// The constants this library was built with: lanes, rows, default block_q, default block_k.
extern "C" void LongctxCpuFlashGeometry(int64_t* out) {
  out[0] = kLanes, out[1] = kRows, out[2] = kBlockQ, out[3] = kBlockK;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxCpuFlashAttention, FlashAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("window")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("block_q")
                                  .Attr<int64_t>("block_k"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxCpuDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("sinks")
                                  .Attr<float>("scale"));
