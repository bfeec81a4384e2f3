#pragma once

// Helpers shared by the engine tests: seeded random tensors, wire-dtype conversion, KV pages
// built from float arrays, and references computed straight from the definitions of DESIGN §3
// in double precision (inverse frequencies and rotation, the attended key set with its
// positions, attention). The references use no engine code except the dtype conversions that
// turn test inputs into the bytes a client would send.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <numbers>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "engine/hip/dtype_convert.h"
#include "engine/hip/kv_view.h"
#include "engine/hip_config.h"
#include "engine/types.h"

namespace ihip::engine::testing {

// Seeded random numbers (std::mt19937_64; the distributions are implemented here so the
// streams do not depend on the standard library's implementation).
class Random {
 public:
  explicit Random(uint64_t seed) : gen_(seed) {}
  double Uniform01() { return double(gen_() >> 11) * 0x1.0p-53; }
  // Integer in [lo, hi].
  int64_t Uniform(int64_t lo, int64_t hi) { return lo + int64_t(gen_() % uint64_t(hi - lo + 1)); }
  bool Bernoulli(double p) { return Uniform01() < p; }
  // Box–Muller.
  float Normal(float std = 1.0f) {
    const double u1 = std::max(Uniform01(), 1e-300);
    const double u2 = Uniform01();
    return float(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  }
  std::vector<float> Normals(size_t n, float std = 1.0f) {
    std::vector<float> x(n);
    for (float& v : x) v = Normal(std);
    return x;
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// Floats as a client sends them in wire dtype `t`.
inline std::vector<std::byte> ToWire(DType t, const std::vector<float>& x) {
  std::vector<std::byte> out(x.size() * DTypeSize(t));
  FromFloat(t, x.data(), x.size(), out.data());
  return out;
}

inline std::vector<float> FromWire(DType t, const void* p, size_t n) {
  std::vector<float> out(n);
  ToFloat(t, p, n, out.data());
  return out;
}

// The values a tensor holds after a trip through dtype `t`.
inline std::vector<float> Rounded(DType t, const std::vector<float>& x) {
  const std::vector<std::byte> w = ToWire(t, x);
  return FromWire(t, w.data(), x.size());
}

// KV pages in the layout of DESIGN §4, built from k, v [n][Hkv][D] floats stored in `dtype`.
struct PagedKv {
  PageGeometry geometry;
  std::vector<std::vector<std::byte>> pages;
  std::vector<const std::byte*> table;
  KvView view;

  PagedKv(const std::vector<float>& k, const std::vector<float>& v, int64_t n, int kv_heads,
          int head_dim, DType dtype, int page_tokens = 64) {
    geometry = PageGeometry{page_tokens, kv_heads, head_dim, dtype};
    const int64_t num_pages = (n + page_tokens - 1) / page_tokens;
    pages.assign(size_t(num_pages), std::vector<std::byte>(geometry.page_bytes()));
    const size_t row = size_t(kv_heads) * head_dim;
    for (int64_t t = 0; t < n; ++t) {
      std::byte* base =
          pages[t / page_tokens].data() + size_t(t % page_tokens) * geometry.row_bytes();
      FromFloat(dtype, k.data() + t * row, row, base);
      FromFloat(dtype, v.data() + t * row, row, base + geometry.half_bytes());
    }
    for (const auto& p : pages) table.push_back(p.data());
    view = KvView{table.data(), n, geometry};
  }
};

// ---- RoPE straight from the definitions (DESIGN §3.4), in double. ----

// Llama-3 frequency scaling as published (Meta's reference code / HF rope_type "llama3").
inline double RefLlama3(double freq, const Llama3Scaling& s) {
  const double low_freq_wavelen = s.original_max_positions / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_positions / s.high_freq_factor;
  const double wavelen = 2 * std::numbers::pi / freq;
  if (wavelen < high_freq_wavelen) return freq;
  if (wavelen > low_freq_wavelen) return freq / s.factor;
  const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
  return (1 - smooth) * freq / s.factor + smooth * freq;
}

inline std::vector<double> RefInvFreq(const RopeSpec& spec, int head_dim) {
  std::vector<double> f(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    f[i] = 1.0 / std::pow(spec.theta, double(2 * i) / head_dim);
    if (spec.llama3) f[i] = RefLlama3(f[i], *spec.llama3);
  }
  return f;
}

// neox rotate-half: x = [x1, x2] (halves), out = [x1 cos - x2 sin, x2 cos + x1 sin].
inline void RefRotate(const double* x, int head_dim, int64_t pos, const std::vector<double>& f,
                      double* out) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double a = double(pos) * f[i];
    const double c = std::cos(a), s = std::sin(a);
    const double x1 = x[i], x2 = x[i + half];
    out[i] = x1 * c - x2 * s;
    out[i + half] = x2 * c + x1 * s;
  }
}

// ---- The attended key set (DESIGN §3.1, §3.4), brute force. ----

// Token -> RoPE position for the query at p whose block is anchored at p_min <= p (the position
// its stage-1 candidates were computed for), with `blocks` the selected 8-token blocks
// (ascending): the window (p_min - window, p] at true positions (engine/hip/mask.h says why it
// reaches back to the anchor's window; with p == p_min it is DESIGN's (p - window, p]); the
// sink [0, sink) outside the window at max(0, base - sink + i); every token t <= p of the
// selected blocks outside the window and the sink at base + j, j its rank among all tokens of the
// selected blocks (masked ones included); base = p_min - window - K + 1, K = 8 * #blocks.
inline std::map<int64_t, int64_t> SpecSparseKeys(int64_t p, int64_t p_min, int sink, int window,
                                                 const std::vector<int64_t>& blocks) {
  std::map<int64_t, int64_t> keys;
  const int64_t K = 8 * int64_t(blocks.size());
  const int64_t base = p_min - window - K + 1;
  const int64_t anchor = std::min(p, p_min);
  auto in_window = [&](int64_t t) { return t > anchor - window && t <= p; };
  for (int64_t t = std::max<int64_t>(0, anchor - window + 1); t <= p; ++t) keys[t] = t;
  for (int64_t i = 0; i < sink && i <= p; ++i) {
    if (!in_window(i)) keys[i] = std::max<int64_t>(0, base - sink + i);
  }
  for (size_t m = 0; m < blocks.size(); ++m) {
    for (int i = 0; i < 8; ++i) {
      const int64_t t = 8 * blocks[m] + i;
      const int64_t j = 8 * int64_t(m) + i;
      if (t > p || in_window(t) || t < sink) continue;
      keys[t] = base + j;
    }
  }
  return keys;
}

// Every key up to p at its true position.
inline std::map<int64_t, int64_t> SpecDenseKeys(int64_t p) {
  std::map<int64_t, int64_t> keys;
  for (int64_t t = 0; t <= p; ++t) keys[t] = t;
  return keys;
}

// ---- Attention, in double. ----

// cos/sin of pos * inv_freq[i] for positions [0, max_pos], in double.
class RefRopeTable {
 public:
  RefRopeTable(const RopeSpec& spec, int head_dim, int64_t max_pos)
      : half_(head_dim / 2), f_(RefInvFreq(spec, head_dim)) {
    cos_.resize(size_t(max_pos + 1) * half_);
    sin_.resize(cos_.size());
    for (int64_t p = 0; p <= max_pos; ++p) {
      for (int i = 0; i < half_; ++i) {
        cos_[size_t(p) * half_ + i] = std::cos(double(p) * f_[i]);
        sin_[size_t(p) * half_ + i] = std::sin(double(p) * f_[i]);
      }
    }
  }
  const std::vector<double>& inv_freq() const { return f_; }
  void Rotate(const double* x, int64_t pos, double* out) const {
    if (pos < 0 || size_t(pos + 1) * half_ > cos_.size()) {
      RefRotate(x, 2 * half_, pos, f_, out);
      return;
    }
    const double* c = cos_.data() + size_t(pos) * half_;
    const double* s = sin_.data() + size_t(pos) * half_;
    for (int i = 0; i < half_; ++i) {
      const double x1 = x[i], x2 = x[i + half_];
      out[i] = x1 * c[i] - x2 * s[i];
      out[i + half_] = x2 * c[i] + x1 * s[i];
    }
  }

