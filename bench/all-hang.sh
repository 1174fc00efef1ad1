#!/usr/bin/env bash
# How long `rigdoctor check` takes on the worst case of the headline story: eight GPUs where
# P2P hangs between every pair (and so does NCCL), at the default --timeout of 10 s, on the
# fake driver. Prints the wall time of the check; docs/testing.md records it.
set -euo pipefail
cd "$(dirname "$0")/.."
RIGDOCTOR_ALL_HANG_TIMEOUT="${1:-10}" cargo test --test check \
  eight_gpus_that_all_hang_cost_rounds_of_deadlines_not_pairs -- --nocapture 2>&1 |
  grep -E "^check on 8 GPUs|test result"
