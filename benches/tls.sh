#!/usr/bin/env bash
# HTTPS and HTTP/2 side by side: stickgate against HAProxy (nbthread 2,
# `bind ... ssl crt ... alpn h2,http/1.1`), the same two nginx backends
# (HTTP/1.1), the same ECDSA P-256 certificate, interleaved rounds.
#
#   benches/tls.sh                    # 3 rounds, 60000 requests per scenario
#   ROUNDS=2 REQUESTS=100000 CLIENTS=32 benches/tls.sh
#   BASE_BIN=/path/to/older/stickgate benches/tls.sh   # adds "base"
#
# Scenarios (h2load, sticky cookie for tomcat1): HTTP/1.1 over TLS; h2 with
# 1 and with 10 streams per connection; new TLS connections per second
# (openssl s_time, two clients, full handshakes) and resumed ones (-reuse).
# Prints per scenario and balancer: median and range of req/s (handshakes/s
# for the s_time rows) and of CPU µs per request (utime+stime of the
# balancer from /proc/PID/stat over the run, divided by the requests or
# handshakes), failed requests, the ratios to HAProxy (of the medians, and
# "in-round": the median of the CPU ratios taken within each round, where
# both saw the host in the same state). h2load reports
# no percentiles; its mean request time is in the per-round lines.
NAME=tls.sh
. "$(dirname "$0")/common.sh"

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-60000}
CLIENTS=${CLIENTS:-32}
HANDSHAKE_SECS=${HANDSHAKE_SECS:-5}
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 10 ]] || die "ROUNDS must be 1..10"

need h2load nghttp2-client
need openssl openssl
need haproxy haproxy
need nginx nginx
build_release
BASE_BIN=${BASE_BIN:-}
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || die "BASE_BIN=$BASE_BIN is not an executable"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port) P2=$(port)
nginx_backends "$P1" "$P2"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/site.key" -out "$WORK/site.crt" 2>/dev/null || die "openssl could not make a certificate"
cat "$WORK/site.crt" "$WORK/site.key" >"$WORK/site.pem"

PH=$(port)
haproxy_sticky_cfg "$WORK/haproxy.cfg" "$PH" "$P1" "$P2" 4000 "ssl crt $WORK/site.pem alpn h2,http/1.1"
haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

tls_gate_toml() { # file tls-port admin-port
    gate_toml "$1" "listen = [\"127.0.0.1:$(port)\"]
tls_listen = [\"127.0.0.1:$2\"]
[[server.certificate]]
cert = \"$WORK/site.crt\"
key = \"$WORK/site.key\"" "$3"
}
PG=$(port)
tls_gate_toml "$WORK/gate.toml" "$PG" "$(port)"
"$GATE_BIN" run --config "$WORK/gate.toml" 2>"$WORK/gate.log" &
GATE_PID=$!
PIDS+=($GATE_PID)
WHO="haproxy stickgate"
if [ -n "$BASE_BIN" ]; then
    PB=$(port)
    tls_gate_toml "$WORK/base.toml" "$PB" "$(port)"
    "$BASE_BIN" run --config "$WORK/base.toml" 2>"$WORK/base.log" &
    BASE_PID=$!
    PIDS+=($BASE_PID)
    WHO="$WHO base"
fi
port_of() { case $1 in haproxy) echo "$PH" ;; stickgate) echo "$PG" ;; base) echo "$PB" ;; esac; }
pid_of() { case $1 in haproxy) echo "$HAPROXY_PID" ;; stickgate) echo "$GATE_PID" ;; base) echo "$BASE_PID" ;; esac; }
for who in $WHO; do
    for ((i = 0; i < 100; i++)); do
        curl -sk -o /dev/null -m 1 "https://127.0.0.1:$(port_of "$who")/" && break
        sleep 0.1
    done
    curl -sk -o /dev/null -m 1 "https://127.0.0.1:$(port_of "$who")/" || die "$who does not answer over TLS"
done
sleep 1.5
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
COOKIE="JSESSIONID=$(printf '%032x' 7).tomcat1"

# One measured run: prints "<req/s> <cpu µs/req> <mean ms> <failed>".
h2run() { # who args...
    local who=$1
    shift
    local pid t0 t1 out
    pid=$(pid_of "$who")
    out="$WORK/h2load.out"
    t0=$(ticks "$pid")
    timeout 300 h2load -n"$REQUESTS" -c"$CLIENTS" -H "cookie: $COOKIE" "$@" "https://127.0.0.1:$(port_of "$who")/" >"$out" 2>&1 ||
        die "h2load failed against $who: $(tail -n 5 "$out")"
    t1=$(ticks "$pid")
    awk -v dt=$((t1 - t0)) -v hz="$HZ" '
        /^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) { rps = $i; gsub(",", "", rps) } }
        /^requests:/ { for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^failed/) failed = $i; if ($(i + 1) ~ /^succeeded/) ok = $i } }
        /^time for request:/ { mean = $6; unit = mean; gsub(/[0-9.]/, "", unit); gsub(/[a-z]/, "", mean); if (unit == "us") mean /= 1000; if (unit == "s") mean *= 1000 }
        END { printf "%.0f %.1f %.2f %d\n", rps, (ok > 0 ? dt / hz * 1e6 / ok : 0), mean, failed + 0 }' "$out"
}

