// libFuzzer target: any bytes as a .safetensors file must give an error Status or a file whose
// tensors lie inside it, never a crash (AddressSanitizer and UBSan watch every access).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "model/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One file per process, rewritten for every input (the reader maps a path).
  static const std::string path = [] {
    char name[] = "/tmp/mpa-safetensors-fuzz-XXXXXX";
    const int fd = mkstemp(name);
    if (fd >= 0) close(fd);
    return std::string(name);
  }();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto file = mpa::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const mpa::TensorInfo& t : (*file)->tensors()) {
    // Every byte a tensor claims is readable (ASan reports a read past the mapping).
    const uint8_t* bytes = t.data;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < t.num_bytes; i += 4096) sink = sink ^ bytes[i];
    if (t.num_bytes > 0) sink = sink ^ bytes[t.num_bytes - 1];
  }
  return 0;
}
