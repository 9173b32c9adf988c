#!/bin/bash
# t_fault_inputs: bad inputs while an app serves under load (tiny.py, 2 workers). Each step checks
# the error text kechid logs and that the app keeps serving with 0 failed requests:
#   1. full temp dir: a worker fills its TMPDIR (tiny.py on SIGUSR1) until ENOSPC; kechid and the
#      other worker are unaffected (kechictl status answers and shows the bytes; the other temp dir
#      and /run are untouched); recycling that worker wipes it (no mount, no directory left).
#   2. reload with the config deleted, then replaced by a directory (unreadable), then with an
#      unknown key: `systemctl reload` succeeds, the journal names the file and the OS error (or
#      file:line: key), the workers are not replaced, the old config stays in force.
#   3. the app's user deleted after start: the next recycle cannot start a replacement; the journal
#      says the user does not exist; the old worker keeps serving. With the user back, the recycle,
#      retried after the crash backoff, replaces it.
#   4. a reload onto a command that does not exist is refused (the journal names command and the
#      path; the old config stays); a reload onto one that exists but cannot be executed (its
#      interpreter is missing, which only execve finds): every replacement fails with the exec
#      error in the journal, kechid backs off between attempts (restart.backoff, doubling) instead
#      of retrying at once, and the old workers keep serving (a serving app is never given up on).
#   5. then the old workers die too: nothing is ready, the replacements keep failing, and past
#      restart.burst kechid exits 69 and the unit ends "failed" without being restarted.
# Start-time crash loops and bad files at start are t_crash and t_config_errors.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_fault_inputs "full temp dir, deleted/unreadable config at reload, deleted user, missing command, crash loop"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
WORKERS=2
CONF=/etc/kechi/$KT_APP.toml
MISSING=/usr/bin/kt-no-such-app
# exists and is executable, but its interpreter does not: the config check passes, execve fails
BROKEN=/usr/bin/kt-broken-app

# config COMMAND: the app file (restart.backoff short, so a failing start is retried within a step)
config() {
  FAULT_COMMAND=$1 fault_config 5s '' '[restart]
backoff = "500ms"
backoff-max = "4s"
burst = 3

[tmpdir]
size = "8M"'
}
GOOD=$FAULT_APP

tgt_up finputs
kechi_install
config "$GOOD"
kechi_start || abort "kechi@demo did not start"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"

# journal_has STEP CURSOR WHAT PATTERN...: a line of kechi@demo's journal after CURSOR has every
# PATTERN (grep -F); shown
journal_has() {
  local step=$1 cursor=$2 what=$3 log p lines
  shift 3
  log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
  lines=$log
  for p in "$@"; do lines=$(printf '%s\n' "$lines" | grep -F -- "$p"); done
  if [ -n "$lines" ]; then
    ok "$step: the journal says $what"
    printf '%s\n' "$lines" | head -n 3 | sed 's/^/          | /'
  else
    bad "$step: no journal line with: $*"
    printf '%s\n' "$log" | tail -n 15 | sed 's/^/          | /'
  fi
}
# wait_journal CURSOR PATTERN SECS: until kechi@demo's journal after CURSOR has PATTERN (grep -F)
wait_journal() {
  local end=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$end" ]; do
    journal_unit_after "$1" "kechi@$KT_APP.service" | grep -qF -- "$2" && return 0
    sleep 0.3
  done
  return 1
}
same_workers() {  # same_workers STEP BEFORE
  expect_eq "$1: the same workers (serial, scope, pid)" "$(workers | tr '\n' ';')" "$(printf '%s\n' "$2" | tr '\n' ';')"
}

# ---- 1 ------------------------------------------------------------------------------------------
step="1 full temp dir"
w=$(workers)
read -r fserial _ fpid <<< "$(printf '%s\n' "$w" | head -1)"
read -r _ _ opid <<< "$(printf '%s\n' "$w" | tail -n 1)"
fdir=$(kt envof "$fpid" TMPDIR)
odir=$(kt envof "$opid" TMPDIR)
runuse0=$(tgt_sh "df --output=used /run | tail -1")
say "$step: worker $fserial fills its TMPDIR $fdir (8M)"
fault_load tmp || abort "no load generator"
cursor=$(journal_cursor)
tgt_run kill -USR1 "$fpid"
fill=""
for _ in $(seq 1 60); do
  fill=$(fault_journal "$cursor" | grep -F "tiny: worker $fserial filled") && break
  sleep 0.5
done
case "$fill" in
  *"filled $fdir/fill with "*"No space left on device"*) ok "$step: the worker's writes ended in ENOSPC: $fill" ;;
  *) bad "$step: no 'tiny: worker $fserial filled $fdir/fill ... No space left on device' in the journal within 30 s" ;;
