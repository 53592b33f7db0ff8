// Portable fused tail: plain C++ for any CPU, the reference the vector paths are tested against.
#include <cstdint>

#include "fused.h"

namespace bitpacked {
namespace {

#include "fused_tail.inc"

// Four partial sums: fewer dependent additions than one running sum.
float plane_sum(const float* p, int64_t n) {
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) s[k] += p[i + k];
  }
  for (; i < n; ++i) s[0] += p[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// count pixels: out = (branch * gs + shift) + r with r = PReLU(res) where has_slope.
void run(const float* z, const float* res, float* out, int64_t count, bool has_slope, float slope, float gs,
         float shift, bool elm) {
  for (int64_t p = 0; p < count; ++p) {
    const float r = prelu_or_identity(res[p], has_slope, slope);
    out[p] = (elm ? z[p] * r : z[p]) * gs + shift + r;
  }
}

}  // namespace

FusedIsa fused_portable() { return {"portable", means<plane_sum>, tail<run>}; }

}  // namespace bitpacked
