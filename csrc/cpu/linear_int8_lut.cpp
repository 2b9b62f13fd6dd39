// W1A8 by table lookup (AVX2): the kernel that goes past the int8 roof on CPUs without VNNI.
//
// Why: expanding 1-bit weights to bytes and multiplying with vpmaddubsw costs what an int8 GEMM costs
// (32 multiply-adds per vpmaddubsw). A lookup does more work per instruction: for every triple of
// activations (x0, x1, x2) of an activation row, the 8 subset sums
//     T[j] = bit0(j)*x0 + bit1(j)*x1 + bit2(j)*x2,   j = the 3 weight bits of a row over that triple,
// fit in int16 (|T| <= 384), so the whole table is 16 bytes: one 128-bit lane. One vpshufb then
// looks up 16 weight rows at once (byte indices 2j and 2j+1 fetch the low and high byte of T[j]),
// 48 multiply-adds per shuffle, and a vpaddw accumulates them. With u = bit in {0, 1} the signed dot
// is 2 * sum(u * x) - sum(x), the identity the byte kernel uses too, so the result is the same exact
// integer and the same float epilogue as bitops/reference.py.
//
// Data flow of one call:
//   - tables (M, T, 8) int16 are built once per call from the int8 activations (T = triples of K,
//     padded to whole 96-bit spans = 3 packed words = 32 triples; activations past K read as 0);
//   - per block of kLutRowBlock weight rows and chunk of kChunkTriples triples, the shuffle indices
//     (one int16 per row and triple: low byte 2j, high byte 2j+1) are built from the canonical packed
//     words into an L1-resident scratch and reused by every activation row;
//   - int16 accumulators take kChunkTriples lookups (64 * 384 = 24576 < 32767), then are widened
//     into int32 totals.
// The canonical packing format (bitops/formats.py) is read directly: building the indices is a
// transpose of the packed bits done once per block and amortized over the M activation rows, so no
// second weight layout has to be kept next to the packed weights.
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "isa.h"
#include "linear_int8.h"

#if BITOPS_X86
#include <immintrin.h>
#endif

namespace bitops::cpu {
#if BITOPS_X86  // the whole kernel is AVX2 code; int8_kernel_path never picks it elsewhere

namespace {
constexpr int64_t kSpanWords = 3;       // 96 bits: the smallest run of whole words holding whole triples
constexpr int64_t kSpanTriples = 32;
constexpr int64_t kChunkTriples = 64;   // lookups per int16 flush
constexpr int64_t kSubRows = 16;        // rows per shuffle: 16 int16 lanes of a ymm
constexpr int64_t kLutRowBlock = 128;   // weight rows per block: one index build serves all its rows
constexpr int64_t kLutRowsM = 64;       // activation rows per block of tables
constexpr int kSubBlocks = kLutRowBlock / kSubRows;
constexpr int kSubBlocksPerPass = 4;  // index vectors held in registers by lookup_chunk
static_assert(kLutRowBlock % (kSubRows * kSubBlocksPerPass) == 0);

// The tables of activation rows [i0, i1), stored chunk-major, (chunks, i1 - i0, kChunkTriples, 8): the
// tables one chunk of a weight-row block reads for every activation row are one contiguous stream.
// Not zero-filled (that memset was 2% of a call): entries of triples past lut_triples in the last chunk
// are never written and never read.
struct Tables {
  std::unique_ptr<int16_t[]> data;
  int64_t bytes, i0, rows;
  const int16_t* at(int64_t chunk, int64_t i) const {
    return data.get() + (chunk * rows + (i - i0)) * kChunkTriples * 8;
  }
  int16_t* at(int64_t chunk, int64_t i) { return data.get() + (chunk * rows + (i - i0)) * kChunkTriples * 8; }
};

int64_t lut_triples(int64_t nw) { return (nw + kSpanWords - 1) / kSpanWords * kSpanTriples; }

// The tables of two consecutive triples (t, t + 1) of one activation row, x = the row's activations
// from 3t on (8 readable bytes): T[j] = bit0(j)*x0 + bit1(j)*x1 + bit2(j)*x2 for both triples, as two
// 128-bit lanes. The 8 activations are widened to int16 and copied into both lanes; three per-lane byte
// shuffles pick, for every entry j, the activation of each set bit of j (or zero), and two adds sum
// them. About 9 instructions per pair of triples, against ~25 for the scalar loop.
BITOPS_TARGET_AVX2 inline __m256i table_pair(const int8_t* x) {
  const __m128i x8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x));
  const __m256i x16 = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(x8));
  constexpr char Z = -128;  // shuffle index with the high bit set: the byte reads as zero
  // Entry j of lane 0 (triple t) uses activations 0, 1, 2 (bytes 0-1, 2-3, 4-5); lane 1 (triple t + 1)
  // uses activations 3, 4, 5 (bytes 6-7, 8-9, 10-11).
  const __m256i pick0 = _mm256_setr_epi8(Z, Z, 0, 1, Z, Z, 0, 1, Z, Z, 0, 1, Z, Z, 0, 1,  //
                                         Z, Z, 6, 7, Z, Z, 6, 7, Z, Z, 6, 7, Z, Z, 6, 7);
  const __m256i pick1 = _mm256_setr_epi8(Z, Z, Z, Z, 2, 3, 2, 3, Z, Z, Z, Z, 2, 3, 2, 3,  //
                                         Z, Z, Z, Z, 8, 9, 8, 9, Z, Z, Z, Z, 8, 9, 8, 9);
  const __m256i pick2 = _mm256_setr_epi8(Z, Z, Z, Z, Z, Z, Z, Z, 4, 5, 4, 5, 4, 5, 4, 5,  //
                                         Z, Z, Z, Z, Z, Z, Z, Z, 10, 11, 10, 11, 10, 11, 10, 11);
  return _mm256_add_epi16(_mm256_add_epi16(_mm256_shuffle_epi8(x16, pick0), _mm256_shuffle_epi8(x16, pick1)),
                          _mm256_shuffle_epi8(x16, pick2));
}

