#!/bin/bash
# t_mem_policies: the memory policies other than recycle-above alone, each on an app made for it.
#  1. app-budget: three workers holding 40, 80 and 120 MiB (their replacements hold nothing), budget
#     100M of USS: kechid recycles the largest (worker 3), then, still over, the next largest
#     (worker 2), then stops; worker 1 is never touched. Journal REASON=app-budget, in that order.
#  2. min-shared: Starlet (4 children sharing a 2M-element array built by the master) with
#     min-shared = 60%: no recycle while the pages are shared; once the children have written
#     their copy of the array (GET /touch), the worker's shared part falls below 60 % and kechid
#     replaces it (REASON=min-shared); the replacement is fully shared again and stays.
#  3. child-signal: Starlet with recycle-above = 60M (USS) and child-signal = "TERM": one child
#     grows by 100 MiB (GET /fat); kechid signals that child (REASON=child-signal, its PID), the
#     master forks a fresh one; the worker, its scope and its master are the same as before.
# KT_MEM_PARTS="1 3" runs some of them.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$KT_ROOT/tests/system/lib/mem.sh"

scenario t_mem_policies "app-budget recycles the largest first; min-shared; child-signal"
PARTS=${KT_MEM_PARTS:-1 2 3}
tgt_up mempol
kechi_install
# Starlet is part of the test machine's packages (tests/run.sh installs Debian's starlet): parts 2
# and 3 fail without it rather than pass unchecked
starlet=yes
tgt_run perl -MPlack::Handler::Starlet -e 1 > /dev/null 2>&1 || starlet=""
mem_ready_init

STARLET="\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"--max-reqs-per-child=1000000\", \"$KT_INSIDE/mem_big.psgi\""

restart_with() {  # restart_with < TOML: a fresh kechi@demo with this config
  tgt_run timeout 120 systemctl stop "kechi@$KT_APP" 2>/dev/null
  local why
  why=$(kt steady "$KT_APP" 0 0 "$KT_USER" 60) || bad "kechi@$KT_APP did not stop cleanly: $why"
  kechi_config
  kechi_start
}

show_status() {
  if mem_status; then mem_workers_table "$MEM_STATUS" | sed 's/^/          /'; else info "kechictl status: $MEM_STATUS"; fi
}

