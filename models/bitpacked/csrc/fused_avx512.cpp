// AVX-512 fused tail: 16 pixels of one channel per instruction, masked loads and stores at the
// ends of a pixel range.
#include <immintrin.h>

#include <cstdint>

#include "fused.h"

#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")

namespace bitpacked {
namespace {

inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

float plane_sum(const float* p, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
  }
  for (; i < n; i += 16) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(lanes(n - i), p + i));
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
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
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < a.channels; ++c) {
    const int64_t in = (n * a.channels + c) * a.plane;
    const float* z = a.z + in;
    const float* res = a.res + in;
    float* out = a.out + (n * a.out_channels + a.offset + c) * a.plane;
    const __m512 gs = _mm512_set1_ps(a.gate[n * a.channels + c] * a.scale[c]);
    const __m512 shift = _mm512_set1_ps(a.shift[c]);
    const __m512 slope = _mm512_set1_ps(a.slope ? a.slope[c] : 1.0f);
    for (int64_t p = p0; p < p1; p += 16) {
      const __mmask16 m = lanes(p1 - p);
      const __m512 zv = _mm512_maskz_loadu_ps(m, z + p);
      __m512 r = _mm512_maskz_loadu_ps(m, res + p);
      if (a.slope) r = _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ), r, slope);
      const __m512 branch = a.elm ? _mm512_mul_ps(zv, r) : zv;
      _mm512_mask_storeu_ps(out + p, m, _mm512_add_ps(_mm512_fmadd_ps(branch, gs, shift), r));
    }
  }
}

}  // namespace

FusedIsa fused_avx512() { return {"avx512", means, tail}; }

}  // namespace bitpacked
