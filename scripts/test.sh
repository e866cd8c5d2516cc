#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the drills need
# (redis-server, whose instances the tests start on free loopback ports;
# curl, openssl, ss, python3; Debian's python3-prometheus-client, the real
# parser the /metrics drill uses; chromium, the headless browser the status
# page drill drives; tomcat10 and a JDK, the real Tomcat of the AJP drills), makes multicast work on loopback for the multicast
# drills, then runs formatting, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
need() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }
need redis-server redis-server
need redis-cli redis-tools
need curl curl
need openssl openssl
need ss iproute2
need python3 python3
/usr/bin/python3 -c "import prometheus_client" >/dev/null 2>&1 || need_apt+=(python3-prometheus-client)
need chromium chromium
# Real Tomcat for the AJP drills (tests/ajp.rs), and javac for their servlet.
[ -f /usr/share/tomcat10/bin/bootstrap.jar ] || need_apt+=(tomcat10)
need javac default-jdk-headless
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${need_apt[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Loopback multicast (tests/multicast*.rs fail without it): `lo` must have
# the MULTICAST flag and 224.0.0.0/4 must route via lo. Idempotent: changes
# only what is missing, and needs root (or sudo) only then.
lo_multicast() {
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if ! ip link show lo | grep MULTICAST >/dev/null; then
        echo "scripts/test.sh: ip link set lo multicast on" >&2
        $SUDO ip link set lo multicast on
    fi
    if ! ip route show 224.0.0.0/4 | grep . >/dev/null; then
        echo "scripts/test.sh: ip route add 224.0.0.0/4 dev lo" >&2
        $SUDO ip route add 224.0.0.0/4 dev lo
    fi
}
lo_multicast

# The build and the drills' temporary folders need a few GiB: say how much
# there is, so a "No space left on device" is explained at the top of the log.
df -h . "${TMPDIR:-/tmp}" >&2 || true
# A fresh checkout gains nothing from incremental compilation, whose caches
# doubled the build's size: without them clippy and every test target take
# 1.4 GiB (measured), in about the same time. Set CARGO_INCREMENTAL=1 to keep
# a local edit-and-rerun loop incremental.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets --no-fail-fast
