# Shared set-up for the load scripts (sourced, not run): tool install,
# release build, demo backends and stickgate on free loopback ports, and
# cleanup of everything started. Callers set NAME (for messages) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}

die() {
    echo "$NAME: $*" >&2
    exit 1
}

# Install a Debian package if `cmd` is missing.
need() { # cmd package
    command -v "$1" >/dev/null 2>&1 && return 0
    local SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "$NAME: installing $2" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 $SUDO apt-get install -y -qq "$2" >/dev/null 2>&1; then
        timeout 300 $SUDO apt-get update -qq
        timeout 300 $SUDO apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed and apt-get could not install $2"
}

build_release() {
    if [ -n "${GATE_BIN:-}" ]; then
        # A given binary (e.g. a build measured before a change): no build.
        [ -x "$GATE_BIN" ] || die "GATE_BIN=$GATE_BIN is not an executable"
        BACKEND_BIN=${BACKEND_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/backend}
        return 0
    fi
    echo "$NAME: building release binaries (cargo build --release --bin stickgate; --example backend)" >&2
    # Two builds: with the example in the same one, the dev-dependencies'
    # features (tokio's multi-thread runtime) would be unified into the
    # stickgate binary too, so the one measured would not be the one
    # users build (nor match scripts/hot-symbols.txt, see build.rs).
    timeout "$BUILD_TIMEOUT" cargo build --release --quiet --bin stickgate ||
        die "release build failed or took longer than ${BUILD_TIMEOUT}s"
    timeout "$BUILD_TIMEOUT" cargo build --release --quiet --example backend ||
        die "release build of the demo backend failed or took longer than ${BUILD_TIMEOUT}s"
    TARGET_DIR=${CARGO_TARGET_DIR:-target}
    GATE_BIN=$TARGET_DIR/release/stickgate
    BACKEND_BIN=$TARGET_DIR/release/examples/backend
    [ -x "$GATE_BIN" ] && [ -x "$BACKEND_BIN" ] || die "binaries not found under $TARGET_DIR/release"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stickgate-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Poll `file` (up to 15 s) for a line matching `pattern`; print the
# host:port found on it.
wait_addr() {
    local file=$1 pattern=$2 i line
    for ((i = 0; i < 150; i++)); do
        line=$(grep -m1 -e "$pattern" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            grep -oE '127\.0\.0\.1:[0-9]+' <<<"$line" | head -n1
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Poll `url` with curl until it answers at all (any status), for up to
# `secs` seconds; fails if it never did (a process under valgrind or a JVM
# takes a while to listen).
wait_http() { # url secs
    local url=$1 tries=$(($2 * 5)) i
    for ((i = 0; i < tries; i++)); do
        curl -s -o /dev/null -m 2 "$url" && return 0
        sleep 0.2
    done
    return 1
}

# Demo backends tomcat1 and tomcat2 on port 0; fills BACKEND_ADDR.
declare -A BACKEND_ADDR
start_backends() {
    local route
    for route in tomcat1 tomcat2; do
        "$BACKEND_BIN" --listen 127.0.0.1:0 --route "$route" >/dev/null 2>"$WORK/$route.log" &
        PIDS+=($!)
    done
    for route in tomcat1 tomcat2; do
        BACKEND_ADDR[$route]=$(wait_addr "$WORK/$route.log" "listening on") ||
            die "backend $route did not start: $(cat "$WORK/$route.log")"
    done
}

# `[[backend]]` tables for both demo backends.
backends_toml() {
    printf '[[backend]]\nroute = "tomcat1"\nurl = "http://%s"\n\n[[backend]]\nroute = "tomcat2"\nurl = "http://%s"\n' \
        "${BACKEND_ADDR[tomcat1]}" "${BACKEND_ADDR[tomcat2]}"
}

# Start stickgate with config file $1 (log to $2, default stickgate.log);
# GATE (first listener), ADMIN and GATE_PID get its ports and pid (its JSON
# log names the ports).
start_gate() {
    local log=${2:-$WORK/stickgate.log}
    STICKGATE_LOG=info "$GATE_BIN" --log-format json run --config "$1" \
        >/dev/null 2>"$log" &
    GATE_PID=$!
    PIDS+=($GATE_PID)
    GATE=$(wait_addr "$log" '"message":"listening"') ||
        die "stickgate did not start: $(cat "$log")"
    ADMIN=$(wait_addr "$log" '"message":"admin API listening"') ||
        die "stickgate admin API did not start: $(cat "$log")"
}

# Seconds in a wrk duration ("10s", "2m", "1h", "30").
duration_secs() {
    local d=$1
    case $d in
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
    esac
}

# "<req/s> <p99 in ms> <non-2xx/3xx + socket errors>" from a wrk report.
parse_wrk() {
    awk '
        /^Requests\/sec:/ { rps = $2 }
        $1 == "99%" {
            v = $2
            if (v ~ /us$/) { sub(/us$/, "", v); p99 = v / 1000 }
            else if (v ~ /ms$/) { sub(/ms$/, "", v); p99 = v + 0 }
            else if (v ~ /s$/) { sub(/s$/, "", v); p99 = v * 1000 }
        }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { gsub(",", "", $i); err += $i }
        }
        END { printf "%s %s %d\n", rps, p99, err }' "$1"
}

# A session cookie living on tomcat1, obtained through stickgate at $1
# (round robin over two backends: at most a few tries). Extra curl args
# (e.g. -k for https) follow the URL.
tomcat1_cookie() {
    local url=$1 sid=""
    shift
    for _ in 1 2 3 4; do
        sid=$(curl -s -m 5 -o /dev/null -D - "$@" "$url" |
            grep -i '^set-cookie: JSESSIONID=' | sed -E 's/^[^=]*=([^;[:space:]]*).*/\1/' | tr -d '\r')
        [[ $sid == *.tomcat1 ]] && break
        sid=""
    done
    [ -n "$sid" ] || die "no tomcat1 session cookie from stickgate at $url"
    echo "JSESSIONID=$sid"
}

# Two nginx processes as fast backends on ports $1 and $2 (routes tomcat1
# and tomcat2): every path answers {"route":"tomcatN"}, and a request
# without a JSESSIONID cookie gets a Set-Cookie with a fresh id (as
# ../shared/BENCHMARKS.md sets them up).
nginx_backends() { # port1 port2
    local n p
    for n in 1 2; do
        p=${!n}
        mkdir -p "$WORK/be$n/logs"
        cat >"$WORK/be$n/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/be$n/nginx.pid;
error_log $WORK/be$n/logs/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    default_type application/json;
    server {
        listen 127.0.0.1:$p;
        location / {
            if (\$cookie_jsessionid = "") {
                add_header Set-Cookie "JSESSIONID=\$request_id.tomcat$n; Path=/; HttpOnly";
            }
            return 200 '{"route":"tomcat$n"}';
        }
    }
}
NGINX
        nginx -p "$WORK/be$n" -c "$WORK/be$n/nginx.conf" &
        PIDS+=($!)
    done
}

# HAProxy config routing on the JSESSIONID suffix, as BENCHMARKS.md says;
# the optional sixth argument is added to the bind line (TLS: "ssl crt ...").
haproxy_sticky_cfg() { # file port backend1 backend2 maxconn [bind-options]
    cat >"$1" <<HAPROXY
global
    nbthread 2
    maxconn $5
defaults
    mode http
    timeout connect 1s
    timeout client 300s
    timeout server 30s
    timeout http-keep-alive 300s
    option redispatch
    retries 3
    http-reuse always
frontend fe
    bind 127.0.0.1:$2 ${6:-}
    http-request set-var(txn.route) req.cook(JSESSIONID),field(2,.)
    use_backend be_tomcat1 if { var(txn.route) -m str tomcat1 }
    use_backend be_tomcat2 if { var(txn.route) -m str tomcat2 }
    default_backend be_all
backend be_tomcat1
    server t1 127.0.0.1:$3 check inter 1s
    server t2 127.0.0.1:$4 check inter 1s backup
backend be_tomcat2
    server t2 127.0.0.1:$4 check inter 1s
    server t1 127.0.0.1:$3 check inter 1s backup
backend be_all
    balance roundrobin
    server t1 127.0.0.1:$3 check inter 1s
    server t2 127.0.0.1:$4 check inter 1s
HAPROXY
}

# A stickgate config in front of the two nginx backends ($P1, $P2), as
# BENCHMARKS.md sets it up: file, [server] lines, admin port, and any other
# sections (each may hold several lines).
# The wrk script of the sticky scenario: request i carries
# JSESSIONID=<i mod 10000 as 32 hex>.tomcat1 (odd i) or .tomcat2 (even i).
sticky_lua() { # file
    cat >"$1" <<'LUA'
counter = 0
request = function()
    counter = counter + 1
    local route = (counter % 2 == 1) and "tomcat1" or "tomcat2"
    local cookie = string.format("JSESSIONID=%032x.%s", counter % 10000, route)
    return wrk.format("GET", "/", { ["Cookie"] = cookie })
end
LUA
}

gate_toml() { # file server-lines admin-port [other-sections]
    cat >"$1" <<TOML
[server]
$2
[admin]
listen = "127.0.0.1:$3"
[health]
interval = "1s"
${4:-}
[[backend]]
route = "tomcat1"
url = "http://127.0.0.1:$P1"
[[backend]]
route = "tomcat2"
url = "http://127.0.0.1:$P2"
TOML
}
