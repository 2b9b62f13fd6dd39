// Argument checks shared by every device's kernels. They state the rules of bitops/_checks.py with
// the same wording, so a user sees one message whichever backend runs: the argument, the value it
// got, what was expected. TORCH_CHECK_VALUE surfaces in Python as ValueError.
#pragma once

#include <torch/types.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <utility>

namespace bitops {

inline int64_t words_per_row(int64_t k, int64_t bits) { return (k + (32 / bits) - 1) / (32 / bits); }

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

// dtype names as Python spells them, so C++ and Python messages read the same.
inline std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits == 1 || bits == 2, "bits=", bits,
                    " is not supported; expected 1 (sign) or 2 (two's-complement 2-bit codes)");
}

inline void check_dtype(const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK_VALUE(t.scalar_type() == want, name, " has dtype ", py_dtype(t.scalar_type()), "; expected ",
                    py_dtype(want));
}

inline void check_in_features(int64_t k) {
  TORCH_CHECK_VALUE(k >= 1, "in_features=", k, "; expected a positive int (the unpacked K)");
}

inline void check_same_device(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device(), "; expected all tensors on one device");
}

// Validates a packed (N, W) weight against bits and K; returns N.
inline int64_t check_packed_weight(const at::Tensor& w, int64_t bits, int64_t k) {
  check_bits(bits);
  check_in_features(k);
  check_dtype("packed_weight", w, at::kInt);
  TORCH_CHECK_VALUE(w.dim() == 2, "packed_weight has ", w.dim(), " dimensions (shape ", shape_str(w),
                    "); expected 2: (out_features, words) packed along K");
  const int64_t want = words_per_row(k, bits);
  TORCH_CHECK_VALUE(w.size(1) == want, "packed_weight has ", w.size(1), " words per row (shape ", shape_str(w),
                    "); expected ", want, " for in_features=", k, " at bits=", bits);
  return w.size(0);
}

inline void check_finite(const char* name, const at::Tensor& t) {
  if (t.numel() == 0) return;
  bool finite = true;
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {
    // A plain loop: at::isfinite(t).all() dispatches ~6 ATen ops, which cost more than a small
    // layer's whole GEMM when called twice per forward (eager BERT at batch 1 spent 9% there).
    const float* p = t.data_ptr<float>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) finite &= std::isfinite(p[i]);
  } else {
    finite = at::isfinite(t).all().item<bool>();
  }
  TORCH_CHECK_VALUE(finite, name, " holds non-finite values (nan or inf); expected finite scales");
}

inline void check_weight_scale(const at::Tensor& s, int64_t n, int64_t k, int64_t group_size) {
  TORCH_CHECK_VALUE(group_size >= 1, "group_size=", group_size,
                    "; expected a positive int (in_features for one scale per row)");
  check_dtype("weight_scale", s, at::kFloat);
  const int64_t groups = (k + group_size - 1) / group_size;
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == n && s.size(1) == groups, "weight_scale has shape ",
                    shape_str(s), "; expected (", n, ", ", groups, ") for out_features=", n, ", in_features=", k,
                    ", group_size=", group_size);
  check_finite("weight_scale", s);
}

inline void check_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& ref) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(at::isFloatingType(bias->scalar_type()), "bias has dtype ", py_dtype(bias->scalar_type()),
                    "; expected a floating dtype");
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias has shape ", shape_str(*bias), "; expected (",
                    n, ",) for out_features=", n);
  check_same_device("bias", *bias, "packed_weight", ref);
}

inline bool is_float_activation(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_float_activation(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(is_float_activation(t.scalar_type()), name, " has dtype ", py_dtype(t.scalar_type()),
                    "; expected torch.float32 or torch.bfloat16 or torch.float16");
}

inline void check_2d_columns(const char* name, const at::Tensor& t, int64_t cols, const char* what,
                             const char* col_name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " has ", t.dim(), " dimensions (shape ", shape_str(t), "); expected 2: ",
                    what);
  TORCH_CHECK_VALUE(t.size(1) == cols, name, " has ", t.size(1), " columns (shape ", shape_str(t), "); expected ",
                    col_name, "=", cols);
}

