#!/usr/bin/env bash
# Routing throughput through stickgate with each session store, as ratios
# to the embedded `memory` store, measured in one run:
#   sticky   every request carries a session cookie for tomcat1 (lookup path)
#   new      no cookie: every response creates a session, whose binding is
#            written through to the shared store before the response leaves
#
#   benches/stores.sh                 # 8 s per scenario
#   DURATION=20s benches/stores.sh
#
# Starts its own redis-server (installed with apt-get if missing) and, for
# `multicast`, a key file; everything on 127.0.0.1. Memory per tracked
# session: `cargo bench --bench store`.
#
# Also printed: CPU µs per request of stickgate and of redis-server
# (utime+stime from /proc/PID/stat over the run, divided by the requests).
# On a machine where Redis shares the cores, a new session's write costs
# Redis CPU that the memory store never spends; these columns say how much.
NAME=stores.sh
. "$(dirname "$0")/common.sh"

DURATION=${DURATION:-8s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
DUR_SECS=$(duration_secs "$DURATION")
[[ $DUR_SECS =~ ^[0-9]+$ && $DUR_SECS -gt 0 ]] || die "DURATION=$DURATION is not like 10s or 2m"

need wrk wrk
need redis-server redis-server
build_release
start_backends

REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$WORK" && exec redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1) &
REDIS_PID=$!
PIDS+=($REDIS_PID)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
head -c 32 /dev/urandom | base64 >"$WORK/cluster.key"
chmod 600 "$WORK/cluster.key"
MC_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REPL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

store_toml() {
    case $1 in
    memory) printf '[store]\nkind = "memory"\n' ;;
    redis) printf '[store]\nkind = "redis"\nredis_url = "redis://127.0.0.1:%s"\n' "$REDIS_PORT" ;;
    multicast) printf '[store]\nkind = "multicast"\nmulticast_group = "228.0.0.5:%s"\nreplication_listen = "127.0.0.1:%s"\nkey_file = "%s"\n' \
        "$MC_PORT" "$REPL_PORT" "$WORK/cluster.key" ;;
    esac
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# One wrk run; "$WORK/$name.cpu" gets the CPU µs per request of stickgate
# and of redis-server over it.
run_wrk() { # name url [cookie]
    local name=$1 url=$2 cookie=${3:-} g0 r0 g1 r1
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
    [ -n "$cookie" ] && args+=(-H "Cookie: $cookie")
    g0=$(ticks "$GATE_PID") r0=$(ticks "$REDIS_PID")
    timeout $((DUR_SECS + 30)) wrk "${args[@]}" "$url" >"$WORK/$name.out" 2>&1 ||
        die "wrk failed for $name: $(cat "$WORK/$name.out")"
    g1=$(ticks "$GATE_PID") r1=$(ticks "$REDIS_PID")
    awk -v g=$((g1 - g0)) -v r=$((r1 - r0)) -v hz="$HZ" '/requests in/ {n = $1}
        END {printf "%.1f %.1f\n", (n ? g / hz * 1e6 / n : 0), (n ? r / hz * 1e6 / n : 0)}' "$WORK/$name.out" >"$WORK/$name.cpu"
}

KINDS=(memory redis multicast)
for kind in "${KINDS[@]}"; do
    cat >"$WORK/$kind.toml" <<EOF2
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = "1s"
[admin]
listen = "127.0.0.1:0"
[health]
interval = "1s"
$(store_toml "$kind")
$(backends_toml)
EOF2
    "$GATE_BIN" check --config "$WORK/$kind.toml" >/dev/null 2>"$WORK/$kind.check" ||
        die "$kind config rejected: $(cat "$WORK/$kind.check")"
    start_gate "$WORK/$kind.toml" "$WORK/$kind.log"
    cookie=$(tomcat1_cookie "http://$GATE/")
    echo "$NAME: $kind: wrk sticky and new sessions" >&2
    run_wrk "$kind-sticky" "http://$GATE/" "$cookie"
    run_wrk "$kind-new" "http://$GATE/"
    kill "$GATE_PID"
    wait "$GATE_PID" 2>/dev/null || true
done

cores=$(nproc 2>/dev/null || echo "?")
echo
echo "stickgate per store kind: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET /, 127.0.0.1 ($cores cores shared by wrk, backends, redis and stickgate)"
echo
printf '%-10s %12s %10s %12s %10s %10s %7s %19s %19s\n' store "sticky r/s" "vs memory" "new r/s" "vs memory" "new p99ms" errors "sticky µs gate/redis" "new µs gate/redis"
read -r ms_rps _ _ < <(parse_wrk "$WORK/memory-sticky.out")
read -r mn_rps _ _ < <(parse_wrk "$WORK/memory-new.out")
for kind in "${KINDS[@]}"; do
    read -r s_rps _ s_err < <(parse_wrk "$WORK/$kind-sticky.out")
    read -r n_rps n_p99 n_err < <(parse_wrk "$WORK/$kind-new.out")
    read -r s_gate s_redis <"$WORK/$kind-sticky.cpu"
    read -r n_gate n_redis <"$WORK/$kind-new.cpu"
    awk -v k="$kind" -v s="$s_rps" -v n="$n_rps" -v p="$n_p99" -v ms="$ms_rps" -v mn="$mn_rps" -v e=$((s_err + n_err)) \
        -v sc="$s_gate / $s_redis" -v nc="$n_gate / $n_redis" 'BEGIN {
        printf "%-10s %12.0f %10.2f %12.0f %10.2f %10.2f %7d %19s %19s\n", k, s, (ms > 0 ? s / ms : 0), n, (mn > 0 ? n / mn : 0), p, e, sc, nc }'
done
