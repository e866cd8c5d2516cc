#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind:
# the same figure for the same binary and load whatever else the machine
# is doing, so before/after comparisons of small request-path changes do
# not drown in the noise that requests/s and CPU time have on 2 shared
# cores. (Kernel time, cache misses and contention between cores are not
# counted: confirm real gains with benches/compare.sh.)
#
#   benches/instructions.sh                       # builds, sticky + new
#   GATE_BIN=target/release/stickgate BASE_BIN=/tmp/old-stickgate benches/instructions.sh
#   SECS=20 benches/instructions.sh
#   CG_KEEP=/tmp/cg benches/instructions.sh       # keep the callgrind files there
#
# Scenarios, as in compare.sh (two nginx backends that set a JSESSIONID
# cookie on requests without one): "sticky", `wrk -t1 -c8` with
# JSESSIONID=<i mod 10000 as 32 hex>.tomcat1|2; "new", no cookie, every
# answer's Set-Cookie learned. Under callgrind stickgate runs ~30x slower:
# a run serves some 40k requests. Prints, per binary and scenario, the
# requests, instructions and instructions per request, with the ratio of
# GATE_BIN to BASE_BIN when both are given. With `ANNOTATE=1` also the 25
# functions costing the most instructions (self cost) per binary and
# scenario.
NAME=instructions.sh
. "$(dirname "$0")/common.sh"

SECS=${SECS:-15}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 && $SECS -le 300 ]] || die "SECS must be 1..300"
need wrk wrk
need nginx nginx
need valgrind valgrind
need python3 python3
build_release # or checks GATE_BIN
BASE_BIN=${BASE_BIN:-}
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || die "BASE_BIN=$BASE_BIN is not an executable"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port) P2=$(port)
nginx_backends "$P1" "$P2"

sticky_lua "$WORK/sticky.lua"

# count BIN SCENARIO: sets REQS and IR
count() {
    local bin=$1 scen=$2 pg pa out vg i
    pg=$(port) pa=$(port)
    gate_toml "$WORK/gate-$pg.toml" "listen = [\"127.0.0.1:$pg\"]" "$pa"
    out="$WORK/cg-$pg.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$WORK/gate-$pg.toml" \
        >/dev/null 2>"$WORK/cg-$pg.log" &
    vg=$!
    PIDS+=($vg)
    wait_http "http://127.0.0.1:$pg/" 60 ||
        die "stickgate under valgrind did not answer: $(tail -n 3 "$WORK/cg-$pg.log")"
    sleep 1
    callgrind_control -z "$vg" >/dev/null 2>&1
    local args=(-t1 -c8 -d"${SECS}s")
    [ "$scen" = sticky ] && args+=(-s "$WORK/sticky.lua")
    REQS=$(timeout $((SECS + 60)) wrk "${args[@]}" "http://127.0.0.1:$pg/" | awk '/requests in/ {print $1}')
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    IR=$(awk '/^summary:/ {print $2}' "$out.1")
    [ -z "${CG_KEEP:-}" ] || cp "$out.1" "$CG_KEEP/callgrind-$scen-$(basename "$bin").out"
    [ -n "$REQS" ] && [ "$REQS" -gt 0 ] && [ -n "$IR" ] || die "no figures for $bin $scen"
    if [ -n "${ANNOTATE:-}" ]; then
        callgrind_annotate --threshold=100 "$out.1" 2>/dev/null | grep -E '^ *[0-9,]+ \(' |
            sed -n '6,30p' | cut -c1-150 >"$WORK/top-$scen-$(basename "$bin")-$pg.txt"
        cp "$WORK/top-$scen-$(basename "$bin")-$pg.txt" "$WORK/last-top.txt"
    fi
}

declare -A PER
echo "$NAME: callgrind, wrk -t1 -c8 -d${SECS}s per run" >&2
for scen in sticky new; do
    for who in gate base; do
        bin=$GATE_BIN
        [ "$who" = base ] && bin=$BASE_BIN
        [ -n "$bin" ] || continue
        count "$bin" "$scen"
        per=$((IR / REQS))
        PER[$who-$scen]=$per
        printf '%-7s %-5s %8d requests %14d instructions %8d per request\n' "$scen" "$who" "$REQS" "$IR" "$per"
        if [ -n "${ANNOTATE:-}" ]; then
            sed 's/^/    /' "$WORK/last-top.txt"
        fi
    done
    if [ -n "$BASE_BIN" ]; then
        awk -v a="${PER[gate-$scen]}" -v b="${PER[base-$scen]}" -v s="$scen" \
            'BEGIN {printf "%-7s gate/base %.3f\n", s, a / b}'
    fi
done