# ---------------------------------------------------------------------------------------------
part_budget() {
  say "part 1: app-budget = 100M (USS); workers hold 40, 80, 120 MiB, replacements nothing"
  local cursor log rec first second w one_pid w2 n
  cursor=$(journal_cursor)
  restart_with <<EOF || { bad "part 1: kechi@demo did not start"; return; }
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 3
environment = { MEM_START_MB = "40,80,120", MEM_START_REST = "0" }

[memory]
max = "256M"
metric = "uss"
app-budget = "100M"

[recycle]
check-interval = "1s"
min-interval = "2s"

[ready]
mode = "notify"
timeout = "30s"
EOF
  w=$(workers)
  show_workers "$w"
  one_pid=$(printf '%s\n' "$w" | awk '$1 == 1 { print $3 }')
  [ -n "$one_pid" ] || info "worker 1 is not running any more (already replaced?)"
  # two recycles are due: wait for both (a deadline, not a fixed sleep)
  local end=$((SECONDS + 60))
  rec=""
  while [ "$(count_lines "$rec")" -lt 2 ] && [ "$SECONDS" -lt "$end" ]; do
    rec=$(mem_journal "$cursor" | grep -E '^REASON=app-budget .*\| recycling worker')
    [ "$(count_lines "$rec")" -ge 2 ] || sleep 0.5
  done
  if w2=$(kt wait-workers "$KT_APP" 3 5 60) && why=$(kt steady "$KT_APP" 3 1 "$KT_USER" 60); then
    ok "part 1: 3 workers again, the newest serial 5 or above"
  else
    bad "part 1: not 3 steady workers with a serial >= 5 within 60 s: $why"
  fi
  # an observation window: 3 checks and more than min-interval, for a third recycle that must not come
  sleep 5
  log=$(mem_journal "$cursor")
  rec=$(printf '%s\n' "$log" | grep -E '^REASON=app-budget .*\| recycling worker')
  printf '%s\n' "$rec" | sed 's/^/          | /'
  n=$(count_lines "$rec")
  first=$(jfield "$(printf '%s\n' "$rec" | sed -n 1p)" WORKER)
  second=$(jfield "$(printf '%s\n' "$rec" | sed -n 2p)" WORKER)
  expect_eq "part 1: app-budget recycles" "$n" 2
  expect_eq "part 1: first recycled (the largest, 120 MiB)" "$first" 3
  expect_eq "part 1: second recycled (the largest left, 80 MiB)" "$second" 2
  local u1 u2
  u1=$(jfield "$(printf '%s\n' "$rec" | sed -n 1p)" USS)
  u2=$(jfield "$(printf '%s\n' "$rec" | sed -n 2p)" USS)
  if [ -n "$u1" ] && [ -n "$u2" ] && [ "$u1" -gt "$u2" ] && [ "$u2" -gt $((60 << 20)) ]; then
    ok "part 1: USS of the recycled workers as logged: $(mib "$u1"), then $(mib "$u2")"
  else
    bad "part 1: USS fields of the recycle records: '${u1:-}' then '${u2:-}' (want the first above the second, both above 60 MiB)"
  fi
  if [ "$first" != 3 ] || [ "$second" != 2 ] || [ -z "$u1" ] || [ -z "$u2" ] || [ "$u1" -le "$u2" ]; then
    info "kechid's journal from the start, with times (readiness against the recycles):"
    tgt_run journalctl --no-pager -o short-precise --after-cursor="$cursor" | grep -E ' kechid\[[0-9]+\]: ' \
      | grep -E 'ready|recycl|stopping|started' | head -n 20 | cut -c 8-230 | sed 's/^/          | /'
  fi
  other=$(printf '%s\n' "$log" | grep -vE '^REASON=app-budget ' | grep -E 'REASON=(memory|min-shared|oom-kill|crash)')
  [ -z "$other" ] || { bad "part 1: other records:"; printf '%s\n' "$other" | sed 's/^/          | /'; }
  w2=$(workers)
  show_workers "$w2"
  expect_eq "part 1: worker 1 still running, same pid" "$(printf '%s\n' "$w2" | awk '$1 == 1 { print $3 }')" "$one_pid"
  expect_eq "part 1: serials now" "$(printf '%s\n' "$w2" | awk '{ print $1 }' | tr '\n' ' ')" "1 4 5 "
  show_status
  local total
  total=$(mem_total "$MEM_STATUS" uss)
  if [ -n "$total" ] && [ "$total" -le $((100 << 20)) ]; then ok "part 1: app total USS $(mib "$total") is under the budget"; else bad "part 1: app total USS $(mib "${total:-0}") not under 100 MiB"; fi
}