// The argument checks of each op, in the order every device runs them. Each returns N (out_features)
// where the op has one.
inline void check_pack_args(const at::Tensor& codes, int64_t bits) {
  check_bits(bits);
  check_dtype("codes", codes, at::kChar);
  TORCH_CHECK_VALUE(codes.dim() >= 1 && codes.size(-1) >= 1, "codes has shape ", shape_str(codes),
                    "; expected at least one dimension with K >= 1 codes in the last");
}

// A code outside the format, found while packing.
[[noreturn]] inline void fail_bad_code(int value, int64_t bits) {
  TORCH_CHECK_VALUE(false, "codes holds the value ", value, "; expected codes in ", bits == 1 ? "{-1, +1}" : "[-2, 1]",
                    " for bits=", bits);
  std::abort();  // not reached
}

inline void check_unpack_args(const at::Tensor& packed, int64_t bits, int64_t k) {
  check_bits(bits);
  check_dtype("packed", packed, at::kInt);
  TORCH_CHECK_VALUE(k >= 1, "k=", k, "; expected a positive int (the number of codes per row)");
  TORCH_CHECK_VALUE(packed.dim() >= 1, "packed is a 0-dimensional tensor; expected (..., words)");
  const int64_t nw = words_per_row(k, bits);
  TORCH_CHECK_VALUE(packed.size(-1) == nw, "packed has ", packed.size(-1), " words in its last dimension; expected ",
                    nw, " for k=", k, " at bits=", bits);
}

// x int8 (M, in_features) with x_scale float32 (M,): the activations of the int8 GEMMs.
inline void check_int8_activations(const at::Tensor& x, const at::Tensor& x_scale, int64_t in_features) {
  check_dtype("x", x, at::kChar);
  check_2d_columns("x", x, in_features, "(M, in_features) int8 activations", "in_features");
  check_dtype("x_scale", x_scale, at::kFloat);
  TORCH_CHECK_VALUE(x_scale.dim() == 1 && x_scale.size(0) == x.size(0), "x_scale has shape ", shape_str(x_scale),
                    "; expected (", x.size(0), ",), one scale per row of x");
}

inline int64_t check_linear_int8_args(const at::Tensor& x, const at::Tensor& x_scale, const at::Tensor& w,
                                      const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, int64_t bits,
                                      int64_t in_features, int64_t group_size) {
  const int64_t n = check_packed_weight(w, bits, in_features);
  check_int8_activations(x, x_scale, in_features);
  check_weight_scale(w_scale, n, in_features, group_size);
  check_bias(bias, n, w);
  check_same_device("x", x, "packed_weight", w);
  check_same_device("x_scale", x_scale, "packed_weight", w);
  check_same_device("weight_scale", w_scale, "packed_weight", w);
  check_finite("x_scale", x_scale);
  return n;
}

// packed_gemv_int8: weights in the GEMV layout of SIGN1 (bitops/formats.py), one scale per row.
inline int64_t check_gemv_int8_args(const at::Tensor& x, const at::Tensor& x_scale, const at::Tensor& w,
                                    const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                    int64_t in_features) {
  check_in_features(in_features);
  check_dtype("weight_scale", w_scale, at::kFloat);
  TORCH_CHECK_VALUE(w_scale.dim() == 2 && w_scale.size(1) == 1, "weight_scale has shape ", shape_str(w_scale),
                    "; expected (out_features, 1): the GEMV layout takes one scale per row");
  const int64_t n = w_scale.size(0);
  check_dtype("gemv_weight", w, at::kByte);
  const int64_t blocks = (n + 31) / 32, pairs = (in_features + 7) / 8;
  TORCH_CHECK_VALUE(w.dim() == 3 && w.size(0) == blocks && w.size(1) == pairs && w.size(2) == 32,
                    "gemv_weight has shape ", shape_str(w), "; expected (", blocks, ", ", pairs,
                    ", 32) for out_features=", n, ", in_features=", in_features, " (bitops.formats.gemv_shape)");
  check_int8_activations(x, x_scale, in_features);
  check_bias(bias, n, w);
  check_same_device("x", x, "gemv_weight", w);
  check_same_device("x_scale", x_scale, "gemv_weight", w);
  check_same_device("weight_scale", w_scale, "gemv_weight", w);
  check_finite("x_scale", x_scale);
  check_finite("weight_scale", w_scale);
  return n;
}

