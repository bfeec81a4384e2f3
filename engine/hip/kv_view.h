#pragma once

// KvView: read access to one (sequence, layer)'s KV through a block table (page index -> page
// base address), in the page layout of DESIGN §4. Kernels read KV only through it, never as one
// contiguous array, so pages may live anywhere (heap, the kvstore's shm pool).

#include <cstddef>
#include <cstdint>

#include "engine/types.h"

namespace ihip::engine {

struct KvView {
  const std::byte* const* pages = nullptr;  // [ceil(length / page_tokens)] page base addresses
  int64_t length = 0;                       // tokens readable
  PageGeometry geometry;

  // Key row of token t, kv head h: head_dim elements of geometry.dtype.
  const std::byte* Key(int64_t t, int h) const {
    const int64_t P = geometry.page_tokens;
    return pages[t / P] + size_t(t % P) * geometry.row_bytes() +
           size_t(h) * geometry.head_dim * DTypeSize(geometry.dtype);
  }
  const std::byte* Value(int64_t t, int h) const { return Key(t, h) + geometry.half_bytes(); }
};

}  // namespace ihip::engine
