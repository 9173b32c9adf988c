#!/bin/bash
# bench/tmpfiles/run.sh [--quick]: does temp-file churn grow the kernel's dentry cache on a disk
# filesystem, and not on kechi's per-worker tmpfs?
#
# Runs app/tmpchurn.py (one temp file created, written, deleted per request) under
# `kechid --foreground` with 2 workers and steady wrk load, in three setups:
#   ext4     tmpdir.enabled = false, TMPDIR = a directory on an ext4 filesystem made in a
#            loop-mounted image file (so the result does not depend on what / is)
#   tmpfs    kechi's own TMPDIR: kechid mounts a capped tmpfs per worker (tmpdir.enabled = true)
#   control  kechi's TMPDIR, but the app makes no temp file: how much the rest of the machine
#            moves the (system-wide) dentry cache meanwhile
# Before each run: sync and `echo 2 > /proc/sys/vm/drop_caches` (frees dentries and inodes of
# the whole machine), so every run starts from the same near-empty cache. sample_slab.py samples
# the dentry slab every second. Full mode: 60 s per run, 2 rounds (the second in reverse order),
# ~7 min. --quick: 20 s per run, 1 round, ~1.5 min, into bench/results/tmpfiles-quick/, report
# left alone.
# Writes bench/results/tmpfiles/{machine.txt,runs.csv,raw/*.csv}, then report.py makes
# docs/benchmarks/tmpfiles-*.png and the generated tables of docs/benchmarks/tmpfiles.md.
# Needs root (loop mount, tmpfs, drop_caches); installs its Debian packages.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
REPO=$PWD
# shellcheck source=bench/lib/host-facts.sh
. bench/lib/host-facts.sh

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    *) echo "usage: bench/tmpfiles/run.sh [--quick]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/tmpfiles: needs root (mounts, drop_caches)" >&2; exit 1; }

bench_need wrk python3 python3-matplotlib curl e2fsprogs
KECHID=$(bench_kechid)

SETUPS=(ext4 tmpfs control)
ROUNDS=2
SECONDS_PER_RUN=60
OUT=bench/results/tmpfiles
if [ "$QUICK" = 1 ]; then
  ROUNDS=1
  SECONDS_PER_RUN=20
  OUT=bench/results/tmpfiles-quick
fi

rm -rf "$OUT"
mkdir -p "$OUT/raw"
bench_machine > "$OUT/machine.txt"
{
  echo "python: $(/usr/bin/python3 --version 2>&1)"
  echo "root_fs: $(findmnt -no FSTYPE -T /)"
  echo "vfs_cache_pressure: $(cat /proc/sys/vm/vfs_cache_pressure)"
} >> "$OUT/machine.txt"
cat "$OUT/machine.txt"

RUN=$(mktemp -d /tmp/kechi-bench-tmpfiles.XXXXXX)
chmod 755 "$RUN"
KPID=""
cleanup() {
  [ -n "$KPID" ] && kill "$KPID" 2> /dev/null && wait "$KPID" 2> /dev/null
  mountpoint -q "$RUN/ext4" && umount "$RUN/ext4"
  rm -rf "$RUN"
}
trap cleanup EXIT

# The disk filesystem: ext4 in a 1 GiB image file, loop-mounted, with a world-writable sticky
# directory for the workers (they run as nobody), like /tmp.
truncate -s 1G "$RUN/ext4.img"
mkfs.ext4 -q -F "$RUN/ext4.img"
mkdir "$RUN/ext4"
mount -o loop "$RUN/ext4.img" "$RUN/ext4"
mkdir -m 1777 "$RUN/ext4/tmp"

free_port() {  # a TCP port nothing listens on, away from the usual ones
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# run_one ROUND SETUP: one kechid with 2 workers, caches dropped, sampled under load.
run_one() {
  local round=$1 setup=$2 port tmpdir_enabled=true env churn=1 w fstypes="" i
  port=$(free_port)
  env="COUNT_FILE = \"$RUN/count\""
  case "$setup" in
    ext4) tmpdir_enabled=false; env="$env, TMPDIR = \"$RUN/ext4/tmp\"" ;;
    control) churn=0 ;;
  esac
  : > "$RUN/count"
  chown nobody "$RUN/count"
  cat > "$RUN/tmpbench.toml" <<EOF
command = ["/usr/bin/python3", "$REPO/bench/tmpfiles/app/tmpchurn.py"]
user = "nobody"
workers = 2
listen = ["127.0.0.1:$port"]
environment = { $env, CHURN = "$churn" }
[tmpdir]
enabled = $tmpdir_enabled
size = "64M"
EOF
  KECHI_RUNTIME_DIR=$RUN/rt "$KECHID" --foreground "$RUN/tmpbench.toml" > "$RUN/kechid.log" 2>&1 &
  KPID=$!
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  # Where each worker's TMPDIR really is: the check that the setup is what it claims.
  for w in $(cat /proc/"$KPID"/task/*/children 2> /dev/null | tr ' ' '\n'); do
    d=$(tr '\0' '\n' < /proc/"$w"/environ | sed -n 's/^TMPDIR=//p')
    fstypes="$fstypes $w:$d:$(findmnt -no FSTYPE -T "$d")"
  done
  if [ -z "$fstypes" ] || ! curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
    echo "bench/tmpfiles: $setup: the workers did not start; kechid said:" >&2
    cat "$RUN/kechid.log" >&2
    return 1
  fi
  echo "== round $round $setup (worker:TMPDIR:fstype$fstypes)"
  sync
  echo 2 > /proc/sys/vm/drop_caches
  sleep 2
  /usr/bin/python3 bench/tmpfiles/sample_slab.py --seconds "$SECONDS_PER_RUN" \
    --count-file "$RUN/count" --out "$OUT/raw/$setup-$round.csv" --summary "$OUT/runs.csv" \
    --tag "round=$round" --tag "setup=$setup" --tag "tmpdir_fs=$(echo "$fstypes" | awk -F: '{print $NF}')" \
    -- -t2 -c4 -d600s "http://127.0.0.1:$port/"
  kill "$KPID"
  wait "$KPID" || true
  KPID=""
}

for round in $(seq "$ROUNDS"); do
  order=("${SETUPS[@]}")
  if [ $((round % 2)) = 0 ]; then  # reverse, so slow drift of the machine's load evens out
    order=()
    for ((i = ${#SETUPS[@]} - 1; i >= 0; i--)); do order+=("${SETUPS[$i]}"); done
  fi
  for s in "${order[@]}"; do run_one "$round" "$s"; done
done

if [ "$QUICK" = 0 ]; then
  /usr/bin/python3 bench/tmpfiles/report.py "$OUT" docs/benchmarks --doc docs/benchmarks/tmpfiles.md
else
  /usr/bin/python3 bench/tmpfiles/report.py "$OUT" "$OUT"
fi
