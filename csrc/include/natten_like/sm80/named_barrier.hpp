// Named barriers (id 0 is __syncthreads'), for kernels whose thread groups synchronise apart: bar.sync waits until
// kThreads threads arrived at barrier kId, bar.arrive counts the caller without waiting. Both order the caller's prior
// shared-memory accesses before the accesses of the threads that waited.
#pragma once

#include <cute/config.hpp>

namespace natten_like::sm80::detail {

template <int kId, int kThreads>
CUTE_DEVICE void named_barrier_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

template <int kId, int kThreads>
CUTE_DEVICE void named_barrier_arrive() {
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

}  // namespace natten_like::sm80::detail
