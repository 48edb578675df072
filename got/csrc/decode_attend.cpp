// One-query attention for CPU decode steps, in one pass per key/value head.
//
// A decode step's attention is, per layer, two tiny products over the KV buffer plus a softmax; as torch ops that is
// about ten calls per layer whose set-up, not the arithmetic or the reading of the cache, sets the time (4.2 ms of a
// 22 ms base step, docs/benchmarks.md). Here each (batch row, key/value head) reads its keys and values once, for all
// the query heads that share them (grouped-query attention), in fp32: scores, mask, softmax, weighted sum; the answer
// is rounded to the input's dtype once, at the end, as SDPA's CPU kernel does.
//
// got_cpu::decode_attend(q (B, KVH, G, D), key (B, KVH, L, D), value (B, KVH, L, D), mask (B, 1, 1, >= L) bool
// (true = attend) or additive, or none; scale) -> (B, KVH, G, D). bf16 or fp32; D contiguous.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <limits>
#include <vector>

namespace {

inline float load1(const float* p) { return *p; }
inline float load1(const at::BFloat16* p) { return static_cast<float>(*p); }

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

// 16 values from memory as fp32
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const at::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// exp(x) for x <= 0 (softmax after the max is taken off): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], p of degree 6
// (relative error ~2e-7); below -87 the result is 0.
__attribute__((target("avx512f,avx512bw"))) inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 zero = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(~zero, p, _mm512_castsi512_ps(e));
}

struct Args {
  int64_t B, KVH, G, L, D;
  int64_t qs[3], ks[3], vs[3];  // strides of q / key / value over (B, KVH, G or L); D is contiguous
  int64_t ms;                   // mask's stride over B (0: one row for all); mask is read at [b * ms + l]
  float scale;
};

// One (batch row, key/value head): its G queries attend over rows [0, L) into out (G x D); w is the caller's scratch
// of G * (L + 2 * D + 2) floats, reused across heads. Scores of masked rows are -inf and add nothing; a query with every row masked answers zeros.
template <typename T, typename M>
__attribute__((target("avx512f,avx512bw")))
void attend_one(const Args& a, const T* q, const T* k, const T* v, const M* mask, T* out, float* w) {
  const int64_t G = a.G, L = a.L, D = a.D;
  float *s = w, *acc = s + G * L, *qf = acc + G * D, *mx = qf + G * D, *den = mx + G;  // scores, sums, queries
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) qf[g * D + d] = load1(q + g * a.qs[2] + d) * a.scale;
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t g = 0; g < G; ++g) mx[g] = ninf, den[g] = 0.f;
  for (int64_t l = 0; l < L; ++l) {
    float add = 0.f;
    if constexpr (std::is_same_v<M, bool>) {
      if (mask && !mask[l]) { for (int64_t g = 0; g < G; ++g) s[g * L + l] = ninf; continue; }
    } else if (mask) {
      add = load1(mask + l);
    }
    const T* kr = k + l * a.ks[2];
    for (int64_t g = 0; g < G; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(&qf[g * D + d]), load16(kr + d), sum);
      const float x = _mm512_reduce_add_ps(sum) + add;
      s[g * L + l] = x;
      mx[g] = std::max(mx[g], x);
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // softmax numerators in place; den = their sum
    if (mx[g] == ninf) continue;  // nothing to attend to
    float* sg = s + g * L;
    const __m512 m = _mm512_set1_ps(mx[g]);
    __m512 tot = _mm512_setzero_ps();
    int64_t l = 0;
    for (; l + 16 <= L; l += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(sg + l), m));
      _mm512_storeu_ps(sg + l, e);
      tot = _mm512_add_ps(tot, e);
    }
    if (l < L) {
      const __mmask16 t = static_cast<__mmask16>((1u << (L - l)) - 1);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, sg + l), m));
      _mm512_mask_storeu_ps(sg + l, t, e);
      tot = _mm512_add_ps(tot, _mm512_maskz_mov_ps(t, e));
    }
    den[g] = _mm512_reduce_add_ps(tot);
  }
  for (int64_t i = 0; i < G * D; ++i) acc[i] = 0.f;
  for (int64_t l = 0; l < L; ++l) {  // weighted sum of the values, each row read once for all G queries
    const T* vr = v + l * a.vs[2];
    for (int64_t g = 0; g < G; ++g) {
      const float p = s[g * L + l];
      if (!(p > 0.f)) continue;  // masked (-inf), underflowed, or a head with nothing to attend to
      const __m512 pv = _mm512_set1_ps(p);
      for (int64_t d = 0; d < D; d += 16)
        _mm512_storeu_ps(acc + g * D + d, _mm512_fmadd_ps(pv, load16(vr + d), _mm512_loadu_ps(acc + g * D + d)));
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // a head with nothing to attend to answers zeros
    const float inv = den[g] > 0.f ? 1.f / den[g] : 0.f;
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = static_cast<T>(acc[g * D + d] * inv);
  }
}

