// AVX2 kernels: no vector popcount, so bytes are counted with two 16-entry table lookups (VPSHUFB)
// per nibble, summed in bytes for up to 31 words and widened with VPSADBW.
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"

#pragma GCC target("avx2,fma,popcnt")

namespace bitpacked {
namespace {

#include "tile.inc"

// Byte sums stay below 256 for this many words (each word adds at most 8 per byte).
constexpr int64_t kByteRun = 31;

inline __m256i popcount_bytes(__m256i x, __m256i table, __m256i low) {
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  return _mm256_add_epi8(lo, hi);
}

// One block of 8 pixels (2 vectors) x 4 output channels: 8 byte accumulators fit 16 registers.
void block_8x4(const uint64_t* buffer, const uint64_t* weight, int64_t k_words, int px, int ch,
               int64_t* counts) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i total[2][4];
  for (auto& row : total) {
    for (auto& v : row) v = _mm256_setzero_si256();
  }
  for (int64_t k0 = 0; k0 < k_words; k0 += kByteRun) {
    const int64_t k1 = k0 + kByteRun < k_words ? k0 + kByteRun : k_words;
    __m256i acc[2][4];
    for (auto& row : acc) {
      for (auto& v : row) v = _mm256_setzero_si256();
    }
    for (int64_t k = k0; k < k1; ++k) {
      const uint64_t* col = buffer + k * kTilePixels + px;
      const __m256i a0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(col));
      const __m256i a1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(col + 4));
      const uint64_t* w = weight + k * kTileChannels + ch;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m256i b = _mm256_set1_epi64x(static_cast<long long>(w[j]));
        acc[0][j] = _mm256_add_epi8(acc[0][j], popcount_bytes(_mm256_xor_si256(a0, b), table, low));
        acc[1][j] = _mm256_add_epi8(acc[1][j], popcount_bytes(_mm256_xor_si256(a1, b), table, low));
      }
    }
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 4; ++j) {
        total[i][j] = _mm256_add_epi64(total[i][j], _mm256_sad_epu8(acc[i][j], _mm256_setzero_si256()));
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(counts + (ch + j) * kTilePixels + px + 4 * i), total[i][j]);
    }
  }
}

void micro_kernel(const uint64_t* buffer, const uint64_t* weight, int64_t k_words, int64_t* counts) {
  for (int px = 0; px < kTilePixels; px += 8) {
    for (int ch = 0; ch < kTileChannels; ch += 4) block_8x4(buffer, weight, k_words, px, ch, counts);
  }
}

// masks[h * 64 + cc]: signs of the run's h-th 8 pixels in channel w * 64 + cc, reading each
// channel's plane sequentially over the run.
void run_masks(const PackArgs& a, int64_t n, int64_t first, int64_t halves, int64_t w, uint8_t* masks) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int cc = 0; cc < 64; ++cc) {
    const int64_t c = w * 64 + cc;
    if (c >= a.channels) {
      for (int64_t h = 0; h < halves; ++h) masks[h * 64 + cc] = 0;
      continue;
    }
    const float* row = a.x + (n * a.channels + c) * a.plane + first * kPackPixels;
    const __m256 bias = _mm256_set1_ps(a.bias[c]);
    for (int64_t h = 0; h < halves; ++h) {
      const int64_t left = a.plane - first * kPackPixels - h * 8;
      const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(left < 8 ? static_cast<int>(left) : 8), lanes);
      const __m256 v = _mm256_add_ps(_mm256_maskload_ps(row + h * 8, valid), bias);
      const __m256 positive = _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ), _mm256_castsi256_ps(valid));
      masks[h * 64 + cc] = static_cast<uint8_t>(_mm256_movemask_ps(positive));
    }
  }
}

// Pixel p's word is bit p of the 64 channel byte masks: shifted to the top of each byte, VPMOVMSKB
// reads it from 32 channels at once.
void pack(const PackArgs& a, int64_t block_begin, int64_t block_end) {
  alignas(32) uint8_t masks[kRunBlocks * 2 * 64];
  for_each_run(a, block_begin, block_end, [&](int64_t n, int64_t first, int64_t count) {
    const int64_t pixels_in_run = a.plane - first * kPackPixels < count * kPackPixels
                                      ? a.plane - first * kPackPixels : count * kPackPixels;
    const int64_t halves = (pixels_in_run + 7) / 8;
    for (int64_t w = 0; w < a.words; ++w) {
      run_masks(a, n, first, halves, w, masks);
      for (int64_t h = 0; h < halves; ++h) {
        const __m256i low = _mm256_load_si256(reinterpret_cast<const __m256i*>(masks + h * 64));
        const __m256i high = _mm256_load_si256(reinterpret_cast<const __m256i*>(masks + h * 64 + 32));
        const int pixels = pixels_in_run - h * 8 < 8 ? static_cast<int>(pixels_in_run - h * 8) : 8;
        uint64_t* out = a.bits + (n * a.plane + first * kPackPixels + h * 8) * a.words + w;
        for (int p = 0; p < pixels; ++p) {
          const __m128i shift = _mm_cvtsi32_si128(7 - p);
          const uint32_t lo = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(low, shift)));
          const uint32_t hi = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(high, shift)));
          out[p * a.words] = lo | static_cast<uint64_t>(hi) << 32;
        }
      }
    }
  });
}

#include "scalar_tile.inc"

}  // namespace

Isa isa_avx2() { return {"avx2", pack, conv, peak}; }

}  // namespace bitpacked
