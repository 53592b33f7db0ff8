// AVX-512 kernels: VPOPCNTQ counts the XOR of 512 activation bits against a broadcast weight word
// per instruction, and the output transform runs on the accumulators in registers. Packing
// compares 16 channels per instruction into a mask.
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"

#pragma GCC target("avx2,fma,popcnt,avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq")

namespace bitpacked {
namespace {

#include "tile.inc"

// acc[i][j] += popcount(pixels 8i..8i+7 XOR weight word of channel j) over k_words words:
// 24 accumulators, 3 activation and 1 weight register.
inline void accumulate(__m512i (&acc)[3][kTileChannels], const uint64_t* buffer, const uint64_t* weight,
                       int64_t k_words) {
  for (int64_t k = 0; k < k_words; ++k) {
    const uint64_t* col = buffer + k * kTilePixels;
    const __m512i a0 = _mm512_load_si512(col);
    const __m512i a1 = _mm512_load_si512(col + 8);
    const __m512i a2 = _mm512_load_si512(col + 16);
    const uint64_t* w = weight + k * kTileChannels;
#pragma GCC unroll 8
    for (int j = 0; j < kTileChannels; ++j) {
      const __m512i b = _mm512_set1_epi64(static_cast<long long>(w[j]));
      acc[0][j] = _mm512_add_epi64(acc[0][j], _mm512_popcnt_epi64(_mm512_xor_si512(a0, b)));
      acc[1][j] = _mm512_add_epi64(acc[1][j], _mm512_popcnt_epi64(_mm512_xor_si512(a1, b)));
      acc[2][j] = _mm512_add_epi64(acc[2][j], _mm512_popcnt_epi64(_mm512_xor_si512(a2, b)));
    }
  }
}

// PReLU(fma((base - 2 * count) * prescale, scale, shift)) for 8 pixels of one channel.
inline __m256 transform(__m512i count, __m512i base, float prescale, float scale, float shift, float slope) {
  const __m512i dot = _mm512_sub_epi64(base, _mm512_add_epi64(count, count));
  const __m256 x = _mm256_mul_ps(_mm512_cvtepi64_ps(dot), _mm256_set1_ps(prescale));
  const __m256 y = _mm256_fmadd_ps(x, _mm256_set1_ps(scale), _mm256_set1_ps(shift));
  const __mmask8 positive = _mm256_cmp_ps_mask(y, _mm256_setzero_ps(), _CMP_GT_OQ);
  return _mm256_mask_mul_ps(y, static_cast<__mmask8>(~positive), y, _mm256_set1_ps(slope));
}

// Stores channel j's 8 pixels cols[j] into its NCHW plane: one vector store per channel where the
// 8 pixels are consecutive in one image, single values where they are not (tiny maps, tile ends).
inline void store_planes(const __m256 (&cols)[kTileChannels], const TileInfo& t, int p0, float* out,
                         int64_t plane, int channels) {
  const int pixels = t.pixels - p0 < 8 ? t.pixels - p0 : 8;
  if (pixels == 8 && t.out[p0 + 7] - t.out[p0] == 7) {
    for (int j = 0; j < channels; ++j) _mm256_storeu_ps(out + t.out[p0] + j * plane, cols[j]);
    return;
  }
  alignas(32) float lanes[8];
  for (int j = 0; j < channels; ++j) {
    _mm256_store_ps(lanes, cols[j]);
    for (int p = 0; p < pixels; ++p) out[t.out[p0 + p] + j * plane] = lanes[p];
  }
}

void compute_tile(const ConvArgs& a, const TileInfo& t, const uint64_t* buffer, int64_t o) {
  __m512i acc[3][kTileChannels];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_si512();
  }
  const int64_t k_words = a.kernel * a.kernel * a.words;
  accumulate(acc, buffer, a.weight + o * k_words, k_words);
  alignas(64) int64_t base[kTileChannels * kTilePixels];
  if (t.border) border_base(a, t, o, base);
  const int64_t room = a.out_channels - o;
  const int channels = room < kTileChannels ? static_cast<int>(room) : kTileChannels;
  const int64_t plane = a.out_height * a.out_width;
  for (int i = 0; i < 3; ++i) {
    if (8 * i >= t.pixels) break;
    const __m512i taps_in = _mm512_load_si512(t.taps_in + 8 * i);
    __m256 cols[kTileChannels];
#pragma GCC unroll 8
    for (int j = 0; j < kTileChannels; ++j) {
      const int64_t c = j < channels ? o + j : o;
      const __m512i b = t.border ? _mm512_load_si512(base + j * kTilePixels + 8 * i) : taps_in;
      cols[j] = transform(acc[i][j], b, a.prescale[c], a.scale[c], a.shift[c], a.slope[c]);
    }
    store_planes(cols, t, 8 * i, a.out + o * plane, plane, channels);
  }
}

// masks[b * 64 + cc]: signs of block b's 16 pixels in channel w * 64 + cc, reading each channel's
// plane sequentially over the run.
void run_masks(const PackArgs& a, int64_t n, int64_t first, int64_t count, int64_t w, uint16_t* masks) {
  const __m512 zero = _mm512_setzero_ps();
  for (int cc = 0; cc < 64; ++cc) {
    const int64_t c = w * 64 + cc;
    if (c >= a.channels) {
      for (int64_t b = 0; b < count; ++b) masks[b * 64 + cc] = 0;
      continue;
    }
    const float* row = a.x + (n * a.channels + c) * a.plane + first * kPackPixels;
    const __m512 bias = _mm512_set1_ps(a.bias[c]);
    for (int64_t b = 0; b < count; ++b) {
      const int64_t left = a.plane - (first + b) * kPackPixels;
      const __mmask16 valid = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
      const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, row + b * kPackPixels), bias);
      masks[b * 64 + cc] = _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GE_OQ);
    }
  }
}

