// engine/cuda/decode_attention.h (DESIGN §3.5) against the CPU reference (engine/cpu/attention.h
// over the same page bytes, runs from engine/hip/mask.h) on fresh random data every run: dense
// and sparse (blocks straddling the sink and the window, a lagging anchor), RoPE none / plain /
// Llama-3, every storage dtype, head dims 64/128/256, groups 1, 4 and generic ones, page sizes
// that are not powers of two, lengths that are not multiples of the page or of 8, and a dense
// context of ~300K keys. Also: split-K equals one split, out_lse equals a double-precision
// log-sum-exp, poisoned outputs are overwritten, sparse with every block equals dense, sparse
// with no blocks and with the plan's whole block capacity, graph replay with new step scalars and
// blocks equals an eager launch, the tensor-core kernel (16-bit and fp8 storage) equals the
// CUDA-core one (fp32 storage) on the same values. Pages live in shuffled slots of a NaN-filled pool, so a read
// that bypasses the block table shows up.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "engine/cpu/attention.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cuda/decode_attention.h"
#include "engine/hip/dtype_convert.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"
#include "gtest/gtest.h"
#include "tests/engine/cuda/gpu_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::cuda {
namespace {

using engine::testing::Random;

using engine::testing::FreshSeed;

cpu::ThreadPool& Pool() {
  static cpu::ThreadPool* pool = new cpu::ThreadPool();
  return *pool;
}

// Device allocations freed together.
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  // Null (and a failed expectation) when the allocation fails.
  void* Alloc(size_t bytes) {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    if (err != cudaSuccess) return nullptr;
    ptrs_.push_back(p);
    return p;
  }
  template <class T>
  T* Upload(const std::vector<T>& host) {
    auto* d = static_cast<T*>(Alloc(host.size() * sizeof(T)));
    if (d != nullptr) {
      EXPECT_EQ(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
    return d;
  }

 private:
  std::vector<void*> ptrs_;
};

// Splitmix64 values as uniform floats of unit variance: fast enough for 10^8 elements.
class FastUniform {
 public:
  explicit FastUniform(uint64_t seed) : x_(seed) {}
  float Next() {
    uint64_t z = (x_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return float(int32_t(uint32_t(z))) * 0x1.0p-31f * 1.7320508f;
  }

 private:
  uint64_t x_;
};

// One (sequence, layer)'s KV: host pages (the CPU reference reads them) and the same bytes on the
// device, each page in a shuffled slot of a pool twice as large whose other slots hold NaNs.
struct TestKv {
  PageGeometry geo;
  int64_t length = 0;
  std::vector<std::vector<std::byte>> pages;
  std::vector<const std::byte*> table;
  DeviceKv dev;

  KvView view() const { return KvView{table.data(), length, geo}; }
};

ElemType ToElem(DType t) { return ElemType(int(t)); }

// Values are drawn from `seed`; value_dtype (when not kF32) rounds them first, so that fp32 pages
// can hold exactly the values of 16-bit pages built from the same seed.
void BuildKv(int64_t length, int kv_heads, int head_dim, DType dtype, int page_tokens,
             uint64_t seed, DeviceArena& arena, TestKv* kv, DType value_dtype = DType::kF32) {
  kv->geo = PageGeometry{page_tokens, kv_heads, head_dim, dtype};
  kv->length = length;
  const int64_t num_pages = (length + page_tokens - 1) / page_tokens;
  const size_t row = size_t(kv_heads) * head_dim;
  kv->pages.assign(size_t(num_pages), std::vector<std::byte>(kv->geo.page_bytes()));
  Pool().ParallelFor(num_pages, [&](int64_t pg) {
    FastUniform rng(seed * 1000003 + uint64_t(pg));
    std::vector<float> tmp(row);
    std::byte* base = kv->pages[size_t(pg)].data();
    for (int64_t i = 0; i < 2 * int64_t(page_tokens); ++i) {  // K rows, then V rows
      // A few keys with a large norm give peaked softmaxes (max tracking across splits).
      const float scale = (i < page_tokens && rng.Next() > 1.6f) ? 4.0f : 1.0f;
      for (float& x : tmp) x = rng.Next() * scale;
      if (value_dtype != DType::kF32) {
        std::vector<std::byte> rounded(row * DTypeSize(value_dtype));
        FromFloat(value_dtype, tmp.data(), row, rounded.data());
        ToFloat(value_dtype, rounded.data(), row, tmp.data());
      }
      FromFloat(dtype, tmp.data(), row, base + size_t(i) * kv->geo.row_bytes());
    }
  });
  kv->table.clear();
  for (const auto& p : kv->pages) kv->table.push_back(p.data());

  const size_t page_bytes = kv->geo.page_bytes();
  auto* pool = static_cast<uint8_t*>(arena.Alloc(2 * num_pages * page_bytes));
  ASSERT_NE(pool, nullptr);
  ASSERT_EQ(cudaMemset(pool, 0xff, 2 * num_pages * page_bytes), cudaSuccess);
  std::vector<int64_t> slots(size_t(2 * num_pages));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937_64(seed));
  std::vector<const uint8_t*> dev_table(static_cast<size_t>(num_pages));
  for (int64_t pg = 0; pg < num_pages; ++pg) {
    uint8_t* dst = pool + size_t(slots[size_t(pg)]) * page_bytes;
    ASSERT_EQ(cudaMemcpy(dst, kv->pages[size_t(pg)].data(), page_bytes, cudaMemcpyHostToDevice),
              cudaSuccess);
    dev_table[size_t(pg)] = dst;
  }
  kv->dev.pages = arena.Upload(dev_table);
  kv->dev.page_tokens = page_tokens;
  kv->dev.kv_heads = kv_heads;
  kv->dev.head_dim = head_dim;
  kv->dev.dtype = ToElem(dtype);
}

enum class RopeKind { kNone, kPlain, kLlama3 };

std::unique_ptr<Rope> MakeRope(RopeKind kind, int head_dim) {
  if (kind == RopeKind::kNone) return nullptr;
  RopeSpec spec;
  spec.mode = RopeMode::kExtend;
  spec.theta = kind == RopeKind::kLlama3 ? 500000.0 : 10000.0;
  if (kind == RopeKind::kLlama3) spec.llama3 = Llama3Scaling{};
  return std::make_unique<Rope>(spec, head_dim);
}

// What one query attends to, host side.
struct Query {
  int num_q_heads = 0;
  std::vector<float> q;  // [Hq][D], scale folded in
  int64_t p = 0;
  int64_t anchor = 0;
  bool dense = true;
  std::vector<int64_t> blocks;
  int sink = 256;
  int window = 1024;

  std::vector<KeyRun> Runs() const {
    if (dense) return DenseRuns(p);
    LayerConfig cfg;
    cfg.sink_tokens = sink;
    cfg.window_tokens = window;
    return SparseRuns(p, anchor, cfg, blocks);
  }
};

std::vector<float> CpuAttention(const TestKv& kv, const Rope* rope, const Query& qr) {
  std::vector<float> out(qr.q.size());
  const std::vector<KeyRun> runs = qr.Runs();
  const cpu::AttentionQuery aq{qr.q.data(), qr.p, &runs, out.data()};
  EXPECT_TRUE(cpu::AttendQueries(kv.view(), qr.num_q_heads, rope, {aq}, Interrupt{}, &Pool()).ok());
  return out;
}

// Natural-log log-sum-exp of every head's logits over the attended keys, in double.
std::vector<double> CpuLse(const TestKv& kv, const Rope* rope, const Query& qr) {
  const int D = kv.geo.head_dim, Hq = qr.num_q_heads, group = Hq / kv.geo.kv_heads;
  const std::vector<double> f = rope ? rope->inv_freq() : std::vector<double>{};
  const std::vector<KeyRun> runs = qr.Runs();
  std::vector<double> lse(static_cast<size_t>(Hq));
  Pool().ParallelFor(Hq, [&](int64_t h) {
    std::vector<double> q(D), qrot(D), k(D), krot(D);
    std::vector<float> kf(D);
    for (int d = 0; d < D; ++d) q[d] = qr.q[size_t(h) * D + d];
    if (rope) engine::testing::RefRotate(q.data(), D, qr.p, f, qrot.data());
    const std::vector<double>& qq = rope ? qrot : q;
    std::vector<double> logits;
    for (const KeyRun& r : runs) {
      for (int64_t t = r.begin; t < r.end; ++t) {
        ToFloat(kv.geo.dtype, kv.view().Key(t, int(h) / group), D, kf.data());
        for (int d = 0; d < D; ++d) k[d] = kf[d];
        const int64_t pos = std::max<int64_t>(0, r.pos_begin + (t - r.begin));
        if (rope) engine::testing::RefRotate(k.data(), D, pos, f, krot.data());
        const std::vector<double>& kk = rope ? krot : k;
        double s = 0;
        for (int d = 0; d < D; ++d) s += qq[d] * kk[d];
        logits.push_back(s);
      }
    }
    const double m = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double s : logits) sum += std::exp(s - m);
    lse[size_t(h)] = m + std::log(sum);
  });
  return lse;
}

// Device inputs of one query, updatable in place (graph replay).
struct DeviceQuery {
  StepScalars* step = nullptr;
  float* q = nullptr;
  int64_t* blocks = nullptr;
  int* num_blocks = nullptr;
  double* inv_freq = nullptr;
  int block_capacity = 0;
};

void UploadQuery(const Query& qr, const Rope* rope, DeviceArena& arena, DeviceQuery* dq) {
  if (dq->step == nullptr) {
    dq->step = static_cast<StepScalars*>(arena.Alloc(sizeof(StepScalars)));
    dq->q = static_cast<float*>(arena.Alloc(qr.q.size() * sizeof(float)));
    dq->block_capacity = std::max<int>(1, int(qr.blocks.size()) * 2);
    dq->blocks = static_cast<int64_t*>(arena.Alloc(dq->block_capacity * sizeof(int64_t)));
    dq->num_blocks = static_cast<int*>(arena.Alloc(sizeof(int)));
    if (rope) dq->inv_freq = arena.Upload(rope->inv_freq());
  }
  ASSERT_LE(int(qr.blocks.size()), dq->block_capacity);
  StepScalars s;
  s.position = qr.p;
  s.kv_length = qr.p + 1;
  s.p_min = qr.anchor;
  s.anchor = qr.anchor;
  const int nb = int(qr.blocks.size());
  IHIP_CUDA_ASSERT(cudaMemcpy(dq->step, &s, sizeof(s), cudaMemcpyHostToDevice));
  IHIP_CUDA_ASSERT(
      cudaMemcpy(dq->q, qr.q.data(), qr.q.size() * sizeof(float), cudaMemcpyHostToDevice));
  IHIP_CUDA_ASSERT(cudaMemcpy(dq->num_blocks, &nb, sizeof(int), cudaMemcpyHostToDevice));
  if (nb > 0) {
    IHIP_CUDA_ASSERT(
        cudaMemcpy(dq->blocks, qr.blocks.data(), nb * sizeof(int64_t), cudaMemcpyHostToDevice));
  }
}

struct GpuResult {
  std::vector<float> out;
  std::vector<float> lse;
};

int NumSms() {
  int sms = 0;
  EXPECT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  return std::max(sms, 1);
}

DecodeAttentionParams MakeParams(const TestKv& kv, const Query& qr, const DeviceQuery& dq,
                                 ElemType out_dtype, void* out, float* lse, void* ws, int splits) {
  DecodeAttentionParams p;
  p.kv = kv.dev;
  p.step = dq.step;
  p.q = dq.q;
  p.num_q_heads = qr.num_q_heads;
  p.dense = qr.dense;
  p.blocks = dq.blocks;
  p.num_blocks = dq.num_blocks;
  p.sink_tokens = qr.sink;
  p.window_tokens = qr.window;
  p.rope.inv_freq = dq.inv_freq;
  p.out = out;
  p.out_dtype = out_dtype;
  p.out_lse = lse;
  p.workspace = ws;
  p.num_splits = splits;
  return p;
}

// Runs the kernel with `splits` splits (0: the plan's, made for `plan_keys` keys, or for the
// query's own key count when plan_keys < 0) on NaN-poisoned outputs. Sparse launches pass the
// plan's split_keys and the blocks' capacity as the engine does (`speculate`), or neither.
void RunGpu(const TestKv& kv, const Query& qr, const DeviceQuery& dq, DType out_dtype, int splits,
            DeviceArena& arena, GpuResult* res, int64_t plan_keys = -1, bool speculate = true) {
  const int D = kv.geo.head_dim;
  DecodeAttentionPlan plan;
  const int64_t max_keys = plan_keys >= 0 ? plan_keys : CountKeys(qr.Runs());
  ASSERT_EQ(PlanDecodeAttention(qr.num_q_heads, kv.geo.kv_heads, D, kv.dev.dtype, max_keys,
                                NumSms(), &plan),
            cudaSuccess);
  if (splits == 0) splits = plan.num_splits;
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(qr.num_q_heads, D, splits);
  void* ws = arena.Alloc(ws_bytes);
  const size_t n = qr.q.size();
  void* out = arena.Alloc(n * DTypeSize(out_dtype));
  auto* lse = static_cast<float*>(arena.Alloc(qr.num_q_heads * sizeof(float)));
  IHIP_CUDA_ASSERT(cudaMemset(out, 0xff, n * DTypeSize(out_dtype)));  // NaN in every dtype
  IHIP_CUDA_ASSERT(cudaMemset(lse, 0xff, qr.num_q_heads * sizeof(float)));
  DecodeAttentionParams p = MakeParams(kv, qr, dq, ToElem(out_dtype), out, lse, ws, splits);
  if (!qr.dense && speculate) {
    p.split_keys = plan.split_keys;  // made for the plan's split count: others fall back
    p.max_blocks = dq.block_capacity;
  }
  IHIP_CUDA_ASSERT(LaunchDecodeAttention(p, nullptr));
  IHIP_CUDA_ASSERT(cudaDeviceSynchronize());
  std::vector<std::byte> host(n * DTypeSize(out_dtype));
  IHIP_CUDA_ASSERT(cudaMemcpy(host.data(), out, host.size(), cudaMemcpyDeviceToHost));
  res->out = engine::testing::FromWire(out_dtype, host.data(), n);
  res->lse.resize(size_t(qr.num_q_heads));
  IHIP_CUDA_ASSERT(
      cudaMemcpy(res->lse.data(), lse, res->lse.size() * sizeof(float), cudaMemcpyDeviceToHost));
}

bool AllFinite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

// Ascending distinct blocks below p: `count` random ones plus blocks straddling the sink end
// and the window start, one inside the sink and one inside the window.
std::vector<int64_t> MakeBlocks(Random& rng, int64_t p, int64_t anchor, int sink, int window,
                                int count) {
  std::set<int64_t> b;
  const int64_t window_begin = std::max<int64_t>(0, std::min(p, anchor) - window + 1);
  const int64_t last = p / 8;
  b.insert(0);
  b.insert(sink / 8);
  b.insert(window_begin / 8);
  b.insert(std::min(last, (window_begin + p) / 16));
  while (int(b.size()) < count && int64_t(b.size()) <= last) b.insert(rng.Uniform(0, last));
  return {b.begin(), b.end()};
}

Query MakeQuery(Random& rng, int hq, int head_dim, int64_t p) {
  Query qr;
  qr.num_q_heads = hq;
  qr.p = qr.anchor = p;
  qr.q = rng.Normals(size_t(hq) * head_dim, float(1.0 / std::sqrt(double(head_dim))));
  return qr;
}

// ---- Parameterized comparison with the CPU reference ----

struct Case {
  DType kv_dtype;
  int head_dim;
  int hq, hkv;
  bool dense;
  RopeKind rope;
  DType out_dtype;
  int page_tokens;
  int sink, window;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << DTypeName(c.kv_dtype) << " D" << c.head_dim << " " << c.hq << "/" << c.hkv
      << (c.dense ? " dense" : " sparse") << " rope" << int(c.rope) << " out "
      << DTypeName(c.out_dtype) << " P" << c.page_tokens << " sink" << c.sink << " window"
      << c.window;
}

std::vector<Case> AllCases() {
  const DType kv_dtypes[] = {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3,
                             DType::kF8E5M2};
  const DType outs[] = {DType::kF32, DType::kBF16, DType::kF16};
  const int pages[] = {64, 40, 16};
  std::vector<Case> cases;
  int i = 0;
  for (DType kv : kv_dtypes) {
    for (int d : {64, 128, 256}) {
      for (bool dense : {true, false}) {
        const bool g4 = i % 2 == 0;
        const bool small_cfg = (i / 2) % 2 == 0;  // sink 20 (blocks straddle it), window 100
        cases.push_back(Case{kv, d, g4 ? 8 : 4, g4 ? 2 : 4, dense, RopeKind(i % 3), outs[i % 3],
                             pages[i % 3], small_cfg ? 20 : 256, small_cfg ? 100 : 1024});
        ++i;
      }
    }
  }
  // Generic groups: 3 (sub-groups of one head) and 16 (two blocks of 8 per kv head).
  cases.push_back(
      Case{DType::kBF16, 128, 6, 2, false, RopeKind::kLlama3, DType::kF32, 64, 20, 100});
  cases.push_back(
      Case{DType::kBF16, 128, 16, 1, true, RopeKind::kPlain, DType::kF32, 64, 256, 1024});
  cases.push_back(Case{DType::kF16, 64, 4, 2, false, RopeKind::kNone, DType::kF32, 64, 256, 1024});
  return cases;
}

class DecodeAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeAttentionTest, MatchesCpuReference) {
  IHIP_REQUIRE_GPU();
  const Case& c = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int64_t p = rng.Uniform(250, 875) * 8 + 5;  // p + 1 keys: not a multiple of 8 or a page
  TestKv kv;
  BuildKv(p + 1 + rng.Uniform(0, 50), c.hkv, c.head_dim, c.kv_dtype, c.page_tokens, seed, arena,
          &kv);
  if (HasFatalFailure()) return;
  const std::unique_ptr<Rope> rope = MakeRope(c.rope, c.head_dim);
  Query qr = MakeQuery(rng, c.hq, c.head_dim, p);
  qr.dense = c.dense;
  qr.sink = c.sink;
  qr.window = c.window;
  if (!c.dense) {
    qr.anchor = p - rng.Uniform(0, 40);
    qr.blocks = MakeBlocks(rng, p, qr.anchor, c.sink, c.window, int(rng.Uniform(30, 300)));
  }
  DeviceQuery dq;
  UploadQuery(qr, rope.get(), arena, &dq);
  if (HasFatalFailure()) return;

