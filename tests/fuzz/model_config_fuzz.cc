// libFuzzer target: any text as config.json must parse to a config that Validate() accepts or
// give an error Status, never crash or throw.
#include <cstdint>
#include <string>

#include "model/config/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<mpa::ModelConfig> config = mpa::ParseModelConfig(text);
  if (config.ok()) (void)config->Validate();
  return 0;
}
