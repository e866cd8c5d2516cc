#!/usr/bin/env bash
# Mutation check of the routing core: cargo-mutants changes one thing at a
# time in core/src/routing, core/src/proxy/rewrite.rs, core/src/backend/health/,
# core/src/store/memory.rs (a `<` made `<=`, a function made to return a
# default, ...) and runs the unit tests (`--lib`): a mutant they do not
# catch ("missed") is behaviour no unit test pins down.
#
# Slow: about 370 mutants, each a rebuild of the library's test binary
# (about a minute on a busy 2-core machine), so not part of CI or
# scripts/test.sh. Run a sample with SHARD (round-robin, spread over the
# files):
#
#   scripts/mutants.sh                  # everything (hours)
#   SHARD=0/12 scripts/mutants.sh       # one twelfth (~30 mutants)
#   scripts/mutants.sh --re 'check_once'  # extra arguments go to cargo mutants
#   IN_PLACE=1 scripts/mutants.sh       # mutate this tree, reuse ./target
#                                       # (no copy, no fresh build; do not
#                                       # edit, build or run drills here
#                                       # meanwhile: target/debug/stickgate
#                                       # is a mutant's for a while)
#
# Results: mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt),
# and a one-line summary at the end. Installs cargo-mutants if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --locked

args=(
    --file 'core/src/routing/*.rs'
    --file core/src/proxy/rewrite.rs
    --file 'core/src/backend/health/*.rs'
    --file core/src/store/memory.rs
    --timeout "${TIMEOUT:-120}"
    --build-timeout "${BUILD_TIMEOUT:-600}"
    --output "${OUT:-.}"
)
if [ -n "${SHARD:-}" ]; then
    args+=(--shard "$SHARD" --sharding round-robin)
fi
if [ -n "${IN_PLACE:-}" ]; then
    args+=(--in-place)
else
    args+=(--jobs "${JOBS:-1}")
fi

status=0
cargo mutants "${args[@]}" "$@" -- --lib || status=$?
out="${OUT:-.}/mutants.out"
count() { [ -f "$out/$1.txt" ] && wc -l <"$out/$1.txt" || echo 0; }
echo "mutants: caught $(count caught), missed $(count missed), timeout $(count timeout), unviable $(count unviable)"
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: report,
# and pass that on.
exit "$status"
