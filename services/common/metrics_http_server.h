#pragma once

// MetricsHttpServer: serves GET /metrics (Prometheus text format) from a prometheus-cpp registry
// over cpp-httplib, on its own thread. (prometheus-cpp's own Exposer fails in processes that link
// CUDA — DESIGN §7.) `before_scrape` runs first on every scrape, to refresh gauges that mirror
// state held elsewhere. Start/Stop are not thread-safe; scrapes are.

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace httplib {
class Server;
}

namespace ihip::services {

class MetricsHttpServer {
 public:
  MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry,
                    std::function<void()> before_scrape = nullptr);
  ~MetricsHttpServer();

  // Binds host:port (port 0 = any free port) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_scrape_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace ihip::services