inline int64_t check_linear_float_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                                       const std::optional<at::Tensor>& bias, int64_t bits, int64_t in_features,
                                       int64_t group_size) {
  const int64_t n = check_packed_weight(w, bits, in_features);
  check_float_activation("x", x);
  check_2d_columns("x", x, in_features, "(M, in_features) float activations", "in_features");
  check_weight_scale(w_scale, n, in_features, group_size);
  check_bias(bias, n, w);
  check_same_device("x", x, "packed_weight", w);
  check_same_device("weight_scale", w_scale, "packed_weight", w);
  return n;
}

inline int64_t check_grad_input_args(const at::Tensor& grad_output, const at::Tensor& w, const at::Tensor& w_scale,
                                     int64_t bits, int64_t in_features, int64_t group_size) {
  const int64_t n = check_packed_weight(w, bits, in_features);
  check_float_activation("grad_output", grad_output);
  check_2d_columns("grad_output", grad_output, n, "(M, out_features)", "out_features");
  check_weight_scale(w_scale, n, in_features, group_size);
  check_same_device("grad_output", grad_output, "packed_weight", w);
  check_same_device("weight_scale", w_scale, "packed_weight", w);
  return n;
}

inline void check_activation_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 4, "bits=", bits, " is not supported for activations; expected 8 or 4");
}

// x (M, K) float, K >= 1; residual x's shape and dtype; weight and bias (K,) float; eps finite, >= 0.
inline void check_add_layer_norm_args(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps, int64_t bits) {
  check_activation_bits(bits);
  check_float_activation("x", x);
  TORCH_CHECK_VALUE(x.dim() == 2, "x has ", x.dim(), " dimensions (shape ", shape_str(x),
                    "); expected 2: (M, K) float activations");
  TORCH_CHECK_VALUE(x.size(1) >= 1, "x has shape ", shape_str(x), "; expected K >= 1 columns to normalize");
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK_VALUE(r.sizes() == x.sizes(), "residual has shape ", shape_str(r), "; expected ", shape_str(x),
                      " (x's shape)");
    TORCH_CHECK_VALUE(r.scalar_type() == x.scalar_type(), "residual has dtype ", py_dtype(r.scalar_type()),
                      "; expected ", py_dtype(x.scalar_type()), " (x's dtype)");
    check_same_device("residual", r, "x", x);
  }
  const std::pair<const char*, const std::optional<at::Tensor>*> affine[] = {{"weight", &weight}, {"bias", &bias}};
  for (const auto& [name, t] : affine) {
    if (!t->has_value()) continue;
    const at::Tensor& v = **t;
    check_float_activation(name, v);
    TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == x.size(1), name, " has shape ", shape_str(v), "; expected (",
                      x.size(1), ",) for x's K columns");
    check_same_device(name, v, "x", x);
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps=", eps, "; expected a finite float >= 0");
}

