#!/usr/bin/env bash
# Sticky routing side by side: stickgate against HAProxy and nginx, set up
# as ../shared/BENCHMARKS.md describes, measured in the same run.
#
#   benches/compare.sh              # 3 interleaved rounds of 8 s (+ 6 s new)
#   ROUNDS=5 DURATION=8s NEW_DURATION=6s benches/compare.sh
#   BASE_BIN=/path/to/older/stickgate benches/compare.sh   # adds "base"
#   GATE_BIN=/path/to/stickgate benches/compare.sh    # no build, that binary
#   IDLE_CONNS=3000 benches/compare.sh   # also RSS with N idle keep-alive clients
#   FLOOR=1 benches/compare.sh        # adds "floor" (benches/floor: hyper alone)
#
# Backends: two nginx servers (worker_processes 1) answering every path with
# {"route":"tomcatN"} and, without a JSESSIONID cookie, a Set-Cookie. Each
# round runs `wrk -t1 -c64 -d$DURATION --latency -s sticky.lua` against the
# first backend directly, then nginx, HAProxy and stickgate as balancers;
# request i carries JSESSIONID=<i mod 10000 as 32 hex>.tomcat1 (odd i) or
# .tomcat2 (even i). CPU per request is utime+stime of the balancer's
# processes (nginx: master and workers) from /proc/PID/stat over the run,
# divided by the requests wrk reports. A second scenario per round, "new",
# sends no cookie (`wrk -t1 -c64 -d$NEW_DURATION`): every answer carries a
# Set-Cookie the balancer learns. Prints each run, then per scenario and
# balancer the median and range of req/s, CPU µs/request and p99 over the
# rounds with the ratios to HAProxy, and the user-space part of the CPU
# (utime alone: the kernel's part, loopback TCP and epoll, is about the
# same for every proxy here, so this is where they differ); the CPU ratios
# taken within each round (both runs of a round saw the host in the same
# state), as median and range over the rounds; then RSS: idle (before the first
# round), the largest right after a run, and optionally with IDLE_CONNS idle
# keep-alive clients (each sent one sticky GET and holds its connection).
# With FLOOR=1 also "floor": benches/floor, the least a sticky hyper proxy
# does per request (one runtime and pool per core, mimalloc, no checks,
# fields, sessions, retries or timers), built here: what stickgate costs
# above it is what its own work around hyper costs.
# Installs haproxy, nginx and wrk with apt-get if missing; bounded in time.
NAME=compare.sh
. "$(dirname "$0")/common.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
NEW_DURATION=${NEW_DURATION:-6s}
DUR_SECS=$(duration_secs "$DURATION")
NEW_SECS=$(duration_secs "$NEW_DURATION")
IDLE_CONNS=${IDLE_CONNS:-0}
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 && $ROUNDS -le 20 ]] || die "ROUNDS must be 1..20"
[[ $IDLE_CONNS =~ ^[0-9]+$ && $IDLE_CONNS -le 20000 ]] || die "IDLE_CONNS must be 0..20000"

need wrk wrk
need haproxy haproxy
need nginx nginx
if [ -n "${GATE_BIN:-}" ]; then
    [ -x "$GATE_BIN" ] || die "GATE_BIN=$GATE_BIN is not an executable"
else
    build_release