esac
used=$(tgt_sh "df --output=used,size -B1 '$fdir' | tail -1")
info "df $fdir: used, size (bytes): $used"
# shellcheck disable=SC2086
set -- $used
if [ "${1:-0}" -ge $((7 * 1024 * 1024)) ] && [ "$1" = "$2" ]; then ok "$step: $fdir is full (${1} of ${2} bytes)"; else bad "$step: $fdir not full: $used"; fi
expect_eq "$step: files in the other worker's temp dir" "$(tgt_sh "ls -A '$odir' | wc -l")" 0
runuse1=$(tgt_sh "df --output=used /run | tail -1")
if [ $((runuse1 - runuse0)) -lt 1024 ]; then ok "$step: /run (kechid's runtime dir) grew ${runuse0}K -> ${runuse1}K (< 1M)"; else bad "$step: /run grew ${runuse0}K -> ${runuse1}K"; fi
st=$(tgt_run kechictl status "$KT_APP" --json) || bad "$step: kechictl status failed"
tb=$(printf '%s' "$st" | python3 -c 'import json,sys; s=json.load(sys.stdin); print([w.get("tmpdir_bytes") for w in s["workers"] if w["serial"] == int(sys.argv[1])][0])' "$fserial" 2>&1)
if [ "$tb" -ge $((7 * 1024 * 1024)) ] 2> /dev/null; then ok "$step: kechictl status answers; worker $fserial temp-dir bytes $tb"; else bad "$step: kechictl status temp-dir bytes of worker $fserial: $tb"; fi
expect_eq "$step: worker $fserial still serves (alive)" "$(tgt_run kill -0 "$fpid" && echo yes)" yes
top=$(max_serial "$w")
tgt_run timeout 60 kechictl recycle "$KT_APP" --worker "$fserial" --wait --timeout 40s > /dev/null || bad "$step: kechictl recycle --worker $fserial failed"
holders=$(kt mounted-anywhere "$fdir" | tr '\n' ' ')
if [ -z "$holders" ]; then ok "$step: after its recycle, $fdir is mounted nowhere"; else bad "$step: $fdir still mounted (seen by $holders)"; fi
if tgt_run test -e "$fdir"; then bad "$step: $fdir still exists"; else ok "$step: $fdir removed"; fi
nw=$(kt wait-workers "$KT_APP" "$WORKERS" $((top + 1)) 30) || bad "$step: no replacement"
npid=$(printf '%s\n' "$nw" | awk -v s="$top" '$1 > s { print $3 }' | head -1)
expect_eq "$step: files in the replacement's temp dir" "$(tgt_sh "ls -A \"\$(tr '\\0' '\\n' < /proc/$npid/environ | sed -n 's/^TMPDIR=//p')\" | wc -l")" 0
load_stop tmp "$step"

# ---- 2 ------------------------------------------------------------------------------------------
step="2 reload, config gone or bad"
w=$(workers)
gen0=$(tgt_run kechictl status "$KT_APP" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
fault_load conf || abort "no load generator"
# try_reload WHAT PATTERN...: systemctl reload succeeds, the journal has PATTERN... and "reload refused"
try_reload() {
  local what=$1 cursor
  shift
  cursor=$(journal_cursor)
  if tgt_run timeout 60 systemctl reload "kechi@$KT_APP"; then ok "$step ($what): systemctl reload returns"; else bad "$step ($what): systemctl reload failed"; fi
  journal_has "$step ($what)" "$cursor" "why" "$@"
  journal_has "$step ($what)" "$cursor" "the running config stays" "reload refused, keeping the running configuration"
  ev=$(tgt_run kechictl status "$KT_APP" --json | python3 -c 'import json,sys; print((json.load(sys.stdin)["events"] or [""])[-1])')
  case "$ev" in
    *"reload refused: "*"$1"*) ok "$step ($what): kechictl status, last event: $ev" ;;
    *) bad "$step ($what): kechictl status, last event: '$ev' (want 'reload refused: ...$1...')" ;;
  esac
}
say "$step: $CONF deleted"
tgt_run mv "$CONF" "$CONF.away"
try_reload deleted "$CONF" "No such file or directory"
say "$step: $CONF a directory (unreadable as a file)"
tgt_run mkdir "$CONF"
try_reload unreadable "$CONF" "Is a directory"
tgt_run rmdir "$CONF"
say "$step: $CONF with an unknown key on line 5"
tgt_sh "sed '4a wokers = 5' '$CONF.away' > '$CONF'"
try_reload "unknown key" "$CONF:5:" "wokers"
tgt_run mv "$CONF.away" "$CONF"
sleep 2  # the observation window: a refused reload must not roll any worker
same_workers "$step" "$w"
gen1=$(tgt_run kechictl status "$KT_APP" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
expect_eq "$step: config generation (unchanged)" "$gen1" "$gen0"
load_stop conf "$step"

# ---- 3 ------------------------------------------------------------------------------------------
step="3 user deleted"
w=$(workers)
read -r userial _ upid <<< "$(printf '%s\n' "$w" | head -1)"
uid=$(tgt_run id -u "$KT_USER")
fault_load user || abort "no load generator"
say "$step: userdel -f $KT_USER (uid $uid) while its workers run; then kechictl recycle --worker $userial"
tgt_run userdel -f "$KT_USER" 2>&1 | sed 's/^/          | /'
tgt_run id "$KT_USER" > /dev/null 2>&1 && abort "$KT_USER still exists"
cursor=$(journal_cursor)
tgt_run kechictl recycle "$KT_APP" --worker "$userial" > /dev/null || bad "$step: kechictl recycle refused"
wait_journal "$cursor" "keeps serving" 30 || bad "$step: no 'keeps serving' in the journal within 30 s"
journal_has "$step" "$cursor" "the user is gone" "user $KT_USER does not exist"
journal_has "$step" "$cursor" "the old worker keeps serving" "worker $userial keeps serving"
expect_eq "$step: worker $userial (pid $upid) still runs" "$(tgt_run kill -0 "$upid" && echo yes)" yes
expect_eq "$step: processes running as the deleted uid $uid" "$(tgt_run pgrep -U "$uid" | grep -c .)" "$WORKERS"
say "$step: the user back (uid $uid), recycle again"
tgt_run useradd --system --no-create-home --shell /usr/sbin/nologin --uid "$uid" "$KT_USER" || bad "$step: useradd"
# The operator's recycle is still wanted after its replacement failed: kechid retries it after the
# crash backoff (500ms doubling to 4s here), so with the user back no second command is needed.
if kt wait-gone "$upid" 40; then
  ok "$step: with the user back, the retried recycle replaced worker $userial (pid $upid gone)"
else
  bad "$step: with the user back, worker $userial (pid $upid) still runs after 40 s (the retried recycle did not replace it)"
fi
load_stop user "$step"
if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 30); then ok "$step: $WORKERS workers, steady"; else bad "$step: not steady: $why"; fi

