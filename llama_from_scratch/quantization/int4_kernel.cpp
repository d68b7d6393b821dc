// llama_from_scratch::int4_matmul: y = x @ W.T for Int4Linear's group-wise int4 weights, on the CPU,
// with integer dot products (the way llama.cpp multiplies Q4_1 weights by Q8_1 activations).
//
// Built on first use by int4_kernel.py (torch.utils.cpp_extension); see its docstring for the ideas.
//
//   x        (M, K)       float32 activations
//   qweight  (N, G * g/2) uint8: group j of row n holds codes c[0..g) of w[n, j*g .. j*g+g), byte i of the
//                         group = c[i] | c[i + g/2] << 4 (low nibbles: first half, high nibbles: second half)
//   scales   (N, G)       float32 s
//   mins     (N, G)       float32 m, or None (symmetric: m = -8 s)      w = s * c + m
//   -> y     (M, N)       float32
//
// 1. Each row of x is quantized to int8 in blocks of 32, as llama.cpp's quantize_row_q8_1: d = max|x| / 127,
//    a = round(x / d) in -127..127, and the block's sum S = d * sum a (of the rounded inputs, not of x: then the
//    result is exactly W times the rounded x, whose error sum_i w_i (d a_i - x_i) is smaller than with sum x).
// 2. Group j of row n contributes    sum_i (s c_i + m) d a_i  =  s * sum_b d_b * (sum_{i in b} c_i a_i) + m * sum_b S_b
//    The inner sums are integers: 32 products of a 4-bit code (0..15) and an int8, added in int32. AVX2 does
//    them 32 at a time: _mm256_maddubs_epi16 multiplies unsigned bytes by signed bytes and adds neighbours
//    into int16 (|2 * 15 * 127| = 3810 fits), _mm256_madd_epi16 with ones adds neighbours again into int32.
// 3. Output rows are spread over PyTorch's intra-op threads (at::parallel_for).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>  // the light headers: <ATen/ATen.h> would take the compile from ~10 s to ~20 s

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;  // activations per int8 scale

// One row of x (k floats, zero-padded to kp) -> kp int8 codes, kp / 32 scales d and block sums S = d * sum a.
void quantize_row_int8(const float* x, int64_t k, int64_t kp, int8_t* a, float* d, float* sums) {
  for (int64_t b = 0; b < kp / kBlock; ++b) {
    float amax = 0.f;
    for (int64_t i = b * kBlock; i < std::min((b + 1) * kBlock, k); ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax / 127.f;
    int32_t sum = 0;
    for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
      const float v = i < k ? x[i] : 0.f;
      a[i] = scale == 0.f ? 0 : static_cast<int8_t>(std::nearbyint(v / scale));  // |v / scale| <= 127
      sum += a[i];
    }
    d[b] = scale;
    sums[b] = scale * static_cast<float>(sum);
  }
}

// sum over the 32 codes of a block of c_i * a_i, in int32: codes given as the 32 bytes' low (shift 0) or
// high (shift 4) nibbles, starting at `w`. The portable version of what the AVX2 path does.
inline int32_t block_dot(const uint8_t* w, int shift, const int8_t* a, int64_t n) {
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<int32_t>((w[i] >> shift) & 0x0F) * a[i];
  return sum;
}

// One output: the dot product of a packed weight row with one quantized row of x.
float dot_row(const uint8_t* w, const float* s, const float* m, const int8_t* a, const float* d,
              const float* sums, int64_t groups, int64_t g) {
  const int64_t half = g / 2, blocks = g / kBlock;
  float offset_total = 0.f;  // sum over groups of m * (sum of the rounded x over the group)
#if defined(__AVX2__)
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  // the 32 products of one block, added into 8 int32 lanes and scaled by s * d into acc
  auto add_block = [&](__m256i codes, const int8_t* ab, float scale) {
    const __m256i pairs = _mm256_maddubs_epi16(codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab)));
    const __m256 sums8 = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), sums8, acc);
  };
