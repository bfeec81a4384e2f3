#pragma once

// Store: the kvstore's bookkeeping over the shm page pool and the disk tier (DESIGN §4):
// sequences and their manifests, (sequence, layer, page) -> slot, pin counts per client, an LRU
// of unpinned resident pages, spilling above the high watermark down to the low one, fetch-back
// on pin, and write-through of committed pages when durable. Thread-safe (one mutex; disk I/O
// happens under it, so a spill delays other requests — measured in tests/bench).

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstore/disk_tier.h"
#include "kvstore/shm_segment.h"

namespace ihip::kvstore {

struct StoreOptions {
  double high_watermark = 0.90;  // share of slots in use above which idle pages spill to disk
  double low_watermark = 0.80;   // spilling stops at this share
  bool durable = false;          // write committed pages and manifests through to disk, so a
                                 // restarted kvstore serves the same sequences; off, the disk
                                 // tier is only a cache for spilled pages
  uint32_t spill_batch = 32;     // pages per disk write batch when spilling
  absl::Status Validate() const;
};

struct StoreStats {
  uint64_t slots_total = 0;
  uint64_t slots_used = 0;
  uint64_t slot_bytes = 0;
  uint64_t pages_pinned = 0;   // resident pages with at least one pin
  uint64_t pages_on_disk = 0;  // pages whose bytes are (also) on disk
  uint64_t pages_disk_only = 0;
  uint64_t sequences = 0;
  uint64_t spills = 0;  // pages written out to free a slot, since start
  uint64_t spill_bytes = 0;
  uint64_t fetch_backs = 0;  // pages read back from disk on pin, since start
  uint64_t fetch_back_bytes = 0;
  uint64_t write_through_bytes = 0;  // committed bytes written to disk (durable)
};

struct SequenceSummary {
  uint64_t handle = 0;
  std::string id;
  uint32_t num_layers = 0;
  uint32_t page_bytes = 0;
  uint32_t page_tokens = 0;
  std::string geometry;                 // opaque client bytes (SequenceSpec::geometry)
  std::string metadata;                 // opaque client metadata given at creation
  std::vector<uint64_t> layer_lengths;  // committed tokens
  uint64_t pages_resident = 0;
  uint64_t pages_disk_only = 0;
  bool suspended = false;
};

class Store {
 public:
  // `disk` may be null (no disk tier: a full pool is RESOURCE_EXHAUSTED; durable needs a disk).
  Store(const StoreOptions& options, ShmSegment* segment, DiskTier* disk);

  // Durable stores: reloads every manifest from disk (pages come back on pin).
  absl::Status Recover();

  absl::StatusOr<uint64_t> CreateSequence(const std::string& id, const SequenceSpec& spec,
                                          const std::string& geometry,
                                          const std::string& metadata = "");
  absl::StatusOr<SequenceSummary> OpenSequence(const std::string& id) const;
  absl::StatusOr<SequenceSummary> GetSequence(uint64_t handle) const;
  absl::Status DropSequence(uint64_t handle);
  absl::StatusOr<uint64_t> FindSequence(const std::string& id) const;
  // Spills every unpinned resident committed page of the sequence out of the host tier, in disk
  // writes of spill_batch pages. On a write error the pages already written have left, the rest
  // stay resident, and the sequence is not marked suspended.
  absl::Status SuspendSequence(uint64_t handle);

