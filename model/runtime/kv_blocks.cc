#include "model/runtime/kv_blocks.h"

#include "absl/strings/str_cat.h"

namespace mpa {

absl::Status KvCacheFullError(int64_t needed, int64_t block_tokens, int64_t free, int64_t total) {
  return absl::ResourceExhaustedError(absl::StrCat("KV cache is full: need ", needed,
                                                   " more blocks of ", block_tokens, " tokens, ",
                                                   free, " of ", total, " are free"));
}

}  // namespace mpa
