#pragma once

// Helpers for tests that drive CpuEngine: random per-layer inputs in the wire dtype, appending
// them, and one-call Attend wrappers returning the output as floats.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cpu/cpu_engine.h"
#include "engine/in_memory_page_store.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::testing {

// Random k, v for `length` tokens and q for the same positions, as floats and as wire bytes.
// `stored_k` / `stored_v` are the values the engine holds (wire, then storage rounding).
struct LayerData {
  ModelSpec model;
  int64_t length = 0;
  std::vector<float> k, v, q;             // intended values
  std::vector<float> stored_k, stored_v;  // as stored in the engine
  std::vector<float> wire_q;              // q as the engine receives it
  std::vector<std::byte> k_wire, v_wire, q_wire;

  size_t kv_row() const { return size_t(model.num_kv_heads) * model.head_dim; }
  size_t q_row() const { return size_t(model.num_q_heads) * model.head_dim; }
  const std::byte* k_at(int64_t t) const {
    return k_wire.data() + size_t(t) * kv_row() * DTypeSize(model.dtype);
  }
  const std::byte* v_at(int64_t t) const {
    return v_wire.data() + size_t(t) * kv_row() * DTypeSize(model.dtype);
  }
  const std::byte* q_at(int64_t t) const {
    return q_wire.data() + size_t(t) * q_row() * DTypeSize(model.dtype);
  }
  const float* wire_q_at(int64_t t) const { return wire_q.data() + size_t(t) * q_row(); }
};

// q only for positions >= q_from (the rest zero) to bound memory. Keys follow a slowly varying
// random walk (attention locality); q has per-element std `q_std` (logit std ~ q_std with the
// default softmax scale).
inline LayerData MakeLayerData(const ModelSpec& m, int64_t length, uint64_t seed,
                               int64_t q_from = 0, float q_std = 1.5f) {
  Random rng(seed);
  LayerData d;
  d.model = m;
  d.length = length;
  const size_t kv_row = d.kv_row(), q_row = d.q_row();
  d.k.resize(size_t(length) * kv_row);
  std::vector<float> state = rng.Normals(kv_row);
  for (int64_t t = 0; t < length; ++t) {
    for (size_t i = 0; i < kv_row; ++i) {
      state[i] = 0.9f * state[i] + 0.4359f * rng.Normal();
      d.k[size_t(t) * kv_row + i] = state[i];
    }
  }
  d.v = rng.Normals(d.k.size());
  d.q.assign(size_t(length) * q_row, 0.0f);
  for (size_t i = size_t(q_from) * q_row; i < d.q.size(); ++i) d.q[i] = rng.Normal(q_std);
  d.k_wire = ToWire(m.dtype, d.k);
  d.v_wire = ToWire(m.dtype, d.v);
  d.q_wire = ToWire(m.dtype, d.q);
  d.stored_k = Rounded(m.kv_dtype, FromWire(m.dtype, d.k_wire.data(), d.k.size()));
  d.stored_v = Rounded(m.kv_dtype, FromWire(m.dtype, d.v_wire.data(), d.v.size()));
  d.wire_q = FromWire(m.dtype, d.q_wire.data(), d.q.size());
  return d;
}

// An engine over its own in-memory store.
struct EngineUnderTest {
  std::unique_ptr<InMemoryPageStore> store;
  std::unique_ptr<cpu::CpuEngine> engine;

  explicit EngineUnderTest(int64_t capacity_bytes = 0, int threads = 2,
                           int max_tokens_per_item = 65536) {
    store = std::make_unique<InMemoryPageStore>(capacity_bytes);
    cpu::CpuEngineOptions o;
    o.num_threads = threads;
    o.max_tokens_per_item = max_tokens_per_item;
    engine = std::make_unique<cpu::CpuEngine>(o, store.get());
  }

  // AppendKv of tokens [from, to) in chunks of `chunk`.
  absl::Status Append(const std::string& id, int layer, const LayerData& d, int64_t from,
                      int64_t to, int chunk = 4096) {
    for (int64_t t = from; t < to; t += chunk) {
      const int n = int(std::min<int64_t>(chunk, to - t));
      absl::Status s = engine->AppendKv(id, layer, t, n, d.k_at(t), d.v_at(t));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Attend for positions [pos, pos + T) with d's q (and k, v when appending); output as floats.
  absl::StatusOr<std::vector<float>> Attend(const std::string& id, int layer, const LayerData& d,
                                            int64_t pos, int T, const AttendOptions& options,
                                            AttendResult* result = nullptr) {
    std::vector<std::byte> out(size_t(T) * d.q_row() * DTypeSize(d.model.dtype));
    AttendItem item;
    item.sequence = id;
    item.layer = layer;
    item.position = pos;
    item.num_tokens = T;
    item.q = d.q_at(pos);
    item.k = pos < d.length ? d.k_at(pos) : nullptr;
    item.v = pos < d.length ? d.v_at(pos) : nullptr;
    item.out = out.data();
    item.options = options;
    AttendResult local;
    absl::Status s = engine->Attend(item, result ? result : &local);
    if (!s.ok()) return s;
    return FromWire(d.model.dtype, out.data(), size_t(T) * d.q_row());
  }

  int64_t Length(const std::string& id, int layer) const {
    auto info = engine->GetSequence(id);
    return info.ok() ? info->layer_lengths.at(size_t(layer)) : -1;
  }
};

inline AttendOptions Sparse() { return AttendOptions{}; }
inline AttendOptions Dense() {
  AttendOptions o;
  o.mode = AttentionMode::kDense;
  return o;
}
// Evaluation only: nothing appended.
inline AttendOptions Eval(AttentionMode mode = AttentionMode::kSparse,
                          int refresh = kRefreshBySchedule) {
  AttendOptions o;
  o.mode = mode;
  o.append = false;
  o.refresh = refresh;
  return o;
}

}  // namespace ihip::engine::testing
