// Attention of one new query per sequence over that sequence's cached keys and values: the batched
// agents' decode step, where rows sit at different context lengths.
//
// Why a kernel: written as tensor ops (even compiled by inductor), attention over R cache rows reads every
// row up to the longest row's length and reduces over head_dim=32 one key at a time, ~14-25 ns per key
// and head here; this loop stops at each row's own length, keeps the scores in L1 and streams each row's
// keys and values once, ~5 ns per key and head at 256 rows (bound by reading the cache from memory).
//
// Arithmetic in fp32 whatever the cache's dtype (fp32 or bf16), the same sums as the written-out
// softmax in model.py: scores = q . k * scale, weights = exp(scores - max), out = sum(weights * v) / sum(weights).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int kMaxChunks = 16;  // head_dim up to 16 vectors (256 floats with AVX-512)

inline void load_floats(const float* p, Vec& out) { out = Vec::loadu(p); }
inline void load_floats(const at::BFloat16* p, Vec& out) { at::vec::load_fp32_from_bf16(p, out); }

inline float sum_lanes(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// q (R, H, D) fp32; kv (2, B, H, L, D) keys then values; row r reads positions [0, lengths[r]) of cache row rows[r].
// Read-ahead: the cache is far larger than the CPU's caches and each (row, head) is a short block of keys
// and one of values, which the hardware prefetcher ramps up on too late (measured here: ~8 GB/s without,
// against ~37 GB/s for a long sequential read). The kernel reads the blocks in a known order, the keys of
// (row, head) i, then its values, then those of i + 1, ...; `ReadAhead` walks that same order kAhead
// vectors (D elements each) ahead of the reading and prefetches one vector per vector read.
constexpr int64_t kAhead = 128;

template <typename T>
struct ReadAhead {
  const T* kv;
  const int64_t *rows, *lengths;
  int64_t B, H, L, D, end;
  int64_t item, part, index;  // the next vector to fetch: (row, head) item, part 0 keys / 1 values, position

  ReadAhead(const T* kv, const int64_t* rows, const int64_t* lengths, int64_t B, int64_t H, int64_t L, int64_t D,
            int64_t begin, int64_t end)
      : kv(kv), rows(rows), lengths(lengths), B(B), H(H), L(L), D(D), end(end), item(begin), part(0), index(0) {
    for (int64_t k = 0; k < kAhead; ++k) next();
  }

  inline void next() {
    if (item >= end) return;
    const int64_t r = item / H, h = item % H;
    const T* p = kv + ((part * B + rows[r]) * H + h) * L * D + index * D;
    const auto* bytes = reinterpret_cast<const char*>(p);
    for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(bytes + b, 0, 3);
    if (++index == lengths[r]) {
      index = 0;
      if (++part == 2) part = 0, ++item;
    }
  }
};

template <typename T>
void attend(const float* q, const T* kv, const int64_t* rows, const int64_t* lengths, float* out, int64_t R,
            int64_t B, int64_t H, int64_t L, int64_t D, float scale) {
  constexpr int64_t V = Vec::size();
  const int64_t chunks = D / V;
  at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(L);
    ReadAhead<T> ahead(kv, rows, lengths, B, H, L, D, begin, end);
    Vec qv[kMaxChunks], acc[kMaxChunks], x;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / H, h = i % H, n = lengths[r];
      const T* keys = kv + (rows[r] * H + h) * L * D;          // (n, D)
      const T* values = kv + ((B + rows[r]) * H + h) * L * D;  // (n, D)
      for (int64_t c = 0; c < chunks; ++c) qv[c] = Vec::loadu(q + i * D + c * V) * Vec(scale);
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) {  // scores, and their max
        ahead.next();
        Vec dot(0.f);
        for (int64_t c = 0; c < chunks; ++c) {
          load_floats(keys + j * D + c * V, x);
          dot = at::vec::fmadd(qv[c], x, dot);
        }
        const float s = sum_lanes(dot);
        scores[j] = s;
        top = s > top ? s : top;
      }
      Vec total(0.f);  // unnormalised weights, in place
      int64_t j = 0;
      for (; j + V <= n; j += V) {
        const Vec w = (Vec::loadu(scores.data() + j) - Vec(top)).exp_u20();
        w.store(scores.data() + j);
        total = total + w;
      }
      float weight_sum = sum_lanes(total);
      for (; j < n; ++j) {
        scores[j] = std::exp(scores[j] - top);
        weight_sum += scores[j];
      }
      for (int64_t c = 0; c < chunks; ++c) acc[c] = Vec(0.f);
      for (int64_t t = 0; t < n; ++t) {  // the weighted sum of the values
        ahead.next();
        const Vec w(scores[t]);
        for (int64_t c = 0; c < chunks; ++c) {
          load_floats(values + t * D + c * V, x);
          acc[c] = at::vec::fmadd(w, x, acc[c]);
        }
      }
      const Vec inverse(1.f / weight_sum);
      for (int64_t c = 0; c < chunks; ++c) (acc[c] * inverse).store(out + i * D + c * V);
    }
  });
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& kv, const at::Tensor& rows,
                            const at::Tensor& lengths, double scale) {
  TORCH_CHECK(query.dim() == 3 && query.scalar_type() == at::kFloat, "decode_attention: q must be (R, H, D) float32");
  const auto q = query.contiguous();
  TORCH_CHECK(kv.dim() == 5 && kv.size(0) == 2 && kv.is_contiguous(),
              "decode_attention: kv must be a contiguous (2, B, H, L, D) cache");
  TORCH_CHECK(kv.scalar_type() == at::kFloat || kv.scalar_type() == at::kBFloat16,
              "decode_attention: the cache must be float32 or bfloat16");
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2), B = kv.size(1), L = kv.size(3);
  TORCH_CHECK(kv.size(2) == H && kv.size(4) == D, "decode_attention: q's heads and head_dim must match the cache's");
  TORCH_CHECK(D % Vec::size() == 0 && D / Vec::size() <= kMaxChunks,
              "decode_attention: head_dim must be a multiple of ", Vec::size(), " and at most ",
              kMaxChunks * Vec::size());
  TORCH_CHECK(rows.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong && rows.numel() == R &&
                  lengths.numel() == R,
              "decode_attention: rows and lengths must be (R,) int64");
  const auto rows_c = rows.contiguous(), lengths_c = lengths.contiguous();
  const int64_t* row = rows_c.data_ptr<int64_t>();
  const int64_t* length = lengths_c.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {  // the kernel reads raw memory: no index may leave the cache
    TORCH_CHECK(row[r] >= 0 && row[r] < B, "decode_attention: row ", row[r], " is outside the cache's ", B, " rows");
    TORCH_CHECK(length[r] >= 1 && length[r] <= L, "decode_attention: length ", length[r], " is outside 1..", L);
  }
  auto out = at::empty({R, H, D}, q.options());
  if (kv.scalar_type() == at::kBFloat16) {
    attend(q.data_ptr<float>(), kv.data_ptr<at::BFloat16>(), row, length, out.data_ptr<float>(), R, B, H, L, D,
           static_cast<float>(scale));
  } else {
    attend(q.data_ptr<float>(), kv.data_ptr<float>(), row, length, out.data_ptr<float>(), R, B, H, L, D,
           static_cast<float>(scale));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(nanocodegen, m) {
  m.def("decode_attention(Tensor q, Tensor kv, Tensor rows, Tensor lengths, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nanocodegen, CPU, m) { m.impl("decode_attention", &decode_attention); }
