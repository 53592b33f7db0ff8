// AVX2 fused tail: 8 pixels of one channel per instruction, masked loads and stores at the ends
// of a pixel range.
#include <immintrin.h>

#include <cstdint>

#include "fused.h"

#pragma GCC target("avx2,fma")

namespace bitpacked {
namespace {

#include "fused_tail.inc"

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

void run(const float* z, const float* res, float* out, int64_t count, bool has_slope, float slope, float gs,
         float shift, bool elm) {
  const __m256 zero = _mm256_setzero_ps(), slopes = _mm256_set1_ps(slope);
  const __m256 scale = _mm256_set1_ps(gs), shifts = _mm256_set1_ps(shift);
  for (int64_t p = 0; p < count; p += 8) {
    const __m256i m = lanes(count - p);
    const __m256 zv = _mm256_maskload_ps(z + p, m);
    __m256 r = _mm256_maskload_ps(res + p, m);
    if (has_slope) r = _mm256_blendv_ps(r, _mm256_mul_ps(r, slopes), _mm256_cmp_ps(r, zero, _CMP_LT_OQ));
    const __m256 branch = elm ? _mm256_mul_ps(zv, r) : zv;
    _mm256_maskstore_ps(out + p, m, _mm256_add_ps(_mm256_fmadd_ps(branch, scale, shifts), r));
  }
}

}  // namespace

FusedIsa fused_avx2() { return {"avx2", means<plane_sum>, tail<run>}; }

}  // namespace bitpacked
