#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_format.h"

namespace mpa::client {

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = values.size();
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(s.count);
  s.min = values.front();
  s.max = values.back();
  s.p50 = Percentile(values, 0.50);
  s.p90 = Percentile(values, 0.90);
  s.p99 = Percentile(values, 0.99);
  return s;
}

std::string FormatTable(const std::vector<std::pair<std::string, Summary>>& rows, double scale,
                        const std::string& unit) {
  std::string out =
      absl::StrFormat("%-28s %8s %10s %10s %10s %10s %10s\n", absl::StrFormat("metric (%s)", unit),
                      "count", "mean", "p50", "p90", "p99", "max");
  for (const auto& [name, s] : rows) {
    out +=
        absl::StrFormat("%-28s %8d %10.3f %10.3f %10.3f %10.3f %10.3f\n", name, s.count,
                        s.mean * scale, s.p50 * scale, s.p90 * scale, s.p99 * scale, s.max * scale);
  }
  return out;
}

}  // namespace mpa::client
