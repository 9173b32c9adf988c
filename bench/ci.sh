#!/bin/bash
# bench/ci.sh — the benchmarks' part of CI (tests/run.sh runs it after the system scenarios):
# the quick, kechi-only modes of bench/restart and bench/footprint (about 3 minutes on 2 cores),
# their figures printed, and two regression bounds:
#   - kechi drops no request: 0 failed requests in every kechi window (kechictl recycle --all,
#     systemctl reload, systemctl restart, kill -9 of kechid; Starlet and gunicorn; steady too)
#   - kechid's own USS, supervising 8 workers, stays within KECHID_USS_MAX_KIB (release build;
#     a debug build maps a far larger binary, so its figure is printed but not held to the bound)
# Latency is printed, not checked: on a shared 2-core machine it is too noisy to gate on.
# Exit status: 0 both hold (or the benchmarks cannot run here: not root, or PID 1 is systemd;
# said as SKIPPED), 1 otherwise. Figures go to $BENCH_CI_OUT (default /tmp/kechi-bench/ci).
# Needs: kechid and kechictl built (cargo build; the release build from packaging/build.sh is used
# for the footprint when present). Installs the Debian packages it needs.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 1

# The bound on kechid's USS (release build, 8 workers). The target is 2.5 MiB and 5x less than
# start_server in the same run. `bench/run.sh footprint` on 2026-12-06 at 15:15 measured 1,236 KiB
# beside start_server's 9,580 (7.8x; docs/benchmarks/footprint.md), with kechid's functions laid
# out by link/kechid-order.ld (build.rs); without that order it was 2,144-2,272 KiB. Start_server
# measured 9,300-9,600 KiB in every run here, so 5x is at most 1,860 KiB: that is the bound. It
# catches a lost link order (a missing or wrongly applied linker script: +900 KiB), a new
# dependency or size setting, a thread left behind, trim no longer running; an order gone stale as
# the code moved shows as a slow climb well before it (regenerate it with
# bench/footprint/link-order.sh).
KECHID_USS_MAX_KIB=1860

OUT=${BENCH_CI_OUT:-/tmp/kechi-bench/ci}
rm -rf "$OUT"
mkdir -p "$OUT"
rc=0

run() {  # run NAME: the quick kechi-only mode of bench/NAME; 77 = cannot run here
  local r
  echo "##### bench/$1 --quick --kechi-only"
  bash "bench/$1/run.sh" --quick --kechi-only --out "$OUT/$1"; r=$?
  if [ "$r" = 77 ]; then echo "SKIPPED: bench/$1 cannot run on this machine"; return 77; fi
  [ "$r" = 0 ] || { echo "FAIL: bench/$1 did not complete (exit status $r)"; rc=1; }
  return "$r"
}

run restart; r=$?
[ "$r" = 77 ] && exit 0
if [ "$r" = 0 ]; then
  failed=$(awk -F, 'NR > 1 && $2 ~ /^kechi-/ { n += $13 } END { print n + 0 }' "$OUT/restart/restart.csv")
  windows=$(awk -F, 'NR > 1 && $2 ~ /^kechi-/' "$OUT/restart/restart.csv" | grep -c .)
  if [ "$windows" -gt 0 ] && [ "$failed" = 0 ]; then
    echo "ok: kechi failed 0 requests in $windows load windows (recycle, reload, restart, kill -9)"
  else
    echo "FAIL: kechi failed $failed requests over $windows load windows:"
    awk -F, 'NR > 1 && $2 ~ /^kechi-/ && $13 > 0 { print "  " $2 " " $3 " (" $5 "): " $13 " failed" }' "$OUT/restart/restart.csv"
    rc=1
  fi
fi

if run footprint; then
  uss=$(awk -F, '$1 == "peers" && $2 == "kechid" { print $7 }' "$OUT/footprint/footprint.csv")
  bin=$(sed -n 's/^kechid: //p' "$OUT/footprint/meta.txt")
  if [ -z "$uss" ]; then
    echo "FAIL: no figure for kechid's USS"; rc=1
  elif [[ $bin == debug* ]]; then
    echo "not checked: kechid's USS is $uss KiB, but this is a debug build; the bound of $KECHID_USS_MAX_KIB KiB is for release builds"
  elif [ "$uss" -le "$KECHID_USS_MAX_KIB" ]; then
    echo "ok: kechid's USS with 8 workers is $uss KiB (bound $KECHID_USS_MAX_KIB KiB)"
  else
    echo "FAIL: kechid's USS with 8 workers is $uss KiB, over the bound of $KECHID_USS_MAX_KIB KiB ($bin)"; rc=1
  fi
fi
exit "$rc"