  GpuResult split, single, plain;
  RunGpu(kv, qr, dq, c.out_dtype, 0, arena, &split);
  RunGpu(kv, qr, dq, c.out_dtype, 1, arena, &single);
  // Sparse without the speculative block loads (equal shares): the same function.
  if (!c.dense) RunGpu(kv, qr, dq, c.out_dtype, 0, arena, &plain, -1, /*speculate=*/false);
  if (HasFatalFailure()) return;
  EXPECT_TRUE(AllFinite(split.out) && AllFinite(split.lse)) << "poisoned output left behind";
  EXPECT_TRUE(AllFinite(single.out) && AllFinite(single.lse)) << "poisoned output left behind";

  const std::vector<float> ref = CpuAttention(kv, rope.get(), qr);
  const double tol = c.out_dtype == DType::kF32 ? 2e-3 : 1e-2;
  EXPECT_LT(engine::testing::RelativeL2(split.out, ref), tol);
  EXPECT_LT(engine::testing::RelativeL2(single.out, ref), tol);
  if (!c.dense) {
    EXPECT_TRUE(AllFinite(plain.out) && AllFinite(plain.lse)) << "poisoned output left behind";
    EXPECT_LT(engine::testing::RelativeL2(plain.out, ref), tol);
  }
  // Split-K against one split: fp32 rounding (plus one output rounding in 16-bit dtypes).
  EXPECT_LT(engine::testing::RelativeL2(split.out, single.out),
            c.out_dtype == DType::kF32 ? 1e-5 : 8e-3);
  const std::vector<double> lse = CpuLse(kv, rope.get(), qr);
  for (int h = 0; h < c.hq; ++h) {
    EXPECT_NEAR(split.lse[h], lse[h], 1e-3 * std::max(1.0, std::fabs(lse[h]))) << "head " << h;
    EXPECT_NEAR(single.lse[h], lse[h], 1e-3 * std::max(1.0, std::fabs(lse[h]))) << "head " << h;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeAttentionTest, ::testing::ValuesIn(AllCases()));

// ---- Long dense context ----

TEST(DecodeAttentionLongTest, DenseThreeHundredThousandKeys) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 8, hkv = 2;
  const int64_t p = 300000 + rng.Uniform(0, 9999) * 8 + 5;
  TestKv kv;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  const std::unique_ptr<Rope> rope = MakeRope(RopeKind::kLlama3, D);
  const Query qr = MakeQuery(rng, hq, D, p);
  DeviceQuery dq;
  UploadQuery(qr, rope.get(), arena, &dq);
  GpuResult split, single;
  RunGpu(kv, qr, dq, DType::kF32, 0, arena, &split);
  RunGpu(kv, qr, dq, DType::kF32, 1, arena, &single);
  if (HasFatalFailure()) return;
  const std::vector<float> ref = CpuAttention(kv, rope.get(), qr);
  EXPECT_LT(engine::testing::RelativeL2(split.out, ref), 2e-3);
  // Over ~300K random keys the output's norm is ~1/sqrt(keys) of a value's, so the tensor-core
  // path's fixed rounding (q and P carried as two 16-bit pieces) shows as a larger relative
  // difference between merge orders than on short contexts (1e-5 there).
  EXPECT_LT(engine::testing::RelativeL2(split.out, single.out), 3e-4);
}

