// Portable fused tail: plain C++ for any CPU, the reference the vector paths are tested against.
#include <cstdint>

#include "fused.h"

namespace bitpacked {
namespace {

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

void means(const MeansArgs& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t c = i % a.channels;
    const float mx = plane_sum(a.x + i * a.x_plane, a.x_plane) / static_cast<float>(a.x_plane);
    const float mz = plane_sum(a.z + i * a.z_plane, a.z_plane) / static_cast<float>(a.z_plane);
    a.means[i] = a.mix_x[c] * mx + a.mix_z[c] * mz;
  }
}

void tail(const TailArgs& a, int64_t n, int64_t p0, int64_t p1) {
  for (int64_t c = 0; c < a.channels; ++c) {
    const int64_t in = (n * a.channels + c) * a.plane;
    const float* z = a.z + in;
    const float* res = a.res + in;
    float* out = a.out + (n * a.out_channels + a.offset + c) * a.plane;
    const float gs = a.gate[n * a.channels + c] * a.scale[c], shift = a.shift[c];
    const float slope = a.slope ? a.slope[c] : 1.0f;
    for (int64_t p = p0; p < p1; ++p) {
      float r = res[p];
      if (a.slope && r < 0.0f) r *= slope;
      out[p] = a.elm ? (z[p] * r) * gs + shift + r : z[p] * gs + shift + r;
    }
  }
}

}  // namespace

FusedIsa fused_portable() { return {"portable", means, tail}; }

}  // namespace bitpacked
