#include "services/common/metrics_http_server.h"

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace ihip::services {

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<prometheus::Registry> registry,
                                     std::function<void()> before_scrape)
    : registry_(std::move(registry)), before_scrape_(std::move(before_scrape)) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port) {
  server_ = std::make_unique<httplib::Server>();
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (before_scrape_) before_scrape_();
    res.set_content(prometheus::TextSerializer().Serialize(registry_->Collect()),
                    "text/plain; version=0.0.4");
  });
  server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("metrics at /metrics\n", "text/plain");
  });
  const int bound = port == 0 ? server_->bind_to_any_port(host.c_str())
                              : (server_->bind_to_port(host.c_str(), port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for /metrics on ", host, ":", port));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void MetricsHttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace ihip::services
