// Shared helpers of jaxseg's XLA FFI CPU kernels: threading and vmap batch dimensions.
//
// Every handler receives buffers in row-major order. Under `jax.vmap` the Python wrappers use
// `vmap_method="expand_dims"`: each operand gets the same number of leading batch dimensions,
// of the full size where that operand is batched and of size 1 where it is not, and the results
// get the full sizes. `BatchMap` turns that into "operand batch element of output batch element b".
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jaxseg {

namespace ffi = xla::ffi;

// Worker threads per kernel call: $JAXSEG_FFI_THREADS if set to a positive number, otherwise
// std::thread::hardware_concurrency().
inline int MaxThreads() {
  static const int threads = [] {
    const char* env = std::getenv("JAXSEG_FFI_THREADS");
    int n = env ? std::atoi(env) : 0;
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    return std::max(n, 1);
  }();
  return threads;
}

// Calls fn(thread_id) for thread ids 0..n-1 on up to `n` threads (the calling thread runs id 0, and
// any id whose thread could not be started) and waits for all of them. An exception thrown by any
// call is rethrown here, after every thread has finished.
template <typename F>
void RunThreads(int n, const F& fn) {
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](int t) {
    try {
      fn(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  std::vector<int> inline_ids;
  for (int t = 1; t < n; ++t) {
    try {
      workers.emplace_back(guarded, t);
    } catch (...) {  // e.g. a thread limit: do that share here
      inline_ids.push_back(t);
    }
  }
  guarded(0);
  for (int t : inline_ids) guarded(t);
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

// Runs `body` (returning ffi::Error), turning a C++ exception (e.g. std::bad_alloc) into an error.
template <typename F>
ffi::Error Guarded(const char* op, const F& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(op) + ": " + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string(op) + ": unknown C++ exception");
  }
}

// Calls fn(begin, end) over [0, n) in chunks of `grain` items, handed out dynamically to up to
// MaxThreads() threads (so that uneven items, e.g. RoIs of very different sizes, balance out).
template <typename F>
void ParallelFor(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(MaxThreads(), chunks));
  std::atomic<int64_t> next{0};
  RunThreads(threads, [&](int) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      fn(c * grain, std::min(n, (c + 1) * grain));
    }
  });
}

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time (GCC/Clang
// function multiversioning); elsewhere they are plain functions. Without -ffp-contract there is no
// fused multiply-add, so every version rounds exactly alike.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define JAXSEG_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXSEG_MULTIVERSION
#endif

// 16 floats as one value (GCC/Clang vector extension): one AVX-512 register, two AVX2 or four SSE
// ones, whichever the clone targets. VecU is the same with no alignment requirement.
constexpr int64_t kVecWidth = 16;
typedef float Vec __attribute__((vector_size(64)));
typedef float VecU __attribute__((vector_size(64), aligned(4), may_alias));

// acc[k] += w * src[k] for k < n.
JAXSEG_MULTIVERSION inline void Axpy(float* acc, const float* src, float w, int64_t n) {
  int64_t k = 0;
  for (; k + kVecWidth <= n; k += kVecWidth) {
    *reinterpret_cast<VecU*>(acc + k) += w * *reinterpret_cast<const VecU*>(src + k);
  }
  for (; k < n; ++k) acc[k] += w * src[k];
}

// Product of dims[0:count].
inline int64_t Prod(ffi::Span<const int64_t> dims, size_t count) {
  int64_t p = 1;
  for (size_t i = 0; i < count; ++i) p *= dims[i];
  return p;
}

// Maps each batch element of the result (its leading dims `out_lead`) to the batch element of an
// operand whose leading dims are `op` dims[0:op_lead_rank] (broadcasting size-1 dims, numpy-style
// right-aligned). Returns false with `error` set when the shapes do not broadcast.
inline bool BatchMap(const std::vector<int64_t>& out_lead, ffi::Span<const int64_t> op, size_t op_lead_rank,
                     std::vector<int64_t>& map, std::string& error) {
  const size_t rank = out_lead.size();
  if (op_lead_rank > rank) {
    error = "operand has more batch dimensions than the result";
    return false;
  }
  int64_t total = 1;
  for (int64_t d : out_lead) total *= d;
  map.assign(static_cast<size_t>(total), 0);
  // Strides of the operand over the result's batch dims (0 where the operand broadcasts).
  std::vector<int64_t> stride(rank, 0);
  int64_t s = 1;
  for (size_t k = 0; k < op_lead_rank; ++k) {
    const size_t out_axis = rank - 1 - k;
    const int64_t d = op[op_lead_rank - 1 - k];
    if (d != 1 && d != out_lead[out_axis]) {
      error = "batch dimensions do not broadcast";
      return false;
    }
    stride[out_axis] = d == 1 ? 0 : s;
    s *= d;
  }
  for (int64_t b = 0; b < total; ++b) {
    int64_t rest = b, off = 0;
    for (size_t axis = rank; axis-- > 0;) {
      off += (rest % out_lead[axis]) * stride[axis];
      rest /= out_lead[axis];
    }
    map[static_cast<size_t>(b)] = off;
  }
  return true;
}

// The leading `count` dims of `dims` as a vector.
inline std::vector<int64_t> Lead(ffi::Span<const int64_t> dims, size_t count) {
  return std::vector<int64_t>(dims.begin(), dims.begin() + count);
}

}  // namespace jaxseg
