// C = op(A) @ op(B) in float32 through a CBLAS sgemm, as an XLA FFI handler (CPU).
//
// The sgemm is not linked: Python hands its address to LongctxCpuBlasSetSgemm once, after
// loading the BLAS library numpy ships (OpenBLAS, ILP64: 64-bit sizes; models/cpu_blas.py).
// op(X) is X or X^T by the `trans_a` / `trans_b` attributes; all buffers are dense row-major.
// The rows of C are split among XLA's own pool threads (`parallel_run`), each calling sgemm on
// its block with OpenBLAS held to one thread for the call (LongctxCpuBlasSetThreadsLocal hands
// over `openblas_set_num_threads_local`). OpenBLAS's own threads then stay asleep: left to
// them, its workers spin about 0.1 s after every call and take a core from the XLA work that
// follows (SmolLM2 prefill at 2K: 4.1-4.3 s against 3.4-3.6 s, 2026-12-06). Without that
// function the handler makes one sgemm call on OpenBLAS's threads.
//
// A second handler, LongctxCpuGemv, serves the few-row products of a decode step (y = x @ w or
// x @ w^T with M < 64 rows), which are memory-bound: every weight is read once per token. It
// streams contiguous slices of w on XLA's own thread pool (no BLAS call, no second pool to
// wake): for x @ w each worker takes a range of w's rows (the K axis) and accumulates M
// partial output rows in its scratch, summed at the end; for x @ w^T (a tied output layer)
// each worker takes a range of w's rows (the N axis), one dot product per output.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "parallel_run.h"  // attention/kernels/: the thread protocol shared with cpu_flash
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using longctx::parallel_run;

namespace {

// cblas_sgemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), ILP64.
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                       int64_t, float, float*, int64_t);
Sgemm g_sgemm = nullptr;
using SetThreadsLocal = int (*)(int);  // openblas_set_num_threads_local: returns the previous count
SetThreadsLocal g_set_threads = nullptr;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
constexpr int64_t kMinBlockRows = 32;  // rows of C per sgemm call at least

// Holds OpenBLAS to one thread while any handler call is inside sgemm (the count is the
// library's, shared by every thread: the first call in saves it, the last one out restores it).
class OneBlasThread {
 public:
  OneBlasThread() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (active_++ == 0) saved_ = g_set_threads(1);
  }
  ~OneBlasThread() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--active_ == 0) g_set_threads(saved_);
  }

 private:
  static inline std::mutex mutex_;
  static inline int active_ = 0, saved_ = 1;
};

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  if (g_sgemm == nullptr) {
    return ffi::Error::Internal("no sgemm set: call LongctxCpuBlasSetSgemm first (models/cpu_blas.py)");
  }
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2) {
    return ffi::Error::InvalidArgument("a, b and c must be rank 2");
  }
  const int64_t M = trans_a ? da[1] : da[0], K = trans_a ? da[0] : da[1];
  const int64_t Kb = trans_b ? db[1] : db[0], N = trans_b ? db[0] : db[1];
  if (K != Kb || dc[0] != M || dc[1] != N) {
    return ffi::Error::InvalidArgument("shapes do not multiply: op(a) [M, K] @ op(b) [K, N] -> c [M, N]");
  }
  if (M == 0 || N == 0) return ffi::Error::Success();
  float* out = c->typed_data();
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) out[i] = 0.0f;
    return ffi::Error::Success();
  }
  const float *ap = a.typed_data(), *bp = b.typed_data();
  auto rows = [&](int64_t m0, int64_t m1) {  // C[m0:m1] = op(A)[m0:m1] @ op(B)
    const float* a_rows = trans_a ? ap + m0 : ap + m0 * da[1];
    g_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m1 - m0, N, K, 1.0f,
            a_rows, da[1], bp, db[1], 0.0f, out + m0 * N, N);
  };
  if (g_set_threads == nullptr) {  // OpenBLAS's own threads
    rows(0, M);
    return ffi::Error::Success();
  }
  const int64_t workers = longctx::pool_workers(pool);
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(workers, M / kMinBlockRows));
  OneBlasThread one_thread;
  std::atomic<int64_t> next{0};
  parallel_run(pool, blocks, [&]() {
    for (int64_t i = next.fetch_add(1); i < blocks; i = next.fetch_add(1))
      rows(M * i / blocks, M * (i + 1) / blocks);
  });
  return ffi::Error::Success();
}

// ---- Few-row products on XLA's thread pool (decode). ----

constexpr int kGemvLanes = 8;  // 8 floats: one AVX2 register, two SSE / NEON ones, half an AVX-512 one
typedef float vf8 __attribute__((vector_size(4 * kGemvLanes)));
typedef float vf8_unaligned __attribute__((vector_size(4 * kGemvLanes), aligned(4)));
inline vf8 load8(const float* p) { return *reinterpret_cast<const vf8_unaligned*>(p); }
inline void store8(float* p, vf8 x) { *reinterpret_cast<vf8_unaligned*>(p) = x; }
constexpr int64_t kMinSlice = 16384;  // floats of w per worker at least: smaller products use fewer workers


