// Plain-C++ interface between the torch-facing ops (ops.cpp) and the per-ISA kernels.
//
// This header includes nothing from torch on purpose: each ISA translation unit compiles under
// its own `#pragma GCC target`, and sharing torch's inline functions with it would let the
// linker keep an AVX-512 copy of them for the whole library.
#pragma once

#include <cstdint>
#include <vector>

namespace bitpacked {

// A conv tile is kTilePixels output pixels x kTileChannels output channels: three 8-lane
// AVX-512 vectors of pixels against eight broadcast weight words keep 24 accumulators in
// registers.
constexpr int kTilePixels = 24;
constexpr int kTileChannels = 8;
constexpr int kMaxTaps = 32;  // valid-tap masks are 32-bit (kernels up to 5x5)

// Pixels per packing block: the range the pack kernels split is (image, block of 16 pixels).
constexpr int kPackPixels = 16;
// Blocks packed together: each channel plane is read over the whole run before the bit transpose.
constexpr int64_t kRunBlocks = 64;

// Bias + sign + bit packing of NCHW planes into pixel-major words (a bit transpose).
struct PackArgs {
  const float* x;      // (images, channels, plane)
  const float* bias;   // channels
  uint64_t* bits;      // (images, plane, words); bit c % 64 of word c / 64 is (x + bias >= 0)
  int64_t channels;
  int64_t words;       // ceil(channels / 64); the unused high bits are zero
  int64_t plane;       // pixels per image
};

// Binary convolution with zero padding, followed by the folded BN and PReLU.
struct ConvArgs {
  const uint64_t* act;         // (batch, height, width, words) packed activations
  const uint64_t* weight;      // (out_channels / 8, taps * words, 8): tap-major, then word
  const int32_t* weight_pop;   // (out_channels, taps): +1 weights of each tap
  const float* prescale;       // per output channel, multiplies the dot product first (ReCU's alpha)
  const float* scale;          // per output channel: y = fma(dot * prescale, scale, shift)
  const float* shift;
  const float* slope;          // per output channel, PReLU slope for negative values
  float* out;                  // (batch, out_channels, out_height, out_width)
  int64_t batch, height, width, words, channels;
  int64_t out_channels, out_height, out_width;
  int kernel, stride, pad;
};

// Work item = (pixel tile, chunk of output channels); items are tile-major.
struct ConvWork {
  int64_t item_begin, item_end;
  int64_t chunks;          // output-channel chunks per tile
  int64_t chunk_channels;  // output channels per chunk, a multiple of kTileChannels
};

// Packs blocks [block_begin, block_end) of images x ceil(plane / kPackPixels) blocks.
using PackFn = void (*)(const PackArgs&, int64_t block_begin, int64_t block_end);
// `buffer` holds taps * words * kTilePixels words, 64-byte aligned.
using ConvFn = void (*)(const ConvArgs&, const ConvWork&, uint64_t* buffer);
// Runs the inner kernel `repeats` times on L1-resident data; returns a checksum.
using PeakFn = int64_t (*)(int64_t repeats, uint64_t* buffer, const uint64_t* weight, int64_t words);

struct Isa {
  const char* name;
  PackFn pack;
  ConvFn conv;
  PeakFn peak;
};

// Each ISA's kernels, defined only where its source compiles (build.py: file-name endings).
#if defined(__x86_64__)
Isa isa_avx512();  // kernels_avx512.cpp
Isa isa_avx2();    // kernels_avx2.cpp
#elif defined(__aarch64__)
Isa isa_neon();    // kernels_neon.cpp
#endif
Isa isa_portable();

// The paths this CPU runs, best first; portable is always last (isa.cpp).
std::vector<Isa> cpu_isas();

}  // namespace bitpacked
