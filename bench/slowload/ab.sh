#!/bin/bash
# bench/slowload/ab.sh BIN_DIR_A BIN_DIR_B [ROUNDS] [OUT]
#
# Two kechid builds side by side on the slow-loading apps (bench/slowload/run.sh --quick, kechi
# rows only), alternated A, B, A, B... ROUNDS times (default 3) so that a shared machine's load
# falls on both alike; then, pooled over the rounds, each build's latency in the 4 s after each
# replacement started against its steady phase. BIN_DIR_x holds kechid and kechictl (e.g.
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
python3 - "$out" "$rounds" "$a" "$b" <<'PY'
import csv, gzip, os, sys
out, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
print(f"A = {a}\nB = {b}\n")
print("| server | build | steady p99 | replacements: p99 | p99.9 | max | failed | requests |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for srv in ("kechi-starlet", "kechi-gunicorn"):
    for v in "AB":
        rep, steady, failed, n = [], [], 0, 0
        for r in range(1, rounds + 1):
            d = os.path.join(out, f"{v}{r}")
            try:
                acts = [int(x["start_unix_ms"]) for x in csv.DictReader(open(os.path.join(d, "actions.csv"))) if x["server"] == srv]
            except OSError:
                continue
            for load in ("keepalive", "close"):
                path = os.path.join(d, f"{srv}-{load}.r1.csv.gz")  # run.sh --quick: one round
                if not os.path.exists(path):
                    path = os.path.join(d, f"{srv}-{load}.csv.gz")
                for line in gzip.open(path, "rt"):
                    due, lat, status = line.strip().split(",")
                    due, lat, n = float(due), float(lat), n + 1
                    if not status.startswith("2"):
                        failed += 1
                        continue
                    if any(t <= due < t + 4000 for t in acts):
                        rep.append(lat)
                    elif acts and due < acts[0] - 1000:
                        steady.append(lat)
        print(f"| {srv} | {v} | {pct(steady, .99):.1f} ms | {pct(rep, .99):.1f} ms | {pct(rep, .999):.1f} ms | {max(rep, default=float('nan')):.1f} ms | {failed} | {n} |")
PY
