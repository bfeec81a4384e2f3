#include "engine/synthetic/synthetic_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include "engine/hip/dtype_convert.h"

namespace ihip::engine::synthetic {
namespace {

// splitmix64-seeded xoshiro256**: one independent stream per (seed, stream).
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + stream * 0xbf58476d1ce4e5b9ull + 1;
    for (uint64_t& s : s_) {
      x += 0x9e3779b97f4a7c15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Approximately N(0, 1): Irwin–Hall sum of the four 16-bit parts of one draw.
  float Normal() {
    const uint64_t r = Next();
    const float sum =
        float(r & 0xffff) + float((r >> 16) & 0xffff) + float((r >> 32) & 0xffff) + float(r >> 48);
    constexpr float kMean = 2.0f * 65535.0f;
    constexpr float kInvStd = 1.7320508f / 65535.0f;  // var of one part: 65535^2 / 12
    return (sum - kMean) * kInvStd;
  }
  uint64_t Uniform(uint64_t n) { return Next() % n; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

enum Stream : uint64_t { kQueries = 1, kNeedle = 2, kKeys = 100, kValues = 100000 };

template <class Fn>
void ParallelOverHeads(int heads, Fn fn) {
  const int threads =
      int(std::min<unsigned>(heads, std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      for (int h = w; h < heads; h += threads) fn(h, w);
    });
  }
  for (std::thread& t : pool) t.join();
}

// Minimum-norm key changes for one kv head's query group: Delta k = Q^T (Q Q^T)^-1 Delta logits,
// where Q = [group][D] holds the first query's heads with the softmax scale folded in.
class GroupNudge {
 public:
  GroupNudge(const float* q, int group, int D) : group_(group), D_(D), q_(q, q + group * D) {
    std::vector<double> g(group * group), inv(group * group, 0.0);
    for (int a = 0; a < group; ++a) {
      for (int b = 0; b < group; ++b) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += double(q[a * D + d]) * q[b * D + d];
        g[a * group + b] = s;
      }
      inv[a * group + a] = 1.0;
    }
    for (int c = 0; c < group; ++c) {  // Gauss–Jordan with partial pivoting
      int piv = c;
      for (int r = c + 1; r < group; ++r) {
        if (std::fabs(g[r * group + c]) > std::fabs(g[piv * group + c])) piv = r;
      }
      for (int k = 0; k < group; ++k) {
        std::swap(g[c * group + k], g[piv * group + k]);
        std::swap(inv[c * group + k], inv[piv * group + k]);
      }
      const double d = g[c * group + c];
      for (int k = 0; k < group; ++k) {
        g[c * group + k] /= d;
        inv[c * group + k] /= d;
      }
      for (int r = 0; r < group; ++r) {
        if (r == c) continue;
        const double f = g[r * group + c];
        for (int k = 0; k < group; ++k) {
          g[r * group + k] -= f * g[c * group + k];
          inv[r * group + k] -= f * inv[c * group + k];
        }
      }
    }
    gram_inv_ = std::move(inv);
  }

  void Logits(const float* k, double* out) const {
    for (int a = 0; a < group_; ++a) {
      double s = 0;
      for (int d = 0; d < D_; ++d) s += double(q_[a * D_ + d]) * k[d];
      out[a] = s;
    }
  }

  // k += Q^T (Q Q^T)^-1 delta
  void Apply(const double* delta, float* k) const {
    std::vector<double> w(group_, 0.0);
    for (int a = 0; a < group_; ++a) {
      for (int b = 0; b < group_; ++b) w[a] += gram_inv_[a * group_ + b] * delta[b];
    }
    for (int d = 0; d < D_; ++d) {
      double s = 0;
      for (int a = 0; a < group_; ++a) s += w[a] * q_[a * D_ + d];
      k[d] += float(s);
    }
  }

 private:
  int group_, D_;
  std::vector<float> q_;
  std::vector<double> gram_inv_;
};

}  // namespace

size_t SyntheticData::kv_row_bytes() const {
  return size_t(options.num_kv_heads) * options.head_dim * DTypeSize(options.dtype);
}

size_t SyntheticData::q_row_bytes() const {
  return size_t(options.num_q_heads) * options.head_dim * DTypeSize(options.dtype);
}

SyntheticData Generate(const SyntheticOptions& o, const std::function<void(double)>& progress) {
  SyntheticData out;
  out.options = o;
  const int Hq = o.num_q_heads, Hkv = o.num_kv_heads, D = o.head_dim, group = Hq / Hkv;
  const size_t es = DTypeSize(o.dtype);
  const size_t kv_row = size_t(Hkv) * D;
  out.scale = 1.0f / std::sqrt(float(D));
  out.k.resize(size_t(o.length) * kv_row * es);
  out.v.resize(size_t(o.length) * kv_row * es);
  out.q.resize(size_t(o.num_queries) * Hq * D * es);
  auto report = [&](double f) {
    if (progress) progress(f);
  };

  // Queries (stored rounded; qf keeps the rounded values, scale folded in, for scoring).
  std::vector<float> qf(size_t(o.num_queries) * Hq * D);
  {
    Rng rng(o.seed, kQueries);
    std::vector<float> cur(size_t(Hq) * D), tmp(cur.size());
    const float std_q = float(o.query_logit_std);
    for (float& x : cur) x = std_q * rng.Normal();
    const float keep = std::sqrt(1.0f - float(o.query_drift * o.query_drift));
    for (int i = 0; i < o.num_queries; ++i) {
      if (i > 0) {
        for (float& x : cur) x = keep * x + float(o.query_drift) * std_q * rng.Normal();
      }
      FromFloat(o.dtype, cur.data(), cur.size(), out.q.data() + i * cur.size() * es);
      ToFloat(o.dtype, out.q.data() + i * cur.size() * es, cur.size(), tmp.data());
      for (size_t j = 0; j < cur.size(); ++j) qf[i * cur.size() + j] = tmp[j] * out.scale;
    }
  }

  // Keys (random walk) and values, one kv head per task.
  const float rho = float(o.key_correlation);
  const float noise = std::sqrt(1.0f - rho * rho);
  ParallelOverHeads(Hkv, [&](int h, int worker) {
    Rng krng(o.seed, kKeys + h), vrng(o.seed, kValues + h);
    std::vector<float> state(D), vrow(D);
    for (float& x : state) x = krng.Normal();
    for (int64_t t = 0; t < o.length; ++t) {
      for (float& x : state) x = rho * x + noise * krng.Normal();
      for (float& x : vrow) x = vrng.Normal();
      const size_t off = (size_t(t) * kv_row + size_t(h) * D) * es;
      FromFloat(o.dtype, state.data(), D, out.k.data() + off);
      FromFloat(o.dtype, vrow.data(), D, out.v.data() + off);
      if (worker == 0 && (t & 0xffff) == 0) report(0.7 * double(t) / double(o.length));
    }
  });
  report(0.7);

  const int64_t p0 = o.length - o.num_queries;          // first query's position
  const int64_t middle_end = p0 - o.window_tokens + 1;  // exclusive
  std::vector<GroupNudge> nudges;
  for (int g = 0; g < Hkv; ++g) nudges.emplace_back(qf.data() + size_t(g) * group * D, group, D);
  auto edit_key = [&](int64_t t, int g, const std::function<void(float*)>& fn) {
    std::byte* p = out.k.data() + (size_t(t) * kv_row + size_t(g) * D) * es;
    std::vector<float> k(D);
    ToFloat(o.dtype, p, D, k.data());
    fn(k.data());
    FromFloat(o.dtype, k.data(), D, p);
  };
  std::vector<double> logits(group), delta(group);

  // Sinks.
  for (int64_t t = 0; t < std::min<int64_t>(o.hot_sink_tokens, o.length); ++t) {
    for (int g = 0; g < Hkv; ++g) {
      edit_key(t, g, [&](float* k) {
        nudges[g].Logits(k, logits.data());
        for (int a = 0; a < group; ++a) delta[a] = o.sink_logit - logits[a];
        nudges[g].Apply(delta.data(), k);
      });
    }
  }

  // Needle and its passage.
  const int64_t lo = o.sink_tokens, hi = middle_end - 256 - 8;  // needle start range, 8-aligned
  if (o.plant_needle && hi > lo) {
    Rng rng(o.seed, kNeedle);
    int64_t needle = o.needle_token >= 0 ? o.needle_token : lo + int64_t(rng.Uniform(hi - lo));
    needle = std::clamp<int64_t>(needle / 8 * 8, lo, hi);
    out.needle_token = needle;
    for (int64_t t = std::max<int64_t>(lo, needle - o.passage_radius);
         t < std::min<int64_t>(middle_end, needle + 8 + o.passage_radius); ++t) {
      if (t >= needle && t < needle + 8) continue;
      const int64_t dist = t < needle ? needle - t : t - (needle + 7);
      const double w = 1.0 - double(dist) / o.passage_radius;
      if (w <= 0) continue;
      for (int g = 0; g < Hkv; ++g) {
        edit_key(t, g, [&](float* k) {
          std::fill(delta.begin(), delta.end(), o.passage_logit * w);
          nudges[g].Apply(delta.data(), k);
        });
      }
    }
    // Best other middle logit per query head, from the stored keys.
    std::vector<double> best(Hq, -std::numeric_limits<double>::infinity());
    ParallelOverHeads(Hkv, [&](int g, int worker) {
      std::vector<float> k(D);
      std::vector<double> l(group);
      for (int64_t t = lo; t < middle_end; ++t) {
        if (t >= needle && t < needle + 8) continue;
        ToFloat(o.dtype, out.k.data() + (size_t(t) * kv_row + size_t(g) * D) * es, D, k.data());
        nudges[g].Logits(k.data(), l.data());
        for (int a = 0; a < group; ++a) best[g * group + a] = std::max(best[g * group + a], l[a]);
        if (worker == 0 && (t & 0xffff) == 0) {
          report(0.7 + 0.3 * double(t - lo) / double(middle_end - lo));
        }
      }
    });
    double achieved = std::numeric_limits<double>::infinity();
    for (int64_t t = needle; t < needle + 8; ++t) {
      for (int g = 0; g < Hkv; ++g) {
        edit_key(t, g, [&](float* k) {
          nudges[g].Logits(k, logits.data());
          for (int a = 0; a < group; ++a) {
            delta[a] = best[g * group + a] + o.needle_margin - logits[a];
          }
          nudges[g].Apply(delta.data(), k);
        });
        std::vector<float> k(D);
        ToFloat(o.dtype, out.k.data() + (size_t(t) * kv_row + size_t(g) * D) * es, D, k.data());
        nudges[g].Logits(k.data(), logits.data());
        for (int a = 0; a < group; ++a) {
          achieved = std::min(achieved, logits[a] - best[g * group + a]);
        }
      }
    }
    out.achieved_margin = achieved;
  }
  report(1.0);
  return out;
}

}  // namespace ihip::engine::synthetic
