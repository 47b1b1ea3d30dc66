// A linear layer for one to four tokens whose weight does not fit in the CPU's caches: the decode step
// of a model too big for L3 (batch 1), where every token streams every weight from memory once.
//
// Why a kernel: measured on one core here, MKL's fp32 matrix-vector product (the (in, out) copy the
// cached steps use) reads weights at ~19 GiB/s, 56-59 % of a read-only sum's ~33-35 GiB/s; reading each
// (out, in) weight row once, start to end, with four independent sums per token (so the adds do not wait
// on each other), reads as fast as that sum (software prefetch on top measured slower).
#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <optional>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kMaxTokens = 4;

inline float sum_lanes(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// y (R, out) = x (R, in) @ weight (out, in)^T + bias; in is a multiple of 4 vectors. R is a template
// argument so that the 4 R accumulators live in registers: with a runtime R (an acc[4][4] array indexed
// in a loop) they went through the stack, and the kernel read ~28 GiB/s where this reads ~33-35.
template <int64_t R>
void stream_rows(const float* x, const float* weight, const float* bias, float* y, int64_t in, int64_t out) {
  constexpr int64_t V = Vec::size();
  for (int64_t o = 0; o < out; ++o) {
    const float* row = weight + o * in;
    Vec acc[R][4];
    for (int64_t r = 0; r < R; ++r)
      for (int k = 0; k < 4; ++k) acc[r][k] = Vec(0.f);
    for (int64_t i = 0; i < in; i += 4 * V) {
      const Vec w0 = Vec::loadu(row + i), w1 = Vec::loadu(row + i + V);
      const Vec w2 = Vec::loadu(row + i + 2 * V), w3 = Vec::loadu(row + i + 3 * V);
      for (int64_t r = 0; r < R; ++r) {
        const float* xr = x + r * in + i;
        acc[r][0] = at::vec::fmadd(w0, Vec::loadu(xr), acc[r][0]);
        acc[r][1] = at::vec::fmadd(w1, Vec::loadu(xr + V), acc[r][1]);
        acc[r][2] = at::vec::fmadd(w2, Vec::loadu(xr + 2 * V), acc[r][2]);
        acc[r][3] = at::vec::fmadd(w3, Vec::loadu(xr + 3 * V), acc[r][3]);
      }
    }
    for (int64_t r = 0; r < R; ++r)
      y[r * out + o] = sum_lanes((acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3])) + (bias ? bias[o] : 0.f);
  }
}

at::Tensor stream_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(0) >= 1 && x.size(0) <= kMaxTokens,
              "stream_linear: x must be (R, in) float32 with 1 <= R <= ", kMaxTokens);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(1) == x.size(1),
              "stream_linear: weight must be (out, in) float32 with x's in");
  const int64_t R = x.size(0), in = x.size(1), out = weight.size(0);
  TORCH_CHECK(in % (4 * Vec::size()) == 0, "stream_linear: in must be a multiple of ", 4 * Vec::size());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == out && bias->scalar_type() == at::kFloat),
              "stream_linear: bias must be (out,) float32");
  const auto xc = x.contiguous(), wc = weight.contiguous();
  const auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({R, out}, x.options());
  const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>(), *bp = bias ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  switch (R) {
    case 1: stream_rows<1>(xp, wp, bp, yp, in, out); break;
    case 2: stream_rows<2>(xp, wp, bp, yp, in, out); break;
    case 3: stream_rows<3>(xp, wp, bp, yp, in, out); break;
    default: stream_rows<4>(xp, wp, bp, yp, in, out); break;
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nanocodegen, m) { m.def("stream_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(nanocodegen, CPU, m) { m.impl("stream_linear", &stream_linear); }
