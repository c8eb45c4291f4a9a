// parallel_run: how the C++ CPU kernels share XLA's thread pool (cpu_flash_attention.cc here,
// models/cpu_blas_matmul.cc). Built through native.py, which puts this folder on the include
// path and keys every build on the headers a source includes as well as the source.
#ifndef LONGCTX_JAX_PARALLEL_RUN_H_
#define LONGCTX_JAX_PARALLEL_RUN_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace longctx {

// The workers a kernel runs on: the calling thread (XLA runs thunks on a thread outside its
// intra-op pool) and pool.num_threads() - 1 pool threads, as many threads as the pool has, which
// XLA sizes to the cores. One worker more puts three threads on two cores: with the few-row
// products run that way a SmolLM2 decode step at 8K took 41.1 ms against 35.8 (2-core Zen 4,
// interleaved diagnostic, 2026-12-06).
inline int64_t pool_workers(xla::ffi::ThreadPool& pool) {
  return std::max<int64_t>(1, static_cast<int64_t>(pool.num_threads()));
}

// Runs fn() on the calling thread and on up to `workers - 1` pool threads and returns when
// every call has finished. fn claims its work items itself, so a pool task that starts after
// the caller has finished everything runs nothing (fn may refer to the caller's stack), and
// the caller never waits on a queued task: no deadlock when the pool is busy with other
// custom calls.
template <typename Fn>
void parallel_run(xla::ffi::ThreadPool& pool, int64_t workers, Fn fn) {
  struct Shared {
    std::atomic<int64_t> active{0};
    std::atomic<bool> closed{false};
  };
  auto shared = std::make_shared<Shared>();
  for (int64_t i = 1; i < workers; ++i) {
    pool.Schedule([shared, fn]() {
      shared->active.fetch_add(1);
      if (!shared->closed.load()) fn();
      shared->active.fetch_sub(1);
    });
  }
  fn();
  shared->closed.store(true);
  while (shared->active.load() != 0) std::this_thread::yield();
}

}  // namespace longctx

#endif  // LONGCTX_JAX_PARALLEL_RUN_H_