# ---------------------------------------------------------------------------------------------
part_shared() {
  say "part 2: min-shared = 60%; a Starlet worker whose children write their copy of the big array"
  [ -n "$starlet" ] || { bad "part 2: no Starlet in the test machine (Debian package starlet, in tests/run.sh's PACKAGES)"; return; }
  local cursor w serial unit pid sp rec round out end why
  cursor=$(journal_cursor)
  restart_with <<EOF || { bad "part 2: kechi@demo did not start"; return; }
command = [$STARLET]
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 1
environment = { MEM_TOUCH_WAIT = "1" }

[memory]
max = "512M"
min-shared = "60%"

[recycle]
check-interval = "1s"
min-interval = "2s"

$MEM_READY
EOF
  why=$(kt steady "$KT_APP" 1 5 "$KT_USER" 60) || { bad "part 2: not 1 worker of 5 processes: $why"; return; }
  w=$(workers)
  show_workers "$w"
  read -r serial unit pid <<< "$w"
  show_status
  sp=$(mem_field "$MEM_STATUS" "round(s['workers'][0]['memory']['shared_percent'])")
  if [ -n "$sp" ] && [ "$sp" -gt 60 ]; then ok "part 2: fresh worker shares ${sp}% of its RSS"; else bad "part 2: fresh worker shares ${sp:-?}% (want > 60)"; fi
  sleep 3  # an observation window of 3 checks: a shared worker must not be recycled
  rec=$(mem_journal "$cursor" | grep -E '^REASON=min-shared ')
  if [ -z "$rec" ]; then ok "part 2: no min-shared recycle while the pages are shared"; else bad "part 2: recycled while shared: $rec"; fi

  # 4 concurrent requests, each holding its child for MEM_TOUCH_WAIT after the writes: one per
  # child, all accepted at once, so none is left in the backlog for a replacement's children
  say "part 2: 4 concurrent GET /touch per round (each child writes its copy once), until kechid acts"
  end=$((SECONDS + 90)) round=0 rec=""
  while [ -z "$rec" ] && [ "$SECONDS" -lt "$end" ]; do
    round=$((round + 1))
    # shellcheck disable=SC2016
    out=$(tgt_run sh -c 'for i in 1 2 3 4; do curl -s -m 30 -o /dev/null -w "%{http_code} " "http://$1/touch" & done; wait' touch "$KT_LISTEN")
    if mem_status; then
      info "round $round: /touch answers: $out| worker shared now $(mem_field "$MEM_STATUS" "', '.join('{}: {:.0f}%'.format(w['serial'], (w.get('memory') or {}).get('shared_percent') or 0) for w in s['workers'])")"
    fi
    rec=$(mem_wait_journal "$cursor" '^REASON=min-shared .*\| recycling worker' 3)
  done
  printf '%s\n' "$rec" | sed 's/^/          | /'
  if [ -n "$rec" ]; then
    ok "part 2: recycled for min-shared after $round rounds of /touch"
    expect_eq "part 2: the recycled worker" "$(jfield "$rec" WORKER)" "$serial"
    local sh rs
    sh=$(jfield "$rec" SHARED) rs=$(jfield "$rec" RSS)
    if [ -n "$sh" ] && [ -n "$rs" ] && [ "$rs" -gt 0 ] && [ $((sh * 100 / rs)) -lt 60 ]; then
      ok "part 2: logged SHARED/RSS = $(mib "$sh") / $(mib "$rs") = $((sh * 100 / rs))% < 60%"
    else
      bad "part 2: logged SHARED=${sh:-?} RSS=${rs:-?}: not below 60 %"
    fi
  else
    bad "part 2: no REASON=min-shared recycle within 90 s ($round rounds of /touch)"
    show_status
    return
  fi
  if w=$(kt wait-new "$KT_APP" 1 $((serial + 1)) 60) && why=$(kt steady "$KT_APP" 1 5 "$KT_USER" 60); then
    ok "part 2: replaced by a new worker of 5 processes"
  else
    bad "part 2: no steady replacement: ${why:-}"
  fi
  show_workers "$w"
  show_status
  sp=$(mem_field "$MEM_STATUS" "round(s['workers'][0]['memory']['shared_percent'])")
  if [ -n "$sp" ] && [ "$sp" -gt 60 ]; then ok "part 2: the replacement shares ${sp}%"; else bad "part 2: the replacement shares ${sp:-?}%"; fi
  sleep 4  # an observation window (4 checks, twice min-interval): the fresh worker is left alone
  n=$(mem_journal "$cursor" | grep -cE '^REASON=min-shared .*\| recycling worker')
  expect_eq "part 2: min-shared recycles in all" "$n" 1
}

