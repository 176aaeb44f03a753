// Percentile summaries and the table mpa_client bench prints.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mpa::client {

struct Summary {
  size_t count = 0;
  double mean = 0.0;
  double min = 0.0;
  double p50 = 0.0;
  double p90 = 0.0;
  double p99 = 0.0;
  double max = 0.0;
};

// Percentiles by linear interpolation between closest ranks (as numpy's default); all zero for
// an empty input.
Summary Summarize(std::vector<double> values);
double Percentile(const std::vector<double>& sorted, double q);  // q in [0, 1]

// A fixed-width table: one row per (name, summary), values scaled by `scale` (e.g. 1000 for
// seconds shown as milliseconds).
std::string FormatTable(const std::vector<std::pair<std::string, Summary>>& rows, double scale,
                        const std::string& unit);

}  // namespace mpa::client