  // Appends `count` pages to the layer, pinned by `client`; returns the first page index and the
  // slots. All or nothing.
  // `expected_first` (kAnyPage: no check): FAILED_PRECONDITION unless the pages start there.
  absl::StatusOr<uint64_t> Allocate(uint32_t client, uint64_t handle, uint32_t layer,
                                    uint32_t count, std::vector<uint64_t>* slots,
                                    uint64_t expected_first = kAnyPage);
  // Sets the layer's committed length (must not shrink, must fit the allocated pages). Protocol:
  // write into a page only while holding a pin on it, and commit before unpinning; a commit
  // covering a page that left the host tier meanwhile is FAILED_PRECONDITION (its writes are lost).
  absl::Status Commit(uint64_t handle, uint32_t layer, uint64_t length);
  // Frees the pages past the committed length.
  absl::Status Abort(uint64_t handle, uint32_t layer);
  // Shrinks the committed length (undoing appends of a request that failed later) and frees the
  // pages past it, pinned or not. Durable stores write the manifest through.
  absl::Status Truncate(uint64_t handle, uint32_t layer, uint64_t length);
  // Pins pages [first, first + count), fetching spilled ones back; returns their slots.
  absl::Status Pin(uint32_t client, uint64_t handle, uint32_t layer, uint64_t first, uint32_t count,
                   std::vector<uint64_t>* slots);
  absl::Status Unpin(uint32_t client, uint64_t handle, uint32_t layer, uint64_t first,
                     uint32_t count);
  // Releases every pin of `client` and frees the uncommitted pages it allocated (detach, or a
  // client whose lease expired).
  void ReleaseClient(uint32_t client);

  StoreStats Stats() const;
  std::vector<SequenceSummary> List() const;
  // Checks internal invariants (slot accounting, LRU, pins); for tests.
  absl::Status CheckConsistency() const;

 private:
  struct PageRef {
    uint64_t handle;
    uint32_t layer;
    uint64_t page;
    bool operator<(const PageRef& o) const {
      return std::tie(handle, layer, page) < std::tie(o.handle, o.layer, o.page);
    }
  };
  struct Page {
    int64_t slot = -1;     // resident slot, or -1
    bool on_disk = false;  // disk holds this page's current bytes
    bool dirty = false;    // resident bytes newer than disk
    uint32_t pins = 0;
    bool in_lru = false;  // resident and unpinned
    std::list<PageRef>::iterator lru;
  };
  struct Layer {
    uint64_t length = 0;
    std::vector<Page> pages;
    int32_t writer = -1;  // client that allocated the uncommitted pages past `length`
  };
  struct Sequence {
    uint64_t handle = 0;
    std::string id;
    SequenceSpec spec{};
    std::string geometry;
    std::string metadata;
    std::vector<Layer> layers;
    bool suspended = false;
    uint64_t committed_pages(uint32_t layer) const {
      return (layers[layer].length + spec.page_tokens - 1) / spec.page_tokens;
    }
  };

  absl::StatusOr<Sequence*> Find(uint64_t handle) const;
  absl::StatusOr<Sequence*> FindLayer(uint64_t handle, uint32_t layer) const;
  absl::StatusOr<uint64_t> TakeSlot();  // spills when none is free
  absl::Status SpillTo(uint64_t target_used);
  void MaybeSpill();
  absl::Status Persist(const Sequence& s, uint32_t layer, uint64_t first_page, uint64_t end_page);
  void PinPage(uint32_t client, const PageRef& ref, Page& p);
  void UnpinPage(const PageRef& ref, Page& p);
  void FreePage(const PageRef& ref, Page& p);
  void PublishSlot(uint64_t slot, const PageRef& ref, const Page& p);
  SequenceSummary Summarize(const Sequence& s) const;
  static std::string EncodeManifest(const Sequence& s);
  static absl::StatusOr<std::unique_ptr<Sequence>> DecodeManifest(const std::string& bytes);

  const StoreOptions options_;
  ShmSegment* const segment_;
  DiskTier* const disk_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> sequences_;
  std::unordered_map<std::string, uint64_t> by_id_;
  uint64_t next_handle_ = 1;
  std::vector<uint64_t> free_slots_;
  std::list<PageRef> lru_;  // resident unpinned pages, least recently used at the front
  std::vector<std::map<PageRef, uint32_t>> client_pins_;  // per client: page -> pins held
  StoreStats stats_;
};

}  // namespace ihip::kvstore
