#!/usr/bin/env bash
# The network lab: demo-server and demo-client on real kernel TCP and UDP stacks, over a link
# with a real round trip and real loss.
#
# Two links:
#
# tun (the default when --latency or --jitter > 0; --link tun also without delay): two
#   network namespaces, the client's and the server's, each with one TUN device (10.77.0.1
#   and 10.77.0.2, MTU 1500, point to point).
#   `netlab-link` (a binary of demo-client) holds both devices and forwards every IP packet
#   from one to the other through the engine's seeded conditioner, one per direction: the
#   latency (one way; the round trip is twice it), jitter and loss are the engine's own
#   link simulation, while both kernels' TCP and UDP stacks, timers and congestion control
#   are untouched. The packets are not changed. This is what shows what a stream costs on a
#   real path: kernel TCP repairs a loss after about a round trip at best, and its
#   retransmission timer has a 200 ms minimum.
#   The lab: netlab-link is started in the root namespace and creates the two devices (they
#   vanish when it exits), then each is moved into its namespace and configured there.
#
# nft (--link nft; latency 0 only): one namespace with only a loopback and an nftables rule
#   on the input hook that drops N% of TCP and UDP packets at random (`numgen random mod 100
#   < N drop`; senders see no error). The round trip is well under a millisecond: kernel TCP
#   repairs most losses before they matter, so this shows only the retransmission timer.
#   This kernel has no netem; that is why delay comes from netlab-link.
#
# In both, --loss PCT applies to every packet in each direction (a round trip loses about
# twice PCT). For each loss rate and transport it runs demo-server in the server's
# namespace (secure mode: its key in OUT/server.key, connect tokens on port 8080 of its
# address, which the client asks by default) and --clients demo-clients in the client's,
# prints one Markdown table and, with --json, writes the rows. Each run's logs and JSON
# summaries are in OUT, netlab-link's counters per direction in OUT/link-TRANSPORT-LOSS.log. Needs Linux, root, iproute2
# (and nftables for --link nft). Cleans up namespaces, devices and processes on exit,
# including Ctrl-C and kill.
#
#   sudo scripts/netlab.sh --latency 40 --loss 0,1,5 --duration 20 --json lab.json
#   sudo scripts/netlab.sh --link nft --loss 0,5 --duration 6     # loopback, kernel drop
#
# Flags: --latency MS (one way, 0), --jitter MS (0), --loss PCT[,PCT...] (0,1,5),
# --transports LIST (udp,udp-reliable,tcp), --duration SECS per run (10), --clients N (4),
# --link tun|nft, --seed N (1), --json PATH, --out DIR (target/netlab),
# --bin-dir DIR (target/release). The environment variables LATENCY, LOSSES, TRANSPORTS,
# DURATION, CLIENTS, LINK, OUT and BIN_DIR are the defaults of the same flags.
#
# --json writes a list of rows, one per transport and loss: {"transport", "loss_pct",
# "rtt_ms" (the clients' p50 round trip, as the engine measures it), "update_gap_ms" and
# "staleness_ms" ({"p50", "p99", "max"}, over all clients), "disconnects"}; a run that
# failed has nulls. The script exits 1 when any run failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LATENCY=${LATENCY:-0}
JITTER=0
LOSSES=${LOSSES:-"0 1 5"}
TRANSPORTS=${TRANSPORTS:-"udp udp-reliable tcp"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
LINK=${LINK:-}
SEED=1
JSON=
OUT=${OUT:-$ROOT/target/netlab}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}

die() { echo "netlab: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --latency) need_value "$@"; LATENCY=$2; shift 2 ;;
    --jitter) need_value "$@"; JITTER=$2; shift 2 ;;
    --loss) need_value "$@"; LOSSES=$2; shift 2 ;;
    --transports) need_value "$@"; TRANSPORTS=$2; shift 2 ;;
    --duration) need_value "$@"; DURATION=$2; shift 2 ;;
    --clients) need_value "$@"; CLIENTS=$2; shift 2 ;;
    --link) need_value "$@"; LINK=$2; shift 2 ;;
    --seed) need_value "$@"; SEED=$2; shift 2 ;;
    --json) need_value "$@"; JSON=$2; shift 2 ;;
    --out) need_value "$@"; OUT=$2; shift 2 ;;
    --bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
done

