#pragma once

// The representative-token search of DESIGN §3.2: a hierarchical top-1 search inside one chunk
// for one query head. `probe(token, side)` returns the score of a probe (side 0 = left probe,
// 1 = right probe; the sides differ only under the relative RoPE style).

#include <cstdint>
#include <limits>

namespace ihip::engine::cpu {

struct Representative {
  bool active = false;                                    // false for an empty range
  float score = -std::numeric_limits<float>::infinity();  // max over the winning probes
  int64_t token = -1;                                     // the token the search ends on
};

template <class Probe>
Representative RepresentativeSearch(int64_t l, int64_t r, Probe&& probe) {
  Representative out;
  if (l >= r) return out;
  out.active = true;
  for (;;) {
    if (r - l == 1) {  // last step: both probes land on the one token
      const float left = probe(l, 0);
      const float right = probe(l, 1);
      const float won = left > right ? left : right;
      if (won > out.score) out.score = won;
      out.token = l;
      return out;
    }
    const int64_t c = (l + r) / 2;
    const float left = probe((l + c) / 2, 0);
    const float right = probe((c + r) / 2, 1);
    if (left > right) {  // the left half only if strictly higher
      r = c;
      if (left > out.score) out.score = left;
    } else {
      l = c;
      if (right > out.score) out.score = right;
    }
  }
}

}  // namespace ihip::engine::cpu
