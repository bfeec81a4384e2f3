#pragma once

// ThreadPool: a fixed set of workers running ParallelFor jobs. Several threads may call
// ParallelFor at once (each job is shared by the workers and its caller, which also works on it,
// so nested or concurrent calls always progress). Thread-safe.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ihip::engine::cpu {

class ThreadPool {
 public:
  // `num_threads` <= 0: one per hardware thread. The caller of ParallelFor counts as one.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return int(workers_.size()) + 1; }

  // Runs fn(i) for i in [0, n), spread over the workers and the caller; returns when all ran.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  struct Job {
    const std::function<void(int64_t)>* fn;
    int64_t n;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  static void Work(Job& job);
  void WorkerLoop();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
};

}  // namespace ihip::engine::cpu
