// Dtype dispatch shared by the CPU bindings.
#pragma once

#include <ATen/Dispatch.h>

// float32 / float16 / bfloat16, all accumulated in float32. float64 is left to the reference backend: computing it in
// float32 here would silently lose the precision the caller asked for.
#define NL_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                                                              \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
