// Plain-C++ interface of the fused full-precision tail (the `fused` engine): everything a BNext
// unit does after its binary conv, in two passes over NCHW maps instead of a dozen tensor ops.
//
// Torch-free for the same reason as kernels.h: each ISA file compiles under its own target.
#pragma once

#include <cstdint>

namespace bitpacked {

// Pass 1, per (image, channel) plane: the SE gate's input, the mean of
// mix_x * pool(x) + mix_z * z = mix_x * mean(x) + mix_z * mean(z) (an even map's 2x2 average pool
// keeps its mean, so the pooled map is not needed here).
struct MeansArgs {
  const float* x;      // (images, channels, x_plane)
  const float* z;      // (images, channels, z_plane)
  const float* mix_x;  // channels
  const float* mix_z;  // channels
  float* means;        // (images, channels)
  int64_t channels, x_plane, z_plane;
};

// Pass 2, per (image, pixel range), all channels: BN2 of the gated branch plus the residual,
// written into channels [offset, offset + channels) of an out map with out_channels channels.
// With x the unit's input and r = pool(slope ? PReLU(x) : x) (pool: 2x2 average where the unit
// pools, identity elsewhere):
//   plain unit: out = fma(z, gate * scale, shift) + r
//   ELM unit:   out = fma(z * r, gate * scale, shift) + r
struct TailArgs {
  const float* z;      // (images, channels, plane)
  const float* x;      // (images, channels, plane), or (images, channels, 2 height, 2 width) where pooled
  const float* gate;   // (images, channels): the SE gate
  const float* scale;  // channels: BN2 as fma(v, scale, shift)
  const float* shift;
  const float* slope;  // channels, or nullptr: PReLU slopes applied to x (ELM units)
  float* out;          // (images, out_channels, plane)
  int64_t channels, plane, width, out_channels, offset;  // width: of the output map
  bool elm, pooled;
};

// Means of planes [begin, end) of images x channels.
using MeansFn = void (*)(const MeansArgs&, int64_t begin, int64_t end);
// Tail of pixels [p0, p1) of image n, every channel.
using TailFn = void (*)(const TailArgs&, int64_t n, int64_t p0, int64_t p1);

struct FusedIsa {
  const char* name;
  MeansFn means;
  TailFn tail;
};

#if defined(__x86_64__)
FusedIsa fused_avx512();
FusedIsa fused_avx2();
#endif
FusedIsa fused_portable();

}  // namespace bitpacked
