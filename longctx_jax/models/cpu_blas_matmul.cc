// C = op(A) @ op(B) in float32 through a CBLAS sgemm, as an XLA FFI handler (CPU).
//
// The sgemm is not linked: Python hands its address to LongctxCpuBlasSetSgemm once, after
// loading the BLAS library numpy ships (OpenBLAS, ILP64: 64-bit sizes; models/cpu_blas.py).
// op(X) is X or X^T by the `trans_a` / `trans_b` attributes; all buffers are dense row-major.
// The BLAS runs its own threads, so the handler takes no XLA thread pool.

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), ILP64.
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                       int64_t, float, float*, int64_t);
Sgemm g_sgemm = nullptr;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values

ffi::Error MatmulImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                      bool trans_a, bool trans_b) {
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
  g_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, M, N, K, 1.0f,
          a.typed_data(), da[1], b.typed_data(), db[1], 0.0f, out, N);
  return ffi::Error::Success();
}

}  // namespace

extern "C" void LongctxCpuBlasSetSgemm(void* sgemm) { g_sgemm = reinterpret_cast<Sgemm>(sgemm); }

extern "C" int LongctxCpuBlasHasSgemm() { return g_sgemm != nullptr; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxCpuBlasMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