# TLS connections per second: two openssl s_time clients at once, `-new`
# (full handshakes) or `-reuse` (resumed sessions), each connection a GET
# of / (`-www`: reading the answer is what lets a TLS 1.3 client take the
# session ticket that arrives after the handshake).
hsrun() { # who -new|-reuse
    local who=$1 mode=$2 pid t0 t1 n
    pid=$(pid_of "$who")
    t0=$(ticks "$pid")
    for c in 1 2; do
        timeout $((HANDSHAKE_SECS + 30)) openssl s_time -connect "127.0.0.1:$(port_of "$who")" \
            "$mode" -www / -time "$HANDSHAKE_SECS" >"$WORK/st$c.out" 2>&1 &
    done
    wait
    t1=$(ticks "$pid")
    # "N connections in T real seconds" (with -reuse the second block).
    n=$(cat "$WORK/st1.out" "$WORK/st2.out" | awk '/connections in .* real seconds/ {total += $1} END {print total + 0}')
    awk -v n="$n" -v s="$HANDSHAKE_SECS" -v dt=$((t1 - t0)) -v hz="$HZ" 'BEGIN {printf "%.0f %.1f 0 0\n", n / s, (n > 0 ? dt / hz * 1e6 / n : 0)}'
}

SCEN="https-h1 h2-1stream h2-10streams tls-new tls-resumed"
declare -A R
for ((round = 1; round <= ROUNDS; round++)); do
    for scen in $SCEN; do
        for who in $WHO; do
            case $scen in
            https-h1) line=$(h2run "$who" --h1) ;;
            h2-1stream) line=$(h2run "$who" -m1) ;;
            h2-10streams) line=$(h2run "$who" -m10) ;;
            tls-new) line=$(hsrun "$who" -new) ;;
            tls-resumed) line=$(hsrun "$who" -reuse) ;;
            esac
            R[$scen,$who]+="$line;"
            echo "round $round $scen $who: $line" >&2
        done
    done
done

median() { tr ';' '\n' | awk 'NF' | sort -n | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : 0)}'; }
col() { tr ';' '\n' | awk -v c="$1" 'NF {print $c}'; }
range() { tr ';' '\n' | awk -v c="$1" 'NF {v = $c; if (min == "" || v < min) min = v; if (v > max) max = v} END {printf "%s-%s", min, max}'; }
# CPU of one balancer over another's within each round, median over the
# rounds: both runs of a round saw the host in the same spell, so these
# pairs are steadier than a ratio of medians from different rounds.
in_round() { # results-a results-b
    paste <(echo "$1" | col 2) <(echo "$2" | col 2) | awk '$2 > 0 {print $1 / $2}' | median
}
echo
echo "TLS/h2 side by side: h2load -n$REQUESTS -c$CLIENTS, sticky GET /, ECDSA P-256; s_time ${HANDSHAKE_SECS}s x2 clients; $ROUNDS rounds"
printf '%-13s %-10s %10s %16s %12s %16s %8s %10s %10s %12s\n' scenario balancer "req/s" "req/s range" "CPU µs/req" "CPU range" failed "x HAProxy" "CPU x HA" "in-round"
for scen in $SCEN; do
    ha_rps=$(echo "${R[$scen,haproxy]}" | col 1 | median)
    ha_cpu=$(echo "${R[$scen,haproxy]}" | col 2 | median)
    for who in $WHO; do
        v=${R[$scen,$who]}
        rps=$(echo "$v" | col 1 | median)
        cpu=$(echo "$v" | col 2 | median)
        failed=$(echo "$v" | col 4 | awk '{s += $1} END {print s + 0}')
        paired=$(in_round "$v" "${R[$scen,haproxy]}")
        awk -v s="$scen" -v w="$who" -v r="$rps" -v rr="$(echo "$v" | range 1)" -v c="$cpu" -v cr="$(echo "$v" | range 2)" \
            -v f="$failed" -v hr="$ha_rps" -v hc="$ha_cpu" -v p="$paired" 'BEGIN {
            printf "%-13s %-10s %10.0f %16s %12.1f %16s %8d %10.2f %10.2f %12.2f\n", s, w, r, rr, c, cr, f, (hr > 0 ? r / hr : 0), (hc > 0 ? c / hc : 0), p }'
    done
done
