#!/bin/bash
# bench/allocator/run.sh [--quick]: does jemalloc via LD_PRELOAD shrink a fragmenting worker, and
# which MALLOC_CONF should kechi default to?
#
# Runs the fragmentation-heavy app (app/frag.py, app/frag.rb) as kechi runs it: one worker under
# `kechid --foreground` with a config file, so kechid itself sets (or, for glibc, leaves out)
# LD_PRELOAD and MALLOC_CONF, mounts the worker's tmpfs TMPDIR, and passes the listening socket.
# For each interpreter and allocator variant, sample.py drives wrk (16 connections, so 16 worker
# threads) for a fixed number of requests, then samples 15 s more without load.
# Full mode: 6 variants x 2 interpreters x 2 rounds (the second in reverse order), 30-40 min on
# a busy 2-core machine. --quick: 3 variants (glibc, jemalloc defaults, kechi's default) x 2
# interpreters, fewer requests, 1 round, ~3 min; it writes to bench/results/allocator-quick/ and leaves the report
# alone.
# Writes bench/results/allocator/{machine.txt,runs.csv,raw/*.csv}, then report.py makes
# docs/benchmarks/allocator-*.png and the generated tables of docs/benchmarks/allocator.md.
# Needs root (kechid mounts tmpfs, workers run as nobody); installs its Debian packages.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
REPO=$PWD
# shellcheck source=bench/lib/host-facts.sh
. bench/lib/host-facts.sh

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    *) echo "usage: bench/allocator/run.sh [--quick]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/allocator: needs root (kechid mounts tmpfs)" >&2; exit 1; }

bench_need wrk ruby libjemalloc2 python3 python3-matplotlib curl
KECHID=$(bench_kechid)

# name|jemalloc.enabled|jemalloc.conf. "" is kechi's DEFAULT_CONF. "dirty_decay_ms:10000"
# restates jemalloc 5.3's own default (checked with stats_print): an empty conf would mean kechi's.
VARIANTS=(
  "glibc|false|"
  "jemalloc-defaults|true|dirty_decay_ms:10000"
  "kechi-default|true|"
  "narenas1|true|background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1"
  "decay0|true|background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0,narenas:2"
  "no-bg-thread|true|dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2"
)
ROUNDS=2
IDLE=15
declare -A REQUESTS=([python]=12000 [ruby]=8000)
OUT=bench/results/allocator
if [ "$QUICK" = 1 ]; then
  VARIANTS=("${VARIANTS[@]:0:3}")
  ROUNDS=1
  IDLE=6
  REQUESTS=([python]=4000 [ruby]=2500)
  OUT=bench/results/allocator-quick
fi
declare -A COMMAND=(
  [python]="\"/usr/bin/python3\", \"$REPO/bench/allocator/app/frag.py\""
  [ruby]="\"/usr/bin/ruby\", \"$REPO/bench/allocator/app/frag.rb\""
)

rm -rf "$OUT"
mkdir -p "$OUT/raw"
{
  bench_machine
  echo "jemalloc: $(dpkg-query -W -f='${Package} ${Version}' libjemalloc2)"
  echo "python: $(/usr/bin/python3 --version 2>&1)"
  echo "ruby: $(/usr/bin/ruby --version)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

RUN=$(mktemp -d /tmp/kechi-bench-alloc.XXXXXX)
chmod 755 "$RUN"
KPID=""
cleanup() {
  [ -n "$KPID" ] && kill "$KPID" 2> /dev/null && wait "$KPID" 2> /dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT

free_port() {  # a TCP port nothing listens on, away from the usual ones
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# run_one ROUND INTERP VARIANT-SPEC: one kechid, one worker, one measured load + idle.
run_one() {
  local round=$1 interp=$2 name enabled conf port wpid mconf i
  IFS='|' read -r name enabled conf <<< "$3"
  port=$(free_port)
  : > "$RUN/count"
  chown nobody "$RUN/count"
  cat > "$RUN/allocbench.toml" <<EOF
command = [${COMMAND[$interp]}]
user = "nobody"
workers = 1
listen = ["127.0.0.1:$port"]
environment = { FRAG_COUNT_FILE = "$RUN/count" }
[jemalloc]
enabled = $enabled
conf = "$conf"
EOF
  KECHI_RUNTIME_DIR=$RUN/rt "$KECHID" --foreground "$RUN/allocbench.toml" > "$RUN/kechid.log" 2>&1 &
  KPID=$!
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  wpid=$(cat /proc/"$KPID"/task/*/children 2> /dev/null | tr ' ' '\n' | grep . | head -1)
  if [ -z "$wpid" ] || ! curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
    echo "bench/allocator: $interp/$name: the worker did not start; kechid said:" >&2
    cat "$RUN/kechid.log" >&2
    return 1
  fi
  mconf=$(tr '\0' '\n' < /proc/"$wpid"/environ | sed -n 's/^MALLOC_CONF=//p')
  echo "== round $round $interp $name (worker $wpid, MALLOC_CONF='$mconf')"
  /usr/bin/python3 bench/allocator/sample.py --pid "$wpid" --count-file "$RUN/count" \
    --requests "${REQUESTS[$interp]}" --idle "$IDLE" --every 0.5 \
    --out "$OUT/raw/$interp-$name-$round.csv" --summary "$OUT/runs.csv" \
    --tag "round=$round" --tag "interp=$interp" --tag "variant=$name" --tag "malloc_conf=$mconf" \
    -- -t2 -c16 -d600s --latency "http://127.0.0.1:$port/"
  kill "$KPID"
  wait "$KPID" || true
  KPID=""
}

for round in $(seq "$ROUNDS"); do
  order=("${VARIANTS[@]}")
  if [ $((round % 2)) = 0 ]; then  # reverse, so slow drift of the machine's load evens out
    order=()
    for ((i = ${#VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${VARIANTS[$i]}"); done
  fi
  for interp in python ruby; do
    for v in "${order[@]}"; do run_one "$round" "$interp" "$v"; done
  done
done

if [ "$QUICK" = 0 ]; then
  /usr/bin/python3 bench/allocator/report.py "$OUT" docs/benchmarks --doc docs/benchmarks/allocator.md
else
  /usr/bin/python3 bench/allocator/report.py "$OUT" "$OUT"
fi
