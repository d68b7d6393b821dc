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
//    result is exactly W times the rounded x, whose error sum_i w_i (d a_i - x_i) is smaller than with sum x);
//    X_j = sum_b S_b over the blocks of group j. Once per row of x, shared by every output.
// 2. Group j of row n contributes    sum_i (s c_i + m) d a_i  =  s * sum_b d_b * (sum_{i in b} c_i a_i) + m * X_j
//    The inner sums are integers: 32 products of a 4-bit code (0..15) and an int8, added in int32. AVX2 does
//    them 32 at a time: _mm256_maddubs_epi16 multiplies unsigned bytes by signed bytes and adds neighbours
//    into int16 (|2 * 15 * 127| = 3810 fits), _mm256_madd_epi16 with ones adds neighbours again into int32.
//    Each block's int32 sums go to 8 float lanes, s * d times them added there; the offsets m * X_j go to the
//    same lanes, 8 groups per vector; one horizontal sum per output at the end.
// 3. Four output rows at a time (kTile): each block of x is loaded once for the four, and their four sums are
//    independent chains that the CPU overlaps (one row's chain waits on each multiply-add's latency). Tiles of
//    rows are spread over PyTorch's intra-op threads (at::parallel_for).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>  // the light headers: <ATen/ATen.h> would take the compile from ~10 s to ~20 s

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;  // activations per int8 scale
constexpr int64_t kTile = 4;    // output rows computed together: they share each load of x, and their 4 sums are
                                // independent chains of additions, which the CPU overlaps

#if defined(__AVX2__)
inline float hsum(__m256 v) {  // the sum of the 8 lanes
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}
#endif

// One row of x (k floats, zero-padded to kp) -> kp int8 codes a, kp / 32 scales d, and per group of g inputs the
// sum of the rounded inputs, X_j = sum over the group's blocks of S = d * sum a.
void quantize_row_int8(const float* x, int64_t k, int64_t kp, int64_t g, int8_t* a, float* d, float* group_sums) {
  const int64_t blocks = kp / kBlock;
  std::vector<float> block_sums(blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock;
#if defined(__AVX2__)
    if (lo + kBlock <= k) {  // a whole block: 4 vectors of 8, the same arithmetic as the scalar loop below
      const __m256 sign = _mm256_set1_ps(-0.f);
      __m256 v[4], amax8 = _mm256_setzero_ps();
      for (int q = 0; q < 4; ++q) {
        v[q] = _mm256_loadu_ps(x + lo + 8 * q);
        amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, v[q]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      const float scale = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4))) / 127.f;
      if (scale == 0.f) {
        std::fill(a + lo, a + lo + kBlock, int8_t{0});
        d[b] = 0.f;
        block_sums[b] = 0.f;
        continue;
      }
      __m256i i[4];
      for (int q = 0; q < 4; ++q) {  // round(x / d) to nearest, ties to even, as std::nearbyint
        i[q] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_div_ps(v[q], _mm256_set1_ps(scale)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      __m256i total = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
      __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
      t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
      t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
      // int32 -> int8 (|a| <= 127): the packs interleave 128-bit lanes, the permutation restores the order
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + lo),
                          _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      d[b] = scale;
      block_sums[b] = scale * static_cast<float>(_mm_cvtsi128_si32(t4));
      continue;
    }
#endif
    float amax = 0.f;
    for (int64_t i = lo; i < std::min(lo + kBlock, k); ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax / 127.f;
    int32_t sum = 0;
    for (int64_t i = lo; i < lo + kBlock; ++i) {
      const float v = i < k ? x[i] : 0.f;
      a[i] = scale == 0.f ? 0 : static_cast<int8_t>(std::nearbyint(v / scale));  // |v / scale| <= 127
      sum += a[i];
    }
    d[b] = scale;
    block_sums[b] = scale * static_cast<float>(sum);
  }
  const int64_t per_group = g / kBlock;
  for (int64_t j = 0; j < kp / g; ++j) {
    float sum = 0.f;
    for (int64_t b = 0; b < per_group; ++b) sum += block_sums[j * per_group + b];
    group_sums[j] = sum;
  }
}

// sum over the 32 codes of a block of c_i * a_i, in int32: codes given as the 32 bytes' low (shift 0) or
// high (shift 4) nibbles, starting at `w`. The portable version of what the AVX2 path does.
inline int32_t block_dot(const uint8_t* w, int shift, const int8_t* a, int64_t n) {
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<int32_t>((w[i] >> shift) & 0x0F) * a[i];
  return sum;
}