// ---- The tensor-core kernel (bf16 storage) against the CUDA-core one (fp32 storage) ----

// Same values (fp32 pages holding the bf16 pages' values exactly), so the two kernels compute
// the same function: fp32 output keeps q, P and rotated keys to ~16 bits (hi + lo pieces);
// 16-bit output rounds P once.
TEST(DecodeAttentionPathsTest, TensorCoresMatchCudaCores) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 32, hkv = 8;
  const int64_t p = 20000 + rng.Uniform(0, 999) * 8 + 3;
  TestKv kv16, kv32;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv16);
  BuildKv(p + 1, hkv, D, DType::kF32, 64, seed, arena, &kv32, DType::kBF16);
  if (HasFatalFailure()) return;
  for (const RopeKind rk : {RopeKind::kNone, RopeKind::kLlama3}) {
    const std::unique_ptr<Rope> rope = MakeRope(rk, D);
    for (const bool dense : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "rope " << int(rk) << " dense " << dense);
      Query qr = MakeQuery(rng, hq, D, p);
      qr.dense = dense;
      if (!dense) {
        qr.anchor = p - rng.Uniform(0, 40);
        qr.blocks = MakeBlocks(rng, p, qr.anchor, qr.sink, qr.window, 256);
      }
      DeviceQuery dq;
      UploadQuery(qr, rope.get(), arena, &dq);
      if (HasFatalFailure()) return;
      for (const DType out : {DType::kF32, DType::kBF16}) {
        GpuResult mma, core;
        RunGpu(kv16, qr, dq, out, 0, arena, &mma);
        RunGpu(kv32, qr, dq, out, 0, arena, &core);
        if (HasFatalFailure()) return;
        EXPECT_TRUE(AllFinite(mma.out) && AllFinite(mma.lse)) << "poisoned output left behind";
        EXPECT_LT(engine::testing::RelativeL2(mma.out, core.out), out == DType::kF32 ? 2e-5 : 8e-3)
            << DTypeName(out);
        for (int h = 0; h < hq; ++h) {
          EXPECT_NEAR(mma.lse[h], core.lse[h], 1e-4 * std::max(1.0f, std::fabs(core.lse[h])))
              << "head " << h;
        }
      }
    }
  }
}

