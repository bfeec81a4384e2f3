#include "engine/synthetic/accuracy.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "engine/hip/dtype_convert.h"
#include "engine/hip/mask.h"

namespace ihip::engine::synthetic {

DecodeAccuracy EvaluateDecode(const SyntheticData& data, int query,
                              const std::vector<int64_t>& blocks, const LayerConfig& cfg,
                              const float* o_sparse, const float* o_dense, int topk) {
  const SyntheticOptions& o = data.options;
  const int Hq = o.num_q_heads, Hkv = o.num_kv_heads, D = o.head_dim, group = Hq / Hkv;
  const int64_t p = data.query_position(query);
  const int64_t n = p + 1;
  const size_t es = DTypeSize(o.dtype);
  const size_t kv_row = size_t(Hkv) * D;

  // Attended keys of the sparse step.
  std::vector<uint8_t> attended(n, 0);
  for (const KeyRun& r : SparseRuns(p, p, cfg, blocks)) {
    std::fill(attended.begin() + r.begin, attended.begin() + r.end, 1);
  }
  std::vector<uint8_t> selected(n, 0);
  for (int64_t b : blocks) {
    for (int64_t t = b * 8; t < std::min(n, b * 8 + 8); ++t) selected[t] = 1;
  }
  const int64_t middle_begin = cfg.sink_tokens;
  const int64_t middle_end = std::max<int64_t>(middle_begin, p - cfg.window_tokens + 1);

  std::vector<double> topk_recall(Hq), mass(Hq);
  std::vector<float> dense(size_t(Hq) * D, 0.0f);
  std::vector<float> qf(size_t(Hq) * D);
  ToFloat(o.dtype, data.q_at(query), qf.size(), qf.data());
  const int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      std::vector<float> s(n), k(D), v(D);
      std::vector<double> acc(D);
      for (int h = w; h < Hq; h += threads) {
        const int g = h / group;
        const float* q = qf.data() + size_t(h) * D;
        float m = -INFINITY;
        for (int64_t t = 0; t < n; ++t) {
          ToFloat(o.dtype, data.k.data() + (size_t(t) * kv_row + size_t(g) * D) * es, D, k.data());
          float dot = 0;
          for (int d = 0; d < D; ++d) dot += q[d] * k[d];
          s[t] = dot * data.scale;
          m = std::max(m, s[t]);
        }
        double total = 0, on = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = 0; t < n; ++t) {
          const double w8 = std::exp(double(s[t]) - m);
          total += w8;
          if (attended[t]) on += w8;
          if (o_dense == nullptr) {
            ToFloat(o.dtype, data.v.data() + (size_t(t) * kv_row + size_t(g) * D) * es, D,
                    v.data());
            for (int d = 0; d < D; ++d) acc[d] += w8 * v[d];
          }
        }
        mass[h] = on / total;
        if (o_dense == nullptr) {
          for (int d = 0; d < D; ++d) dense[size_t(h) * D + d] = float(acc[d] / total);
        }
        // Dense top-k of the middle keys for this head.
        std::vector<int64_t> idx;
        for (int64_t t = middle_begin; t < middle_end; ++t) idx.push_back(t);
        const int64_t kk = std::min<int64_t>(topk, int64_t(idx.size()));
        std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                          [&](int64_t a, int64_t b) { return s[a] != s[b] ? s[a] > s[b] : a < b; });
        int64_t hit = 0;
        for (int64_t i = 0; i < kk; ++i) hit += selected[idx[i]];
        topk_recall[h] = kk > 0 ? double(hit) / double(kk) : 1.0;
      }
    });
  }
  for (std::thread& t : pool) t.join();

  DecodeAccuracy a;
  if (data.needle_token >= 0) {
    a.needle_selected = std::binary_search(blocks.begin(), blocks.end(), data.needle_token / 8);
  }
  for (int h = 0; h < Hq; ++h) {
    a.topk_recall += topk_recall[h] / Hq;
    a.mass_recall += mass[h] / Hq;
  }
  const float* ref = o_dense != nullptr ? o_dense : dense.data();
  double num = 0, den = 0;
  for (size_t i = 0; i < size_t(Hq) * D; ++i) {
    num += double(o_sparse[i] - ref[i]) * (o_sparse[i] - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  a.output_error = den > 0 ? std::sqrt(num / den) : 0.0;
  return a;
}

}  // namespace ihip::engine::synthetic
