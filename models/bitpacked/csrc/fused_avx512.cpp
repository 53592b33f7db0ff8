// AVX-512 fused tail: 16 pixels of one channel per instruction, masked loads and stores at the
// ends of a pixel range.
#include <immintrin.h>

#include <cstdint>

#include "fused.h"

#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")

namespace bitpacked {
namespace {

#include "fused_tail.inc"

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

void run(const float* z, const float* res, float* out, int64_t count, bool has_slope, float slope, float gs,
         float shift, bool elm) {
  const __m512 zero = _mm512_setzero_ps(), slopes = _mm512_set1_ps(slope);
  const __m512 scale = _mm512_set1_ps(gs), shifts = _mm512_set1_ps(shift);
  for (int64_t p = 0; p < count; p += 16) {
    const __mmask16 m = lanes(count - p);
    const __m512 zv = _mm512_maskz_loadu_ps(m, z + p);
    __m512 r = _mm512_maskz_loadu_ps(m, res + p);
    if (has_slope) r = _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ), r, slopes);
    const __m512 branch = elm ? _mm512_mul_ps(zv, r) : zv;
    _mm512_mask_storeu_ps(out + p, m, _mm512_add_ps(_mm512_fmadd_ps(branch, scale, shifts), r));
  }
}

}  // namespace

FusedIsa fused_avx512() { return {"avx512", means<plane_sum>, tail<run>}; }

}  // namespace bitpacked