// R consecutive weight rows (row_bytes apart; scales and mins `groups` apart) times one quantized row of x:
// out[r] = sum_j s_j sum_b d_b (sum_{i in b} c_i a_i)  +  sum_j m_j X_j      (m = -8 s when mins is null)
template <int R>
void dot_rows(const uint8_t* w, int64_t row_bytes, const float* s, const float* m, int64_t groups, int64_t g,
              const int8_t* a, const float* d, const float* group_sums, float* out) {
  const int64_t half = g / 2, blocks = g / kBlock;
#if defined(__AVX2__)
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  // one block: 32 products of codes and a, added into 8 int32 lanes, scaled by s * d into acc
  auto block = [&](int r, __m256i codes, __m256i ab, __m256 scale) {
    const __m256 sums8 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(codes, ab), ones));
    acc[r] = _mm256_fmadd_ps(scale, sums8, acc[r]);
  };
  for (int64_t j = 0; j < groups; ++j) {
    const int8_t* aj = a + j * g;
    const float* dj = d + j * blocks;
    if (g == kBlock) {  // 16 bytes: low nibbles are codes 0..15, high nibbles 16..31, one block
      const __m256i ab = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aj));
      const __m256 dj8 = _mm256_broadcast_ss(dj);
      for (int r = 0; r < R; ++r) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * row_bytes + j * half));
        const __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
        block(r, codes, ab, _mm256_mul_ps(_mm256_broadcast_ss(s + r * groups + j), dj8));
      }
    } else {  // 32 bytes at a time: low nibbles are block c, high nibbles block c + blocks / 2
      for (int64_t c = 0; c < blocks / 2; ++c) {
        const __m256i a_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aj + c * kBlock));
        const __m256i a_high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aj + half + c * kBlock));
        const __m256 d_low = _mm256_broadcast_ss(dj + c), d_high = _mm256_broadcast_ss(dj + blocks / 2 + c);
        for (int r = 0; r < R; ++r) {
          const __m256i raw =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * row_bytes + j * half + c * kBlock));
          const __m256 sj = _mm256_broadcast_ss(s + r * groups + j);
          block(r, _mm256_and_si256(raw, low4), a_low, _mm256_mul_ps(sj, d_low));
          block(r, _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), a_high, _mm256_mul_ps(sj, d_high));
        }
      }
    }
  }
  // the offsets' share, sum_j m_j X_j (m = -8 s: sum_j s_j (-8 X_j), exact scaling), into the same lanes
  const __m256 x_scale = _mm256_set1_ps(m != nullptr ? 1.f : -8.f);
  const float* v = m != nullptr ? m : s;
  int64_t j = 0;
  for (; j + 8 <= groups; j += 8) {
    const __m256 xj = _mm256_mul_ps(_mm256_loadu_ps(group_sums + j), x_scale);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(v + r * groups + j), xj, acc[r]);
  }
  if (j < groups) {  // the last groups % 8: the lanes past the end are masked off (read as zeros)
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(groups - j)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 xj = _mm256_mul_ps(_mm256_maskload_ps(group_sums + j, mask), x_scale);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_maskload_ps(v + r * groups + j, mask), xj, acc[r]);
  }
  if constexpr (R == 4) {  // the four horizontal sums at once: [row 0, row 1, row 2, row 3]
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  } else {
    for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
  }
#else
  for (int r = 0; r < R; ++r) {
    const uint8_t* wr = w + r * row_bytes;
    float total = 0.f;
    for (int64_t j = 0; j < groups; ++j) {
      const uint8_t* wj = wr + j * half;
      const int8_t* aj = a + j * g;
      const float* dj = d + j * blocks;
      float group_total = 0.f;
      if (g == kBlock) {
        group_total = dj[0] * static_cast<float>(block_dot(wj, 0, aj, half) + block_dot(wj, 4, aj + half, half));
      } else {
        for (int64_t c = 0; c < blocks / 2; ++c) {
          group_total += dj[c] * static_cast<float>(block_dot(wj + c * kBlock, 0, aj + c * kBlock, kBlock));
          group_total +=
              dj[blocks / 2 + c] * static_cast<float>(block_dot(wj + c * kBlock, 4, aj + half + c * kBlock, kBlock));
        }
      }
      const float offset = m != nullptr ? m[r * groups + j] : -8.f * s[r * groups + j];
      total += s[r * groups + j] * group_total + offset * group_sums[j];
    }
    out[r] = total;
  }
#endif
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
  std::vector<float> d(rows * blocks), group_sums(rows * groups);
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row_int8(xc.data_ptr<float>() + r * k, k, kp, group_size, a.data() + r * kp, d.data() + r * blocks,
                      group_sums.data() + r * groups);
  }

  at::Tensor y = xc.new_empty({rows, n});
  float* out = y.data_ptr<float>();
  const uint8_t* w = wc.data_ptr<uint8_t>();
  const float* s = sc.data_ptr<float>();
  const float* m = mins.has_value() ? mc.data_ptr<float>() : nullptr;
  const int64_t row_bytes = kp / 2, tiles = (n + kTile - 1) / kTile;
  // about 16 KiB of weights per task: small enough to share tiles out evenly, large enough to be worth a thread
  const int64_t grain = std::max<int64_t>(1, 16384 / (kTile * row_bytes));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    float tile[kTile];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t * kTile;
      for (int64_t r = 0; r < rows; ++r) {
        const int8_t* ar = a.data() + r * kp;
        const float* dr = d.data() + r * blocks;
        const float* xr = group_sums.data() + r * groups;
        const float* mo = m == nullptr ? nullptr : m + o * groups;
        if (o + kTile <= n) {
          dot_rows<kTile>(w + o * row_bytes, row_bytes, s + o * groups, mo, groups, group_size, ar, dr, xr, tile);
        } else {  // the last rows, one at a time
          for (int64_t i = 0; i < n - o; ++i) {
            dot_rows<1>(w + (o + i) * row_bytes, row_bytes, s + (o + i) * groups,
                        m == nullptr ? nullptr : m + (o + i) * groups, groups, group_size, ar, dr, xr, tile + i);
          }
        }
        for (int64_t i = 0; i < std::min(kTile, n - o); ++i) out[r * n + o + i] = tile[i];
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