// ---- Sparse with every block equals dense (none mode: same keys, same positions) ----

TEST(DecodeAttentionInvariantTest, SparseWithEveryBlockEqualsDense) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 8, hkv = 2;
  const int64_t p = rng.Uniform(5000, 9000);
  TestKv kv;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  Query dense = MakeQuery(rng, hq, D, p);
  Query sparse = dense;
  sparse.dense = false;
  for (int64_t b = 0; b <= p / 8; ++b) sparse.blocks.push_back(b);
  DeviceQuery dq_dense, dq_sparse;
  UploadQuery(dense, nullptr, arena, &dq_dense);
  UploadQuery(sparse, nullptr, arena, &dq_sparse);
  GpuResult a, b;
  RunGpu(kv, dense, dq_dense, DType::kF32, 0, arena, &a);
  RunGpu(kv, sparse, dq_sparse, DType::kF32, 0, arena, &b);
  if (HasFatalFailure()) return;
  EXPECT_LT(engine::testing::RelativeL2(b.out, a.out), 1e-5);
  for (int h = 0; h < hq; ++h) EXPECT_NEAR(a.lse[h], b.lse[h], 1e-4);
}

// ---- Sparse at the ends of the block count: none, and the plan's whole capacity ----

TEST(DecodeAttentionSparseTest, NoBlocksAndFullCapacity) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 32, hkv = 8, capacity = 512;
  const int64_t p = 12000 + rng.Uniform(0, 999) * 8 + 3;
  TestKv kv;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  const std::unique_ptr<Rope> rope = MakeRope(RopeKind::kLlama3, D);
  // The plan of a layer whose mask holds up to `capacity` blocks (as engine/cuda/cuda_layer.cc).
  const int64_t plan_keys = 256 + 8 * int64_t(capacity) + 1024 + 8;
  for (const int count : {0, capacity}) {
    SCOPED_TRACE(::testing::Message() << "blocks " << count);
    Query qr = MakeQuery(rng, hq, D, p);
    qr.dense = false;
    qr.anchor = p - rng.Uniform(0, 40);
    if (count > 0) qr.blocks = MakeBlocks(rng, p, qr.anchor, qr.sink, qr.window, count);
    ASSERT_EQ(int(qr.blocks.size()), count);
    DeviceQuery dq;
    UploadQuery(qr, rope.get(), arena, &dq);
    if (HasFatalFailure()) return;
    GpuResult split, single;
    RunGpu(kv, qr, dq, DType::kF32, 0, arena, &split, plan_keys);
    RunGpu(kv, qr, dq, DType::kF32, 1, arena, &single);
    if (HasFatalFailure()) return;
    EXPECT_TRUE(AllFinite(split.out) && AllFinite(split.lse)) << "poisoned output left behind";
    EXPECT_TRUE(AllFinite(single.out) && AllFinite(single.lse)) << "poisoned output left behind";
    const std::vector<float> ref = CpuAttention(kv, rope.get(), qr);
    EXPECT_LT(engine::testing::RelativeL2(split.out, ref), 2e-3);
    EXPECT_LT(engine::testing::RelativeL2(single.out, ref), 2e-3);
    EXPECT_LT(engine::testing::RelativeL2(split.out, single.out), 1e-5);
    const std::vector<double> lse = CpuLse(kv, rope.get(), qr);
    for (int h = 0; h < hq; ++h) {
      EXPECT_NEAR(split.lse[h], lse[h], 1e-3 * std::max(1.0, std::fabs(lse[h]))) << "head " << h;
    }
  }
}