// The tables of activation row i. Pairs of triples start at even t, so a pair never straddles a chunk
// (kChunkTriples is even); the vector path runs while its 8-byte load stays inside the row's kp
// activations, the scalar loop does the rest (activations past kp read as zero).
BITOPS_TARGET_AVX2 void build_row_tables(const Problem& p, Tables& tab, int64_t i) {
  static_assert(kChunkTriples % 2 == 0);
  const int64_t t_count = lut_triples(p.nw);
  const int64_t t_vector = std::min(t_count, std::max<int64_t>(0, (p.kp - 8) / 3 + 1) / 2 * 2);  // 3t + 8 <= kp
  const int8_t* x = p.x + i * p.kp;
  int64_t t = 0;
  for (; t < t_vector; t += 2)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab.at(t / kChunkTriples, i) + 8 * (t % kChunkTriples)),
                        table_pair(x + 3 * t));
  for (; t < t_count; ++t) {
    const int64_t c = 3 * t;
    const int16_t a = c < p.kp ? x[c] : 0, b = c + 1 < p.kp ? x[c + 1] : 0, d = c + 2 < p.kp ? x[c + 2] : 0;
    int16_t* e = tab.at(t / kChunkTriples, i) + 8 * (t % kChunkTriples);
    e[0] = 0, e[1] = a, e[2] = b, e[3] = a + b;
    e[4] = d, e[5] = a + d, e[6] = b + d, e[7] = a + b + d;
  }
}

Tables build_tables(const Problem& p, int64_t i0, int64_t i1) {
  const int64_t chunks = (lut_triples(p.nw) + kChunkTriples - 1) / kChunkTriples;
  const int64_t entries = chunks * (i1 - i0) * kChunkTriples * 8;
  Tables tab{std::unique_ptr<int16_t[]>(new int16_t[entries]), entries * static_cast<int64_t>(sizeof(int16_t)), i0, i1 - i0};
  at::parallel_for(i0, i1, 8, [&](int64_t r0, int64_t r1) {  // runs inline when called in a parallel region
    for (int64_t i = r0; i < r1; ++i) build_row_tables(p, tab, i);
  });
  return tab;
}

// The 96 bits of a span of 16 weight rows as six 16-bit planes: plane q holds bits 16q .. 16q+15 of
// every row, row r in int16 lane r, so that a triple's 3 bits are one 16-bit shift and a mask away in
// every lane at once (in 32-bit words, as before, each triple took two shifts, two masks, a pack and a
// lane permute, and the index build was 10% of a 128 x 768 x 3072 call).
struct SpanPlanes {
  __m256i q[2 * kSpanWords];
};

// Triple T of a span sits at bits 3T .. 3T+2; four of the 32 straddle a plane boundary. Its index
// vector: int16 lane r = bytes (2j, 2j + 1) = j * 0x0202 + 0x0100, j = the triple's bits of row r. A
// template per triple so that every shift count is a constant.
template <int T>
BITOPS_TARGET_AVX2 inline void span_triple(const SpanPlanes& planes, __m256i* idx) {
  constexpr int bit = 3 * T, q = bit / 16, o = bit % 16;
  __m256i j = _mm256_srli_epi16(planes.q[q], o);
  if constexpr (o > 13) j = _mm256_or_si256(j, _mm256_slli_epi16(planes.q[q + 1], 16 - o));
  j = _mm256_and_si256(j, _mm256_set1_epi16(7));
  idx[T] = _mm256_add_epi16(_mm256_mullo_epi16(j, _mm256_set1_epi16(0x0202)), _mm256_set1_epi16(0x0100));
}

