#include "search/distance.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace engram::search {
namespace {

#if defined(__x86_64__)

float dot_sse2(const float* a, const float* b, size_t n) {
  __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = _mm_add_ps(s0, _mm_mul_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
    s1 = _mm_add_ps(s1, _mm_mul_ps(_mm_loadu_ps(a + i + 4), _mm_loadu_ps(b + i + 4)));
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_add_ps(s0, s1));
  float s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  const __m256 s8 = _mm256_add_ps(s0, s1);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
  float s = _mm_cvtss_f32(s4);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target("avx512f"))) float dot_avx512(const float* a, const float* b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  if (i + 16 <= n) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    i += 16;
  }
  // Not _mm512_reduce_add_ps: GCC 12 warns inside it (-Wuninitialized, GCC bug 105593).
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(s0, s1));
  float s = 0;
  for (const float x : lanes) s += x;
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Fastest first.
std::vector<named_dot> runnable() {
  __builtin_cpu_init();
  std::vector<named_dot> out;
  if (__builtin_cpu_supports("avx512f")) out.push_back({"avx512", dot_avx512});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back({"avx2", dot_avx2});
  out.push_back({"sse2", dot_sse2});
  return out;
}

#else

float dot_scalar(const float* a, const float* b, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

std::vector<named_dot> runnable() { return {{"scalar", dot_scalar}}; }

#endif

}  // namespace

const std::vector<named_dot>& dot_kernels() {
  static const std::vector<named_dot> kernels = runnable();
  return kernels;
}

dot_kernel best_dot() { return dot_kernels().front().kernel; }
const char* best_dot_name() { return dot_kernels().front().name; }

}  // namespace engram::search
