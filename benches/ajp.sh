#!/usr/bin/env bash
# AJP against HTTP to the same Tomcat through stickgate, in one run.
#
#   benches/ajp.sh                       # 3 interleaved rounds of 8 s each
#   ROUNDS=5 DURATION=10s benches/ajp.sh
#   GATE_BIN=target/debug/stickgate benches/ajp.sh   # skip the release build
#
# One real Tomcat 10 (Debian's tomcat10, full JIT) with an HTTP and an AJP
# connector serving the drill servlet of tests/ajp (GET /info: a short
# text answer, no session), and two stickgates: one with
# url = "http://..." (the HTTP connector), one with url = "ajp://..." (the
# AJP connector). Each round runs `wrk -t1 -c32 -d$DURATION` against each
# gate in turn. CPU per request is utime+stime from /proc/PID/stat over the
# run, of the gate and of Tomcat, divided by the requests wrk reports.
# Installs wrk, tomcat10 and a JDK with apt-get if missing; bounded in time.
NAME=ajp.sh
. "$(dirname "$0")/common.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 && $ROUNDS -le 20 ]] || die "ROUNDS must be 1..20"
TOMCAT_HOME=/usr/share/tomcat10

need wrk wrk
need javac default-jdk-headless
if [ ! -f "$TOMCAT_HOME/bin/bootstrap.jar" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "$NAME: installing tomcat10" >&2
    timeout 300 $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 $SUDO apt-get install -y -qq tomcat10 >/dev/null
fi
[ -f "$TOMCAT_HOME/bin/bootstrap.jar" ] || die "tomcat10 is not installed"
if [ -n "${GATE_BIN:-}" ]; then
    [ -x "$GATE_BIN" ] || die "GATE_BIN=$GATE_BIN is not an executable"
else
    build_release
fi

port() { # a free loopback port
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PH=$(port) PA=$(port)

# ---- Tomcat: HTTP and AJP connectors, the drill servlet as ROOT ----------
BASE=$WORK/tomcat
APP=$BASE/webapps/ROOT/WEB-INF
mkdir -p "$BASE"/{conf,logs,temp,work} "$APP/classes"
timeout 120 javac -d "$APP/classes" -cp "$TOMCAT_HOME/lib/servlet-api.jar" tests/ajp/Drill.java ||
    die "javac failed"
cat >"$BASE/conf/server.xml" <<EOF
<Server port="-1" shutdown="SHUTDOWN"><Service name="Catalina">
<Connector protocol="HTTP/1.1" address="127.0.0.1" port="$PH" maxKeepAliveRequests="-1"/>
<Connector protocol="AJP/1.3" address="127.0.0.1" port="$PA" secretRequired="false"/>
<Engine name="Catalina" defaultHost="localhost" jvmRoute="tomcat1">
<Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
</Engine></Service></Server>
EOF
cat >"$APP/web.xml" <<'EOF'
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
<servlet><servlet-name>drill</servlet-name><servlet-class>Drill</servlet-class></servlet>
<servlet-mapping><servlet-name>drill</servlet-name><url-pattern>/info</url-pattern></servlet-mapping>
</web-app>
EOF
java -Xmx512m -Ddrill.node=tomcat1 -Dtomcat.util.scan.StandardJarScanFilter.jarsToSkip='*' \
    -Dcatalina.home="$TOMCAT_HOME" -Dcatalina.base="$BASE" -Djava.io.tmpdir="$BASE/temp" \
    -cp "$TOMCAT_HOME/bin/bootstrap.jar:$TOMCAT_HOME/bin/tomcat-juli.jar" \
    org.apache.catalina.startup.Bootstrap start >"$WORK/tomcat.log" 2>&1 &
TOMCAT_PID=$!
PIDS+=($TOMCAT_PID)
wait_http "http://127.0.0.1:$PH/info" 60 || die "Tomcat did not start: $(tail -5 "$WORK/tomcat.log")"

# ---- two gates: HTTP and AJP backends ------------------------------------
gate_conf() { # file url
    cat >"$1" <<EOF
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[health]
interval = "2s"
path = "/info"          # the HTTP gate checks GET /info; the AJP one CPings
[[backend]]
route = "tomcat1"
url = "$2"
EOF
}
gate_conf "$WORK/http.toml" "http://127.0.0.1:$PH"
gate_conf "$WORK/ajp.toml" "ajp://127.0.0.1:$PA"
start_gate "$WORK/http.toml" "$WORK/http.log"
HTTP_GATE=$GATE HTTP_PID=$GATE_PID
start_gate "$WORK/ajp.toml" "$WORK/ajp.log"
AJP_GATE=$GATE AJP_PID=$GATE_PID
for g in "$HTTP_GATE" "$AJP_GATE"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://$g/info")
    [ "$code" = 200 ] || die "gate $g answered $code"
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

run() { # label gate gate_pid
    local g0 t0 g1 t1 out rps err reqs
    # Warm-up (JIT, pools), not measured.
    timeout 30 wrk -t1 -c32 -d2s "http://$2/info" >/dev/null
    g0=$(ticks "$3") t0=$(ticks "$TOMCAT_PID")
    out=$WORK/$1.wrk
    timeout $(($(duration_secs "$DURATION") + 30)) wrk -t1 -c32 -d"$DURATION" --latency "http://$2/info" >"$out"
    g1=$(ticks "$3") t1=$(ticks "$TOMCAT_PID")
    read -r rps _ err < <(parse_wrk "$out")
    reqs=$(awk '/requests in/ {print $1}' "$out")
    [ "${reqs:-0}" -gt 0 ] || die "$1: no requests: $(cat "$out")"
    [ "${err:-0}" = 0 ] || echo "$NAME: $1: errors; wrk said: $(cat "$out")" >&2
    awk -v l="$1" -v r="$rps" -v e="$err" -v n="$reqs" -v g=$((g1 - g0)) -v t=$((t1 - t0)) -v hz="$HZ" \
        'BEGIN { printf "%-5s %10.0f req/s  stickgate %6.1f us/req  tomcat %6.1f us/req  errors %d\n",
                 l, r, g / hz * 1e6 / n, t / hz * 1e6 / n, e }'
}

echo "$NAME: Tomcat HTTP :$PH, AJP :$PA; gates $HTTP_GATE (http) $AJP_GATE (ajp); $ROUNDS x $DURATION"
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r"
    run http "$HTTP_GATE" "$HTTP_PID"
    run ajp "$AJP_GATE" "$AJP_PID"
done