template <int... T>
BITOPS_TARGET_AVX2 inline void span_triples(const SpanPlanes& planes, __m256i* idx, std::integer_sequence<int, T...>) {
  (span_triple<T>(planes, idx), ...);
}

// The 3 words of a span for 8 weight rows, one vector per word: rows r .. r + 3 in the low lane and
// r + 8 .. r + 11 in the high one, in order. Each row's span is one 16-byte load (the word after it is
// read too and dropped), rows r + i and r + 8 + i in the two lanes, then a 4 x 4 transpose per lane.
struct SpanWords {
  __m256i w[kSpanWords];
};

BITOPS_TARGET_AVX2 inline __m256i two_rows(const int32_t* lo, const int32_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}

BITOPS_TARGET_AVX2 inline SpanWords load_span_words(const int32_t* row_r, int64_t nw) {
  const __m256i y0 = two_rows(row_r, row_r + 8 * nw), y1 = two_rows(row_r + nw, row_r + 9 * nw);
  const __m256i y2 = two_rows(row_r + 2 * nw, row_r + 10 * nw), y3 = two_rows(row_r + 3 * nw, row_r + 11 * nw);
  const __m256i t0 = _mm256_unpacklo_epi32(y0, y1), t1 = _mm256_unpacklo_epi32(y2, y3);  // words 0, 1 interleaved
  const __m256i t2 = _mm256_unpackhi_epi32(y0, y1), t3 = _mm256_unpackhi_epi32(y2, y3);  // words 2, 3
  return {{_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1), _mm256_unpacklo_epi64(t2, t3)}};
}

// The shuffle indices of 16 weight rows for the 32 triples of span `s`: idx[t] holds, for row r in
// int16 lane r, the bytes (2j, 2j + 1). Rows at or past n and words at or past nw read as 0 (j = 0,
// T[0] = 0; such rows are never stored).
BITOPS_TARGET_AVX2 void build_span_indices(const Problem& p, int64_t row0, int64_t s, __m256i* idx) {
  // Each word's 16 rows as two vectors, a: rows 0-3 | 8-11 and b: rows 4-7 | 12-15 (low | high lane):
  // vpackusdw packs per lane, a's 4 dwords then b's, so packing the two gives rows 0-15 in order.
  const int64_t col0 = s * kSpanWords;
  SpanWords a, b;
  // Whole rows and words, and the word after each row's span readable: the next span's, or the next row's
  // first (all but the matrix's last row).
  if (row0 + kSubRows <= p.n && col0 + kSpanWords <= p.nw && (col0 + kSpanWords < p.nw || row0 + kSubRows < p.n)) {
    const int32_t* base = p.w + row0 * p.nw + col0;
    a = load_span_words(base, p.nw);
    b = load_span_words(base + 4 * p.nw, p.nw);
  } else {  // the edges: word by word, zeros past n and nw
    alignas(32) int32_t words[kSpanWords][kSubRows];
    for (int64_t r = 0; r < kSubRows; ++r) {
      const int64_t slot = (r & 3) | ((r & 4) << 1) | ((r & 8) >> 1), row = row0 + r;
      for (int64_t w = 0; w < kSpanWords; ++w) words[w][slot] = row < p.n && col0 + w < p.nw ? p.w[row * p.nw + col0 + w] : 0;
    }
    for (int w = 0; w < kSpanWords; ++w) {
      a.w[w] = _mm256_load_si256(reinterpret_cast<const __m256i*>(&words[w][0]));
      b.w[w] = _mm256_load_si256(reinterpret_cast<const __m256i*>(&words[w][8]));
    }
  }
  SpanPlanes planes;
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  for (int w = 0; w < kSpanWords; ++w) {
    planes.q[2 * w] = _mm256_packus_epi32(_mm256_and_si256(a.w[w], low16), _mm256_and_si256(b.w[w], low16));
    planes.q[2 * w + 1] = _mm256_packus_epi32(_mm256_srli_epi32(a.w[w], 16), _mm256_srli_epi32(b.w[w], 16));
  }
  span_triples(planes, idx, std::make_integer_sequence<int, kSpanTriples>{});
}