// ---- Sparse on a context shorter than sink + window: the sink ends where the window starts ----

// Every selected entry is masked there (no token lies between the sink and the window), and the
// plan, made for a layer's capacity, leaves most splits empty: their partials must merge as
// nothing.
TEST(DecodeAttentionSparseTest, ShortContextSinkInsideWindow) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 32, hkv = 8;
  const int64_t p = rng.Uniform(300, 1200);
  TestKv kv;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  Query qr = MakeQuery(rng, hq, D, p);
  qr.dense = false;
  qr.sink = 256;
  qr.window = 1024;
  qr.anchor = p - rng.Uniform(0, 40);
  qr.blocks = MakeBlocks(rng, p, qr.anchor, qr.sink, qr.window, 20);
  ASSERT_LT(std::max<int64_t>(0, qr.anchor - qr.window + 1), qr.sink);
  DeviceQuery dq;
  UploadQuery(qr, nullptr, arena, &dq);
  if (HasFatalFailure()) return;
  const int64_t plan_keys = 256 + 8 * 64 + 1024 + 8;  // a layer's plan, not this step's count
  GpuResult split;
  RunGpu(kv, qr, dq, DType::kF32, 0, arena, &split, plan_keys);
  if (HasFatalFailure()) return;
  EXPECT_TRUE(AllFinite(split.out) && AllFinite(split.lse)) << "poisoned output left behind";
  EXPECT_LT(engine::testing::RelativeL2(split.out, CpuAttention(kv, nullptr, qr)), 2e-3);
}

