// The op schemas of the bitops namespace, stated once. csrc/ops.cpp defines them as `bitops::<op>`
// (every device registers its kernels there); csrc/cuda/ops_cuda.cpp defines them a second time as
// `bitops_cuda::<op>`, bound to the C++ CUDA kernels only, so those stay callable when
// BITOPS_CUDA_BACKEND puts Triton behind `bitops::<op>` on CUDA tensors.
// Fake (meta) implementations: bitops/_ops.py; reference: bitops/reference.py; layouts: bitops/formats.py.
#pragma once

namespace bitops {

inline constexpr const char* kSchemas[] = {
  // codes int8 (..., K) -> packed int32 (..., ceil(K*bits/32)), packed along the last dimension.
  "pack_bits(Tensor codes, int bits) -> Tensor",
  // packed int32 (..., W) -> codes int8 (..., k); exact inverse of pack_bits.
  "unpack_bits(Tensor packed, int bits, int k) -> Tensor",
  // y (M, N) float32 = x_q (M, K) int8 times packed W (N, K); int32 accumulation per group, then the
  // float epilogue of bitops/reference.py (weight_scale (N, G), x_scale (M,), bias (N,)).
  "packed_linear_int8(Tensor x, Tensor x_scale, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "int bits, int in_features, int group_size) -> Tensor",
  // packed_linear_int8 for 1-bit weights in the GEMV layout (bitops/formats.py; gemv_weight uint8
  // (ceil(N/32), ceil(K/8), 32)) and one scale per row (weight_scale (N, 1)): CPU only, for few rows.
  "packed_gemv_int8(Tensor x, Tensor x_scale, Tensor gemv_weight, Tensor weight_scale, Tensor? bias, "
      "int in_features) -> Tensor",
  // y (M, N) = x (M, K) float32/bf16/fp16 times dequantized W.T + bias; fp32 accumulation, x's dtype.
  "packed_linear_float(Tensor x, Tensor packed_weight, Tensor weight_scale, Tensor? bias, int bits, "
      "int in_features, int group_size) -> Tensor",
  // Dynamic symmetric per-row int8 quantization of float activations (M, K): (codes int8 (M, K),
  // scales float32 (M,)), scale = max|row| / (2^(bits-1) - 1), 1 for an all-zero row. activation
  // "gelu" quantizes gelu(x) (erf form, torch's arithmetic) instead of x, without materializing it.
  "quantize_rows_int8(Tensor x, int bits, str activation=\"none\") -> (Tensor, Tensor)",
  // A BERT layer's "add & norm" before a packed layer, one pass over each row: out (M, K) float32 =
  // layer_norm(x + residual) over each row (weight, bias (K,); eps), and out's codes as
  // quantize_rows_int8(out, bits) gives them: (out, codes int8 (M, K), scales float32 (M,)).
  // CPU kernel; elsewhere the reference.
  "add_layer_norm_int8(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, int bits) "
      "-> (Tensor, Tensor, Tensor)",
  // out = softmax(query key^T * scale + attn_mask) value, float: query (B, H, Lq, D), key (B, H, Lk, D),
  // value (B, H, Lk, Dv); attn_mask bool (True: attend) or query's dtype (added), broadcastable to
  // (B, H, Lq, Lk); scale defaults to D^-0.5; a row with every key masked gives zeros. out (B, H, Lq, Dv)
  // is a view of (B, Lq, H, Dv) memory (out.transpose(1, 2) is contiguous). CPU kernel; elsewhere the reference.
  "attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float? scale=None) -> Tensor",
  // One BERT encoder layer of frozen packed layers in inference, as the sequence of the ops above that
  // bitops.fuse_encoder_layers_ runs, in one call: x (B, T, H) float32 (or its codes x_codes (B*T, H)
  // int8 and x_scales (B*T,)), the four packed layers in order (query/key/value fused, attention output,
  // intermediate, output: packed weights, scales, biases, GEMV layouts (used where given), bits,
  // in_features, group_size and activation bits of each), bitops attention of num_heads heads (scale,
  // attn_mask), add & norm, GELU inside the intermediate's quantization, add & norm. Returns (out (B, T,
  // H) float32, its codes int8 (B*T, H) and scales (B*T,) for a next packed layer at out_bits); out_bits
  // 0: torch's LayerNorm for the last norm and empty codes. Composite: runs on any device the ops run on.
  "encoder_layer_int8(Tensor x, Tensor? x_codes, Tensor? x_scales, Tensor? attn_mask, int num_heads, "
      "float scale, Tensor[] packed_weights, Tensor[] weight_scales, Tensor?[] biases, Tensor?[] gemv_weights, "
      "int[] bits, int[] in_features, int[] group_sizes, int[] act_bits, Tensor? norm1_weight, "
      "Tensor? norm1_bias, float norm1_eps, Tensor? norm2_weight, Tensor? norm2_bias, float norm2_eps, "
      "int out_bits) -> (Tensor, Tensor, Tensor)",
  // grad_input (M, K) = grad_output (M, N) times dequantized W (N, K): the backward of the two above.
  "packed_linear_grad_input(Tensor grad_output, Tensor packed_weight, Tensor weight_scale, int bits, "
      "int in_features, int group_size) -> Tensor",
};

}  // namespace bitops
