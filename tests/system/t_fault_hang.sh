#!/bin/bash
# t_fault_hang: workers that will not stop, under load (tiny.py: one request at a time, so each
# worker process holds at most one accepted connection; stop.timeout = 3s).
#   1. A hung worker: SIGSTOP to every process of its scope, then `kechictl recycle demo --all
#      --wait`. The hung worker gets SIGTERM, cannot act on it, and is SIGKILLed once stop.timeout
#      is over (journal: REASON=stop-timeout); the recycle still completes, every worker replaced.
#   2. A worker that ignores SIGTERM (tiny.py after SIGUSR2) and keeps serving: `kechictl recycle
#      demo --worker N --wait` completes the same way, through SIGKILL after stop.timeout.
#   3. A plain `kechictl recycle demo --all --wait` afterwards: 0 failed requests.
# Failed requests: a stopped process accepts nothing (the connections queued in the shared
# listening socket go to the other workers), but the connections it had already accepted when it
# was stopped wait unanswered and are reset when it is killed. So step 1 may fail at most as many
# requests as the hung worker's processes held connections when SIGSTOP hit them (counted from
# /proc/PID/fd at that moment), and step 2 at most one (the connection in hand at SIGKILL).
# Every failure beyond that is a FAIL. The figures are printed.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_fault_hang "a SIGSTOPped worker and one ignoring SIGTERM: SIGKILL after stop.timeout, recycles complete"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
WORKERS=3
STOP_TIMEOUT=3

tgt_up fhang
kechi_install
fault_config "${STOP_TIMEOUT}s"
kechi_start || abort "kechi@demo did not start"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"

# held PID: connections a worker process holds: its sockets other than stdin, stdout, stderr (the
# journal's stream) and the listening sockets at 3..
held() {
  tgt_sh "l=\$(tr '\\0' '\\n' < /proc/$1/environ | sed -n 's/^LISTEN_FDS=//p'); n=0
    for f in /proc/$1/fd/*; do
      [ \"\${f##*/}\" -ge \$((3 + l)) ] || continue
      case \$(readlink \$f) in socket:*) n=\$((n + 1)) ;; esac
    done; echo \$n"
}

# recycle_step STEP ARGS...: kechictl recycle demo ARGS --wait; sets RC and SECS
recycle_step() {
  local step=$1 out t0
  shift
  t0=$SECONDS
  out=$(tgt_run timeout 120 kechictl recycle "$KT_APP" "$@" --wait --timeout 90s 2>&1); RC=$?
  SECS=$((SECONDS - t0))
  printf '%s\n' "$out" | sed 's/^/          | /'
  if [ "$RC" = 0 ]; then ok "$step: kechictl recycle $KT_APP $* --wait completed in $SECS s"
  else bad "$step: kechictl recycle $KT_APP $* --wait: exit status $RC after $SECS s"; fi
}

# killed_after_timeout STEP CURSOR SERIAL: the journal says SERIAL was SIGKILLed for stop.timeout
killed_after_timeout() {
  local log
  log=$(journal_unit_after "$2" "kechi@$KT_APP.service" fields)
  printf '%s\n' "$log" | grep -E "WORKER=$3 " | sed 's/^/          | /'
  if printf '%s\n' "$log" | grep -E "^\[WORKER=$3 REASON=stop-timeout\]" | grep -q "did not stop within ${STOP_TIMEOUT}s: SIGKILL"; then
    ok "$1: worker $3 SIGKILLed after stop.timeout (journal: 'did not stop within ${STOP_TIMEOUT}s: SIGKILL', REASON=stop-timeout)"
  else
    bad "$1: no journal line 'did not stop within ${STOP_TIMEOUT}s: SIGKILL' with WORKER=$3 REASON=stop-timeout"
  fi
}

step="1 hung worker (SIGSTOP)"
w=$(workers)
show_workers "$w"
read -r hserial hunit hpid <<< "$(printf '%s\n' "$w" | head -1)"
top=$(max_serial "$w")
fault_load hang || abort "no load generator"
sleep 1  # the worker is busy serving when it is stopped
hprocs=$(kt procs "$hunit" | tr '\n' ' ')
# shellcheck disable=SC2086  # one argument per process
tgt_run kill -STOP $hprocs || abort "SIGSTOP to $hprocs"
nheld=0
for p in $hprocs; do nheld=$((nheld + $(held "$p"))); done
say "$step: worker $hserial ($hunit, processes $hprocs) stopped, holding $nheld accepted connections"
expect_eq "$step: state of pid $hpid" "$(tgt_run ps -o stat= -p "$hpid" | cut -c1)" T
sleep 2  # the app serves on with the other workers (observed by the load)
cursor=$(journal_cursor)
recycle_step "$step" --all
if [ "$SECS" -ge "$STOP_TIMEOUT" ]; then ok "$step: it took at least stop.timeout (${STOP_TIMEOUT}s)"; else bad "$step: done in $SECS s, before stop.timeout could pass"; fi
killed_after_timeout "$step" "$cursor" "$hserial"
if tgt_run kill -0 "$hpid" 2> /dev/null; then bad "$step: the hung worker (pid $hpid) still exists"; else ok "$step: the hung worker (pid $hpid) is gone"; fi
w=$(kt wait-new "$KT_APP" "$WORKERS" $((top + 1)) 30) || bad "$step: not every worker replaced"
show_workers "$w"
fault_load_stop hang "$step" "$nheld" "connections the worker held when stopped"
f1=$LOAD_FAILED

step="2 worker ignoring SIGTERM"
read -r iserial _ ipid <<< "$(printf '%s\n' "$w" | head -1)"
tgt_run kill -USR2 "$ipid" || abort "SIGUSR2 to $ipid"
say "$step: worker $iserial (pid $ipid) now ignores SIGTERM and keeps serving"
fault_load term || abort "no load generator"
cursor=$(journal_cursor)
recycle_step "$step" --worker "$iserial"
if [ "$SECS" -ge "$STOP_TIMEOUT" ]; then ok "$step: it took at least stop.timeout (${STOP_TIMEOUT}s)"; else bad "$step: done in $SECS s, before stop.timeout could pass"; fi
killed_after_timeout "$step" "$cursor" "$iserial"
if tgt_run kill -0 "$ipid" 2> /dev/null; then bad "$step: the worker (pid $ipid) still exists"; else ok "$step: the worker (pid $ipid) is gone"; fi
fault_load_stop term "$step" 1 "the connection in hand at SIGKILL"
f2=$LOAD_FAILED

step="3 plain recycle afterwards"
top=$(max_serial "$(workers)")
fault_load plain || abort "no load generator"
recycle_step "$step" --all
kt wait-new "$KT_APP" "$WORKERS" $((top + 1)) 30 > /dev/null || bad "$step: not every worker replaced"
load_stop plain "$step"
if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then ok "$step: exactly $WORKERS workers, nothing left over"; else bad "$step: not steady: $why"; fi
expect_eq "kechi@$KT_APP is" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
load_summary
say "hang: SIGSTOPped worker held $nheld connections, $f1 requests failed; SIGTERM-ignoring worker: $f2 failed; plain recycle: $LOAD_FAILED failed"
finish