// Pixel p's word is bit p of the 64 channel masks: VPTESTMW against 1 << p reads 32 channels at once.
void pack(const PackArgs& a, int64_t block_begin, int64_t block_end) {
  alignas(64) uint16_t masks[kRunBlocks * 64];
  for_each_run(a, block_begin, block_end, [&](int64_t n, int64_t first, int64_t count) {
    for (int64_t w = 0; w < a.words; ++w) {
      run_masks(a, n, first, count, w, masks);
      for (int64_t b = 0; b < count; ++b) {
        const __m512i low = _mm512_load_si512(masks + b * 64), high = _mm512_load_si512(masks + b * 64 + 32);
        const int64_t p0 = (first + b) * kPackPixels;
        const int pixels = a.plane - p0 < kPackPixels ? static_cast<int>(a.plane - p0) : kPackPixels;
        uint64_t* out = a.bits + (n * a.plane + p0) * a.words + w;
        for (int p = 0; p < pixels; ++p) {
          const __m512i bit = _mm512_set1_epi16(static_cast<short>(1u << p));
          out[p * a.words] = static_cast<uint64_t>(_mm512_test_epi16_mask(low, bit)) |
                             static_cast<uint64_t>(_mm512_test_epi16_mask(high, bit)) << 32;
        }
      }
    }
  });
}

void conv(const ConvArgs& a, const ConvWork& work, uint64_t* buffer) { conv_items(a, work, buffer); }

int64_t peak(int64_t repeats, uint64_t* buffer, const uint64_t* weight, int64_t words) {
  __m512i acc[3][kTileChannels];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_si512();
  }
  for (int64_t r = 0; r < repeats; ++r) accumulate(acc, buffer, weight, words);
  alignas(64) int64_t lanes[8];
  int64_t checksum = 0;
  for (auto& row : acc) {
    for (auto& v : row) {
      _mm512_store_si512(lanes, v);
      checksum += lanes[0];
    }
  }
  return checksum;
}

}  // namespace

Isa isa_avx512() { return {"avx512", pack, conv, peak}; }

}  // namespace bitpacked
