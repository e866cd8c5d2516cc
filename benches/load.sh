#!/usr/bin/env bash
# Load test: requests/s and p99 latency of a demo backend reached directly
# versus through stickgate, all on 127.0.0.1.
#
#   benches/load.sh                 # 10 s per scenario
#   DURATION=30s benches/load.sh    # longer runs
#   THREADS=2 CONNECTIONS=32 benches/load.sh
#
# Scenarios (wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency):
#   direct        one demo backend (tomcat1), fixed sticky cookie
#   gate-sticky   through stickgate, same cookie (all requests -> tomcat1)
#   gate-new      through stickgate, no cookie: every request is a new
#                 session, balanced over tomcat1/tomcat2
#
# Installs wrk with apt-get if missing, builds the release binaries, starts
# two demo backends and stickgate on free ports, and stops everything it
# started on exit. Bounded in time: the build gets BUILD_TIMEOUT seconds
# (default 1800), each wrk run its duration + 30 s.
NAME=load.sh
. "$(dirname "$0")/common.sh"

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}

DUR_SECS=$(duration_secs "$DURATION")
[[ $DUR_SECS =~ ^[0-9]+$ && $DUR_SECS -gt 0 ]] || die "DURATION=$DURATION is not like 10s, 2m or 1h"

need wrk wrk
build_release
start_backends
cat >"$WORK/stickgate.toml" <<EOF2
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[health]
interval = "1s"

$(backends_toml)
EOF2
start_gate "$WORK/stickgate.toml"
COOKIE=$(tomcat1_cookie "http://$GATE/")
SID=${COOKIE#JSESSIONID=}

# Per-backend request counters from the admin API ("tomcat1=N tomcat2=M").
requests_by_backend() {
    curl -s -m 5 "http://$ADMIN/api/status" | awk -F'"' '
        /"route":/ { r = $4 }
        /"requests":/ { gsub(/[^0-9]/, "", $3); printf "%s=%s ", r, $3 }'
}

# ---- runs ------------------------------------------------------------------
run_wrk() { # name url [cookie]
    local name=$1 url=$2 cookie=${3:-}
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
    [ -n "$cookie" ] && args+=(-H "Cookie: $cookie")
    echo "load.sh: $name: wrk ${args[*]} $url" >&2
    timeout $((DUR_SECS + 30)) wrk "${args[@]}" "$url" >"$WORK/$name.out" 2>&1 ||
        die "wrk failed for $name: $(cat "$WORK/$name.out")"
}


run_wrk direct "http://${BACKEND_ADDR[tomcat1]}/" "$COOKIE"
before=$(requests_by_backend)
run_wrk gate-sticky "http://$GATE/" "$COOKIE"
after_sticky=$(requests_by_backend)
run_wrk gate-new "http://$GATE/"
after_new=$(requests_by_backend)

# ---- report ----------------------------------------------------------------
cores=$(nproc 2>/dev/null || echo "?")
echo
echo "stickgate load test: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, GET /, 127.0.0.1"
echo "note: wrk, the two demo backends and stickgate all share this machine's $cores core(s);"
echo "      the proxy's figures include competing with wrk and the backends for CPU."
echo
read -r d_rps d_p99 d_err < <(parse_wrk "$WORK/direct.out")
printf '%-14s %12s %10s %10s %10s %7s\n' scenario "req/s" "p99 ms" "rps/direct" "p99/direct" errors
for name in direct gate-sticky gate-new; do
    read -r rps p99 err < <(parse_wrk "$WORK/$name.out")
    awk -v n="$name" -v r="$rps" -v p="$p99" -v dr="$d_rps" -v dp="$d_p99" -v e="$err" 'BEGIN {
        printf "%-14s %12.0f %10.2f %10.2f %10.2f %7d\n", n, r, p, (dr > 0 ? r / dr : 0), (dp > 0 ? p / dp : 0), e }'
done
echo
echo "stickgate requests per backend (admin API, cumulative):"
echo "  before gate-sticky: ${before:-?}"
echo "  after  gate-sticky: ${after_sticky:-?}  (all should be tomcat1)"
echo "  after  gate-new:    ${after_new:-?}  (new sessions split ~evenly)"
echo "  sticky session: $SID"