// The shuffle indices of chunk c (kChunkTriples triples) of weight-row block nb: (kSubBlocks, kChunkTriples) ymm.
BITOPS_TARGET_AVX2 void build_chunk_indices(const Problem& p, int64_t nb, int64_t c, __m256i* idx) {
  const int64_t t0 = c * kChunkTriples, count = std::min(kChunkTriples, lut_triples(p.nw) - t0);
  for (int sb = 0; sb < kSubBlocks; ++sb)
    for (int64_t ts = 0; ts < count; ts += kSpanTriples)
      build_span_indices(p, nb * kLutRowBlock + sb * kSubRows, (t0 + ts) / kSpanTriples, idx + sb * kChunkTriples + ts);
}

// Where the shuffle indices of a call come from. Either every chunk's indices are built where they are
// used, into an L1-resident scratch (16 KiB), once per activation-row block; or they are built once per
// call, (n_blocks, chunks, kSubBlocks, kChunkTriples) ymm, and every activation block reads them:
// N x K / 1.5 bytes (1.5 MiB at BERT-base's FFN shapes), in a buffer of the calling thread that only
// grows, so that calls do not page-fault it in afresh. Measured per call, interleaved, one thread:
//   - 4096 x 384 x 1536 26% faster built once, 4096 x 1536 x 384 17%;
//   - at M = 128 (two blocks) reading 1.5 MiB back from L3 cost more than building them twice
//     (128 x 3072 x 768: 9% slower), but indices that fit L2 (MiniLM's shapes, BERT-base's 768 x 768:
//     <= 384 KiB) were 2-8% faster built once.
// So: built once from three activation blocks per thread up, or from two when they fit kIndicesL2Budget.
// Per thread: with one block each (M = 128, 2 threads), prebuilt indices are built half by each core and
// then read whole by both, half from the other core's cache, after one more barrier; built where used,
// each thread reads only its own (2 threads, ab_kernel.sh lut, three runs each: 1536 x 384 +29% / +26% /
// +1%, 768 x 768 +20% / -1% / +23%, 384 x 384 +1% / +1% / +4%, 384 x 1536 -2% / -3% / +2%).
class Indices {
 public:
  static constexpr int64_t kChunkVectors = kSubBlocks * kChunkTriples;
  static constexpr int64_t kIndicesL2Budget = 512 * 1024;

  Indices(const Problem& p, int64_t m_blocks) : chunks_((lut_triples(p.nw) + kChunkTriples - 1) / kChunkTriples) {
    const int64_t n_blocks = (p.n + kLutRowBlock - 1) / kLutRowBlock, per_block = chunks_ * kChunkVectors;
    const int64_t bytes = n_blocks * per_block * static_cast<int64_t>(sizeof(__m256i));
    const int64_t per_thread = m_blocks / std::max(1, at::get_num_threads());
    if (per_thread < 2 || (per_thread == 2 && bytes > kIndicesL2Budget)) return;
    thread_local std::unique_ptr<void, FreeDeleter> buffer;
    thread_local int64_t capacity = 0;
    if (capacity < n_blocks * per_block) {
      buffer.reset();  // the old buffer goes first: no moment with both
      // 32, not alignof(__m256i): outside AVX code GCC gives that as 16, and vmovdqa needs 32.
      buffer.reset(std::aligned_alloc(32, n_blocks * per_block * sizeof(__m256i)));
      if (!buffer) throw std::bad_alloc();
      capacity = n_blocks * per_block;
    }
    data_ = static_cast<__m256i*>(buffer.get());
    at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t nb = b0; nb < b1; ++nb)
        for (int64_t c = 0; c < chunks_; ++c) build_chunk_indices(p, nb, c, data_ + (nb * chunks_ + c) * kChunkVectors);
    });
  }
  // The indices of chunk c of block nb: the prebuilt ones, or built into `scratch` (kChunkVectors ymm).
  const __m256i* chunk(const Problem& p, int64_t nb, int64_t c, __m256i* scratch) const {
    if (data_) return data_ + (nb * chunks_ + c) * kChunkVectors;
    build_chunk_indices(p, nb, c, scratch);
    return scratch;
  }

 private:
  struct FreeDeleter {
    void operator()(void* q) const { std::free(q); }
  };
  int64_t chunks_;
  __m256i* data_ = nullptr;
};

// One triple's table (8 int16, one lane) in both lanes of a ymm, for vpshufb's per-lane lookup.
BITOPS_TARGET_AVX2 inline __m256i load_table(const int16_t* e) {
  return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(e)));
}

