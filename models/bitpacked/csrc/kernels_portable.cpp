// Portable kernels: plain C++ for any CPU, the reference the vector paths must match bit for bit.
#include <cstdint>

#include "kernels.h"

namespace bitpacked {
namespace {

#include "tile.inc"

// SWAR popcount: no POPCNT instruction is assumed on this path.
inline uint64_t popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return (x * 0x0101010101010101ULL) >> 56;
}

void micro_kernel(const uint64_t* buffer, const uint64_t* weight, int64_t k_words, int64_t* counts) {
  for (int i = 0; i < kTileChannels * kTilePixels; ++i) counts[i] = 0;
  for (int64_t k = 0; k < k_words; ++k) {
    const uint64_t* col = buffer + k * kTilePixels;
    for (int j = 0; j < kTileChannels; ++j) {
      const uint64_t w = weight[k * kTileChannels + j];
      int64_t* row = counts + j * kTilePixels;
      for (int p = 0; p < kTilePixels; ++p) row[p] += static_cast<int64_t>(popcount64(col[p] ^ w));
    }
  }
}

void pack(const PackArgs& a, int64_t block_begin, int64_t block_end) {
  for_each_run(a, block_begin, block_end, [&](int64_t n, int64_t first, int64_t count) {
    const int64_t p0 = first * kPackPixels;
    const int64_t p1 = p0 + count * kPackPixels < a.plane ? p0 + count * kPackPixels : a.plane;
    uint64_t* out = a.bits + n * a.plane * a.words;
    for (int64_t i = p0 * a.words; i < p1 * a.words; ++i) out[i] = 0;
    for (int64_t c = 0; c < a.channels; ++c) {
      const float* row = a.x + (n * a.channels + c) * a.plane;
      for (int64_t p = p0; p < p1; ++p) {
        if (row[p] + a.bias[c] >= 0.0f) out[p * a.words + c / 64] |= 1ULL << (c % 64);
      }
    }
  });
}

#include "scalar_tile.inc"

}  // namespace

Isa isa_portable() { return {"portable", pack, conv, peak}; }

}  // namespace bitpacked
