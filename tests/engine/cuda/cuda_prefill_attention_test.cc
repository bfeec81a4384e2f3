// engine/cuda/prefill_attention.h against the CPU reference (engine/cpu/attention.h AttendQueries
// over SparseRuns / DenseRuns) on fresh random data every run (the seed is printed on failure):
// dense and block-sparse, RoPE `none` and `extend`, storage bf16/fp16/fp32/e4m3/e5m2, wire
// dtypes fp32/fp16/bf16, head dims 64/128/256, GQA groups 1/2/4/8, T not a multiple of 64,
// positions multiples of neither 64 nor 8 (and 0), several query blocks with their own random
// block lists (blocks inside the sink, straddling the window's start, inside the window), pages
// shuffled on the device, keys stored past the chunk (never attended), split-K on and off, and
// outputs poisoned with NaN before the launch. Sparse with every middle block selected equals
// dense in `none` mode.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/attention.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cuda/prefill_attention.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"
#include "gtest/gtest.h"
#include "tests/engine/cuda/gpu_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::cuda {
namespace {

using engine::testing::PagedKv;
using engine::testing::Random;

constexpr int kQueryBlock = 64;

enum class Blocks { kRandom, kAllMiddle };

struct Case {
  std::string name;
  int hq, hkv, d;
  DType kv_dtype, out_dtype;
  bool rope, dense;
  int64_t position;
  int tokens;
  int sink = 64, window = 256, page_tokens = 64;
  int sm_count = 132;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// A device allocation freed on scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  cudaError_t Alloc(size_t bytes) { return cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)); }
  cudaError_t Upload(const void* src, size_t bytes) {
    const cudaError_t err = Alloc(bytes);
    return err != cudaSuccess ? err : cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// Host data of one prefill chunk and its device copies.
struct Chunk {
  Case c;
  int64_t kv_length = 0;
  std::vector<float> k, v, q;  // [kv_length][Hkv][D], [T][Hq][D]
  std::unique_ptr<PagedKv> host_kv;
  std::unique_ptr<Rope> rope;
  LayerConfig cfg;
  std::vector<std::vector<int64_t>> blocks;  // per query block, ascending
  // device
  DeviceBuffer pages, page_table, q_dev, inv_freq, blocks_dev, counts_dev;
  int max_blocks = 0;
};

int NumQueryBlocks(const Case& c) { return (c.tokens + kQueryBlock - 1) / kQueryBlock; }

// Random ascending blocks from [0, window_begin / 8 + 2): some inside the sink, the one holding
// window_begin (straddling when window_begin % 8 != 0) and one inside the window are candidates;
// kAllMiddle: every block below the window's start.
std::vector<int64_t> MakeBlocks(const Case& c, int64_t p_min, Blocks mode, Random& rng) {
  const int64_t window_begin = std::max<int64_t>(0, p_min - c.window + 1);
  std::vector<int64_t> out;
  if (mode == Blocks::kAllMiddle) {
    for (int64_t b = 0; 8 * b < window_begin; ++b) out.push_back(b);
    return out;
  }
  const double share = rng.Uniform01() * 0.6;
  for (int64_t b = 0; b < window_begin / 8 + 2; ++b) {
    if (rng.Bernoulli(share) || (b == window_begin / 8 && rng.Bernoulli(0.5))) out.push_back(b);
  }
  return out;
}

// Builds the chunk's data and uploads it: pages in a shuffled order with a gap page.
void BuildChunk(const Case& c, Blocks mode, uint64_t seed, Chunk& ch) {
  Random rng(seed);
  ch.c = c;
  ch.kv_length = c.position + c.tokens + rng.Uniform(0, 40);  // keys past the chunk: unused
  const size_t row = size_t(c.hkv) * c.d;
  ch.k = rng.Normals(size_t(ch.kv_length) * row);
  ch.v = rng.Normals(ch.k.size());
  ch.q = rng.Normals(size_t(c.tokens) * c.hq * c.d, 1.5f / std::sqrt(float(c.d)));
  ch.host_kv =
      std::make_unique<PagedKv>(ch.k, ch.v, ch.kv_length, c.hkv, c.d, c.kv_dtype, c.page_tokens);
  RopeSpec spec;
  spec.mode = RopeMode::kExtend;
  spec.theta = 500000;
  spec.llama3 = Llama3Scaling{};
  if (c.rope) ch.rope = std::make_unique<Rope>(spec, c.d);
  ch.cfg.sink_tokens = c.sink;
  ch.cfg.window_tokens = c.window;
  ch.cfg.query_block = kQueryBlock;
  for (int b = 0; b < NumQueryBlocks(c); ++b) {
    ch.blocks.push_back(MakeBlocks(c, c.position + kQueryBlock * b, mode, rng));
    ch.max_blocks = std::max<int>(ch.max_blocks, int(ch.blocks.back().size()));
  }
}

void UploadChunk(Chunk& ch, Random& rng) {
  const size_t page_bytes = ch.host_kv->geometry.page_bytes();
  const size_t num_pages = ch.host_kv->pages.size();
  std::vector<size_t> slot(num_pages);
  std::iota(slot.begin(), slot.end(), 1);  // slot 0 stays a gap
  std::shuffle(slot.begin(), slot.end(), rng.gen());
  IHIP_CUDA_ASSERT(ch.pages.Alloc((num_pages + 1) * page_bytes));
  std::vector<const uint8_t*> table(num_pages);
  for (size_t i = 0; i < num_pages; ++i) {
    table[i] = ch.pages.as<uint8_t>() + slot[i] * page_bytes;
    IHIP_CUDA_ASSERT(cudaMemcpy(const_cast<uint8_t*>(table[i]), ch.host_kv->pages[i].data(),
                                page_bytes, cudaMemcpyHostToDevice));
  }
  IHIP_CUDA_ASSERT(ch.page_table.Upload(table.data(), table.size() * sizeof(table[0])));
  IHIP_CUDA_ASSERT(ch.q_dev.Upload(ch.q.data(), ch.q.size() * sizeof(float)));
  if (ch.rope) {
    const std::vector<double>& f = ch.rope->inv_freq();
    IHIP_CUDA_ASSERT(ch.inv_freq.Upload(f.data(), f.size() * sizeof(double)));
  }
  // Rows padded with a far-away block index: reading past a count would fault.
  const int stride = std::max(ch.max_blocks, 1);
  std::vector<int64_t> flat(ch.blocks.size() * stride, int64_t{1} << 40);
  std::vector<int> counts;
  for (size_t b = 0; b < ch.blocks.size(); ++b) {
    std::copy(ch.blocks[b].begin(), ch.blocks[b].end(), flat.begin() + b * stride);
    counts.push_back(int(ch.blocks[b].size()));
  }
  IHIP_CUDA_ASSERT(ch.blocks_dev.Upload(flat.data(), flat.size() * sizeof(int64_t)));
  IHIP_CUDA_ASSERT(ch.counts_dev.Upload(counts.data(), counts.size() * sizeof(int)));
}

PrefillAttentionParams MakeParams(const Chunk& ch, bool dense) {
  const Case& c = ch.c;
  PrefillAttentionParams p;
  p.kv.pages = ch.page_table.as<const uint8_t* const>();
  p.kv.page_tokens = c.page_tokens;
  p.kv.kv_heads = c.hkv;
  p.kv.head_dim = c.d;
  p.kv.dtype = ElemType(int(c.kv_dtype));
  p.kv_length = ch.kv_length;
  p.position = c.position;
  p.num_tokens = c.tokens;
  p.num_q_heads = c.hq;
  p.q = ch.q_dev.as<const float>();
  p.dense = dense;
  p.blocks = ch.blocks_dev.as<const int64_t>();
  p.block_counts = ch.counts_dev.as<const int>();
  p.max_blocks = std::max(ch.max_blocks, 1);
  p.query_block = kQueryBlock;
  p.sink_tokens = c.sink;
  p.window_tokens = c.window;
  p.rope.inv_freq = ch.rope ? ch.inv_freq.as<const double>() : nullptr;
  p.out_dtype = ElemType(int(c.out_dtype));
  p.sm_count = c.sm_count;
  return p;
}

// Runs the kernel with NaN-poisoned output and workspace; returns the output as floats.
void RunGpu(PrefillAttentionParams p, std::vector<float>& out) {
  const size_t n = size_t(p.num_tokens) * p.num_q_heads * p.kv.head_dim;
  const DType out_dtype = DType(int(p.out_dtype));
  const size_t out_bytes = n * DTypeSize(out_dtype);
  DeviceBuffer out_dev, workspace;
  IHIP_CUDA_ASSERT(out_dev.Alloc(out_bytes));
  IHIP_CUDA_ASSERT(cudaMemset(out_dev.as<void>(), 0xff, out_bytes));  // NaN in every dtype
  const size_t ws_bytes = PrefillAttentionWorkspaceBytes(p);
  if (ws_bytes > 0) {
    IHIP_CUDA_ASSERT(workspace.Alloc(ws_bytes));
    IHIP_CUDA_ASSERT(cudaMemset(workspace.as<void>(), 0xff, ws_bytes));
  }
  p.out = out_dev.as<void>();
  p.workspace = workspace.as<void>();
  IHIP_CUDA_ASSERT(LaunchPrefillAttention(p, nullptr));
  IHIP_CUDA_ASSERT(cudaDeviceSynchronize());
  std::vector<std::byte> host(out_bytes);
  IHIP_CUDA_ASSERT(cudaMemcpy(host.data(), out_dev.as<void>(), out_bytes, cudaMemcpyDeviceToHost));
  out = engine::testing::FromWire(out_dtype, host.data(), n);
}

// The CPU reference: AttendQueries over each query's runs.
std::vector<float> RunCpu(const Chunk& ch, bool dense) {
  const Case& c = ch.c;
  std::vector<std::vector<KeyRun>> runs(c.tokens);
  std::vector<float> out(size_t(c.tokens) * c.hq * c.d);
  std::vector<cpu::AttentionQuery> queries;
  for (int t = 0; t < c.tokens; ++t) {
    const int64_t p = c.position + t;
    const int b = t / kQueryBlock;
    runs[t] = dense ? DenseRuns(p)
                    : SparseRuns(p, c.position + int64_t(kQueryBlock) * b, ch.cfg, ch.blocks[b]);
    const size_t off = size_t(t) * c.hq * c.d;
    queries.push_back({ch.q.data() + off, p, &runs[t], out.data() + off});
  }
  cpu::ThreadPool pool;
  EXPECT_TRUE(
      cpu::AttendQueries(ch.host_kv->view, c.hq, ch.rope.get(), queries, Interrupt{}, &pool).ok());
  return out;
}

// ||got - want|| / ||want|| over [begin, end); NaN or Inf anywhere in got gives +inf.
double RelativeError(const std::vector<float>& got, const std::vector<float>& want, size_t begin,
                     size_t end) {
  double err = 0, norm = 0;
  for (size_t i = begin; i < end; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    err += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    norm += double(want[i]) * want[i];
  }
  return std::sqrt(err / std::max(norm, 1e-30));
}

// Whole output below 2e-2 (bf16 operands), and every query (all its heads) below 4e-2.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, const Case& c) {
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(RelativeError(got, want, 0, got.size()), 2e-2);
  const size_t per_token = size_t(c.hq) * c.d;
  int bad = 0;
  for (int t = 0; t < c.tokens && bad < 5; ++t) {
    const double e = RelativeError(got, want, t * per_token, (t + 1) * per_token);
    if (!(e < 4e-2)) {
      ++bad;
      ADD_FAILURE() << "query " << t << " (position " << c.position + t << "): error " << e;
    }
  }
}

using engine::testing::FreshSeed;

class PrefillAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillAttentionTest, MatchesCpuReference) {
  IHIP_REQUIRE_GPU();
  const Case& c = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  Chunk ch;
  BuildChunk(c, Blocks::kRandom, seed, ch);
  Random rng(seed + 1);
  UploadChunk(ch, rng);
  if (HasFatalFailure()) return;
  std::vector<float> got;
  RunGpu(MakeParams(ch, c.dense), got);
  if (HasFatalFailure()) return;
  ExpectClose(got, RunCpu(ch, c.dense), c);
}

Case MakeCase(std::string name, int hq, int hkv, int d, DType kv, DType out, bool rope, bool dense,
              int64_t position, int tokens) {
  Case c;
  c.name = std::move(name);
  c.hq = hq, c.hkv = hkv, c.d = d, c.kv_dtype = kv, c.out_dtype = out, c.rope = rope;
  c.dense = dense, c.position = position, c.tokens = tokens;
  return c;
}

std::vector<Case> Cases() {
  using D = DType;
  std::vector<Case> cases = {
      MakeCase("dense_none_bf16_d128_g4", 8, 2, 128, D::kBF16, D::kBF16, false, true, 1203, 150),
      MakeCase("dense_rope_f16_d64_g1", 4, 4, 64, D::kF16, D::kF16, true, true, 333, 77),
      MakeCase("dense_rope_f32_d256_g4", 4, 1, 256, D::kF32, D::kF32, true, true, 517, 100),
      MakeCase("dense_rope_e4m3_d64_g8", 8, 1, 64, D::kF8E4M3, D::kBF16, true, true, 1000, 129),
      MakeCase("sparse_rope_bf16_d128_g4", 8, 2, 128, D::kBF16, D::kBF16, true, false, 3001, 200),
      MakeCase("sparse_none_e4m3_d64_g1", 4, 4, 64, D::kF8E4M3, D::kF32, false, false, 2050, 130),
      MakeCase("sparse_rope_f32_d256_g1", 2, 2, 256, D::kF32, D::kBF16, true, false, 1500, 70),
      MakeCase("sparse_rope_f16_d128_g2", 4, 2, 128, D::kF16, D::kF16, true, false, 5000, 64),
      MakeCase("sparse_rope_e5m2_d64_g8", 8, 1, 64, D::kF8E5M2, D::kBF16, true, false, 900, 100),
      MakeCase("sparse_rope_bf16_d128_from0", 8, 2, 128, D::kBF16, D::kF32, true, false, 0, 300),
      MakeCase("sparse_rope_bf16_d64_odd", 2, 1, 64, D::kBF16, D::kBF16, true, false, 777, 33),
      MakeCase("dense_rope_bf16_d128_splitk", 4, 2, 128, D::kBF16, D::kBF16, true, true, 6000, 20),
      MakeCase("sparse_rope_bf16_d128_splitk", 2, 2, 128, D::kBF16, D::kF32, true, false, 9000, 9),
  };
  cases[1].page_tokens = 16;
  cases[2].page_tokens = 32;
  cases[5].sink = 32, cases[5].window = 128;
  cases[7].sink = 256, cases[7].window = 1024;
  cases[9].window = 128;
  cases[10].sink = 16, cases[10].window = 100;
  cases[12].sink = 256, cases[12].window = 1024;
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillAttentionTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

// Sparse with every middle block selected attends exactly the dense key set: in `none` mode the
// outputs agree (up to summation order and the bf16 rounding of P).
TEST(PrefillAttentionInvariantTest, FullBudgetSparseEqualsDense) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  Case c = MakeCase("full", 8, 2, 128, DType::kBF16, DType::kF32, false, false, 2500, 150);
  c.sink = 64, c.window = 200;
  Chunk ch;
  BuildChunk(c, Blocks::kAllMiddle, seed, ch);
  Random rng(seed + 1);
  UploadChunk(ch, rng);
  if (HasFatalFailure()) return;
  std::vector<float> sparse, dense;
  RunGpu(MakeParams(ch, false), sparse);
  RunGpu(MakeParams(ch, true), dense);
  if (HasFatalFailure()) return;
  EXPECT_LT(RelativeError(sparse, dense, 0, dense.size()), 1e-2);
  ExpectClose(sparse, RunCpu(ch, true), c);
}

// Split-K (a short chunk at a long context) equals the unsplit kernel (sm_count 1: one split).
TEST(PrefillAttentionInvariantTest, SplitKEqualsUnsplit) {
  IHIP_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  const Case c = MakeCase("split", 4, 2, 64, DType::kBF16, DType::kF32, true, true, 12000, 40);
  Chunk ch;
  BuildChunk(c, Blocks::kRandom, seed, ch);
  Random rng(seed + 1);
  UploadChunk(ch, rng);
  if (HasFatalFailure()) return;
  PrefillAttentionParams split = MakeParams(ch, true), whole = split;
  whole.sm_count = 1;
  ASSERT_GT(PrefillAttentionWorkspaceBytes(split), 0u);
  ASSERT_EQ(PrefillAttentionWorkspaceBytes(whole), 0u);
  std::vector<float> a, b;
  RunGpu(split, a);
  RunGpu(whole, b);
  if (HasFatalFailure()) return;
  EXPECT_LT(RelativeError(a, b, 0, b.size()), 1e-2);
}

// A long chunk fills the GPU without split-K; unsupported shapes are rejected before launching.
TEST(PrefillAttentionPlanTest, WorkspaceAndValidation) {
  IHIP_REQUIRE_GPU();
  PrefillAttentionParams p;
  p.kv.kv_heads = 8, p.kv.head_dim = 128, p.num_q_heads = 32;
  p.position = 1 << 20, p.num_tokens = 32768, p.kv_length = p.position + p.num_tokens;
  p.dense = true;
  EXPECT_EQ(PrefillAttentionWorkspaceBytes(p), 0u);
  p.num_tokens = 64;
  EXPECT_GT(PrefillAttentionWorkspaceBytes(p), 0u);
  float dummy = 0;
  const uint8_t* page = nullptr;
  p.kv.pages = &page, p.q = &dummy, p.out = &dummy;
  PrefillAttentionParams bad = p;
  bad.kv.head_dim = 96;
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p, bad.num_q_heads = 12;  // not a multiple of Hkv
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p, bad.query_block = 32;
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p, bad.kv_length = p.position + p.num_tokens - 1;  // the chunk's keys not appended
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p, bad.dense = false, bad.block_counts = nullptr;
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p, bad.workspace = nullptr;  // split-K needs its workspace
  EXPECT_EQ(LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace ihip::engine::cuda