# Lists may be given with commas or spaces.
LOSSES=${LOSSES//,/ }
TRANSPORTS=${TRANSPORTS//,/ }
number='^[0-9]+([.][0-9]+)?$'
[[ $LATENCY =~ $number ]] || die "--latency must be a number of ms >= 0 (got '$LATENCY')"
[[ $JITTER =~ $number ]] || die "--jitter must be a number of ms >= 0 (got '$JITTER')"
[[ $DURATION =~ $number ]] && [ "$DURATION" != 0 ] || die "--duration must be seconds > 0 (got '$DURATION')"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "--clients must be a whole number >= 1 (got '$CLIENTS')"
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a whole number (got '$SEED')"
[ -n "$LOSSES" ] || die "--loss needs at least one rate"
for loss in $LOSSES; do
  [[ $loss =~ $number ]] && python3 -c "import sys; sys.exit(not float(sys.argv[1]) <= 100)" "$loss" ||
    die "--loss must be percentages 0..100 (got '$loss')"
done
[ -n "$TRANSPORTS" ] || die "--transports needs at least one transport"
for t in $TRANSPORTS; do
  case $t in udp | udp-reliable | tcp) ;; *) die "unknown transport '$t' (udp, udp-reliable, tcp)" ;; esac
done
delayed=$(python3 -c "import sys; print(int(float(sys.argv[1]) > 0 or float(sys.argv[2]) > 0))" "$LATENCY" "$JITTER")
if [ -z "$LINK" ]; then
  if [ "$delayed" = 1 ]; then LINK=tun; else LINK=nft; fi
fi
case $LINK in
  tun) ;;
  nft) [ "$delayed" = 0 ] || die "--link nft cannot delay packets (no netem here): use --link tun" ;;
  *) die "--link must be tun or nft (got '$LINK')" ;;
esac

[ "$(uname -s)" = Linux ] || die "needs Linux"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, TUN devices, nftables)"
command -v ip >/dev/null || die "needs iproute2 (apt-get install iproute2)"
command -v python3 >/dev/null || die "needs python3 for the table"
if [ "$LINK" = nft ]; then
  command -v nft >/dev/null || die "needs nftables (apt-get install nftables)"
else
  [ -c /dev/net/tun ] || die "needs /dev/net/tun"
fi
bins="demo-server demo-client"
[ "$LINK" = tun ] && bins="$bins netlab-link"
for b in $bins; do
  [ -x "$BIN_DIR/$b" ] ||
    die "no $b in $BIN_DIR: run cargo build --release -p demo-server -p demo-client"
done

# Names carry the script's pid, so two labs never share a namespace or device.
NS_C=snapsync-lab-c-$$
NS_S=snapsync-lab-s-$$
TUN_C=snl-c-$$
TUN_S=snl-s-$$
CLIENT_IP=10.77.0.1
SERVER_IP=10.77.0.2
PORT=7777
LINK_PID=

stop_link() {
  # netlab-link prints its counters on SIGTERM; its devices vanish when it exits.
  if [ -n "$LINK_PID" ]; then
    kill -TERM "$LINK_PID" 2>/dev/null || true
    wait "$LINK_PID" 2>/dev/null || true
    LINK_PID=
  fi
}

# Stops every process inside the lab's namespaces: SIGTERM (the server drains for its 1 s
# timeout and writes its summary), then SIGKILL for whatever is left after 3 s.
stop_lab_processes() {
  local ns i pids
  for i in $(seq 30); do
    pids=$(for ns in "$NS_S" "$NS_C"; do ip netns pids "$ns" 2>/dev/null || true; done)
    [ -n "$pids" ] || return 0
    if [ "$i" = 1 ]; then echo "$pids" | xargs -r kill 2>/dev/null || true; fi
    sleep 0.1
  done
  echo "$pids" | xargs -r kill -KILL 2>/dev/null || true
}

cleanup() {
  local ns
  stop_lab_processes
  stop_link
  for ns in "$NS_S" "$NS_C"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  # Only if netlab-link died before the devices moved and something kept them.
  ip link del "$TUN_C" 2>/dev/null || true
  ip link del "$TUN_S" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$OUT"
if [ "$LINK" = nft ]; then
  # One namespace: client and server share its loopback.
  NS_C=$NS_S
  SERVER_IP=127.0.0.1
  ip netns add "$NS_S"
  ip netns exec "$NS_S" ip link set lo up
else
  for ns in "$NS_C" "$NS_S"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No IPv6 router solicitations or MLD reports on the link: only the game's packets.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
fi

set_drop() {
  ip netns exec "$NS_S" nft flush ruleset
  [ "$1" = 0 ] && return 0
  ip netns exec "$NS_S" nft -f - <<NFT
table inet netlab {
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto { tcp, udp } numgen random mod 100 < $1 counter drop
  }
}
NFT
}