// query (B, H, Lq, D), key (B, H, Lk, D), value (B, H, Lk, Dv), one float dtype; attn_mask bool
// (True: attend) or query's dtype (added to the scores), broadcastable to (B, H, Lq, Lk).
inline void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& mask) {
  const std::pair<const char*, const at::Tensor*> named[] = {{"query", &q}, {"key", &k}, {"value", &v}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK_VALUE(t->dim() == 4, name, " has ", t->dim(), " dimensions (shape ", shape_str(*t),
                      "); expected 4: (batch, heads, length, head_dim)");
  }
  check_float_activation("query", q);
  for (const auto& [name, t] : {named[1], named[2]}) {
    TORCH_CHECK_VALUE(t->scalar_type() == q.scalar_type(), name, " has dtype ", py_dtype(t->scalar_type()),
                      "; expected ", py_dtype(q.scalar_type()), " (query's dtype)");
    check_same_device(name, *t, "query", q);
  }
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), "key has shape ",
                    shape_str(k), "; expected (", q.size(0), ", ", q.size(1), ", Lk, ", q.size(3),
                    "): query's batch, heads and head_dim");
  TORCH_CHECK_VALUE(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2), "value has shape ",
                    shape_str(v), "; expected (", k.size(0), ", ", k.size(1), ", ", k.size(2),
                    ", Dv): key's batch, heads and length");
  if (!mask.has_value()) return;
  const at::Tensor& m = *mask;
  TORCH_CHECK_VALUE(m.scalar_type() == at::kBool || m.scalar_type() == q.scalar_type(), "attn_mask has dtype ",
                    py_dtype(m.scalar_type()), "; expected torch.bool or ", py_dtype(q.scalar_type()), " (query's dtype)");
  check_same_device("attn_mask", m, "query", q);
  const int64_t want[4] = {q.size(0), q.size(1), q.size(2), k.size(2)};
  bool ok = m.dim() <= 4;
  for (int64_t i = 1; ok && i <= m.dim(); ++i) ok = m.size(-i) == 1 || m.size(-i) == want[4 - i];
  TORCH_CHECK_VALUE(ok, "attn_mask has shape ", shape_str(m), "; expected a shape broadcastable to (", want[0], ", ",
                    want[1], ", ", want[2], ", ", want[3], "): (batch, heads, Lq, Lk)");
}

// encoder_layer_int8: x (B, T, H) float32 with H a multiple of num_heads; x_codes (B*T, H) int8 and
// x_scales (B*T,) together or not at all; the eight per-layer lists of four; out_bits 0, 4 or 8. The
// ops it calls check the rest (each packed layer's tensors, the mask) with their own messages.
inline void check_encoder_layer_args(const at::Tensor& x, const std::optional<at::Tensor>& x_codes,
                                     const std::optional<at::Tensor>& x_scales, int64_t num_heads, double scale,
                                     const std::pair<const char*, size_t> (&lists)[8], int64_t out_bits) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x has ", x.dim(), " dimensions (shape ", shape_str(x),
                    "); expected 3: (batch, tokens, hidden) float32 activations");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, "x has dtype ", py_dtype(x.scalar_type()), "; expected torch.float32");
  TORCH_CHECK_VALUE(num_heads >= 1 && x.size(2) % num_heads == 0, "num_heads=", num_heads,
                    "; expected a positive divisor of x's hidden size ", x.size(2));
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale=", scale, "; expected a finite float > 0");
  TORCH_CHECK_VALUE(x_codes.has_value() == x_scales.has_value(),
                    "x_codes and x_scales: got one without the other; expected both or neither");
  if (x_codes.has_value()) {
    const int64_t m = x.size(0) * x.size(1);
    TORCH_CHECK_VALUE(x_codes->dim() == 2 && x_codes->size(0) == m && x_codes->size(1) == x.size(2), "x_codes has shape ",
                      shape_str(*x_codes), "; expected (", m, ", ", x.size(2), "): x's rows, each of its hidden size");
    TORCH_CHECK_VALUE(x_scales->dim() == 1 && x_scales->size(0) == m, "x_scales has shape ", shape_str(*x_scales),
                      "; expected (", m, ",): one per row of x_codes");
  }
  for (const auto& [name, size] : lists) {
    TORCH_CHECK_VALUE(size == 4, name, " has ", size, " entries; expected 4: the query/key/value, attention "
                      "output, intermediate and output layers");
  }
  TORCH_CHECK_VALUE(out_bits == 0 || out_bits == 4 || out_bits == 8, "out_bits=", out_bits,
                    "; expected 8 or 4 (codes for a next packed layer) or 0 (none)");
}

}  // namespace bitops
