#!/usr/bin/env bash
# Memory footprint side by side: stickgate against HAProxy (set up as
# ../shared/BENCHMARKS.md describes: nbthread 2, the same two nginx
# backends, sticky on the JSESSIONID suffix), measured in the same run.
#
#   benches/footprint.sh                 # 3000 and 8000 idle clients, 1M sessions
#   CONNS="3000" SESSIONS=200000 benches/footprint.sh
#   STORES="memory redis multicast" benches/footprint.sh
#   BALANCERS=stickgate SESSIONS=0 CONNS=3000 GATE_BIN=target/release/stickgate benches/footprint.sh
#                                        # quick: no HAProxy, no sessions, no build
#
# For each balancer: idle RSS (started, one request served), RSS with N
# idle keep-alive clients (each sent one sticky GET, read the answer and
# stays open; benches/idle_clients.py; read SETTLE s after the last
# answer), KiB per connection, and RSS 15 s
# after the clients closed. For stickgate, per store kind: RSS growth with
# SESSIONS sessions learned from the backends' Set-Cookie (wrk without a
# cookie until the status API counts SESSIONS), in bytes per session; and
# the stripped size of the release binary, and how much of
# scripts/hot-symbols.txt it still matches. Bounded in time throughout.
NAME=footprint.sh
. "$(dirname "$0")/common.sh"

CONNS=${CONNS:-"3000 8000"}
# Seconds the clients sit idle before RSS is read: stickgate parks an idle
# HTTP/1.1 connection after 1 s (hyper's buffers go back) and pooled
# upstream connections at the housekeeper's next tick after 1 s; HAProxy
# releases its buffers after each request.
SETTLE=${SETTLE:-5}
SESSIONS=${SESSIONS:-1000000}
STORES=${STORES:-"memory redis multicast"}
BALANCERS=${BALANCERS:-"haproxy stickgate"}
[[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -le 5000000 ]] || die "SESSIONS must be 0..5000000"

need wrk wrk
case " $BALANCERS " in *" haproxy "*) need haproxy haproxy ;; esac
need nginx nginx
need python3 python3
case " $STORES " in *" redis "*) need redis-server redis-server ;; esac
build_release

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Resident memory split: anonymous (heap, stacks, relocated data) and file
# pages (the binary and shared libraries: page cache the kernel can drop
# and read again, shared with other processes using the same files).
rss_split() { awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {printf "anon %.1f MiB, file %.1f MiB", a / 1024, f / 1024}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing answers on port $1"
}

P1=$(port) P2=$(port)
nginx_backends "$P1" "$P2"

# ---- the balancers -----------------------------------------------------------
PH=$(port)
# maxconn: HAProxy wants two descriptors per connection; 9500 fits the
# 20000-descriptor hard limit of the machines here.
case " $BALANCERS " in *" haproxy "*)
    haproxy_sticky_cfg "$WORK/haproxy.cfg" "$PH" "$P1" "$P2" "${HAPROXY_MAXCONN:-9500}"
    haproxy -db -f "$WORK/haproxy.cfg" &
    HAPROXY_PID=$!
    PIDS+=($HAPROXY_PID)
    ;;
esac

gate_cfg() { # file port admin-port store-sections
    gate_toml "$1" "listen = [\"127.0.0.1:$2\"]
idle_timeout = \"300s\"" "$3" "[session]
max_sessions = $((SESSIONS + SESSIONS / 10 + 1000))
${4:-}"
}
PG=$(port) PA=$(port)
gate_cfg "$WORK/gate.toml" "$PG" "$PA" ""
"$GATE_BIN" run --config "$WORK/gate.toml" 2>"$WORK/gate.log" &
GATE_PID=$!
PIDS+=($GATE_PID)
[ -z "${HAPROXY_PID:-}" ] || wait_port "$PH"
wait_port "$PG"
sleep 1.5

# ---- idle keep-alive clients ---------------------------------------------------
declare -A IDLE SPLIT
printf '\n(RSS with idle clients read %s s after the last answer)\n' "$SETTLE"
printf '%-10s %10s %8s %22s %14s %16s\n' balancer "idle RSS" clients "RSS with idle clients" "per conn" "15 s after close"
for who in $BALANCERS; do
    case $who in haproxy) pid=$HAPROXY_PID p=$PH ;; stickgate) pid=$GATE_PID p=$PG ;; esac
    curl -s -o /dev/null -m 2 -b "JSESSIONID=$(printf '%032x' 1).tomcat1" "http://127.0.0.1:$p/"
    idle=$(rss_kib "$pid")
    IDLE[$who]=$idle
    SPLIT[$who]=$(rss_split "$pid")
    for n in $CONNS; do
        # The clients hold their connections until their stdin closes: a
        # fifo this script keeps open (a background job's stdin would be
        # /dev/null, and they would all close at once after "ready").
        rm -f "$WORK/hold"
        mkfifo "$WORK/hold"
        exec 7<>"$WORK/hold"
        timeout 120 python3 "$(dirname "$0")/idle_clients.py" "$p" "$n" 90 <"$WORK/hold" >"$WORK/clients.out" &
        CL=$!
        for ((i = 0; i < 600; i++)); do
            grep -q '^ready' "$WORK/clients.out" 2>/dev/null && break
            sleep 0.1
        done
        line=$(cat "$WORK/clients.out")
        sleep "$SETTLE"
        loaded=$(rss_kib "$pid")
        # Proof the clients are still connected when RSS is read.
        open=$(ss -Htn state established "( sport = :$p )" | wc -l)
        [ "$open" -ge "$n" ] || echo "warning: only $open of $n client connections open when RSS was read" >&2
        exec 7>&-
        wait "$CL" 2>/dev/null || true
        sleep 15
        after=$(rss_kib "$pid")
        per=$(awk -v a="$loaded" -v b="$idle" -v n="$n" 'BEGIN {printf "%.1f KiB", (a - b) / n}')
        printf '%-10s %8s MiB %8s %18s MiB %14s %12s MiB   (%s; %s open when read)\n' "$who" "$(mib "$idle")" "$n" "$(mib "$loaded")" "$per" "$(mib "$after")" "$line" "$open"
    done