# Starts netlab-link for one run, waits until it holds both devices, and moves them into
# the namespaces; each side routes the other's address through its device.
start_link() {
  local loss=$1 log=$2 i
  "$BIN_DIR/netlab-link" --client-tun "$TUN_C" --server-tun "$TUN_S" \
    --latency "$LATENCY" --jitter "$JITTER" --loss "$loss" --seed "$SEED" >"$log" 2>&1 &
  LINK_PID=$!
  for i in $(seq 50); do
    grep -q '^netlab-link: ready' "$log" && break
    kill -0 "$LINK_PID" 2>/dev/null || { cat "$log" >&2; die "netlab-link did not start"; }
    sleep 0.1
  done
  grep -q '^netlab-link: ready' "$log" || die "netlab-link not ready after 5 s"
  ip link set "$TUN_C" netns "$NS_C"
  ip link set "$TUN_S" netns "$NS_S"
  ip -n "$NS_C" addr add "$CLIENT_IP" peer "$SERVER_IP/32" dev "$TUN_C"
  ip -n "$NS_S" addr add "$SERVER_IP" peer "$CLIENT_IP/32" dev "$TUN_S"
  ip -n "$NS_C" link set "$TUN_C" mtu 1500 up
  ip -n "$NS_S" link set "$TUN_S" mtu 1500 up
}

# Waits until the server's token endpoint listens (at most 5 s).
wait_for_server() {
  local i
  for i in $(seq 50); do
    ip netns exec "$NS_S" ss -Hltn "sport = :8080" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

failed=0
for loss in $LOSSES; do
  [ "$LINK" = nft ] && set_drop "$loss"
  for t in $TRANSPORTS; do
    run="$t-$loss"
    if [ "$LINK" = tun ]; then
      echo "netlab: $t, ${LATENCY} ms each way (${JITTER} ms jitter), $loss% loss each way, $CLIENTS clients, $DURATION s" >&2
      start_link "$loss" "$OUT/link-$run.log"
    else
      echo "netlab: $t at $loss% kernel drop on loopback, $CLIENTS clients, $DURATION s" >&2
    fi
    rm -f "$OUT/client-$run.json" "$OUT/server-$run.json"
    # The server outlives the client by a margin for connecting over a lossy link (a lost
    # SYN costs kernel TCP a second); it is stopped as soon as the client is done.
    ip netns exec "$NS_S" "$BIN_DIR/demo-server" --bind "$SERVER_IP:$PORT" \
      --http "$SERVER_IP:8080" --transport "$t" --duration "$(python3 -c "print($DURATION + 15)")" \
      --drain-timeout 1 --stats-interval 0 --json "$OUT/server-$run.json" \
      --key-file "$OUT/server.key" </dev/null >"$OUT/server-$run.log" 2>&1 &
    server=$!
    if ! wait_for_server; then
      echo "netlab: the server did not start for $t at $loss% (see $OUT/server-$run.log)" >&2
      failed=1
    else
      # In the background, so a signal to this script is handled at once (bash runs a trap
      # only after a foreground command ends), not after the run.
      ip netns exec "$NS_C" "$BIN_DIR/demo-client" --server "$SERVER_IP:$PORT" --transport "$t" \
        --clients "$CLIENTS" --duration "$DURATION" --stats-interval 0 \
        --json "$OUT/client-$run.json" >"$OUT/client-$run.log" 2>&1 &
      if ! wait $!; then
        echo "netlab: client run failed for $t at $loss% (see $OUT/client-$run.log)" >&2
        failed=1
      fi
    fi
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" || true
    if [ "$LINK" = tun ]; then
      stop_link
      sed -n 's/^netlab-link: \(.*->.*\)/netlab:   link \1/p' "$OUT/link-$run.log" >&2
    fi
  done
done

python3 - "$OUT" "$LOSSES" "$TRANSPORTS" "$JSON" <<'PY'
import json, os, sys
out, losses, transports, json_path = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
rows = []
print("| transport | loss | RTT | gap p50 | gap p99 | gap max | staleness p50 | staleness p99 | staleness max | disconnects |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for loss in losses:
    for t in transports:
        row = {"transport": t, "loss_pct": float(loss), "rtt_ms": None,
               "update_gap_ms": None, "staleness_ms": None, "disconnects": None}
        p = os.path.join(out, f"client-{t}-{loss}.json")
        if os.path.exists(p):
            a = json.load(open(p))["aggregate"]
            pick = lambda h: {k: h[k] for k in ("p50", "p99", "max")}
            row.update(rtt_ms=a["rtt_ms"]["p50"], update_gap_ms=pick(a["update_gap_ms"]),
                       staleness_ms=pick(a["staleness_ms"]), disconnects=a["disconnects"])
            g, s = row["update_gap_ms"], row["staleness_ms"]
            print(f"| {t} | {loss}% | {row['rtt_ms']:.1f} | {g['p50']:.1f} | {g['p99']:.1f} | {g['max']:.1f} "
                  f"| {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {row['disconnects']} |")
        else:
            print(f"| {t} | {loss}% | failed | | | | | | | |")
        rows.append(row)
if json_path:
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
PY
exit "$failed"
