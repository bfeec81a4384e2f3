#include "services/attention/executor.h"

namespace ihip::attention {

Executor::Executor(int threads, prometheus::Gauge* queue_length, prometheus::Gauge* running)
    : queue_length_(queue_length), running_(running) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Loop(); });
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void Executor::Submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
    if (queue_length_ != nullptr) queue_length_->Set(double(queue_.size()));
  }
  cv_.notify_one();
}

void Executor::Loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      if (queue_length_ != nullptr) queue_length_->Set(double(queue_.size()));
    }
    if (running_ != nullptr) running_->Increment();
    job();
    if (running_ != nullptr) running_->Decrement();
  }
}

}  // namespace ihip::attention