// The 16 int16 lane totals of `acc` widened to int32 (rows 0-7, 8-15), plus the int32 totals at `total`
// unless this is the first chunk (`first`): no pass to zero the totals beforehand (a memset was 7% of a call).
struct Widened {
  __m256i a, b;
};

BITOPS_TARGET_AVX2 inline Widened widened(__m256i acc, const int32_t* total, bool first) {
  const __m256i* t = reinterpret_cast<const __m256i*>(total);
  __m256i a = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc));
  __m256i b = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1));
  if (!first) a = _mm256_add_epi32(_mm256_loadu_si256(t), a), b = _mm256_add_epi32(_mm256_loadu_si256(t + 1), b);
  return {a, b};
}

// Adds `acc` into the int32 totals of rows [0, 16) at `total` (stores them for the first chunk).
BITOPS_TARGET_AVX2 inline void widen_add(__m256i acc, int32_t* total, bool first) {
  const auto [a, b] = widened(acc, total, first);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(total), a);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(total) + 1, b);
}

// The exact epilogue of the reference for 8 weight rows of one activation row: the same operations in
// the same order as signed_dot, add_group and finish (int32 -> float conversion, then * weight scale,
// * activation scale, + bias, each rounded once: no FMA), so the results are the scalar epilogue's bit
// for bit, at about one instruction per result instead of ten. `stream` (see streams_output): a
// non-temporal store.
struct RowEpilogue {
  __m256i xsum;
  __m256 x_scale;
  const float *w_scale, *bias;  // at the first of the rows
  float* y;
  bool stream;
};

BITOPS_TARGET_AVX2 inline RowEpilogue row_epilogue(const Problem& p, int64_t i, int64_t n0, bool stream) {
  return {_mm256_set1_epi32(p.xsum[i]), _mm256_set1_ps(p.x_scale[i]), p.w_scale + n0, p.bias ? p.bias + n0 : nullptr,
          p.y + i * p.n + n0, stream};
}

BITOPS_TARGET_AVX2 inline void finish8(const RowEpilogue& e, int64_t r, __m256i u_dot_x) {
  const __m256i acc = _mm256_sub_epi32(_mm256_slli_epi32(u_dot_x, 1), e.xsum);  // signed_dot, 1 bit
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(e.w_scale + r));
  v = _mm256_mul_ps(v, e.x_scale);
  if (e.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(e.bias + r));
  if (e.stream) {
    _mm256_stream_ps(e.y + r, v);
  } else {
    _mm256_storeu_ps(e.y + r, v);
  }
}

// widen_add for the last chunk of a call's sums, whose totals go straight through the epilogue: weight
// rows [r, r + 16) of the block, the int32 totals of the earlier chunks at `total` (none when `first`).
// The totals' store, their reload and the epilogue's own pass over them go; see lut_block.
BITOPS_TARGET_AVX2 inline void widen_finish(__m256i acc, const int32_t* total, bool first, const RowEpilogue& e, int64_t r) {
  const auto [a, b] = widened(acc, total, first);
  finish8(e, r, a);
  finish8(e, r + 8, b);
}

// sum(u * x) over `count` triples for MR activation rows (tables t0, t1) x 4 sub-blocks of 16 weight
// rows: the last 1-3 rows of a block, after lookup_chunk_4x2. Each index vector is loaded once and used by MR shuffles: with one row per pass the loads
// (one per shuffle) and not the shuffles bounded the loop. Accumulators are named, and pinned after
// each step (keep_in_register), so that GCC keeps them in registers instead of copying all eight
// through temporaries every step.
template <int MR>
BITOPS_TARGET_AVX2 inline void lookup_chunk(const int16_t* t0, const int16_t* t1, const __m256i* idx, int64_t count,
                                            int32_t* total0, int32_t* total1, bool first) {
  static_assert(MR == 1 || MR == 2);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  for (int64_t t = 0; t < count; ++t) {
    const __m256i* ix = idx + t;
    const __m256i i0 = _mm256_load_si256(ix), i1 = _mm256_load_si256(ix + kChunkTriples);
    const __m256i i2 = _mm256_load_si256(ix + 2 * kChunkTriples), i3 = _mm256_load_si256(ix + 3 * kChunkTriples);
    const __m256i ta = load_table(t0 + 8 * t);
    a0 = _mm256_add_epi16(a0, _mm256_shuffle_epi8(ta, i0));
    a1 = _mm256_add_epi16(a1, _mm256_shuffle_epi8(ta, i1));
    a2 = _mm256_add_epi16(a2, _mm256_shuffle_epi8(ta, i2));
    a3 = _mm256_add_epi16(a3, _mm256_shuffle_epi8(ta, i3));
    keep_in_register(a0), keep_in_register(a1), keep_in_register(a2), keep_in_register(a3);
    if constexpr (MR == 2) {
      const __m256i tb = load_table(t1 + 8 * t);
      b0 = _mm256_add_epi16(b0, _mm256_shuffle_epi8(tb, i0));
      b1 = _mm256_add_epi16(b1, _mm256_shuffle_epi8(tb, i1));
      b2 = _mm256_add_epi16(b2, _mm256_shuffle_epi8(tb, i2));
      b3 = _mm256_add_epi16(b3, _mm256_shuffle_epi8(tb, i3));
      keep_in_register(b0), keep_in_register(b1), keep_in_register(b2), keep_in_register(b3);
    }
  }
  widen_add(a0, total0 + 0 * kSubRows, first);
  widen_add(a1, total0 + 1 * kSubRows, first);
  widen_add(a2, total0 + 2 * kSubRows, first);
  widen_add(a3, total0 + 3 * kSubRows, first);
  if constexpr (MR == 2) {
    widen_add(b0, total1 + 0 * kSubRows, first);
    widen_add(b1, total1 + 1 * kSubRows, first);
    widen_add(b2, total1 + 2 * kSubRows, first);
    widen_add(b3, total1 + 3 * kSubRows, first);
  }
}

