// The one place that asks the CPU which instruction-set paths it runs. Torch-free like the kernels,
// so the kernel checks under tests/cpp link it too; x86 feature checks compile only on x86.
#include <vector>

#include "kernels.h"

namespace bitpacked {

std::vector<Isa> cpu_isas() {
  std::vector<Isa> isas;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vpopcntdq")) {
    isas.push_back(isa_avx512());
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt")) {
    isas.push_back(isa_avx2());
  }
#elif defined(__aarch64__)
  isas.push_back(isa_neon());  // Advanced SIMD (NEON) is part of every AArch64 CPU
#endif
  isas.push_back(isa_portable());
  return isas;
}

}  // namespace bitpacked