fi
# Idle clients need descriptors on both sides (raise only, never lower:
# HAProxy wants about 2 x maxconn).
want_fds=$((IDLE_CONNS * 3 + 10000))
if [ "$IDLE_CONNS" -gt 0 ] && [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null || die "cannot raise the open-file limit for IDLE_CONNS=$IDLE_CONNS"
fi

port() { # a free loopback port
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
P1=$(port) P2=$(port) PN=$(port) PH=$(port) PG=$(port) PA=$(port) PB=$(port) PBA=$(port) PF=$(port)
BASE_BIN=${BASE_BIN:-}
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || die "BASE_BIN=$BASE_BIN is not an executable"
FLOOR=${FLOOR:-}
if [ -n "$FLOOR" ]; then
    FLOOR_BIN="$PWD/target/floor/release/stickgate-floor"
    echo "$NAME: building benches/floor" >&2
    CARGO_TARGET_DIR="$PWD/target/floor" cargo build --release --quiet \
        --manifest-path "$PWD/benches/floor/Cargo.toml" || die "building benches/floor failed"
fi

sticky_lua "$WORK/sticky.lua"

# ---- nginx backends ----------------------------------------------------------
nginx_backends "$P1" "$P2"

# ---- nginx as balancer -------------------------------------------------------
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    map \$cookie_jsessionid \$route { ~^[^.]*\.(?<r>.+)\$ \$r; }
    map \$route \$pool { tomcat1 be_tomcat1; tomcat2 be_tomcat2; default be_all; }
    upstream be_tomcat1 { server 127.0.0.1:$P1; keepalive 64; }
    upstream be_tomcat2 { server 127.0.0.1:$P2; keepalive 64; }
    upstream be_all { server 127.0.0.1:$P1; server 127.0.0.1:$P2; keepalive 64; }
    server {
        listen 127.0.0.1:$PN;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
            proxy_pass http://\$pool;
        }
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=($NGINX_PID)

# ---- HAProxy -----------------------------------------------------------------
haproxy_sticky_cfg "$WORK/haproxy.cfg" "$PH" "$P1" "$P2" 4000
haproxy -db -f "$WORK/haproxy.cfg" &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# ---- stickgate (the smallest config) -----------------------------------------
gate_toml "$WORK/stickgate.toml" "listen = [\"127.0.0.1:$PG\"]" "$PA"
"$GATE_BIN" run --config "$WORK/stickgate.toml" 2>"$WORK/stickgate.log" &
GATE_PID=$!
PIDS+=($GATE_PID)
WHO="direct nginx haproxy stickgate"
PORTS="$P1 $P2 $PN $PH $PG"
if [ -n "$BASE_BIN" ]; then
    # An older build, same config on its own ports, measured in the same rounds.
    sed -e "s/:$PG\"/:$PB\"/" -e "s/:$PA\"/:$PBA\"/" "$WORK/stickgate.toml" >"$WORK/base.toml"
    "$BASE_BIN" run --config "$WORK/base.toml" 2>"$WORK/base.log" &
    BASE_PID=$!
    PIDS+=($BASE_PID)
    WHO="$WHO base"
    PORTS="$PORTS $PB"
fi
if [ -n "$FLOOR" ]; then
    "$FLOOR_BIN" "127.0.0.1:$PF" "127.0.0.1:$P1" "127.0.0.1:$P2" 2>"$WORK/floor.log" &
    FLOOR_PID=$!
    PIDS+=($FLOOR_PID)
    WHO="$WHO floor"
    PORTS="$PORTS $PF"
fi

for p in $PORTS; do
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/" && break
        sleep 0.1
    done
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/" || die "nothing answers on port $p"
done
sleep 1.5 # first health checks

pids_of() { # balancer -> its pids (nginx: master and workers)
    case $1 in
    direct) echo "" ;;
    nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    stickgate) echo "$GATE_PID" ;;
    base) echo "$BASE_PID" ;;
    floor) echo "$FLOOR_PID" ;;
    esac
}
ticks() { # "<utime+stime> <utime>" summed over the given pids
    local t=0 u=0 p pu ps
    for p in "$@"; do
        read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat")
        t=$((t + pu + ps)) u=$((u + pu))
    done
    echo "$t $u"
}
port_of() {
    case $1 in direct) echo "$P1" ;; nginx) echo "$PN" ;; haproxy) echo "$PH" ;; stickgate) echo "$PG" ;; base) echo "$PB" ;; floor) echo "$PF" ;; esac
}