#endif
  for (int64_t j = 0; j < groups; ++j) {
    const uint8_t* wj = w + j * half;
    const int8_t* aj = a + j * g;
    const float* dj = d + j * blocks;
    const float mj = m != nullptr ? m[j] : -8.f * s[j];
    float xsum = 0.f;
    for (int64_t b = 0; b < blocks; ++b) xsum += sums[j * blocks + b];
    offset_total += mj * xsum;
#if defined(__AVX2__)
    if (g == kBlock) {  // 16 bytes: low nibbles are codes 0..15, high nibbles 16..31, one block
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wj));
      const __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
      add_block(codes, aj, s[j] * dj[0]);
    } else {  // 32 bytes at a time: low nibbles are block c, high nibbles block c + blocks / 2
      for (int64_t c = 0; c < blocks / 2; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + c * kBlock));
        add_block(_mm256_and_si256(raw, low4), aj + c * kBlock, s[j] * dj[c]);
        add_block(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), aj + half + c * kBlock, s[j] * dj[blocks / 2 + c]);
      }
    }
#else
    float group_total = 0.f;
    if (g == kBlock) {
      group_total = dj[0] * static_cast<float>(block_dot(wj, 0, aj, half) + block_dot(wj, 4, aj + half, half));
    } else {
      for (int64_t c = 0; c < blocks / 2; ++c) {
        group_total += dj[c] * static_cast<float>(block_dot(wj + c * kBlock, 0, aj + c * kBlock, kBlock));
        group_total += dj[blocks / 2 + c] * static_cast<float>(block_dot(wj + c * kBlock, 4, aj + half + c * kBlock, kBlock));
      }
    }
    offset_total += s[j] * group_total;
#endif
  }
#if defined(__AVX2__)
  // horizontal sum of the 8 lanes
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  offset_total += _mm_cvtss_f32(r);
#endif
  return offset_total;
}

at::Tensor int4_matmul(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                       const std::optional<at::Tensor>& mins, int64_t group_size) {
  TORCH_CHECK(group_size % (2 * kBlock) == 0 || group_size == kBlock,
              "int4_matmul: group_size must be 32 or a multiple of 64, got ", group_size);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "int4_matmul: x must be a 2-d float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kByte, "int4_matmul: qweight must be 2-d uint8");
  TORCH_CHECK(scales.dim() == 2 && scales.scalar_type() == at::kFloat, "int4_matmul: scales must be 2-d float32");
  const int64_t n = qweight.size(0), groups = scales.size(1), k = x.size(1), kp = groups * group_size;
  TORCH_CHECK(scales.size(0) == n && qweight.size(1) * 2 == kp && k <= kp && k > kp - group_size,
              "int4_matmul: shapes do not fit: x ", x.sizes(), ", qweight ", qweight.sizes(), ", scales ",
              scales.sizes(), ", group_size ", group_size);
  if (mins.has_value()) {
    TORCH_CHECK(mins->sizes() == scales.sizes() && mins->scalar_type() == at::kFloat,
                "int4_matmul: mins must be float32 shaped like scales");
  }
  const at::Tensor xc = x.contiguous(), wc = qweight.contiguous(), sc = scales.contiguous();
  const at::Tensor mc = mins.has_value() ? mins->contiguous() : at::Tensor();
  const int64_t rows = x.size(0), blocks = kp / kBlock;

  std::vector<int8_t> a(rows * kp);
  std::vector<float> d(rows * blocks), sums(rows * blocks);
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row_int8(xc.data_ptr<float>() + r * k, k, kp, a.data() + r * kp, d.data() + r * blocks,
                      sums.data() + r * blocks);
  }

  at::Tensor y = xc.new_empty({rows, n});
  float* out = y.data_ptr<float>();
  const uint8_t* w = wc.data_ptr<uint8_t>();
  const float* s = sc.data_ptr<float>();
  const float* m = mins.has_value() ? mc.data_ptr<float>() : nullptr;
  const int64_t row_bytes = kp / 2;
  // about 16 KiB of weights per task: small enough to share rows out evenly, large enough to be worth a thread
  const int64_t grain = std::max<int64_t>(1, 16384 / row_bytes);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t r = 0; r < rows; ++r) {
        out[r * n + o] = dot_row(w + o * row_bytes, s + o * groups, m == nullptr ? nullptr : m + o * groups,
                                 a.data() + r * kp, d.data() + r * blocks, sums.data() + r * blocks, groups,
                                 group_size);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(llama_from_scratch, m) {
  m.def("int4_matmul(Tensor x, Tensor qweight, Tensor scales, Tensor? mins, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(llama_from_scratch, CPU, m) { m.impl("int4_matmul", &int4_matmul); }