// sum(u * x) over `count` triples for 4 activation rows (tables t[0..3]) x 2 sub-blocks of 16 weight rows:
// each table load feeds 2 shuffles and each index load 4, so a step takes 6 loads for 8 shuffles, where
// lookup_chunk<2> takes 10 (2 tables + 4 indices, each index read twice as a memory operand). 27
// instructions per step against ~30; callgrind, 128 x 768 x 3072: 28.3 M instructions per call against 29.8 M.
template <bool Finish>
BITOPS_TARGET_AVX2 inline void lookup_chunk_4x2(const int16_t* const* t, const __m256i* idx, int64_t count,
                                                int32_t* const* total, bool first,
                                                const RowEpilogue* finish, int64_t r) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  const int16_t *t0 = t[0], *t1 = t[1], *t2 = t[2], *t3 = t[3];
  for (int64_t k = 0; k < count; ++k) {
    const __m256i i0 = _mm256_load_si256(idx + k), i1 = _mm256_load_si256(idx + kChunkTriples + k);
    __m256i tr = load_table(t0 + 8 * k);
    a0 = _mm256_add_epi16(a0, _mm256_shuffle_epi8(tr, i0));
    b0 = _mm256_add_epi16(b0, _mm256_shuffle_epi8(tr, i1));
    tr = load_table(t1 + 8 * k);
    a1 = _mm256_add_epi16(a1, _mm256_shuffle_epi8(tr, i0));
    b1 = _mm256_add_epi16(b1, _mm256_shuffle_epi8(tr, i1));
    tr = load_table(t2 + 8 * k);
    a2 = _mm256_add_epi16(a2, _mm256_shuffle_epi8(tr, i0));
    b2 = _mm256_add_epi16(b2, _mm256_shuffle_epi8(tr, i1));
    tr = load_table(t3 + 8 * k);
    a3 = _mm256_add_epi16(a3, _mm256_shuffle_epi8(tr, i0));
    b3 = _mm256_add_epi16(b3, _mm256_shuffle_epi8(tr, i1));
    keep_in_register(a0), keep_in_register(a1), keep_in_register(a2), keep_in_register(a3);
    keep_in_register(b0), keep_in_register(b1), keep_in_register(b2), keep_in_register(b3);
  }
  if constexpr (Finish) {  // the call's last chunk: rows r .. r + 31 of the block go out as results
    widen_finish(a0, total[0], first, finish[0], r), widen_finish(b0, total[0] + kSubRows, first, finish[0], r + kSubRows);
    widen_finish(a1, total[1], first, finish[1], r), widen_finish(b1, total[1] + kSubRows, first, finish[1], r + kSubRows);
    widen_finish(a2, total[2], first, finish[2], r), widen_finish(b2, total[2] + kSubRows, first, finish[2], r + kSubRows);
    widen_finish(a3, total[3], first, finish[3], r), widen_finish(b3, total[3] + kSubRows, first, finish[3], r + kSubRows);
  } else {
    widen_add(a0, total[0], first), widen_add(b0, total[0] + kSubRows, first);
    widen_add(a1, total[1], first), widen_add(b1, total[1] + kSubRows, first);
    widen_add(a2, total[2], first), widen_add(b2, total[2] + kSubRows, first);
    widen_add(a3, total[3], first), widen_add(b3, total[3] + kSubRows, first);
  }
}