rss_kib() { # summed VmRSS of the given pids
    local k=0 p
    for p in "$@"; do
        k=$((k + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
    done
    echo "$k"
}
p99_ms() { # wrk's 99% latency in ms
    awk '$1 == "99%" { v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v) }
        else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
        printf "%.2f", v }'
}

RESULTS=$WORK/results
RSS=$WORK/rss
: >"$RESULTS"
: >"$RSS"
sleep 0.5 # idle RSS: settled after start and the warm-up request
for who in $WHO; do
    pids=$(pids_of $who)
    [ -n "$pids" ] && echo "$who idle $(rss_kib $pids)" >>"$RSS"
done
for ((r = 1; r <= ROUNDS; r++)); do
    for scenario in sticky new; do
        for who in $WHO; do
            pids=$(pids_of $who)
            if [ $scenario = sticky ]; then
                args=(-d"$DURATION" -s "$WORK/sticky.lua")
                secs=$DUR_SECS
            else
                args=(-d"$NEW_DURATION")
                secs=$NEW_SECS
            fi
            read -r t0 u0 < <(ticks $pids)
            out=$(timeout $((secs + 30)) wrk -t1 -c64 --latency "${args[@]}" \
                "http://127.0.0.1:$(port_of $who)/" 2>&1) || die "wrk failed for $who: $out"
            read -r t1 u1 < <(ticks $pids)
            [ -n "$pids" ] && echo "$who load $(rss_kib $pids)" >>"$RSS"
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
            errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}' <<<"$out")
            p99=$(p99_ms <<<"$out")
            us=$(awk -v t=$((t1 - t0)) -v n="$reqs" 'BEGIN {printf "%.2f", t * 10000 / n}')
            user=$(awk -v t=$((u1 - u0)) -v n="$reqs" 'BEGIN {printf "%.2f", t * 10000 / n}')
            [ -z "$pids" ] && us="-" user="-"
            printf "round %d %-6s %-9s %9s req/s  p99 %8s ms  cpu %6s us/req (user %s)  errors %s\n" \
                "$r" "$scenario" "$who" "$rps" "$p99" "$us" "$user" "$errs"
            echo "$scenario $who $rps $us $p99 $errs $user" >>"$RESULTS"
        done
    done
done

# IDLE_CONNS keep-alive clients, one sticky GET each, held open; RSS read
# while they are held (each balancer in turn).
# (The script comes from -c: stdin stays the pipe that says when to let go.)
HOLD_PY='
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    route = b"tomcat1" if i % 2 else b"tomcat2"
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=%032x.%s\r\n\r\n" % (i, route))
    socks.append(s)
for s in socks:
    got = b""
    while not got.rstrip().endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
print("held", flush=True)
sys.stdin.readline()
'
hold_idle() { # port
    python3 -c "$HOLD_PY" "$1" "$IDLE_CONNS"
}
if [ "$IDLE_CONNS" -gt 0 ]; then
    for who in $WHO; do
        pids=$(pids_of $who)
        [ -n "$pids" ] || continue
        coproc HOLD { hold_idle "$(port_of $who)"; }
        hold_out=${HOLD[0]} hold_in=${HOLD[1]} hold_pid=$HOLD_PID
        read -r -t 120 line <&"$hold_out" || die "holding $IDLE_CONNS connections to $who failed"
        [ "$line" = held ] || die "holding $IDLE_CONNS connections to $who failed: $line"
        sleep 1
        echo "$who held $(rss_kib $pids)" >>"$RSS"
        echo >&"$hold_in" || true
        wait "$hold_pid" 2>/dev/null || true
        sleep 1
    done
fi

