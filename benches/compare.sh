#!/usr/bin/env bash
# Sticky routing side by side: stickgate against HAProxy and nginx, set up
# as ../shared/BENCHMARKS.md describes, measured in the same run.
#
#   benches/compare.sh              # 3 interleaved rounds of 8 s each
#   ROUNDS=5 DURATION=8s benches/compare.sh
#   BASE_BIN=/path/to/older/stickgate benches/compare.sh   # adds "base"
#
# Backends: two nginx servers (worker_processes 1) answering every path with
# {"route":"tomcatN"} and, without a JSESSIONID cookie, a Set-Cookie. Each
# round runs `wrk -t1 -c64 -d$DURATION --latency -s sticky.lua` against the
# first backend directly, then nginx, HAProxy and stickgate as balancers;
# request i carries JSESSIONID=<i mod 10000 as 32 hex>.tomcat1 (odd i) or
# .tomcat2 (even i). CPU per request is utime+stime of the balancer's
# processes (nginx: master and workers) from /proc/PID/stat over the run,
# divided by the requests wrk reports. Prints each round, then per balancer
# the range of req/s and CPU µs/request and the ratio to HAProxy.
# Installs haproxy, nginx and wrk with apt-get if missing; bounded in time.
NAME=compare.sh
. "$(dirname "$0")/common.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
DUR_SECS=$(duration_secs "$DURATION")
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 && $ROUNDS -le 20 ]] || die "ROUNDS must be 1..20"

need wrk wrk
need haproxy haproxy
need nginx nginx
build_release

port() { # a free loopback port
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
P1=$(port) P2=$(port) PN=$(port) PH=$(port) PG=$(port) PA=$(port) PB=$(port) PBA=$(port)
BASE_BIN=${BASE_BIN:-}
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || die "BASE_BIN=$BASE_BIN is not an executable"

cat >"$WORK/sticky.lua" <<'LUA'
counter = 0
request = function()
    counter = counter + 1
    local route = (counter % 2 == 1) and "tomcat1" or "tomcat2"
    local cookie = string.format("JSESSIONID=%032x.%s", counter % 10000, route)
    return wrk.format("GET", "/", { ["Cookie"] = cookie })
end
LUA

# ---- nginx backends ----------------------------------------------------------
backend_conf() { # dir port route
    mkdir -p "$1/logs"
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    default_type application/json;
    server {
        listen 127.0.0.1:$2;
        location / {
            if (\$cookie_jsessionid = "") {
                add_header Set-Cookie "JSESSIONID=\$request_id.$3; Path=/; HttpOnly";
            }
            return 200 '{"route":"$3"}';
        }
    }
}
EOF
}
for b in "1 $P1" "2 $P2"; do
    set -- $b
    backend_conf "$WORK/be$1" "$2" "tomcat$1"
    nginx -p "$WORK/be$1" -c "$WORK/be$1/nginx.conf" &
    PIDS+=($!)
done

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
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option redispatch
    retries 3
    http-reuse always
frontend fe
    bind 127.0.0.1:$PH
    http-request set-var(txn.route) req.cook(JSESSIONID),field(2,.)
    use_backend be_tomcat1 if { var(txn.route) -m str tomcat1 }
    use_backend be_tomcat2 if { var(txn.route) -m str tomcat2 }
    default_backend be_all
backend be_tomcat1
    server t1 127.0.0.1:$P1 check inter 1s
    server t2 127.0.0.1:$P2 check inter 1s backup
backend be_tomcat2
    server t2 127.0.0.1:$P2 check inter 1s
    server t1 127.0.0.1:$P1 check inter 1s backup
backend be_all
    balance roundrobin
    server t1 127.0.0.1:$P1 check inter 1s
    server t2 127.0.0.1:$P2 check inter 1s
EOF
haproxy -db -f "$WORK/haproxy.cfg" &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# ---- stickgate (the smallest config) -----------------------------------------
cat >"$WORK/stickgate.toml" <<EOF
[server]
listen = ["127.0.0.1:$PG"]
[admin]
listen = "127.0.0.1:$PA"
[health]
interval = "1s"
[[backend]]
route = "tomcat1"
url = "http://127.0.0.1:$P1"
[[backend]]
route = "tomcat2"
url = "http://127.0.0.1:$P2"
EOF
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
    esac
}
ticks() { # sum of utime+stime of the given pids
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
port_of() {
    case $1 in direct) echo "$P1" ;; nginx) echo "$PN" ;; haproxy) echo "$PH" ;; stickgate) echo "$PG" ;; base) echo "$PB" ;; esac
}

RESULTS=$WORK/results
: >"$RESULTS"
for ((r = 1; r <= ROUNDS; r++)); do
    for who in $WHO; do
        pids=$(pids_of $who)
        t0=$(ticks $pids)
        out=$(timeout $((DUR_SECS + 30)) wrk -t1 -c64 -d"$DURATION" --latency -s "$WORK/sticky.lua" \
            "http://127.0.0.1:$(port_of $who)/" 2>&1) || die "wrk failed for $who: $out"
        t1=$(ticks $pids)
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        us=$(awk -v t=$((t1 - t0)) -v n="$reqs" 'BEGIN {printf "%.2f", t * 10000 / n}')
        [ -z "$pids" ] && us="-"
        printf "round %d %-9s %9s req/s  p99 %8s  cpu %6s us/req  errors %s\n" "$r" "$who" "$rps" "$p99" "$us" "$errs"
        echo "$who $rps $us" >>"$RESULTS"
    done
done

echo
echo "sticky GET, wrk -t1 -c64 -d$DURATION, $ROUNDS interleaved rounds, all on $(nproc) shared cores"
awk '
    { n[$1]++; r = $2; c = $3
      if (!($1 in rmin) || r < rmin[$1]) rmin[$1] = r; if (r > rmax[$1]) rmax[$1] = r
      if (c != "-") { if (!($1 in cmin) || c < cmin[$1]) cmin[$1] = c; if (c > cmax[$1]) cmax[$1] = c; cs[$1] += c }
      rs[$1] += r }
    END {
      for (w in n) { ravg[w] = rs[w] / n[w]; if (w in cs) cavg[w] = cs[w] / n[w] }
      k = split(who, order, " ")
      for (i = 1; i <= k; i++) { w = order[i]
        line = sprintf("%-9s req/s %7.0f..%-7.0f (%.2fx HAProxy)", w, rmin[w], rmax[w], ravg[w] / ravg["haproxy"])
        if (w in cavg) line = line sprintf("  cpu %5.2f..%-5.2f us/req (%.2fx HAProxy)", cmin[w], cmax[w], cavg[w] / cavg["haproxy"])
        print line }
    }' who="$WHO" "$RESULTS"