template <typename T, typename M>
void attend(const Args& a, const T* q, const T* k, const T* v, const M* mask, T* out, const int64_t* os) {
  at::parallel_for(0, a.B * a.KVH, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> scratch(a.G * (a.L + 2 * a.D + 2));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / a.KVH, h = u % a.KVH;
      attend_one<T, M>(a, q + b * a.qs[0] + h * a.qs[1], k + b * a.ks[0] + h * a.ks[1], v + b * a.vs[0] + h * a.vs[1],
                       mask ? mask + b * a.ms : nullptr, out + b * os[0] + h * os[1], scratch.data());
    }
  });
}

}  // namespace

bool available() {
  static const bool ok = cpu_has_avx512();
  return ok;
}

torch::Tensor decode_attend(const torch::Tensor& q, const torch::Tensor& key, const torch::Tensor& value,
                            const c10::optional<torch::Tensor>& mask, double scale) {
  TORCH_CHECK(available(), "got_cpu::decode_attend: this CPU has no AVX-512");
  TORCH_CHECK(q.dim() == 4 && key.dim() == 4 && value.dim() == 4, "got_cpu::decode_attend: 4-d q, key, value");
  TORCH_CHECK(q.scalar_type() == key.scalar_type() && q.scalar_type() == value.scalar_type(),
              "got_cpu::decode_attend: q, key and value of one dtype");
  const int64_t D = q.size(3);
  TORCH_CHECK(D % 16 == 0 && key.size(3) == D && value.size(3) == D && q.stride(3) == 1 && key.stride(3) == 1 &&
              value.stride(3) == 1, "got_cpu::decode_attend: head size a multiple of 16, contiguous");
  Args a{q.size(0), q.size(1), q.size(2), key.size(2), D, {q.stride(0), q.stride(1), q.stride(2)},
         {key.stride(0), key.stride(1), key.stride(2)}, {value.stride(0), value.stride(1), value.stride(2)}, 0,
         static_cast<float>(scale)};
  auto out = torch::empty_like(q, at::MemoryFormat::Contiguous);
  const int64_t os[2] = {out.stride(0), out.stride(1)};
  torch::Tensor m;
  if (mask.has_value()) {
    m = mask->reshape({mask->size(0), mask->size(-1)}).contiguous();
    TORCH_CHECK(m.size(1) >= a.L && (m.size(0) == a.B || m.size(0) == 1), "got_cpu::decode_attend: mask (B, 1, 1, >= L)");
    a.ms = m.size(0) == 1 ? 0 : m.stride(0);
  }
  TORCH_CHECK(q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat,
              "got_cpu::decode_attend: bf16 or fp32");
  if (mask.has_value() && m.scalar_type() != torch::kBool) m = m.to(torch::kFloat);  // additive
  auto run = [&](auto zero) {  // one dtype: no mask, a bool mask or an additive one
    using T = decltype(zero);
    const T *qp = q.data_ptr<T>(), *kp = key.data_ptr<T>(), *vp = value.data_ptr<T>();
    if (!mask.has_value()) attend<T, bool>(a, qp, kp, vp, nullptr, out.data_ptr<T>(), os);
    else if (m.scalar_type() == torch::kBool) attend<T, bool>(a, qp, kp, vp, m.data_ptr<bool>(), out.data_ptr<T>(), os);
    else attend<T, float>(a, qp, kp, vp, m.data_ptr<float>(), out.data_ptr<T>(), os);
  };
  if (q.scalar_type() == torch::kBFloat16) run(at::BFloat16(0.f));
  else run(0.f);
  return out;
}

TORCH_LIBRARY(got_cpu, m) {
  m.def("decode_attend(Tensor q, Tensor key, Tensor value, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(got_cpu, CPU, m) {
  m.impl("decode_attend", &decode_attend);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("available", &available);
}