# ---------------------------------------------------------------------------------------------
part_child() {
  say "part 3: child-signal = TERM, recycle-above = 60M (USS); one Starlet child grows by 100 MiB"
  [ -n "$starlet" ] || { bad "part 3: no Starlet in the test machine (Debian package starlet, in tests/run.sh's PACKAGES)"; return; }
  local cursor w serial unit master kids0 kids1 fat out rec why gone new n
  cursor=$(journal_cursor)
  restart_with <<EOF || { bad "part 3: kechi@demo did not start"; return; }
command = [$STARLET]
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 1

[memory]
max = "512M"
metric = "uss"
recycle-above = "60M"
child-signal = "TERM"

[recycle]
check-interval = "1s"
min-interval = "5s"

$MEM_READY
EOF
  why=$(kt steady "$KT_APP" 1 5 "$KT_USER" 60) || { bad "part 3: not 1 worker of 5 processes: $why"; return; }
  w=$(workers)
  read -r serial unit master <<< "$w"
  kids0=$(mem_children "$master" | tr '\n' ' ')
  info "worker $serial ($unit): master $master, children $kids0"
  show_status
  out=$(tgt_run curl -s -m 60 "http://$KT_LISTEN/fat?mb=100")
  fat=$(printf '%s' "$out" | awk '{ print $2 }')
  info "GET /fat?mb=100: $out"
  case " $kids0 " in *" $fat "*) ok "part 3: child $fat holds 100 MiB more" ;; *) bad "part 3: /fat answered by '$fat', not one of the children $kids0"; return ;; esac
  if rec=$(mem_wait_journal "$cursor" '^REASON=child-signal ' 30); then
    printf '%s\n' "$rec" | sed 's/^/          | /'
    ok "part 3: journal REASON=child-signal"
    expect_eq "part 3: its PID field (the fat child)" "$(jfield "$(printf '%s\n' "$rec" | head -1)" PID)" "$fat"
    expect_eq "part 3: its WORKER field" "$(jfield "$(printf '%s\n' "$rec" | head -1)" WORKER)" "$serial"
  else
    bad "part 3: no REASON=child-signal record within 30 s"
    show_status
    mem_journal "$cursor" | tail -n 5 | sed 's/^/          | /'
  fi
  if kt wait-gone "$fat" 30; then gone=yes; ok "part 3: child $fat is gone"; else gone=""; bad "part 3: child $fat still running after 30 s"; fi
  if kids1=$(mem_wait_procs "$unit" 5 30); then
    ok "part 3: $unit holds 5 processes again"
  else
    bad "part 3: $unit holds $(count_lines "$kids1") processes after 30 s"
  fi
  kids1=$(mem_children "$master" | tr '\n' ' ')
  info "master $master, children now $kids1"
  new=$(comm -13 <(printf '%s\n' $kids0 | sort) <(printf '%s\n' $kids1 | sort) | tr '\n' ' ')
  [ -n "$gone" ] && expect_eq "part 3: children replaced (new pids)" "$(printf '%s' "$new" | wc -w)" 1
  w2=$(workers)
  show_workers "$w2"
  expect_eq "part 3: the worker (serial, scope, master pid)" "$w2" "$w"
  expect_eq "part 3: the master is the same process" "$(tgt_run ps -o pid= -p "$master" | tr -d ' ')" "$master"
  sleep 3  # an observation window: the worker itself must not be recycled
  rec=$(mem_journal "$cursor" | grep -E '^REASON=(memory|app-budget|min-shared) .*\| recycling worker')
  expect_eq "part 3: recycles of a whole worker since the start" "$(count_lines "$rec")" 0
  if [ -n "$rec" ]; then
    printf '%s\n' "$rec" | sed 's/^/          | /'
    info "kechid's journal from the start, with times:"
    tgt_run journalctl --no-pager -o short-precise --after-cursor="$cursor" | grep -E ' kechid\[[0-9]+\]: ' \
      | grep -E 'ready|recycl|stopping|started|signal' | head -n 14 | cut -c 8-230 | sed 's/^/          | /'
  fi
  n=$(mem_journal "$cursor" | grep -cE '^REASON=child-signal ')
  expect_eq "part 3: child-signal records (once)" "$n" 1
  show_status
  local uss
  uss=$(mem_field "$MEM_STATUS" "s['workers'][0]['memory']['uss']")
  if [ -n "$uss" ] && [ "$uss" -lt $((60 << 20)) ]; then ok "part 3: worker USS back to $(mib "$uss")"; else bad "part 3: worker USS $(mib "${uss:-0}")"; fi
  ev=$(mem_field "$MEM_STATUS" "'; '.join(s['events'][-3:])")
  info "kechictl status events: $ev"
  case "$ev" in *"child $fat of worker $serial signalled"*) ok "part 3: kechictl status events name child $fat" ;; *) bad "part 3: kechictl status events do not name child $fat" ;; esac
}

for p in $PARTS; do
  case "$p" in 1) part_budget ;; 2) part_shared ;; 3) part_child ;; esac
done
finish
