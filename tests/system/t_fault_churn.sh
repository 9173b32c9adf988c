#!/bin/bash
# t_fault_churn: many recycles in a row leak nothing in kechid. A fast, graceful app (tiny.py, ready
# by READY=1, a tmpfs TMPDIR each) is recycled with `kechictl recycle demo --all --wait` again and
# again under wrk load, while kechid's open fds (/proc/PID/fd) and memory (RSS, PSS, USS from
# smaps_rollup) are sampled.
#
# Contract, checked after a warm-up of KT_CHURN_WARMUP recycles (default 20: first-use allocations,
# thread pools and caches settle there):
#   - KT_CHURN_RECYCLES recycles done (default 150, ~2 min here), no kechictl error, the same kechid;
#   - flat: kechid's fd count after == after the warm-up (exactly); its USS grew by at most 512 KiB
#     and at most 10%; RSS is printed;
#   - 0 failed requests (each segment of at most 1000 recycles under its own wrk run, with
#     KT_CHURN_CONNS connections, default 8);
#   - nothing else piles up: exactly `workers` kechi-demo-* units, temp-dir mounts and temp dirs.
# Prints recycles done, fds and memory before and after, and the samples in between.
# The full measurement (docs/reliability/churn-10000.txt): KT_CHURN_RECYCLES=10000.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_fault_churn "kechid's fds and memory stay flat through many recycles under load"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
N=${KT_CHURN_RECYCLES:-150}
WARMUP=${KT_CHURN_WARMUP:-20}
SEGMENT=1000
CONNS=${KT_CHURN_CONNS:-8}   # wrk connections (tiny.py closes each after one request)
WORKERS=2
USS_SLACK_KIB=512

tgt_up fchurn
kechi_install
tgt_copy_in "$KT_ROOT/tests/system/lib/churn-inside.sh" "$KT_INSIDE/churn" || abort "copying churn-inside.sh in"
fault_config 10s '' '[tmpdir]
size = "4M"'
kechi_start || abort "kechi@demo did not start"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"

# churn_run STEP LOAD COUNT EVERY: COUNT recycles under load; keeps the sample lines in CHURN_OUT
churn_run() {
  local step=$1 name=$2 count=$3 every=$4 rc
  fault_load "$name" "$CONNS" || abort "$step: no load generator"
  # ~1 s per recycle is slow here; 3 s each is the deadline
  CHURN_OUT=$(KT_RUN_TIMEOUT=$((count * 3 + 120)) tgt_run "$KT_INSIDE/churn" churn "$KT_APP" "$count" "$every"); rc=$?
  printf '%s\n' "$CHURN_OUT" | sed 's/^/          | /'
  [ "$rc" = 0 ] || bad "$step: the churn loop ended with status $rc"
  load_stop "$name" "$step"
}
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | tail -1; }

say "warm-up: $WARMUP recycles"
churn_run "warm-up" warmup "$WARMUP" "$WARMUP"
base=$(printf '%s\n' "$CHURN_OUT" | grep '^sample after ')
[ -n "$base" ] || abort "no sample after the warm-up"
pid0=$(unit_prop "kechi@$KT_APP" MainPID)

total=0 errors=0 seg=0 t0=$SECONDS
SAMPLES=("warm-up done: $base")
while [ "$total" -lt "$N" ]; do
  seg=$((seg + 1))
  count=$((N - total)); [ "$count" -gt "$SEGMENT" ] && count=$SEGMENT
  say "segment $seg: $count recycles (done so far: $total of $N)"
  churn_run "churn segment $seg" "churn$seg" "$count" $(((count + 9) / 10))
  while read -r line; do SAMPLES+=("segment $seg: $line"); done < <(printf '%s\n' "$CHURN_OUT" | grep '^sample \(during\|after\) ')
  end=$(printf '%s\n' "$CHURN_OUT" | grep '^end ')
  [ -n "$end" ] || abort "segment $seg: the churn loop printed no end line"
  total=$((total + $(field "$end" recycles)))
  errors=$((errors + $(field "$end" errors)))
  [ "$(field "$end" errors)" -lt 3 ] || break
done
last=${SAMPLES[-1]}
say "kechid's fds and memory, sampled between recycles:"
for s in "${SAMPLES[@]}"; do info "$s"; done

if [ "$total" -ge "$N" ]; then ok "$total recycles done in $((SECONDS - t0)) s (warm-up not counted)"; else bad "only $total of $N recycles done"; fi
expect_eq "kechictl recycle errors" "$errors" 0
expect_eq "kechid's pid (the same kechid throughout)" "$(unit_prop "kechi@$KT_APP" MainPID)" "$pid0"
f0=$(field "$base" fds) f1=$(field "$last" fds)
expect_eq "kechid's open fds after $total recycles (after the warm-up: $f0)" "$f1" "$f0"
u0=$(field "$base" uss_kib) u1=$(field "$last" uss_kib)
r0=$(field "$base" rss_kib) r1=$(field "$last" rss_kib)
grow=$((u1 - u0)) pct=$(awk -v a="$u0" -v b="$u1" 'BEGIN { printf "%.1f", a ? (b - a) * 100 / a : 0 }')
if [ "$grow" -le "$USS_SLACK_KIB" ] && [ $((grow * 10)) -le "$u0" ]; then
  ok "kechid's USS flat: $u0 -> $u1 KiB ($grow KiB, $pct%; at most $USS_SLACK_KIB KiB and 10%)"
else
  bad "kechid's USS grew $u0 -> $u1 KiB ($grow KiB, $pct%; at most $USS_SLACK_KIB KiB and 10%)"
fi
info "kechid's RSS $r0 -> $r1 KiB, PSS $(field "$base" pss_kib) -> $(field "$last" pss_kib) KiB"

say "nothing else piled up"
if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then
  ok "exactly $WORKERS kechi-$KT_APP-* units, 1 process each, $WORKERS processes of $KT_USER"
else
  bad "not steady: $why"
fi
expect_eq "tmpfs mounts under /run/kechi/$KT_APP/tmp" \
  "$(tgt_sh "findmnt -rn -o TARGET | grep -c '^/run/kechi/$KT_APP/tmp/'")" "$WORKERS"
expect_eq "temp dirs in /run/kechi/$KT_APP/tmp" "$(tgt_sh "ls /run/kechi/$KT_APP/tmp | wc -l")" "$WORKERS"
expect_eq "kechi@$KT_APP is" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
load_summary
say "churn: $total recycles; kechid fds $f0 -> $f1; USS $u0 -> $u1 KiB; RSS $r0 -> $r1 KiB"
finish
