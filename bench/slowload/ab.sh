#!/bin/bash
# bench/slowload/ab.sh BIN_DIR_A BIN_DIR_B [ROUNDS] [OUT]
#
# Two kechid builds side by side on the slow-loading apps (bench/slowload/run.sh --quick, kechi
# rows only), alternated A, B, A, B... ROUNDS times (default 3) so that a shared machine's load
# falls on both alike; then, pooled over the rounds, each build's latency over the replacements
# themselves against its steady phase (bench/slowload/ab_report.py). BIN_DIR_x holds kechid and kechictl (e.g.
# target/debug of two worktrees). Per-run output in OUT (default /tmp/kechi-bench/slowload-ab).
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
[ $# -ge 2 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
a=$(readlink -f "$1") b=$(readlink -f "$2") rounds=${3:-3} out=${4:-/tmp/kechi-bench/slowload-ab}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for v in A B; do
    if [ "$v" = A ]; then bin=$a; else bin=$b; fi
    KECHI_BIN_DIR=$bin SLOWLOAD_PLAN="kechi-starlet kechi-gunicorn" \
      bash "$HERE/run.sh" --quick --out "$out/$v$round" > "$out/$v$round.log" 2>&1 \
      || echo "run $v$round failed: see $out/$v$round.log" >&2
    echo "$v$round: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
/usr/bin/python3 "$HERE/ab_report.py" "$out" "$a" "$b"