// Adds chunk c (kChunkTriples triples) of activation rows [tab.i0, tab.i0 + tab.rows) times the weight rows
// of block nb, [n0, n0 + kLutRowBlock), into `totals` (chunk 0 stores into them): row i at totals + (i - tab.i0) * ld,
// weight row n0 + r at column r (n0 = nb * kLutRowBlock). With Finish (the last chunk of a whole block)
// the rows taken by fours go through the epilogue straight from registers instead; returns the first
// row whose totals still need lut_epilogue (i1 when none).
template <bool Finish>
BITOPS_TARGET_AVX2 int64_t lut_chunk(const Problem& p, const Tables& tab, const Indices& indices, int64_t nb, int64_t c,
                                     int32_t* totals, int64_t ld, bool stream) {
  const int64_t t_count = lut_triples(p.nw), count = std::min(kChunkTriples, t_count - c * kChunkTriples);
  const int64_t i0 = tab.i0, i1 = tab.i0 + tab.rows, n0 = nb * kLutRowBlock;
  alignas(32) __m256i scratch[Indices::kChunkVectors];
  const __m256i* idx = indices.chunk(p, nb, c, scratch);
  // Activation rows by fours, each through all sub-blocks while its 4 tables (4 KiB) stay in L1 with the
  // indices; the last 1-3 rows in pairs and singles.
  int64_t i4 = i0;
  for (; i4 + 4 <= i1; i4 += 4) {
    const int16_t* t[4] = {tab.at(c, i4), tab.at(c, i4 + 1), tab.at(c, i4 + 2), tab.at(c, i4 + 3)};
    RowEpilogue rows[4];
    if constexpr (Finish) {
      for (int r = 0; r < 4; ++r) rows[r] = row_epilogue(p, i4 + r, n0, stream);
    }
    for (int sb = 0; sb < kSubBlocks; sb += 2) {
      int32_t* const tot[4] = {totals + (i4 - i0) * ld + sb * kSubRows, totals + (i4 + 1 - i0) * ld + sb * kSubRows,
                               totals + (i4 + 2 - i0) * ld + sb * kSubRows, totals + (i4 + 3 - i0) * ld + sb * kSubRows};
      lookup_chunk_4x2<Finish>(t, idx + sb * kChunkTriples, count, tot, c == 0, rows, sb * kSubRows);
    }
  }
  for (int sb = 0; sb < kSubBlocks; sb += kSubBlocksPerPass) {
    const __m256i* ix = idx + sb * kChunkTriples;
    int64_t i = i4;
    for (; i + 2 <= i1; i += 2) {
      int32_t* tot = totals + (i - i0) * ld + sb * kSubRows;
      lookup_chunk<2>(tab.at(c, i), tab.at(c, i + 1), ix, count, tot, tot + ld, c == 0);
    }
    if (i < i1) lookup_chunk<1>(tab.at(c, i), nullptr, ix, count, totals + (i - i0) * ld + sb * kSubRows, nullptr, c == 0);
  }
  return Finish ? i4 : i0;
}

// The epilogue (finish8) of activation rows [i_begin, tab.i0 + tab.rows) for weight rows [n0, n0 +
// kLutRowBlock) (clipped at n) from their int32 totals, 8 weight rows per vector; the last n % 8 scalar.
BITOPS_TARGET_AVX2 void lut_epilogue(const Problem& p, const Tables& tab, int64_t i_begin, int64_t n0,
                                     const int32_t* totals, int64_t ld, bool stream) {
  const int64_t rows = std::min(kLutRowBlock, p.n - n0), vector_rows = rows / 8 * 8;
  for (int64_t i = i_begin; i < tab.i0 + tab.rows; ++i) {
    const int32_t* tot = totals + (i - tab.i0) * ld;
    const RowEpilogue e = row_epilogue(p, i, n0, stream);
    for (int64_t r = 0; r < vector_rows; r += 8) finish8(e, r, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tot + r)));
    for (int64_t r = vector_rows; r < rows; ++r) {
      const int64_t j = n0 + r;
      e.y[r] = finish(p, add_group(0.f, 0, signed_dot(p, tot[r], p.xsum[i]), p.w_scale[j]), i, j);
    }
  }
}