// y[m, n0:n1] += sum_{k in [k0, k1)} x[m, k] w[k, n0:n1]  (w row-major [K, N]); y holds M rows of N.
// Four rows of w per pass over y: y is loaded and stored once per four rows read.
void axpy_rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t k0,
               int64_t k1) {
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const float *w0 = w + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K + k;
      const vf8 a0 = vf8{} + xm[0], a1 = vf8{} + xm[1], a2 = vf8{} + xm[2], a3 = vf8{} + xm[3];
      float* ym = y + m * N;
      int64_t n = 0;
      for (; n + kGemvLanes <= N; n += kGemvLanes) {
        store8(ym + n, load8(ym + n) + (a0 * load8(w0 + n) + a1 * load8(w1 + n)) +
                           (a2 * load8(w2 + n) + a3 * load8(w3 + n)));
      }
      for (; n < N; ++n) ym[n] += (xm[0] * w0[n] + xm[1] * w1[n]) + (xm[2] * w2[n] + xm[3] * w3[n]);
    }
  }
  for (; k < k1; ++k) {
    const float* wk = w + k * N;
    for (int64_t m = 0; m < M; ++m) {
      const float a = x[m * K + k];
      const vf8 av = vf8{} + a;
      float* ym = y + m * N;
      int64_t n = 0;
      for (; n + kGemvLanes <= N; n += kGemvLanes) store8(ym + n, load8(ym + n) + av * load8(wk + n));
      for (; n < N; ++n) ym[n] += a * wk[n];
    }
  }
}

// y[m, n] = x[m, :] . w[n, :] for n in [n0, n1)  (w row-major [N, K]); four accumulators per dot.
void dot_rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0,
              int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      vf8 acc0{}, acc1{}, acc2{}, acc3{};
      int64_t k = 0;
      for (; k + 4 * kGemvLanes <= K; k += 4 * kGemvLanes) {
        acc0 += load8(xm + k) * load8(wn + k);
        acc1 += load8(xm + k + kGemvLanes) * load8(wn + k + kGemvLanes);
        acc2 += load8(xm + k + 2 * kGemvLanes) * load8(wn + k + 2 * kGemvLanes);
        acc3 += load8(xm + k + 3 * kGemvLanes) * load8(wn + k + 3 * kGemvLanes);
      }
      for (; k + kGemvLanes <= K; k += kGemvLanes) acc0 += load8(xm + k) * load8(wn + k);
      acc0 += acc1 + (acc2 + acc3);
      float sum = 0.0f;
      for (int i = 0; i < kGemvLanes; ++i) sum += acc0[i];
      for (; k < K; ++k) sum += xm[k] * wn[k];
      y[m * N + n] = sum;
    }
  }
}

float* gemv_scratch(int64_t n) {  // per thread, grows once: a decode step allocates nothing
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

ffi::Error GemvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                    ffi::ResultBuffer<ffi::F32> y, bool trans_w) {
  auto dx = x.dimensions(), dw = w.dimensions(), dy = y->dimensions();
  if (dx.size() != 2 || dw.size() != 2 || dy.size() != 2) {
    return ffi::Error::InvalidArgument("x, w and y must be rank 2");
  }
  const int64_t M = dx[0], K = dx[1];
  const int64_t Kw = trans_w ? dw[1] : dw[0], N = trans_w ? dw[0] : dw[1];
  if (K != Kw || dy[0] != M || dy[1] != N) {
    return ffi::Error::InvalidArgument("shapes do not multiply: x [M, K] @ op(w) [K, N] -> y [M, N]");
  }
  float* out = y->typed_data();
  std::fill(out, out + M * N, 0.0f);
  if (M == 0 || N == 0 || K == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  // w's rows, divided into slices claimed one at a time: several per thread, so a thread that
  // starts late or shares its core still finishes with the others.
  const int64_t split = trans_w ? N : K;
  const int64_t workers = longctx::pool_workers(pool);
  const int64_t items = std::max<int64_t>(1, std::min<int64_t>({4 * workers, split, (K * N) / kMinSlice}));
  auto range = [split, items](int64_t i) {
    return std::pair<int64_t, int64_t>{split * i / items, split * (i + 1) / items};
  };
  std::atomic<int64_t> next{0};
  if (trans_w) {  // disjoint output columns: each item writes its own
    parallel_run(pool, std::min(items, workers), [&]() {
      for (int64_t i = next.fetch_add(1); i < items; i = next.fetch_add(1)) {
        auto [n0, n1] = range(i);
        dot_rows(xp, wp, out, M, K, N, n0, n1);
      }
    });
    return ffi::Error::Success();
  }
  // x @ w: item i sums its rows of w into partial i (item 0 directly into y), added up at the end
  float* partials = items > 1 ? gemv_scratch((items - 1) * M * N) : nullptr;
  parallel_run(pool, std::min(items, workers), [&]() {
    for (int64_t i = next.fetch_add(1); i < items; i = next.fetch_add(1)) {
      auto [k0, k1] = range(i);
      float* acc = i == 0 ? out : partials + (i - 1) * M * N;
      if (i != 0) std::fill(acc, acc + M * N, 0.0f);
      axpy_rows(xp, wp, acc, M, K, N, k0, k1);
    }
  });
  for (int64_t i = 0; i + 1 < items; ++i) {
    const float* p = partials + i * M * N;
    for (int64_t j = 0; j < M * N; ++j) out[j] += p[j];
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void LongctxCpuBlasSetSgemm(void* sgemm) { g_sgemm = reinterpret_cast<Sgemm>(sgemm); }

extern "C" int LongctxCpuBlasHasSgemm() { return g_sgemm != nullptr; }

extern "C" void LongctxCpuBlasSetThreadsLocal(void* set_threads) {
  g_set_threads = reinterpret_cast<SetThreadsLocal>(set_threads);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxCpuBlasMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxCpuGemv, GemvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_w"));
