// NEON kernels for AArch64 CPUs (Cortex-A53/A72/A76 class and later): CNT counts the bits of two
// pixels' activation words XORed with a broadcast weight word in one instruction; the byte counts
// add up in bytes for up to 31 words and are then widened pairwise (UADDLP) into 64-bit counts.
// Packing compares 4 pixels of one channel per instruction and shifts the signs into the pixels'
// 32-bit half-words. The output transform is the scalar one the portable and AVX2 paths share.
#include <arm_neon.h>

#include <cstdint>

#include "kernels.h"

namespace bitpacked {
namespace {

#include "tile.inc"

// Byte sums stay below 256 for this many words (each word adds at most 8 per byte).
constexpr int64_t kByteRun = 31;

// One block of 8 pixels (4 vectors of 2 words) x 4 output channels: 16 byte accumulators, 4
// activation and 4 weight registers of the 32; each run's sums go to counts[(ch + j) * kTilePixels
// + px + p] in memory, which keeps the registers for the inner loop.
void block_8x4(const uint64_t* buffer, const uint64_t* weight, int64_t k_words, int px, int ch,
               int64_t* counts) {
  for (int j = 0; j < 4; ++j) {
    for (int i = 0; i < 4; ++i) vst1q_s64(counts + (ch + j) * kTilePixels + px + 2 * i, vdupq_n_s64(0));
  }
  for (int64_t k0 = 0; k0 < k_words; k0 += kByteRun) {
    const int64_t k1 = k0 + kByteRun < k_words ? k0 + kByteRun : k_words;
    uint8x16_t acc[4][4];
    for (auto& row : acc) {
      for (auto& v : row) v = vdupq_n_u8(0);
    }
    for (int64_t k = k0; k < k1; ++k) {
      const uint64_t* col = buffer + k * kTilePixels + px;
      uint8x16_t a[4];
      for (int i = 0; i < 4; ++i) a[i] = vreinterpretq_u8_u64(vld1q_u64(col + 2 * i));
      const uint64_t* w = weight + k * kTileChannels + ch;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const uint8x16_t b = vreinterpretq_u8_u64(vdupq_n_u64(w[j]));
        for (int i = 0; i < 4; ++i) acc[i][j] = vaddq_u8(acc[i][j], vcntq_u8(veorq_u8(a[i], b)));
      }
    }
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        const uint64x2_t sums = vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(acc[i][j])));  // 8 bytes per pixel
        int64_t* dst = counts + (ch + j) * kTilePixels + px + 2 * i;
        vst1q_s64(dst, vaddq_s64(vld1q_s64(dst), vreinterpretq_s64_u64(sums)));
      }
    }
  }
}

void micro_kernel(const uint64_t* buffer, const uint64_t* weight, int64_t k_words, int64_t* counts) {
  for (int px = 0; px < kTilePixels; px += 8) {
    for (int ch = 0; ch < kTileChannels; ch += 4) block_8x4(buffer, weight, k_words, px, ch, counts);
  }
}

// halves[p] for pixels p0 + p < p1 of image n: bit cc is the sign of channel c0 + cc (0 past the
// last channel). Channels go from high to low, each shifting its bit in at the bottom, so every
// plane is read sequentially over the run; the pixels after the last multiple of 4 go one by one.
void half_words(const PackArgs& a, int64_t n, int64_t c0, int64_t p0, int64_t p1, uint32_t* halves) {
  const int64_t pixels = p1 - p0, vector_end = pixels / 4 * 4;
  for (int64_t p = 0; p < pixels; ++p) halves[p] = 0;
  const int64_t c_end = c0 + 32 < a.channels ? c0 + 32 : a.channels;
  const float32x4_t zero = vdupq_n_f32(0.0f);
  for (int64_t c = c_end - 1; c >= c0; --c) {
    const float* row = a.x + (n * a.channels + c) * a.plane + p0;
    const float bias = a.bias[c];
    const float32x4_t bias4 = vdupq_n_f32(bias);
    int64_t p = 0;
    for (; p < vector_end; p += 4) {
      const uint32x4_t sign = vcgeq_f32(vaddq_f32(vld1q_f32(row + p), bias4), zero);  // ~0 where set
      vst1q_u32(halves + p, vsubq_u32(vshlq_n_u32(vld1q_u32(halves + p), 1), sign));
    }
    for (; p < pixels; ++p) halves[p] = halves[p] << 1 | (row[p] + bias >= 0.0f ? 1u : 0u);
  }
}

void pack(const PackArgs& a, int64_t block_begin, int64_t block_end) {
  alignas(16) uint32_t low[kRunBlocks * kPackPixels], high[kRunBlocks * kPackPixels];
  for_each_run(a, block_begin, block_end, [&](int64_t n, int64_t first, int64_t count) {
    const int64_t p0 = first * kPackPixels;
    const int64_t p1 = p0 + count * kPackPixels < a.plane ? p0 + count * kPackPixels : a.plane;
    for (int64_t w = 0; w < a.words; ++w) {
      half_words(a, n, w * 64, p0, p1, low);
      half_words(a, n, w * 64 + 32, p0, p1, high);
      uint64_t* out = a.bits + (n * a.plane + p0) * a.words + w;
      for (int64_t p = 0; p < p1 - p0; ++p) out[p * a.words] = low[p] | static_cast<uint64_t>(high[p]) << 32;
    }
  });
}

#include "scalar_tile.inc"

}  // namespace

Isa isa_neon() { return {"neon", pack, conv, peak}; }

}  // namespace bitpacked
