// AVX2 fused tail: 8 pixels of one channel per instruction, masked loads and stores at the ends
// of a pixel range.
#include <immintrin.h>

#include <cstdint>

#include "fused.h"

#pragma GCC target("avx2,fma")

namespace bitpacked {
namespace {

inline __m256i lanes(int64_t left) {
  const int count = left >= 8 ? 8 : static_cast<int>(left);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

float plane_sum(const float* p, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
  }
  for (; i < n; i += 8) s0 = _mm256_add_ps(s0, _mm256_maskload_ps(p + i, lanes(n - i)));
  alignas(32) float v[8];
  _mm256_store_ps(v, _mm256_add_ps(s0, s1));
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
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
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < a.channels; ++c) {
    const int64_t in = (n * a.channels + c) * a.plane;
    const float* z = a.z + in;
    const float* res = a.res + in;
    float* out = a.out + (n * a.out_channels + a.offset + c) * a.plane;
    const __m256 gs = _mm256_set1_ps(a.gate[n * a.channels + c] * a.scale[c]);
    const __m256 shift = _mm256_set1_ps(a.shift[c]);
    const __m256 slope = _mm256_set1_ps(a.slope ? a.slope[c] : 1.0f);
    for (int64_t p = p0; p < p1; p += 8) {
      const __m256i m = lanes(p1 - p);
      const __m256 zv = _mm256_maskload_ps(z + p, m);
      __m256 r = _mm256_maskload_ps(res + p, m);
      if (a.slope) r = _mm256_blendv_ps(r, _mm256_mul_ps(r, slope), _mm256_cmp_ps(r, zero, _CMP_LT_OQ));
      const __m256 branch = a.elm ? _mm256_mul_ps(zv, r) : zv;
      _mm256_maskstore_ps(out + p, m, _mm256_add_ps(_mm256_fmadd_ps(branch, gs, shift), r));
    }
  }
}

}  // namespace

FusedIsa fused_avx2() { return {"avx2", means, tail}; }

}  // namespace bitpacked