// ---- A key list longer than the plan's fixed shares: equal shares, speculation refused ----

// The plan is made for fewer keys than the step attends (as when the window outgrew the shares
// between two stage-1 refreshes): every split but the first starts elsewhere than its speculated
// entries, which it must not use.
TEST(DecodeAttentionSparseTest, KeyListLongerThanThePlan) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 32, hkv = 8;
  const int64_t p = 20000 + rng.Uniform(0, 999);
  TestKv kv;
  BuildKv(p + 1, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  Query qr = MakeQuery(rng, hq, D, p);
  qr.dense = false;
  qr.anchor = p - 200 - rng.Uniform(0, 200);  // a window 200-400 keys longer than at the anchor
  qr.blocks = MakeBlocks(rng, p, qr.anchor, qr.sink, qr.window, 300);
  DeviceQuery dq;
  UploadQuery(qr, nullptr, arena, &dq);
  if (HasFatalFailure()) return;
  const int64_t keys = CountKeys(qr.Runs());
  // 400 keys short: more than the shares' rounding can make up (< 8 keys per split, <= 32 splits).
  GpuResult split, plain;
  RunGpu(kv, qr, dq, DType::kF32, 0, arena, &split, keys - 400);
  RunGpu(kv, qr, dq, DType::kF32, 0, arena, &plain, keys - 400, /*speculate=*/false);
  if (HasFatalFailure()) return;
  EXPECT_TRUE(AllFinite(split.out) && AllFinite(split.lse)) << "poisoned output left behind";
  EXPECT_LT(engine::testing::RelativeL2(split.out, CpuAttention(kv, nullptr, qr)), 2e-3);
  EXPECT_LT(engine::testing::RelativeL2(split.out, plain.out), 1e-5);
}

