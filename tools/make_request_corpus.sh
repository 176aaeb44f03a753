#!/usr/bin/env bash
# Writes the seed corpus of tests/fuzz/request_fuzz.cc (tests/fuzz/corpus/request): real requests
# of every DecodeService method, each file one byte naming the method (its index in decode.proto,
# as the target reads it) followed by the request that protoc encodes from the text form below.
# Rerun after decode.proto's requests change, and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fuzz/corpus/request
rm -rf "$out"
mkdir -p "$out"

# seed FILE METHOD_INDEX MESSAGE TEXT_FORMAT
seed() {
  {
    printf "\\x$(printf %02x "$2")"
    printf '%s' "$4" | protoc --proto_path=proto --encode="multipole.v1.$3" \
      multipole/v1/decode.proto
  } >"$out/$1"
}

seed create_session_empty 0 CreateSessionRequest ''
seed create_session_multipole 0 CreateSessionRequest \
  'attention { mode: ATTENTION_MODE_MULTIPOLE token_budget: 256 }'
seed create_session_fraction 0 CreateSessionRequest \
  'attention { mode: ATTENTION_MODE_QUEST token_budget_fraction: 0.25 }'
seed generate_ids 1 GenerateRequest \
  'token_ids { ids: [1, 403, 407, 261] } sampling { max_new_tokens: 16 ignore_eos: true }'
seed generate_text 1 GenerateRequest \
  'text: "Once upon a time" sampling { temperature: 0.8 top_p: 0.9 top_k: 40 seed: 7 }'
seed generate_session_stops 1 GenerateRequest \
  'session_id: "0123456789abcdef0123456789abcdef" text: "caf\303\251 \342\234\223"
   sampling { stop: ["The end", "\n\n"] stop_token_ids: [2, 13] max_new_tokens: 0 }
   attention { mode: ATTENTION_MODE_EXACT_ONLY token_budget: 64 } return_logprobs: true'
seed generate_dense 1 GenerateRequest \
  'token_ids { ids: [5] } attention { mode: ATTENTION_MODE_DENSE }'
seed cancel_generation 2 CancelGenerationRequest 'session_id: "0123456789abcdef0123456789abcdef"'
seed close_session 3 CloseSessionRequest 'session_id: "0123456789abcdef0123456789abcdef"'
seed get_session 4 GetSessionRequest 'session_id: "s\303\251ance"'
seed get_model_info 5 GetModelInfoRequest ''
echo "wrote $(ls "$out" | wc -l) seeds to $out"
