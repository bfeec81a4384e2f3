#pragma once

// Executor: the worker threads that run engine work for the gRPC reactions (which must never
// block). FIFO; its queue length and running count feed the router gauges. Thread-safe.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "prometheus/gauge.h"

namespace ihip::attention {

class Executor {
 public:
  // `queue_length`, `running` (optional) are kept up to date.
  Executor(int threads, prometheus::Gauge* queue_length, prometheus::Gauge* running);
  ~Executor();  // runs what is queued, then joins

  void Submit(std::function<void()> job);

 private:
  void Loop();

  prometheus::Gauge* const queue_length_;
  prometheus::Gauge* const running_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ihip::attention