# ---- 4 ------------------------------------------------------------------------------------------
step="4 reload onto a missing command, then onto one that cannot be executed"
w=$(workers)
config "[\"$MISSING\"]"
cursor=$(journal_cursor)
tgt_run timeout 60 systemctl reload "kechi@$KT_APP" || bad "$step: systemctl reload failed"
sleep 2
journal_has "$step" "$cursor" "the reload is refused, naming command and the path" "command: $MISSING does not exist"
same_workers "$step (missing command refused)" "$w"
printf '#!/usr/bin/kt-no-such-interpreter\n' | tgt_write "$BROKEN" || abort "writing $BROKEN"
tgt_run chmod 755 "$BROKEN"
config "[\"$BROKEN\"]"
fault_load missing || abort "no load generator"
cursor=$(journal_cursor)
tgt_run timeout 60 systemctl reload "kechi@$KT_APP" || bad "$step: systemctl reload failed"
sleep 12  # the observation window: how often kechid retries, while the old workers serve
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
journal_has "$step" "$cursor" "exec failed, naming the command" "worker failed to start" "$BROKEN" "No such file or directory"
tries=$(printf '%s\n' "$log" | grep -c 'worker failed to start')
# backoff 500ms doubling to 4s: about 0.5+1+2+4+4 s for 5 tries; at once, hundreds
if [ "$tries" -ge 2 ] && [ "$tries" -le 8 ]; then ok "$step: $tries failed starts in 12 s (backing off)"; else bad "$step: $tries failed starts in 12 s (want 2..8: backoff from 500ms, doubling)"; fi
if has "$log" -iE 'giving up'; then bad "$step: kechid gave up on a serving app"; else ok "$step: kechid did not give up (its old workers serve)"; fi
same_workers "$step" "$w"
expect_eq "$step: kechi@$KT_APP is" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
load_stop missing "$step"

# ---- 5 ------------------------------------------------------------------------------------------
step="5 crash loop, nothing serving"
nr=$(unit_prop "kechi@$KT_APP" NRestarts)
cursor=$(journal_cursor)
say "$step: SIGKILL to the old workers; only the missing command is left to start"
for p in $(printf '%s\n' "$w" | awk '{ print $3 }'); do tgt_run kill -KILL "$p"; done
state=""
t0=$SECONDS
while [ $((SECONDS - t0)) -lt 60 ]; do
  state=$(tgt_run systemctl is-failed "kechi@$KT_APP")
  [ "$state" = failed ] && break
  sleep 0.5
done
expect_eq "$step: kechi@$KT_APP within 60 s" "$state" failed
expect_eq "$step: kechid's exit status (69)" "$(unit_prop "kechi@$KT_APP" ExecMainStatus)" 69
journal_has "$step" "$cursor" "why it gave up" "without getting ready (restart.burst = 3)" "giving up"
sleep 3  # the observation window: no restart of a unit whose app cannot start
expect_eq "$step: restarts of kechid by systemd" "$(unit_prop "kechi@$KT_APP" NRestarts)" "$nr"
expect_eq "$step: worker scopes left" "$(count_lines "$(workers)")" 0

load_summary
finish