echo
echo "wrk -t1 -c64, sticky $DURATION and new $NEW_DURATION per run, $ROUNDS interleaved rounds, all on $(nproc) shared cores"
echo "medians over the rounds (range); ratios are stickgate's (and base's, floor's) medians over HAProxy's"
awk '
    function median(list,   n, a, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lo(list,   n, a, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
    function hi(list,   n, a, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
    # Round i of one list over round i of the other (both in round order).
    function ratios(num, den,   n, a, b, i, out) {
        n = split(num, a, " "); split(den, b, " "); out = ""
        for (i = 1; i <= n; i++) if (b[i] + 0 > 0) out = out " " a[i] / b[i]
        return out
    }
    { k = $1 " " $2; rps[k] = rps[k] " " $3; if ($4 != "-") { cpu[k] = cpu[k] " " $4; usr[k] = usr[k] " " $7 }; p99[k] = p99[k] " " $5; err[k] += $6 }
    END {
      k = split(who, order, " ")
      for (s = 1; s <= 2; s++) {
        sc = s == 1 ? "sticky" : "new"
        h = sc " haproxy"
        hr = median(rps[h]); hc = median(cpu[h]); hp = median(p99[h])
        printf "%-6s %-9s %8s %-17s %6s %-13s %7s %-15s %6s\n", sc, "", "req/s", "", "us/req", "", "p99 ms", "", "errors"
        for (i = 1; i <= k; i++) {
          w = order[i]; key = sc " " w
          line = sprintf("%-6s %-9s %8.0f (%.0f..%.0f)", sc, w, median(rps[key]), lo(rps[key]), hi(rps[key]))
          line = sprintf("%-45s", line)
          if (key in cpu) line = line sprintf(" %6.2f (%.2f..%.2f)", median(cpu[key]), lo(cpu[key]), hi(cpu[key]))
          else line = line sprintf(" %6s %14s", "-", "")
          line = line sprintf("  %6.2f (%.2f..%.2f)  %d", median(p99[key]), lo(p99[key]), hi(p99[key]), err[key])
          if (w == "stickgate" || w == "base" || w == "floor")
            line = line sprintf("   vs HAProxy: req/s %.2fx  cpu %.2fx  p99 %.2fx", median(rps[key]) / hr, median(cpu[key]) / hc, median(p99[key]) / hp)
          print line
        }
      }
      # The kernel'"'"'s share (loopback TCP, epoll) is about the same for
      # every proxy here: the difference is mostly in user space.
      print "user-space CPU us/req, median (range): the proxy'"'"'s own code, without the kernel'"'"'s part"
      for (s = 1; s <= 2; s++) {
        sc = s == 1 ? "sticky" : "new"
        line = sprintf("%-6s", sc)
        for (i = 1; i <= k; i++) { w = order[i]; key = sc " " w
          if (key in usr) line = line sprintf("  %s %.2f (%.2f..%.2f)", w, median(usr[key]), lo(usr[key]), hi(usr[key])) }
        print line
      }
      # The host drifts between faster and slower spells: two runs of the
      # same round saw the same spell, so their ratio is steadier than the
      # ratio of medians taken over different rounds.
      print "CPU us/req ratios within each round, median (range) over the rounds"
      for (s = 1; s <= 2; s++) {
        sc = s == 1 ? "sticky" : "new"
        line = sprintf("%-6s", sc); h = sc " haproxy"; g = sc " stickgate"
        for (i = 1; i <= k; i++) { w = order[i]; key = sc " " w
          if (w != "stickgate" && w != "base" && w != "floor") continue
          if (!(key in cpu) || !(h in cpu)) continue
          r = ratios(cpu[key], cpu[h])
          line = line sprintf("  %s/haproxy %.2fx (%.2f..%.2f)", w, median(r), lo(r), hi(r)) }
        b = sc " base"
        if ((g in cpu) && (b in cpu)) { r = ratios(cpu[g], cpu[b]); line = line sprintf("  stickgate/base %.3fx (%.3f..%.3f)", median(r), lo(r), hi(r)) }
        print line
      }
    }' who="$WHO" "$RESULTS"
echo
held=""
[ "$IDLE_CONNS" -eq 0 ] || held=", with $IDLE_CONNS idle keep-alive clients"
echo "RSS in MiB: idle (before the first run), largest right after a run$held"
awk '
    { if ($2 == "idle") idle[$1] = $3; else if ($2 == "load") { if ($3 > load[$1]) load[$1] = $3 } else held[$1] = $3 }
    END {
      k = split(who, order, " ")
      for (i = 1; i <= k; i++) { w = order[i]; if (!(w in idle)) continue
        line = sprintf("%-9s idle %6.1f  after load %6.1f", w, idle[w] / 1024, load[w] / 1024)
        if (w in held) line = line sprintf("  %d idle clients %6.1f (%.1f KiB each over after-load)", n, held[w] / 1024, (held[w] - load[w]) / n)
        print line }
    }' who="$WHO" n="$IDLE_CONNS" "$RSS"