done

for who in $BALANCERS; do
    printf '%-10s idle RSS split: %s\n' "$who" "${SPLIT[$who]}"
done

# ---- sessions per store kind ---------------------------------------------------
cat >"$WORK/new.lua" <<'LUA'
request = function() return wrk.format("GET", "/") end
LUA
total_sessions() { # admin port
    curl -s -m 2 "http://127.0.0.1:$1/api/status" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(b["sessions"]["current"] for b in d["backends"]))' 2>/dev/null || echo 0
}
if [ "$SESSIONS" -gt 0 ]; then
    printf '\n%-10s %10s %12s %14s %12s\n' store sessions "RSS before" "RSS after" "per session"
    for store in $STORES; do
        extra=""
        if [ "$store" = multicast ]; then
            # One balancer alone in its group: the local table (memory
            # store + version table) is what is measured.
            head -c 32 /dev/urandom | base64 >"$WORK/cluster.key"
            chmod 600 "$WORK/cluster.key"
            extra="[store]
kind = \"multicast\"
multicast_group = \"239.255.$((RANDOM % 250)).$((RANDOM % 250 + 1)):$(port)\"
multicast_interface = \"127.0.0.1\"
replication_listen = \"127.0.0.1:$(port)\"
key_file = \"$WORK/cluster.key\""
        fi
        if [ "$store" = redis ]; then
            RP=$(port)
            redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
            RPID=$!
            PIDS+=($RPID)
            for ((i = 0; i < 50; i++)); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
            extra="[store]
kind = \"redis\"
redis_url = \"redis://127.0.0.1:$RP\""
        fi
        SP=$(port) SA=$(port)
        gate_cfg "$WORK/$store.toml" "$SP" "$SA" "$extra"
        "$GATE_BIN" run --config "$WORK/$store.toml" 2>"$WORK/$store.log" &
        SPID=$!
        PIDS+=($SPID)
        wait_port "$SP"
        sleep 1
        before=$(rss_kib "$SPID")
        timeout 600 wrk -t1 -c64 -d600s -s "$WORK/new.lua" "http://127.0.0.1:$SP/" >"$WORK/wrk-$store.out" 2>&1 &
        WRK=$!
        start=$SECONDS
        while [ $((SECONDS - start)) -lt 600 ]; do
            [ "$(total_sessions "$SA")" -ge "$SESSIONS" ] && break
            sleep 1
        done
        kill "$WRK" 2>/dev/null || true
        wait "$WRK" 2>/dev/null || true
        n=$(total_sessions "$SA")
        after=$(rss_kib "$SPID")
        per=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {if (n > 0) printf "%.0f B", (a - b) * 1024 / n; else print "-"}')
        printf '%-10s %10s %8s MiB %10s MiB %12s\n' "$store" "$n" "$(mib "$before")" "$(mib "$after")" "$per"
        kill "$SPID" 2>/dev/null || true
        [ "$store" = redis ] && kill "$RPID" 2>/dev/null || true
    done
fi

# ---- binary --------------------------------------------------------------------
strip -o "$WORK/stickgate.stripped" "$GATE_BIN"
printf '\nstripped stickgate binary: %s bytes (%s MiB)\n' "$(stat -c %s "$WORK/stickgate.stripped")" \
    "$(awk -v b="$(stat -c %s "$WORK/stickgate.stripped")" 'BEGIN {printf "%.2f", b / 1048576}')"
# How much of scripts/hot-symbols.txt (the functions build.rs has the
# linker pack together, see there) this binary still has: a list that
# matches little of it no longer keeps idle RSS down; regenerate it with
# scripts/hot-symbols.sh.
if [ -s scripts/hot-symbols.txt ] && command -v nm >/dev/null; then
    nm --defined-only "$GATE_BIN" 2>/dev/null | awk '{print $3}' | sort -u >"$WORK/syms"
    listed=$(sort -u scripts/hot-symbols.txt | wc -l)
    found=$(sort -u scripts/hot-symbols.txt | comm -12 - "$WORK/syms" | wc -l)
    printf 'hot-symbol list: %s of %s functions found in the binary%s\n' "$found" "$listed" \
        "$([ "$found" -lt $((listed * 9 / 10)) ] && echo ' (stale: run scripts/hot-symbols.sh)')"
fi
