// Portable decoding of packed rows (layout: bitops/formats.py), one packed byte at a time through
// 256-entry tables. Shared by unpack, the int8 GEMM (which wants the unsigned "offset" form u that
// vpmaddubsw multiplies with) and the float GEMM.
//
//   1 bit:  u = bit (0 or 1),        value = 2u - 1
//   2 bits: u = field ^ 2 (0 ... 3), value = u - 2     (two's complement field, offset by 2)
#pragma once

#include <cstdint>
#include <cstring>

namespace bitops::cpu {

struct DecodeTables {
  uint64_t u1[256];  // 8 bytes: u of the 8 one-bit codes of a byte
  uint32_t u2[256];  // 4 bytes: u of the 4 two-bit codes of a byte
  uint64_t v1[256];  // 8 bytes: int8 values (+-1)
  uint32_t v2[256];  // 4 bytes: int8 values (-2..1)
  DecodeTables() {
    for (int b = 0; b < 256; ++b) {
      uint8_t a[8], c[8], d[4], e[4];
      for (int j = 0; j < 8; ++j) {
        a[j] = (b >> j) & 1;
        c[j] = static_cast<uint8_t>(static_cast<int8_t>(2 * a[j] - 1));
      }
      for (int j = 0; j < 4; ++j) {
        d[j] = ((b >> (2 * j)) & 3) ^ 2;
        e[j] = static_cast<uint8_t>(static_cast<int8_t>(d[j] - 2));
      }
      std::memcpy(&u1[b], a, 8);
      std::memcpy(&v1[b], c, 8);
      std::memcpy(&u2[b], d, 4);
      std::memcpy(&v2[b], e, 4);
    }
  }
};

inline const DecodeTables& decode_tables() {
  static const DecodeTables t;
  return t;
}

// One byte per code for all codes of `nwords` words (pads included), in the form chosen by
// `to_values`: false -> u (unsigned offset form), true -> int8 values.
inline void expand_words(const int32_t* words, int64_t nwords, int bits, bool to_values, uint8_t* out) {
  const DecodeTables& t = decode_tables();
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(words);  // little-endian: byte i holds codes 8i/bits...
  const int64_t nbytes = nwords * 4;
  if (bits == 1) {
    const uint64_t* tab = to_values ? t.v1 : t.u1;
    for (int64_t i = 0; i < nbytes; ++i) std::memcpy(out + 8 * i, &tab[bytes[i]], 8);
  } else {
    const uint32_t* tab = to_values ? t.v2 : t.u2;
    for (int64_t i = 0; i < nbytes; ++i) std::memcpy(out + 4 * i, &tab[bytes[i]], 4);
  }
}

}  // namespace bitops::cpu
