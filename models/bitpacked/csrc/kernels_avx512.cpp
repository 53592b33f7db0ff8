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

// PReLU(scale * (base - 2 * count) + shift) for 8 pixels of one channel.
inline __m256 transform(__m512i count, __m512i base, float scale, float shift, float slope) {
  const __m512i dot = _mm512_sub_epi64(base, _mm512_add_epi64(count, count));
  const __m256 y = _mm256_fmadd_ps(_mm512_cvtepi64_ps(dot), _mm256_set1_ps(scale), _mm256_set1_ps(shift));
  const __mmask8 positive = _mm256_cmp_ps_mask(y, _mm256_setzero_ps(), _CMP_GT_OQ);
  return _mm256_mask_mul_ps(y, static_cast<__mmask8>(~positive), y, _mm256_set1_ps(slope));
}

// cols[j] holds channel j of 8 pixels; writes pixel p's 8 channels to out + p * stride.
inline void store_transposed(const __m256 (&cols)[kTileChannels], float* out, int64_t stride, int pixels,
                             __mmask8 channels) {
  __m256 t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(cols[j], cols[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(cols[j], cols[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
    u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
    u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
    u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
  }
  for (int p = 0; p < pixels; ++p) {
    const __m256 row = _mm256_permute2f128_ps(u[p % 4], u[p % 4 + 4], p < 4 ? 0x20 : 0x31);
    _mm256_mask_storeu_ps(out + p * stride, channels, row);
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
  const __mmask8 channel_mask = static_cast<__mmask8>((1u << channels) - 1);
  for (int i = 0; i < 3; ++i) {
    if (8 * i >= t.pixels) break;
    const __m512i taps_in = _mm512_load_si512(t.taps_in + 8 * i);
    __m256 cols[kTileChannels];
#pragma GCC unroll 8
    for (int j = 0; j < kTileChannels; ++j) {
      const int64_t c = j < channels ? o + j : o;
      const __m512i b = t.border ? _mm512_load_si512(base + j * kTilePixels + 8 * i) : taps_in;
      cols[j] = transform(acc[i][j], b, a.scale[c], a.shift[c], a.slope[c]);
    }
    const int pixels = t.pixels - 8 * i < 8 ? t.pixels - 8 * i : 8;
    store_transposed(cols, a.out + (t.first + 8 * i) * a.out_channels + o, a.out_channels, pixels, channel_mask);
  }
}

void pack(const PackArgs& a, int64_t row_begin, int64_t row_end) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* x = a.x + r * a.channels;
    uint64_t* out = a.bits + r * a.words;
    for (int64_t w = 0; w < a.words; ++w) {
      uint64_t word = 0;
      for (int q = 0; q < 4; ++q) {
        const int64_t c = w * 64 + q * 16;
        if (c >= a.channels) break;
        const int64_t left = a.channels - c;
        const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
        const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + c), _mm512_maskz_loadu_ps(m, a.bias + c));
        word |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(m, v, zero, _CMP_GE_OQ)) << (16 * q);
      }
      out[w] = word;
    }
  }
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