// Block order: one weight block through every chunk; totals one block wide (<= 32 KiB). Best when the
// activation block's tables fit in L2 and are re-read by every weight block from there. Where the output
// streams (large M), the last chunk of a whole block finishes its rows from registers (lut_chunk<true>):
// no store of its totals, no reload, no epilogue pass over them. ab_kernel.sh lut, one thread, 400-500
// rounds against the separate pass: 4096 x 384 x 1152 1.042-1.072x, 4096 x 384 x 1536 1.029-1.050x
// (MiniLM's QKV and FFN1 at 32 x 128 tokens; K = 384 is 2 chunks), 4096 x 768 x 3072 1.001x. Where the
// output stays cached (M = 128) it was not faster, so those calls keep the pass. (The calls that do not
// take the new path measured 0.96-0.98x against the old build, and 1.00-1.01x when both are built with
// -falign-loops=32, which itself moves the old build by 0.95-0.98x: where the loops land in memory, not
// what they do. Changes of a few percent need the same flags on both sides and several shapes.)
BITOPS_TARGET_AVX2 void lut_block(const Problem& p, const Tables& tab, const Indices& idx, int64_t nb, bool stream) {
  const int64_t chunks = (lut_triples(p.nw) + kChunkTriples - 1) / kChunkTriples, n0 = nb * kLutRowBlock;
  const bool finish = stream && n0 + kLutRowBlock <= p.n;
  thread_local std::vector<int32_t> totals;
  totals.resize(static_cast<size_t>(tab.rows * kLutRowBlock));  // chunk 0 stores, the others add
  for (int64_t c = 0; c + 1 < chunks; ++c) lut_chunk<false>(p, tab, idx, nb, c, totals.data(), kLutRowBlock, stream);
  const int64_t rest = finish ? lut_chunk<true>(p, tab, idx, nb, chunks - 1, totals.data(), kLutRowBlock, stream)
                              : lut_chunk<false>(p, tab, idx, nb, chunks - 1, totals.data(), kLutRowBlock, stream);
  lut_epilogue(p, tab, rest, n0, totals.data(), kLutRowBlock, stream);
}

// Chunk order: one chunk through every weight block, so only that chunk's tables (kLutRowsM x 1 KiB) need
// to stay in L2; the totals span all N. For large K, whose tables per activation block exceed L2.
BITOPS_TARGET_AVX2 void lut_rows_chunk_order(const Problem& p, const Tables& tab, const Indices& idx, bool stream) {
  const int64_t chunks = (lut_triples(p.nw) + kChunkTriples - 1) / kChunkTriples;
  const int64_t n_blocks = (p.n + kLutRowBlock - 1) / kLutRowBlock, ld = n_blocks * kLutRowBlock;
  thread_local std::vector<int32_t> totals;
  totals.resize(static_cast<size_t>(tab.rows * ld));  // chunk 0 stores, the others add
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t nb = 0; nb < n_blocks; ++nb) lut_chunk<false>(p, tab, idx, nb, c, totals.data() + nb * kLutRowBlock, ld, stream);
  for (int64_t nb = 0; nb < n_blocks; ++nb)
    lut_epilogue(p, tab, tab.i0, nb * kLutRowBlock, totals.data() + nb * kLutRowBlock, ld, stream);
}

}  // namespace

// Scheduling: activation rows in blocks of kLutRowsM (the weight rows' indices: see Indices).
// With enough row blocks for the threads, each thread takes whole activation-row blocks: in block order
// while the block's tables fit the L2 budget (kLutRowsM x K/3 x 16 B: 256 KiB at K = 768), in chunk order
// above it. Otherwise the tables of all rows are built once and the threads share out the weight-row blocks.
BITOPS_TARGET_AVX2 void lut_gemm_avx2(const Problem& p) {
  constexpr int64_t kTablesL2Budget = 256 * 1024;
  const int64_t m_blocks = (p.m + kLutRowsM - 1) / kLutRowsM, n_blocks = (p.n + kLutRowBlock - 1) / kLutRowBlock;
  const bool stream = streams_output(p);
  const Indices idx(p, m_blocks);
  if (m_blocks > 1 && m_blocks >= at::get_num_threads()) {
    at::parallel_for(0, m_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const Tables tab = build_tables(p, b * kLutRowsM, std::min(p.m, (b + 1) * kLutRowsM));
        if (tab.bytes > kTablesL2Budget) {
          lut_rows_chunk_order(p, tab, idx, stream);
        } else {
          for (int64_t nb = 0; nb < n_blocks; ++nb) lut_block(p, tab, idx, nb, stream);
        }
      }
      if (stream) _mm_sfence();  // the streamed results are visible before the thread reports its work done
    });
    return;
  }
  const Tables tab = build_tables(p, 0, p.m);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) lut_block(p, tab, idx, nb, stream);
    if (stream) _mm_sfence();
  });
}

#endif

}  // namespace bitops::cpu
