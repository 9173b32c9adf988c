#!/bin/bash
# t_fault_dbus: systemd's side going away under kechid, during recycles, under load (Starlet,
# lib/zero.sh). With age recycling on (max-age 4s) so that replacements are always in flight:
#   1. the D-Bus daemon restarted three times (kechid's bus connection breaks; it reconnects);
#   2. systemctl daemon-reload three times;
#   3. systemctl daemon-reexec three times (the manager re-executes; the bus connection stays).
# After each: the same kechid (MainPID unchanged, no restart), recycling carries on (workers with
# higher serials are started after the last fault), `kechictl recycle --all --wait` succeeds,
# exactly `workers` worker scopes and no stray one, 0 failed requests.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_fault_dbus "D-Bus daemon restart, daemon-reload, daemon-reexec during recycles: kechid carries on"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=2\", \"$KT_INSIDE/hello.psgi\"]"
ZD_PROCS=3   # Starlet's master and its 2 children
ZD_WAIT=90
tgt_up fdbus
kechi_install
zd_start

AGE='
[recycle]
max-age = "4s"
min-interval = "1s"'

# fault_step N WHAT CMD...: CMD three times, 3 s apart, while age recycling runs under load
fault_step() {
  local step="$1 $2" pid0 pid1 top cursor i after log rc out
  shift 2
  say "step $step: three times, 3 s apart, during age recycling, under load"
  pid0=$(unit_prop "kechi@$KT_APP" MainPID)
  zd_config "$RANDOM" "$AGE"
  zd_loads_start || return 0
  zd_reload "$step (age on)"
  cursor=$(journal_cursor)
  for i in 1 2 3; do
    sleep 3
    out=$(tgt_run timeout 120 "$@" 2>&1); rc=$?
    if [ "$rc" = 0 ]; then ok "$step: $* ($i)"; else bad "$step: $* ($i): exit $rc $out"; fi
  done
  top=$(max_serial "$(workers)")
  say "step $step: age recycling must carry on past serial $top"
  ZD_WAIT=120 zd_wait_new "$step (replaced after the last fault)" "$top" +
  zd_config "$RANDOM"
  top=$(max_serial "$(workers)")
  zd_reload "$step (age off)"
  zd_wait_new "$step (reload, age off)" "$top" +
  ZD_WAIT=60 zd_wait_new "$step (the last replacement by age done)" "$top"
  out=$(tgt_run timeout 150 kechictl recycle "$KT_APP" --all --wait --timeout 90s 2>&1); rc=$?
  if [ "$rc" = 0 ]; then ok "$step: kechictl recycle --all --wait afterwards"; else bad "$step: kechictl recycle --all --wait afterwards: exit $rc $out"; fi
  zd_loads_stop "$step"
  pid1=$(unit_prop "kechi@$KT_APP" MainPID)
  expect_eq "$step: the same kechid (MainPID)" "$pid1" "$pid0"
  log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
  printf '%s\n' "$log" | grep -iE 'D-Bus|reconnect|manager|failed|stray|gone' | head -n 12 | sed 's/^/          | /'
  FAULT_LOG=$log
  zd_steady "$step"
  expect_eq "$step: failed kechi units" "$(tgt_run systemctl list-units --failed --plain --no-legend 'kechi*' | grep -c .)" 0
}

fault_step 1 "systemctl restart dbus" systemctl restart dbus
if has "$FAULT_LOG" "reconnected to systemd's manager"; then
  ok "1: kechid says it reconnected ($(printf '%s\n' "$FAULT_LOG" | grep -c "reconnected to systemd's manager") times)"
else
  bad "1: no 'reconnected to systemd's manager' in kechid's journal"
fi
fault_step 2 "systemctl daemon-reload" systemctl daemon-reload
fault_step 3 "systemctl daemon-reexec" systemctl daemon-reexec
load_summary
tgt_run systemctl stop "kechi@$KT_APP"
finish
