// encoder_layer_int8: one BERT encoder layer of frozen packed layers, the op sequence of
// bitops.fuse_encoder_layers_ (bitops/api.py, _EncoderLayerPlan.run) in one call. Why: at batch 1 the
// Python between the ~10 ops of a layer (argument passing, views, checks) took ~100-150 us a layer,
// ~5% of a 128-token MiniLM forward and a third of a short one. The ops are called through the
// dispatcher, so each device's kernels (or references) run, and the outputs are the Python
// sequence's bit for bit. Registered CompositeImplicitAutograd: meta tensors and torch.compile see
// the ops it calls (their fakes), no kernel or fake of its own.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "checks.h"

namespace bitops {
namespace {

using OptTensor = std::optional<at::Tensor>;
using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const OptTensor&, int64_t, int64_t, int64_t);
using GemvSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const OptTensor&, int64_t);
using QuantizeSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, const std::string&);
using AddNormSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&,
                                                                   const OptTensor&, const OptTensor&, double, int64_t);
using AttentionSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                std::optional<double>);

template <class Sig>
c10::TypedOperatorHandle<Sig> bitops_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

struct Ops {
  c10::TypedOperatorHandle<LinearSig> linear = bitops_op<LinearSig>("bitops::packed_linear_int8");
  c10::TypedOperatorHandle<GemvSig> gemv = bitops_op<GemvSig>("bitops::packed_gemv_int8");
  c10::TypedOperatorHandle<QuantizeSig> quantize = bitops_op<QuantizeSig>("bitops::quantize_rows_int8");
  c10::TypedOperatorHandle<AddNormSig> add_norm = bitops_op<AddNormSig>("bitops::add_layer_norm_int8");
  c10::TypedOperatorHandle<AttentionSig> attention = bitops_op<AttentionSig>("bitops::attention");
};

const Ops& ops() {
  static const Ops handles;  // looked up once: the schemas are all defined when the library loads
  return handles;
}

const std::string kNoActivation = "none", kGelu = "gelu";

// The four packed layers' arguments, layer i of each list.
struct Layers {
  at::TensorList packed, scales;
  const c10::List<OptTensor>& biases;
  const c10::List<OptTensor>& gemv;
  at::IntArrayRef bits, in_features, group_sizes, act_bits;

  // Layer i on codes already quantized: its GEMV layout where given (callers give it for few rows), else the GEMM.
  at::Tensor matmul(size_t i, const at::Tensor& q, const at::Tensor& x_scale) const {
    const OptTensor layout = gemv.get(i), bias = biases.get(i);
    if (layout.has_value()) return ops().gemv.call(q, x_scale, *layout, scales[i], bias, in_features[i]);
    return ops().linear.call(q, x_scale, packed[i], scales[i], bias, bits[i], in_features[i], group_sizes[i]);
  }
  at::Tensor quantize_matmul(size_t i, const at::Tensor& x) const {
    const auto [q, s] = ops().quantize.call(x, act_bits[i], kNoActivation);
    return matmul(i, q, s);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> encoder_layer_int8(
    const at::Tensor& x, const OptTensor& x_codes, const OptTensor& x_scales, const OptTensor& attn_mask,
    int64_t num_heads, double scale, at::TensorList packed_weights, at::TensorList weight_scales,
    const c10::List<OptTensor>& biases, const c10::List<OptTensor>& gemv_weights, at::IntArrayRef bits,
    at::IntArrayRef in_features, at::IntArrayRef group_sizes, at::IntArrayRef act_bits, const OptTensor& norm1_weight,
    const OptTensor& norm1_bias, double norm1_eps, const OptTensor& norm2_weight, const OptTensor& norm2_bias,
    double norm2_eps, int64_t out_bits) {
  const std::pair<const char*, size_t> lists[8] = {
      {"packed_weights", packed_weights.size()}, {"weight_scales", weight_scales.size()}, {"biases", biases.size()},
      {"gemv_weights", gemv_weights.size()}, {"bits", bits.size()}, {"in_features", in_features.size()},
      {"group_sizes", group_sizes.size()}, {"act_bits", act_bits.size()}};
  check_encoder_layer_args(x, x_codes, x_scales, num_heads, scale, lists, out_bits);
  const Layers layers{packed_weights, weight_scales, biases, gemv_weights, bits, in_features, group_sizes, act_bits};
  const int64_t b = x.size(0), t = x.size(1), hidden = x.size(2), head_size = hidden / num_heads;
  const at::Tensor x2 = x.reshape({b * t, hidden});

  // Each intermediate goes as soon as the next step has read it (the QKV and intermediate outputs are
  // 19 and 25 MB at 32 x 128 tokens of MiniLM): freed blocks are reused by the next allocations.
  at::Tensor h;
  {
    // Query, key and value in one GEMM, split into heads: three (B, heads, T, head size) views.
    const at::Tensor qkv = x_codes.has_value() ? layers.matmul(0, *x_codes, *x_scales) : layers.quantize_matmul(0, x2);
    TORCH_CHECK_VALUE(qkv.size(1) == 3 * hidden, "packed_weights[0] has ", qkv.size(1), " output rows; expected ",
                      3 * hidden, ": query, key and value of x's hidden size ", hidden);
    const std::vector<at::Tensor> heads = qkv.view({b, t, 3, num_heads, head_size}).permute({2, 0, 3, 1, 4}).unbind(0);
    // (B, heads, T, head size) as a view of (B, T, heads, head size) memory: merging the heads is free.
    const at::Tensor attended =
        ops().attention.call(heads[0], heads[1], heads[2], attn_mask, scale).transpose(1, 2).reshape({b * t, hidden});
    h = layers.quantize_matmul(1, attended);
  }
  auto [x1, q1, s1] = ops().add_norm.call(h, x2, norm1_weight, norm1_bias, norm1_eps, act_bits[2]);
  h.reset();
  at::Tensor inner = layers.matmul(2, q1, s1);
  q1.reset(), s1.reset();
  auto [q2, s2] = ops().quantize.call(inner, act_bits[3], kGelu);  // GELU and quantization in one pass
  inner.reset();
  const at::Tensor h2 = layers.matmul(3, q2, s2);
  q2.reset(), s2.reset();
  if (out_bits == 0) {  // no packed layer after this one: torch's LayerNorm, no codes
    const at::Tensor out = at::layer_norm(h2 + x1, {hidden}, norm2_weight, norm2_bias, norm2_eps);
    return {out.view({b, t, hidden}), at::empty({0}, x.options().dtype(at::kChar)), at::empty({0}, x.options())};
  }
  const auto [out, codes, scales] = ops().add_norm.call(h2, x1, norm2_weight, norm2_bias, norm2_eps, out_bits);
  return {out.view({b, t, hidden}), codes, scales};
}

}  // namespace

TORCH_LIBRARY_IMPL(bitops, CompositeImplicitAutograd, m) { m.impl("encoder_layer_int8", &encoder_layer_int8); }

}  // namespace bitops
