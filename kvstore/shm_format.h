#pragma once

// The byte format of the kvstore's shared-memory segment (SHM_FORMAT.md beside this file):
// header, client table, request/completion rings, per-client mailboxes, slot table, page pool.
// Plain structs with fixed sizes and explicit offsets; every field shared between processes at
// run time is a lock-free std::atomic of 4 or 8 bytes.

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ihip::kvstore {

inline constexpr uint64_t kShmMagic = 0x31304b5650484849ull;  // "IHIPKV01" little-endian
inline constexpr uint32_t kLayoutVersion = 1;
inline constexpr size_t kCacheLine = 64;
inline constexpr size_t kHeaderBytes = 4096;
inline constexpr size_t kPoolAlign = 2u << 20;      // 2 MiB
inline constexpr uint64_t kAnyPage = ~uint64_t{0};  // Allocate's arg1: no expected first page

static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

enum class ServerState : uint32_t { kStarting = 0, kServing = 1, kStopped = 2 };

struct SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint64_t segment_bytes;
  uint64_t slot_bytes;  // bytes of one page slot
  uint64_t slot_count;
  uint64_t clients_offset;     // ClientEntry[max_clients]
  uint64_t rings_offset;       // RingPair[max_clients], ring_pair_bytes each
  uint64_t mailboxes_offset;   // max_clients mailboxes of mailbox_bytes
  uint64_t slot_table_offset;  // SlotEntry[slot_count]
  uint64_t pool_offset;        // slot_count * slot_bytes, 2 MiB aligned
  uint64_t ring_pair_bytes;
  uint64_t mailbox_bytes;
  uint32_t max_clients;
  uint32_t ring_entries;  // power of two
  uint64_t lease_ns;      // a client silent this long loses its pins and its slot
  alignas(kCacheLine) std::atomic<uint32_t> server_doorbell;  // futex: bumped per request
  std::atomic<uint32_t> server_state;                         // ServerState
  std::atomic<uint64_t> server_epoch;                         // bumped at every kvstore start
  std::atomic<uint32_t> server_sleeping;  // 1 while the server waits on the doorbell
  std::atomic<uint32_t> server_pid;       // the kvstore process
  std::atomic<uint64_t> server_pid_ns;    // inode of its PID namespace (/proc/self/ns/pid)
};
static_assert(sizeof(SegmentHeader) <= kHeaderBytes);

enum class ClientState : uint32_t { kFree = 0, kClaiming = 1, kAttached = 2, kReclaiming = 3 };

struct alignas(kCacheLine) ClientEntry {
  std::atomic<uint32_t> state;  // ClientState
  std::atomic<uint32_t> pid;
  std::atomic<uint64_t> heartbeat_ns;         // CLOCK_MONOTONIC of the client's last heartbeat
  std::atomic<uint64_t> generation;           // bumped at every claim
  std::atomic<uint32_t> completion_doorbell;  // futex: bumped per completion
  std::atomic<uint32_t> client_sleeping;      // 1 while the client waits on its doorbell
  std::atomic<uint64_t> pid_ns;  // inode of the client's PID namespace: pid is only meaningful
                                 // to a process in the same namespace
  char name[24];
};
static_assert(sizeof(ClientEntry) == 64);

// Ring operations (requests) and their completions.
enum class Op : uint32_t {
  kNone = 0,
  kCreateSequence = 1,  // mailbox in: SequenceSpec + id + metadata; out arg0: handle
  kOpenSequence = 2,    // mailbox in: id; out arg0: handle, mailbox out: spec + lengths + metadata
  kDropSequence = 3,    // sequence
  kAllocate = 4,        // sequence, layer, count, arg1 = expected first page (or kAnyPage);
                        // out arg0: first page, mailbox out: slots
  kCommit = 5,          // sequence, layer, arg0 = new length
  kAbort = 6,           // sequence, layer
  kPin = 7,             // sequence, layer, arg0 = first page, count; mailbox out: slots
  kUnpin = 8,           // sequence, layer, arg0 = first page, count
  kDetach = 9,
  kSuspendSequence = 10,  // unpinned pages of the sequence leave the host tier
  kTruncate = 11,         // sequence, layer, arg0 = new (shorter or equal) committed length
};

struct Message {
  uint32_t op;          // Op
  uint32_t status;      // completion: absl::StatusCode
  uint64_t request_id;  // echoed in the completion
  uint64_t sequence;    // sequence handle
  uint32_t layer;
  uint32_t count;
  uint64_t arg0;
  uint64_t arg1;
  uint32_t mailbox_bytes;  // bytes of payload in the client's mailbox
  uint32_t reserved;
  uint64_t reserved2;
};
static_assert(sizeof(Message) == 64);

// Single-producer single-consumer ring: the producer writes entries[head % n] then publishes
// head; the consumer reads entries[tail % n] then publishes tail. head - tail <= n.
struct RingHeader {
  alignas(kCacheLine) std::atomic<uint32_t> head;
  alignas(kCacheLine) std::atomic<uint32_t> tail;
};
static_assert(sizeof(RingHeader) == 2 * kCacheLine);

// What the mailbox holds for kCreateSequence (followed by the id bytes, then the metadata bytes)
// and for kOpenSequence's answer (followed by num_layers u64 lengths, then the metadata bytes).
struct SequenceSpec {
  uint32_t num_layers;
  uint32_t page_bytes;  // bytes of one page of this sequence (<= slot_bytes)
  uint32_t page_tokens;
  uint32_t id_bytes;
  uint8_t geometry[32];     // opaque to the store: the client's page geometry
  uint32_t metadata_bytes;  // opaque client metadata kept in the manifest (e.g. the model spec)
  uint32_t reserved;
};
static_assert(sizeof(SequenceSpec) == 56);

enum class SlotState : uint32_t { kFree = 0, kResident = 1 };

// Written by the kvstore only; clients may read it (debugging, ihip-kvstore's admin tools).
struct SlotEntry {
  uint64_t sequence;
  uint32_t layer;
  uint32_t page;
  uint32_t state;  // SlotState
  uint32_t pins;
  uint64_t reserved;
};
static_assert(sizeof(SlotEntry) == 32);

}  // namespace ihip::kvstore