// ---- Graph replay with new step scalars and blocks equals an eager launch ----

TEST(DecodeAttentionGraphTest, ReplayWithNewValuesEqualsEager) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Random rng(seed);
  DeviceArena arena;
  const int D = 128, hq = 32, hkv = 8;
  const int64_t length = 12000;
  TestKv kv;
  BuildKv(length, hkv, D, DType::kBF16, 64, seed, arena, &kv);
  if (HasFatalFailure()) return;
  const std::unique_ptr<Rope> rope = MakeRope(RopeKind::kLlama3, D);
  Query q1 = MakeQuery(rng, hq, D, 9000 + rng.Uniform(0, 99));
  q1.dense = false;
  q1.blocks = MakeBlocks(rng, q1.p, q1.anchor, 256, 1024, 200);
  Query q2 = q1;
  q2.p = q1.p + 1 + rng.Uniform(0, 1000);
  q2.anchor = q1.p;
  q2.blocks = MakeBlocks(rng, q2.p, q2.anchor, 256, 1024, 250);
  q2.q = rng.Normals(q1.q.size(), float(1.0 / std::sqrt(double(D))));
  DeviceQuery dq;
  dq.block_capacity = 512;
  dq.step = static_cast<StepScalars*>(arena.Alloc(sizeof(StepScalars)));
  dq.q = static_cast<float*>(arena.Alloc(q1.q.size() * sizeof(float)));
  dq.blocks = static_cast<int64_t*>(arena.Alloc(512 * sizeof(int64_t)));
  dq.num_blocks = static_cast<int*>(arena.Alloc(sizeof(int)));
  dq.inv_freq = arena.Upload(rope->inv_freq());
  UploadQuery(q1, rope.get(), arena, &dq);
  if (HasFatalFailure()) return;

  DecodeAttentionPlan plan;
  ASSERT_EQ(PlanDecodeAttention(hq, hkv, D, ElemType::kBF16, 256 + 8 * 512 + 1024, NumSms(), &plan),
            cudaSuccess);
  void* ws = arena.Alloc(plan.workspace_bytes);
  const size_t n = q1.q.size();
  auto* out_graph = static_cast<float*>(arena.Alloc(n * sizeof(float)));
  auto* out_eager = static_cast<float*>(arena.Alloc(n * sizeof(float)));
  // As the engine launches: fixed shares and speculative block loads (q2's longer window
  // outgrows the plan's shares: the equal-shares fallback inside the same graph).
  auto params = [&](const Query& qr, float* out) {
    DecodeAttentionParams p = MakeParams(kv, qr, dq, ElemType::kF32, out, nullptr, ws,
                                         plan.num_splits);
    p.split_keys = plan.split_keys;
    p.max_blocks = dq.block_capacity;
    return p;
  };
  cudaStream_t stream;
  IHIP_CUDA_ASSERT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  IHIP_CUDA_ASSERT(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const cudaError_t launch = LaunchDecodeAttention(params(q1, out_graph), stream);
  IHIP_CUDA_ASSERT(cudaStreamEndCapture(stream, &graph));
  IHIP_CUDA_ASSERT(launch);
  IHIP_CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));

  auto fetch = [&](float* d) {
    std::vector<float> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  };
  for (const Query* qr : {&q1, &q2, &q2}) {  // the repeat: replays are deterministic
    UploadQuery(*qr, rope.get(), arena, &dq);
    IHIP_CUDA_ASSERT(cudaMemset(out_graph, 0xff, n * sizeof(float)));
    IHIP_CUDA_ASSERT(cudaDeviceSynchronize());  // `stream` does not wait for the legacy stream
    IHIP_CUDA_ASSERT(cudaGraphLaunch(exec, stream));
    IHIP_CUDA_ASSERT(cudaStreamSynchronize(stream));
    IHIP_CUDA_ASSERT(LaunchDecodeAttention(params(*qr, out_eager), stream));
    IHIP_CUDA_ASSERT(cudaStreamSynchronize(stream));
    const std::vector<float> g = fetch(out_graph), e = fetch(out_eager);
    EXPECT_EQ(std::memcmp(g.data(), e.data(), n * sizeof(float)), 0) << "p " << qr->p;
    EXPECT_LT(engine::testing::RelativeL2(g, CpuAttention(kv, rope.get(), *qr)), 2e-3);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ---- Argument checks ----

TEST(DecodeAttentionArgsTest, RejectsUnsupportedShapes) {
  IHIP_REQUIRE_GPU();
  DecodeAttentionPlan plan;
  EXPECT_EQ(PlanDecodeAttention(32, 8, 96, ElemType::kBF16, 1000, 132, &plan),
            cudaErrorInvalidValue);
  EXPECT_EQ(PlanDecodeAttention(30, 8, 128, ElemType::kBF16, 1000, 132, &plan),
            cudaErrorInvalidValue);
  DecodeAttentionParams p;  // null pointers everywhere
  EXPECT_EQ(LaunchDecodeAttention(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace ihip::engine::cuda
