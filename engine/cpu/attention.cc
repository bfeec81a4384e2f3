#include "engine/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "engine/cpu/thread_pool.h"
#include "engine/cpu/vector_math.h"
#include "engine/hip/dtype_convert.h"

namespace ihip::engine::cpu {
namespace {

constexpr int kTile = 128;  // keys loaded (and rotated) at a time

// Online-softmax state of one query head.
struct SoftmaxState {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0;
  std::vector<float> acc;
};

// Streams the query's runs for one kv head through the softmax states of its group.
void AttendOneKvHead(const KvView& kv, const Rope* rope, const float* q_rot, int group, int kvh,
                     const std::vector<KeyRun>& runs, std::vector<SoftmaxState>& st) {
  const int D = kv.geometry.head_dim;
  const DType dt = kv.geometry.dtype;
  std::vector<float> keys(size_t(kTile) * D), values(size_t(kTile) * D), s(kTile);
  // Angles of the previous key's position, advanced by angle addition when positions are
  // consecutive and recomputed exactly at every tile start and every jump.
  std::vector<double> c64(D / 2), s64(D / 2);
  std::vector<float> cs(D / 2), sn(D / 2);
  for (const KeyRun& run : runs) {
    for (int64_t t0 = run.begin; t0 < run.end; t0 += kTile) {
      const int n = int(std::min<int64_t>(kTile, run.end - t0));
      int64_t prev_pos = -2;
      for (int j = 0; j < n; ++j) {
        const int64_t t = t0 + j;
        float* k = keys.data() + size_t(j) * D;
        ToFloat(dt, kv.Key(t, kvh), D, k);
        ToFloat(dt, kv.Value(t, kvh), D, values.data() + size_t(j) * D);
        if (rope != nullptr) {
          const int64_t pos = std::max<int64_t>(0, run.pos_begin + (t - run.begin));
          if (pos == prev_pos + 1) {
            rope->Step(c64.data(), s64.data());
          } else if (pos != prev_pos) {
            rope->AnglesF64(pos, c64.data(), s64.data());
          }
          prev_pos = pos;
          for (int i = 0; i < D / 2; ++i) {
            cs[i] = float(c64[i]);
            sn[i] = float(s64[i]);
          }
          Rope::RotateWith(k, cs.data(), sn.data(), D / 2, k);
        }
      }
      for (int g = 0; g < group; ++g) {
        SoftmaxState& state = st[g];
        const float* q = q_rot + size_t(g) * D;
        float tile_max = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < n; ++j) {
          s[j] = Dot(q, keys.data() + size_t(j) * D, D);
          tile_max = std::max(tile_max, s[j]);
        }
        const float m_new = std::max(state.m, tile_max);
        const float correction = std::exp(state.m - m_new);  // 0 on the first tile
        state.l *= correction;
        Scale(correction, state.acc.data(), D);
        for (int j = 0; j < n; ++j) {
          const float w = std::exp(s[j] - m_new);
          state.l += w;
          Axpy(w, values.data() + size_t(j) * D, state.acc.data(), D);
        }
        state.m = m_new;
      }
    }
  }
}

}  // namespace

absl::Status AttendQueries(const KvView& kv, int num_q_heads, const Rope* rope,
                           const std::vector<AttentionQuery>& queries, const Interrupt& interrupt,
                           ThreadPool* pool) {
  const int Hkv = kv.geometry.kv_heads;
  const int D = kv.geometry.head_dim;
  const int group = num_q_heads / Hkv;
  std::atomic<bool> interrupted{false};
  pool->ParallelFor(int64_t(queries.size()) * Hkv, [&](int64_t task) {
    if (interrupted.load(std::memory_order_relaxed)) return;
    if (!interrupt.Check().ok()) {
      interrupted = true;
      return;
    }
    const AttentionQuery& aq = queries[task / Hkv];
    const int kvh = int(task % Hkv);
    // The group's query heads, rotated at the query's true position.
    std::vector<float> q(size_t(group) * D);
    for (int g = 0; g < group; ++g) {
      const float* src = aq.q + size_t(kvh * group + g) * D;
      if (rope != nullptr) {
        rope->Rotate(src, aq.position, q.data() + size_t(g) * D);
      } else {
        std::copy(src, src + D, q.data() + size_t(g) * D);
      }
    }
    std::vector<SoftmaxState> st(group);
    for (SoftmaxState& s : st) s.acc.assign(D, 0.0f);
    AttendOneKvHead(kv, rope, q.data(), group, kvh, *aq.runs, st);
    for (int g = 0; g < group; ++g) {
      float* out = aq.out + size_t(kvh * group + g) * D;
      const float inv = st[g].l > 0 ? 1.0f / st[g].l : 0.0f;
      for (int d = 0; d < D; ++d) out[d] = st[g].acc[d] * inv;
    }
  });
  return interrupt.Check();
}

}  // namespace ihip::engine::cpu
