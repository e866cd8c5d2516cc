#!/usr/bin/env bash
# Regenerate scripts/hot-symbols.txt: the functions a running balancer
# executes, which build.rs has the linker place together so that an idle
# process keeps ~1.4 MiB of code resident instead of ~4.6 (see build.rs).
# Run it after a toolchain, lock-file or profile change, or when
# benches/footprint.sh says the list matches little of the binary.
#
#   scripts/hot-symbols.sh
#
# Builds the release binary and the demo backend, runs stickgate under
# valgrind's callgrind (which records every instruction address executed)
# through start-up, sticky and new-session requests over HTTP/1.1, h2 over
# TLS, the admin API and a few idle seconds of health checks, and writes
# the symbols of every function executed, in their current order.
# Installs valgrind, openssl, curl and python3 with apt-get if missing.
NAME=hot-symbols.sh
cd "$(dirname "$0")/.."
. benches/common.sh
need valgrind valgrind
need openssl openssl
need curl curl
need python3 python3
need nm binutils
build_release
start_backends

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG=$(port) PT=$(port) PA=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$WORK/site.key" -out "$WORK/site.crt" 2>/dev/null
cat >"$WORK/g.toml" <<TOML
[server]
listen = ["127.0.0.1:$PG"]
tls_listen = ["127.0.0.1:$PT"]
[[server.certificate]]
cert = "$WORK/site.crt"
key = "$WORK/site.key"
[admin]
listen = "127.0.0.1:$PA"
[health]
interval = "1s"
[[backend]]
route = "tomcat1"
url = "http://${BACKEND_ADDR[tomcat1]}"
[[backend]]
route = "tomcat2"
url = "http://${BACKEND_ADDR[tomcat2]}"
TOML
OUT=$WORK/cg.out
valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$OUT" "$GATE_BIN" run --config "$WORK/g.toml" 2>"$WORK/gate.log" &
VG=$!
PIDS+=($VG)
wait_http "http://127.0.0.1:$PG/" 60 || die "stickgate under callgrind did not answer: $(tail -n 3 "$WORK/gate.log")"
# First what an idle balancer runs (start-up, one request, health checks),
# dumped apart: those functions go first, so that idle they fill as few
# pages as possible; then the rest of the request path.
curl -s -o /dev/null -m 5 -H "Cookie: JSESSIONID=$(printf '%032X' 1).tomcat1" "http://127.0.0.1:$PG/"
sleep 3
callgrind_control -d "$VG" >/dev/null 2>&1 || die "callgrind_control could not dump"
for ((i = 0; i < 40; i++)); do
    curl -s -o /dev/null -m 5 -H "Cookie: JSESSIONID=$(printf '%032X' "$i").tomcat$((i % 2 + 1))" "http://127.0.0.1:$PG/"
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$PG/"
done
for ((i = 0; i < 10; i++)); do
    curl -sk -o /dev/null -m 5 --http2 -H "Cookie: JSESSIONID=$(printf '%032X' "$i").tomcat1" "https://127.0.0.1:$PT/"
    curl -sk -o /dev/null -m 5 --http1.1 "https://127.0.0.1:$PT/"
done
for path in /status /metrics /; do
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$PA$path"
done
sleep 3
kill "$VG" 2>/dev/null || true
wait "$VG" 2>/dev/null || true

# callgrind wrote $OUT.1 (idle) at the dump, $OUT at the exit (the rest).
[ -s "$OUT.1" ] && [ -s "$OUT" ] || die "callgrind wrote no profile ($WORK/gate.log: $(tail -3 "$WORK/gate.log"))"
python3 - "$GATE_BIN" "$OUT.1" "$OUT" >scripts/hot-symbols.txt <<'PY'
"""Executed instruction addresses -> the functions holding them -> names,
the idle run's first."""
import bisect, os, subprocess, sys
binary, idle, rest = sys.argv[1:4]
me = os.path.basename(binary)

def executed(path):
    addrs, ob = set(), None
    for line in open(path, errors="replace"):
        if line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("0x") and ob and os.path.basename(ob) == me:
            addrs.add(int(line.split()[0], 16))
    return addrs

syms = []
nm = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    p = line.split()
    if len(p) >= 4 and p[2] in "tTwW":
        syms.append((int(p[0], 16), int(p[1], 16), p[3]))
syms.sort()
starts = [s[0] for s in syms]
def functions(addrs):
    hit = set()
    for a in addrs:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and syms[i][0] <= a < syms[i][0] + syms[i][1]:
            hit.add(syms[i][0])
    return hit

first = functions(executed(idle))
then = functions(executed(rest)) - first
names = [n for (a, _, n) in syms if a in first] + [n for (a, _, n) in syms if a in then]
if len(names) < 500:
    sys.exit(f"only {len(names)} functions seen executed: the run under callgrind failed?")
print("\n".join(dict.fromkeys(names)))
PY
echo "$NAME: $(wc -l <scripts/hot-symbols.txt) functions listed in scripts/hot-symbols.txt; rebuild (cargo build --release) to apply" >&2
