#!/usr/bin/env bash
# Edge protocols: requests/s through stickgate over plain HTTP/1.1 (the
# reference), h2c, HTTPS with HTTP/1.1 and HTTPS with HTTP/2, measured
# with h2load in one run, printed with the ratio to plain HTTP/1.1.
#
#   benches/edge.sh                       # 60000 requests per scenario
#   REQUESTS=200000 CLIENTS=32 STREAMS=10 benches/edge.sh
#
# Every request carries a sticky session cookie for tomcat1, so the figures
# are the sticky path. Installs h2load (nghttp2-client) and openssl with
# apt-get if missing; the TLS certificate is made for the run.
NAME=edge.sh
. "$(dirname "$0")/common.sh"

REQUESTS=${REQUESTS:-60000}
CLIENTS=${CLIENTS:-32}
STREAMS=${STREAMS:-10}

need h2load nghttp2-client
need openssl openssl
build_release
start_backends

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/site.key" -out "$WORK/site.crt" 2>/dev/null || die "openssl could not make a certificate"
cat >"$WORK/stickgate.toml" <<EOF2
[server]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]
h2c = true
shutdown_timeout = "2s"
[[server.certificate]]
cert = "$WORK/site.crt"
key = "$WORK/site.key"

[admin]
listen = "127.0.0.1:0"

[health]
interval = "1s"

$(backends_toml)
EOF2
start_gate "$WORK/stickgate.toml"
TLS=$(grep '"message":"listening"' "$WORK/stickgate.log" | grep -oE '127\.0\.0\.1:[0-9]+' | sed -n 2p)
[ -n "$TLS" ] || die "no TLS listener in the log"
COOKIE=$(tomcat1_cookie "http://$GATE/")

run_h2load() { # name url [h2load args]
    local name=$1 url=$2
    shift 2
    echo "$NAME: $name: h2load -n$REQUESTS -c$CLIENTS $* $url" >&2
    timeout 300 h2load -n"$REQUESTS" -c"$CLIENTS" -H "cookie: $COOKIE" "$@" "$url" >"$WORK/$name.out" 2>&1 ||
        die "h2load failed for $name: $(tail -n 5 "$WORK/$name.out")"
}

# "<req/s> <failed> <protocol>" from an h2load report.
parse_h2load() {
    awk '
        /^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) { rps = $i; gsub(",", "", rps) } }
        /^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^failed/) failed = $i }
        /Application protocol:/ { proto = $3 }
        END { printf "%s %s %s\n", rps, failed + 0, (proto == "" ? "?" : proto) }' "$1"
}

run_h2load http1 "http://$GATE/" --h1
run_h2load h2c "http://$GATE/" -m"$STREAMS"
run_h2load https-http1 "https://$TLS/" --h1
run_h2load https-h2 "https://$TLS/" -m"$STREAMS"

cores=$(nproc 2>/dev/null || echo "?")
echo
echo "stickgate edge protocols: h2load -n$REQUESTS -c$CLIENTS (h2: -m$STREAMS streams), sticky GET /, 127.0.0.1"
echo "note: h2load, the demo backends (HTTP/1.1) and stickgate share this machine's $cores core(s)."
echo
read -r base _ _ < <(parse_h2load "$WORK/http1.out")
printf '%-12s %-9s %12s %12s %8s\n' scenario protocol "req/s" "vs http1" failed
for name in http1 h2c https-http1 https-h2; do
    read -r rps failed proto < <(parse_h2load "$WORK/$name.out")
    awk -v n="$name" -v p="$proto" -v r="$rps" -v b="$base" -v f="$failed" 'BEGIN {
        printf "%-12s %-9s %12.0f %12.2f %8d\n", n, p, r, (b > 0 ? r / b : 0), f }'
done
