#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for a bounded time, one after the
# other on one core, and print per target: executions, exec/s, crashes.
# Exits non-zero when a target crashes (its input is left in
# fuzz/artifacts/<target>/; replay with `cargo fuzz run <target> <file>`).
#
#   scripts/fuzz.sh [seconds-per-target [target...]]
#
# Defaults: 60 s, every target (session_id ws_frames multicast_datagram
# modjk_import ajp_reply).
#
# The machine's one toolchain is stable: RUSTC_BOOTSTRAP=1 lets it take
# the -Z flags cargo-fuzz passes; `-s none` asks for no sanitizer (the
# parsers are safe Rust; libFuzzer's coverage guidance still works).
# New corpus entries go to fuzz/corpus/<target>/ (not committed); the
# committed seeds in fuzz/seeds/<target>/ are read as a second corpus.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-60}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [seconds-per-target [target...]]" >&2; exit 2 ;;
esac
targets=(session_id ws_frames multicast_datagram modjk_import ajp_reply)
if [ $# -gt 1 ]; then
    targets=("${@:2}")
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
cargo fuzz build -s none

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    rc=0
    # -timeout: an input taking 10 s counts as a crash (a hang);
    # -rss_limit_mb: so does growing past 2 GiB (unbounded memory).
    cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$logs/$t" 2>&1 || rc=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
    rows+=("$(printf '%-20s %12s %8s %8s' "$t" "${execs:-?}" "${rate:-?}" "$crashes")")
    if [ "$rc" -ne 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        echo "== $t failed (exit $rc); end of its log:" >&2
        tail -40 "$logs/$t" >&2
    fi
done

printf '%-20s %12s %8s %8s\n' target executions exec/s crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
