#!/usr/bin/env bash
# The network lab: real kernel packet drop for UDP and TCP alike.
#
# Makes a network namespace with only a loopback, installs an nftables rule on the input hook
# that drops N% of TCP and UDP packets at random (`numgen random mod 100 < N drop`; senders see
# no error, as on a real network; this kernel has no netem), and runs demo-server and
# demo-client inside it for each transport and drop rate. Prints one table. Needs Linux, root,
# nftables and iproute2. Cleans up on exit, including Ctrl-C.
#
#   sudo scripts/netlab.sh                       # udp, udp-reliable, tcp at 0, 1, 5 %
#   DURATION=5 LOSSES="0 5" scripts/netlab.sh    # shorter
#
# Environment: DURATION (s per run, 10), CLIENTS (4), LOSSES ("0 1 5"),
# TRANSPORTS ("udp udp-reliable tcp"), BIN_DIR (target/release), OUT (target/netlab).
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
LOSSES=${LOSSES:-"0 1 5"}
TRANSPORTS=${TRANSPORTS:-"udp udp-reliable tcp"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
OUT=${OUT:-$ROOT/target/netlab}
NS=snapsync-lab-$$
PORT=7777

die() { echo "netlab: $*" >&2; exit 1; }
[ "$(uname -s)" = Linux ] || die "needs Linux"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces and nftables)"
command -v ip >/dev/null || die "needs iproute2 (apt-get install iproute2)"
command -v nft >/dev/null || die "needs nftables (apt-get install nftables)"
command -v python3 >/dev/null || die "needs python3 for the table"
[ -x "$BIN_DIR/demo-server" ] && [ -x "$BIN_DIR/demo-client" ] ||
  die "no binaries in $BIN_DIR: run cargo build --release -p demo-server -p demo-client"

cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$OUT"

set_drop() {
  ip netns exec "$NS" nft flush ruleset
  [ "$1" = 0 ] && return 0
  ip netns exec "$NS" nft -f - <<NFT
table inet netlab {
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto { tcp, udp } numgen random mod 100 < $1 counter drop
  }
}
NFT
}

for loss in $LOSSES; do
  set_drop "$loss"
  for t in $TRANSPORTS; do
    echo "netlab: $t at $loss% kernel drop, $CLIENTS clients, $DURATION s" >&2
    ip netns exec "$NS" "$BIN_DIR/demo-server" --bind "127.0.0.1:$PORT" --transport "$t" \
      --duration $((DURATION + 3)) --stats-interval 0 --json "$OUT/server-$t-$loss.json" \
      --key-file "$OUT/server.key" \
      </dev/null >"$OUT/server-$t-$loss.log" 2>&1 &
    server=$!
    sleep 0.5
    ip netns exec "$NS" "$BIN_DIR/demo-client" --server "127.0.0.1:$PORT" --transport "$t" \
      --clients "$CLIENTS" --duration "$DURATION" --stats-interval 0 \
      --json "$OUT/client-$t-$loss.json" >"$OUT/client-$t-$loss.log" 2>&1 ||
      echo "netlab: client run failed for $t at $loss% (see $OUT/client-$t-$loss.log)" >&2
    wait "$server" || true
  done
done

python3 - "$OUT" "$LOSSES" "$TRANSPORTS" <<'PY'
import json, os, sys
out, losses, transports = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| transport | kernel drop | snapshots/s | gap p50 | gap p99 | gap max | staleness p50 | staleness p99 | staleness max | disconnects |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for loss in losses:
    for t in transports:
        p = os.path.join(out, f"client-{t}-{loss}.json")
        if not os.path.exists(p):
            print(f"| {t} | {loss}% | failed | | | | | | | |")
            continue
        a = json.load(open(p))["aggregate"]
        g, s = a["update_gap_ms"], a["staleness_ms"]
        print(f"| {t} | {loss}% | {a.get('snapshots_per_s', 0):.1f} | {g['p50']:.1f} | {g['p99']:.1f} | {g['max']:.1f} "
              f"| {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {a['disconnects']} |")
PY