 private:
  int half_;
  std::vector<double> f_, cos_, sin_;
};

// Softmax attention of one query over `keys` (token -> RoPE position): for query head h (kv
// head h / group), logits (R(q_pos) q_h * scale) . (R(pos) k_t), output sum softmax * v_t.
// q [Hq][D] as sent (unscaled); k, v [n][Hkv][D] as stored; rope null: no rotation.
inline std::vector<double> RefAttention(const float* q, int Hq, int Hkv, int D, double scale,
                                        const std::vector<float>& k, const std::vector<float>& v,
                                        const std::map<int64_t, int64_t>& keys, int64_t q_pos,
                                        const RefRopeTable* rope) {
  const int group = Hq / Hkv;
  const size_t n = keys.size();
  std::vector<double> out(size_t(Hq) * D, 0.0);
  std::vector<double> qd(D), qr(D), kd(D), kr(size_t(n) * D), logits(n);
  for (int g = 0; g < Hkv; ++g) {
    size_t i = 0;
    for (const auto& [t, pos] : keys) {  // the kv head's keys at their positions
      const float* kt = k.data() + (size_t(t) * Hkv + g) * D;
      for (int d = 0; d < D; ++d) kd[d] = kt[d];
      if (rope) {
        rope->Rotate(kd.data(), pos, kr.data() + i * D);
      } else {
        std::copy(kd.begin(), kd.end(), kr.begin() + i * D);
      }
      ++i;
    }
    for (int h = g * group; h < (g + 1) * group; ++h) {
      for (int d = 0; d < D; ++d) qd[d] = double(q[size_t(h) * D + d]) * scale;
      if (rope) {
        rope->Rotate(qd.data(), q_pos, qr.data());
      } else {
        qr = qd;
      }
      double m = -INFINITY;
      for (size_t j = 0; j < n; ++j) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += qr[d] * kr[j * D + d];
        logits[j] = s;
        m = std::max(m, s);
      }
      double total = 0;
      size_t j = 0;
      for (const auto& [t, pos] : keys) {
        const double w = std::exp(logits[j++] - m);
        total += w;
        const float* vt = v.data() + (size_t(t) * Hkv + g) * D;
        for (int d = 0; d < D; ++d) out[size_t(h) * D + d] += w * vt[d];
      }
      for (int d = 0; d < D; ++d) out[size_t(h) * D + d] /= total;
    }
  }
  return out;
}

// ---- Mask estimation (DESIGN §3.2, §3.4), in double. ----

// Queries scoring probes: [num][Hq][D], softmax scale folded in; pos[i] = query i's position.
struct RefQueries {
  int num = 0;
  const float* q = nullptr;
  const int64_t* pos = nullptr;
};

// Scores of `chunks` (left tokens, chunk size of `stage`) for the block starting at p_min:
// per query head, the representative search on [l, min(l + size, min(length, p_min - mw + 1)))
// with probe(t, side) = max over queries of q'.k_t, where q' is q (`rope` null), R(mw + 1 - side)
// q (relative style: query at mw + 1, left probe at 0, right probe at 1) or R(min(p, n + mw) -
// c) q (chunk-indexed: key at its chunk's index c of the n candidates); then max over heads.
// Inactive (empty) chunks score -inf. k: [length][Hkv][D] as stored.
inline std::vector<float> RefChunkScores(const std::vector<float>& k, int64_t length, int Hq,
                                         int Hkv, int D, const LayerConfig& cfg,
                                         const RopeSpec* rope, int stage,
                                         const std::vector<int64_t>& chunks, int64_t p_min,
                                         const RefQueries& qs) {
  const int L = cfg.stages[stage].chunk_size;
  const int mw = cfg.window_tokens - cfg.stages.front().chunk_size;
  const int64_t limit = std::min<int64_t>(length, p_min - mw + 1);
  const int group = Hq / Hkv;
  const bool chunk_indexed = rope && cfg.prune_rope_style == PruneRopeStyle::kChunkIndexed;
  const std::vector<double> f = rope ? RefInvFreq(*rope, D) : std::vector<double>{};
  const int64_t n = int64_t(chunks.size());
  const size_t rows = size_t(qs.num) * Hq;
  std::vector<double> rq[2] = {std::vector<double>(rows * D), std::vector<double>(rows * D)};
  auto rotate_queries = [&](int64_t c) {
    std::vector<double> qd(D);
    for (int side = 0; side < 2; ++side) {
      for (size_t row = 0; row < rows; ++row) {
        for (int d = 0; d < D; ++d) qd[d] = qs.q[row * D + d];
        double* dst = rq[side].data() + row * D;
        if (!rope) {
          std::copy(qd.begin(), qd.end(), dst);
        } else if (!chunk_indexed) {
          RefRotate(qd.data(), D, mw + 1 - side, f, dst);
        } else {
          const int64_t qpos = std::min<int64_t>(qs.pos[row / Hq], n + mw);
          RefRotate(qd.data(), D, qpos - c, f, dst);
        }
      }
    }
  };
  if (!chunk_indexed) rotate_queries(0);
  std::vector<float> out(size_t(n), -INFINITY);
  for (int64_t c = 0; c < n; ++c) {
    const int64_t l = chunks[c], r = std::min<int64_t>(l + L, limit);
    if (l >= r) continue;
    if (chunk_indexed) rotate_queries(c);
    double best = -INFINITY;
    for (int h = 0; h < Hq; ++h) {
      const int g = h / group;
      auto probe = [&](int64_t t, int side) {
        double s = -INFINITY;
        const float* kt = k.data() + (size_t(t) * Hkv + g) * D;
        for (int i = 0; i < qs.num; ++i) {
          const double* qq = rq[side].data() + (size_t(i) * Hq + h) * D;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qq[d] * kt[d];
          s = std::max(s, dot);
        }
        return s;
      };
      int64_t lo = l, hi = r;
      double score = -INFINITY;
      for (;;) {
        if (hi - lo == 1) {  // last step: both probes on the remaining token
          const double a = probe(lo, 0), b = probe(lo, 1);
          score = std::max(score, a > b ? a : b);
          break;
        }
        const int64_t mid = (lo + hi) / 2;
        const double a = probe((lo + mid) / 2, 0), b = probe((mid + hi) / 2, 1);
        if (a > b) {  // the left half only if strictly higher
          hi = mid;
          score = std::max(score, a);
        } else {
          lo = mid;
          score = std::max(score, b);
        }
      }
      best = std::max(best, score);
    }
    out[size_t(c)] = float(best);
  }
  return out;
}

struct RefMask {
  std::vector<std::vector<int64_t>> kept;  // per stage, kept chunk lefts ascending
  std::vector<int64_t> blocks;             // final 8-token blocks ascending
};

// The whole mask estimation of one query block (§3.2): stage-1 candidates = chunks of the
// stage-1 grid from the sink with left <= p_min - window; per stage score, keep the top
// kept_chunks (higher score first, then lower left; inactive never), sort, realign to the
// stage's grid and split into the next stage's chunks; the last stage's chunks as blocks.
// Stages < pooled_stages score with `pooled`, later ones with `full`.
inline RefMask RefMaskEstimation(const std::vector<float>& k, int64_t length, int Hq, int Hkv,
                                 int D, const LayerConfig& cfg, const RopeSpec* rope, int64_t p_min,
                                 const RefQueries& pooled, const RefQueries& full) {
  RefMask out;
  std::vector<int64_t> cand;
  const int L1 = cfg.stages[0].chunk_size;
  for (int64_t j = 0; cfg.sink_tokens + L1 * j <= p_min - cfg.window_tokens; ++j) {
    cand.push_back(cfg.sink_tokens + L1 * j);
  }
  for (size_t s = 0; s < cfg.stages.size(); ++s) {
    const int L = cfg.stages[s].chunk_size;
    const std::vector<float> sc = RefChunkScores(k, length, Hq, Hkv, D, cfg, rope, int(s), cand,
                                                 p_min, int(s) < cfg.pooled_stages ? pooled : full);
    std::vector<size_t> idx;
    for (size_t i = 0; i < cand.size(); ++i) {
      if (sc[i] != -INFINITY) idx.push_back(i);
    }
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      return sc[a] != sc[b] ? sc[a] > sc[b] : cand[a] < cand[b];
    });
    const size_t keep = size_t(cfg.stages[s].kept_tokens / L);
    if (idx.size() > keep) idx.resize(keep);
    std::vector<int64_t> kept;
    for (size_t i : idx) kept.push_back(cand[i]);
    std::sort(kept.begin(), kept.end());
    out.kept.push_back(kept);
    const int next = s + 1 < cfg.stages.size() ? cfg.stages[s + 1].chunk_size : 8;
    std::vector<int64_t> aligned;
    for (int64_t left : kept)
      aligned.push_back(cfg.sink_tokens + L * ((left - cfg.sink_tokens) / L));
    aligned.erase(std::unique(aligned.begin(), aligned.end()), aligned.end());
    cand.clear();
    for (int64_t left : aligned) {
      for (int64_t x = left; x < left + L; x += next) cand.push_back(x);
    }
  }
  for (int64_t left : cand) out.blocks.push_back(left / 8);
  return out;
}

// max |a - b| / (atol + rtol * |b|) over elements: <= 1 means within tolerance.
inline double WorstRatio(const std::vector<float>& a, const std::vector<double>& b, double atol,
                         double rtol) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::fabs(double(a[i]) - b[i]) / (atol + rtol * std::fabs(b[i])));
  }
  return worst;
}

inline double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += double(a[i] - b[i]) * double(a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace ihip::engine::testing
