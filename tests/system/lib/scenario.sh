#!/bin/bash
# scenario.sh — what every tests/system/t_*.sh shares: checks and their report, the test machine
# (a box on this machine's cgroups, or with KT_TIER=v2 a pure cgroup v2 VM), installing kechi in it.
#
# Exit status of a scenario: 0 passed, 1 failed, 77 skipped (with a line "SKIPPED (why)").
# Binaries come from $KECHI_BIN_DIR, else target/debug of this repository.

set -uo pipefail
KT_ROOT=$(readlink -f "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../..")
# shellcheck source=tests/system/lib/vm.sh
. "$KT_ROOT/tests/system/lib/vm.sh"

KT_TIER=${KT_TIER:-v1}        # v1: a box on this machine's kernel; v2: the cgroup v2 VM
KT_APP=demo
KT_INSIDE=/usr/lib/kechi-test # apps and the inside helper, in the test machine
KT_USER=kechitest
KT_LISTEN=127.0.0.1:8080      # kechi@demo.socket listens here too (a drop-in), besides its Unix socket
T=""                          # the test machine's name
_KT_FAILS=0
_KT_CHECKS=0
_KT_T0=$SECONDS

# ---- reporting ---------------------------------------------------------------------------------
say() { printf '[%3ds] %s\n' $((SECONDS - _KT_T0)) "$*"; }
ok() { _KT_CHECKS=$((_KT_CHECKS + 1)); echo "    ok    $*"; }
bad() { _KT_CHECKS=$((_KT_CHECKS + 1)); _KT_FAILS=$((_KT_FAILS + 1)); echo "    FAIL  $*"; }
info() { echo "          $*"; }
# check DESC CMD...: CMD (on this host) must succeed
# has TEXT [GREP OPTIONS] PATTERN: whether a line of TEXT matches. Not `printf | grep -q`: under
# pipefail, grep -q leaves at its first match, and printf, still writing a text longer than the
# pipe takes at once, dies of SIGPIPE (exit 141): the pipeline fails although grep matched (seen:
# 1 in 200 with 12 KB of text, and a journal check of t_sec_jobremoved failing so).
has() { local text=$1; shift; grep -q "$@" <<< "$text"; }
check() { local d=$1; shift; if "$@" > /dev/null; then ok "$d"; else bad "$d"; fi; }
# expect_eq DESC GOT WANT
expect_eq() { if [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: got '$2', want '$3'"; fi; }
# abort DESC: a failure after which the remaining checks mean nothing
abort() { bad "$*"; say "stopping here: the remaining checks depend on this one"; exit 1; }
skip() { echo "SKIPPED ($*)"; exit 77; }

scenario() {  # scenario NAME WHAT
  echo "=== $1 ($KT_TIER): $2"
  _KT_T0=$SECONDS
}

finish() {
  if [ "$_KT_FAILS" = 0 ]; then
    say "PASS: $_KT_CHECKS checks"
    exit 0
  fi
  say "FAIL: $_KT_FAILS of $_KT_CHECKS checks failed"
  exit 1
}

# ---- the test machine --------------------------------------------------------------------------
tgt_up() {  # tgt_up SUFFIX
  local rc
  T=$(box_name "$1")
  case "$KT_TIER" in
    v1)
      [ "$(id -u)" = 0 ] || skip "needs root"
      [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ] || skip "this machine's PID 1 is systemd; the box needs a machine without it"
      box_up "$T" > /dev/null || abort "the test box did not boot"
      ;;
    v2)
      if [ -n "${KT_VM_SHARED:-}" ]; then
        # tests/run.sh boots one VM for all its v2 scenarios (each boot under emulation costs
        # 10-150 s): this scenario gets it as the previous one left it, reset
        if ! vm_reset "$KT_VM_SHARED"; then
          # (a VM that an earlier scenario left unable to answer): one of its own
          say "the shared cgroup v2 VM $KT_VM_SHARED could not be reset (above): booting one for this scenario"
          unset KT_VM_SHARED
        elif [ -n "${KT_VM_WANT_PSI:-}" ] && ! vm_run "$KT_VM_SHARED" test -r /proc/pressure/memory; then
          # a scenario about memory pressure (KT_VM_WANT_PSI) on a VM of vmbox's uml backend,
          # which has no PSI: one of its own, of the backend it asked for
          say "the shared cgroup v2 VM $KT_VM_SHARED has no PSI (vmbox's uml backend): booting a ${VMBOX_BACKEND:-qemu} one for this scenario"
          unset KT_VM_SHARED
        else
          T=$KT_VM_SHARED
          _KT_JSINCE=("--since=@$(tgt_run date +%s)")
          _VM_SHARED_USED=$T
          _box_install_trap
        fi
      fi
      if [ -z "${KT_VM_SHARED:-}" ]; then
        vm_up "$T"; rc=$?
        [ "$rc" = 77 ] && exit 77
        # the VM tool is there: a VM that does not boot fails the scenario (vm.sh)
        [ "$rc" = 0 ] || abort "the cgroup v2 VM did not boot (the VM tool's output is above)"
      fi
      ;;
    *) abort "KT_TIER must be v1 or v2" ;;
  esac
  # shellcheck disable=SC2016
  say "test machine $T is up ($(tgt_run sh -c 'echo "systemd $(systemctl --version | head -1 | cut -d" " -f2),"
    if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then echo "pure cgroup v2"; else echo "cgroup v1 memory controller"; fi' | tr '\n' ' ' | sed 's/ $//'); tier $KT_TIER)"
}

# tgt_journal ARGS...: journalctl in the test machine, this scenario's entries only (the whole boot,
# or since the reset of a VM shared with earlier scenarios)
_KT_JSINCE=(-b)
tgt_journal() { tgt_run journalctl --no-pager "${_KT_JSINCE[@]}" "$@"; }
tgt_run() { if [ "$KT_TIER" = v2 ]; then vm_run "$T" "$@"; else box_run "$T" "$@" < /dev/null; fi; }
tgt_in() { if [ "$KT_TIER" = v2 ]; then vm_run_in "$T" "$@"; else box_run "$T" "$@"; fi; }
tgt_copy_in() { if [ "$KT_TIER" = v2 ]; then vm_copy_in "$T" "$1" "$2"; else box_copy_in "$T" "$1" "$2"; fi; }
tgt_write() {  # tgt_write PATH < CONTENT
  # shellcheck disable=SC2016
  tgt_in sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1"' write "$1"
}
tgt_sh() { tgt_run sh -c "$1"; }
# the kernel names cgroups from the host's root: a box's are below /kechi-test-NAME
tgt_cgprefix() { if [ "$KT_TIER" = v2 ]; then echo ""; else echo "/$(_box_cgname "$T")"; fi; }
kt() { tgt_run "$KT_INSIDE/kt" "$@"; }

# ---- kechi in the test machine -----------------------------------------------------------------
kechi_bin_dir() { echo "${KECHI_BIN_DIR:-${CARGO_TARGET_DIR:-$KT_ROOT/target}/debug}"; }
# kechi_prefer_release: for benchmarks, which measure the build operators run: KECHI_BIN_DIR
# becomes the release build when there is one and KECHI_BIN_DIR is not set already.
kechi_prefer_release() {
  local release=${CARGO_TARGET_DIR:-$KT_ROOT/target}/release
  if [ -z "${KECHI_BIN_DIR:-}" ] && [ -x "$release/kechid" ]; then export KECHI_BIN_DIR=$release; fi
}

kechi_install() {
  local bin f
  bin=$(kechi_bin_dir)
  [ -x "$bin/kechid" ] || abort "no kechid in $bin (run cargo build, or set KECHI_BIN_DIR)"
  tgt_copy_in "$bin/kechid" /usr/bin/kechid || abort "copying kechid in"
  if [ -x "$bin/kechictl" ]; then tgt_copy_in "$bin/kechictl" /usr/bin/kechictl || abort "copying kechictl in"; fi
  for f in "kechi@.service" "kechi@.socket" kechi.slice; do
    tgt_copy_in "$KT_ROOT/units/$f" "/etc/systemd/system/$f" || abort "copying unit $f in"
  done
  kechi_socket_listen "$KT_LISTEN"
  for f in "$KT_ROOT"/tests/system/apps/*; do
    tgt_copy_in "$f" "$KT_INSIDE/$(basename "$f")" || abort "copying $f in"
  done
  tgt_copy_in "$KT_ROOT/tests/system/lib/inside.sh" "$KT_INSIDE/kt" || abort "copying the inside helper in"
  tgt_sh "id $KT_USER >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin $KT_USER" \
    || abort "creating user $KT_USER"
  tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
  say "installed kechid ($bin), units and test apps; user $KT_USER; kechi@$KT_APP.socket also on $KT_LISTEN"
}

# kechi_socket_listen ADDR...: a drop-in that adds these ListenStream= addresses to kechi@demo.socket
# (beside its default /run/kechi/demo.sock). Takes effect at the socket's next start (after
# daemon-reload).
kechi_socket_listen() {
  local a text="[Socket]"
  for a in "$@"; do text="$text"$'\n'"ListenStream=$a"; done
  printf '%s\n' "$text" | tgt_write "/etc/systemd/system/kechi@$KT_APP.socket.d/tcp.conf" \
    || abort "writing the drop-in of kechi@$KT_APP.socket"
}

kechi_config() {  # kechi_config < TOML: /etc/kechi/demo.toml, also shown in the log
  local text
  text=$(cat)
  printf '%s\n' "$text" | tgt_write "/etc/kechi/$KT_APP.toml" || abort "writing /etc/kechi/$KT_APP.toml"
  say "/etc/kechi/$KT_APP.toml:"
  printf '%s\n' "$text" | awk '{ printf "          %3d  %s\n", NR, $0 }'
}

# the standard demo app: three hello.py workers as kechitest, 64M each, ready after 1 s
demo_config() {  # demo_config [EXTRA_TOML]: extra keys go at the top level, sections after
  kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
workers = 3
environment = { PORT = "8080" }
${1:-}
[memory]
max = "64M"

[ready]
mode = "delay"
delay = "1s"
EOF
}

kechi_start() {  # systemctl start kechi@demo, with a deadline
  local t0=$SECONDS
  if tgt_run timeout 120 systemctl start "kechi@$KT_APP"; then
    ok "systemctl start kechi@$KT_APP ($((SECONDS - t0)) s)"
    return 0
  fi
  bad "systemctl start kechi@$KT_APP failed ($((SECONDS - t0)) s)"
  tgt_run systemctl status --no-pager "kechi@$KT_APP" 2>&1 | sed 's/^/          /' | head -n 20
  return 1
}

unit_prop() { tgt_run systemctl show -p "$2" --value "$1"; }
# unit_state_within UNIT WANT SECONDS: UNIT's ActiveState once it is WANT, or the last one seen when
# SECONDS pass first (a Type=notify unit stays "activating" until kechid has every worker ready,
# which can be after the first request is answered).
unit_state_within() {
  local state deadline=$((SECONDS + $3))
  while :; do
    state=$(unit_prop "$1" ActiveState)
    if [ "$state" = "$2" ] || [ "$SECONDS" -ge "$deadline" ]; then echo "$state"; return; fi
    sleep 0.2
  done
}

journal_cursor() { tgt_run journalctl -n 0 --show-cursor -q --no-pager | sed -n 's/^-- cursor: //p'; }
# journal_unit_after CURSOR UNIT: the messages of UNIT (its processes', and systemd's about it)
# logged after CURSOR. Not `journalctl -u UNIT --after-cursor=`: systemd 252 skips entries that way
# when several share one timestamp (seen in a VM with a coarse clock).
# With a third argument "fields", each line starts with the entry's WORKER= and REASON= fields.
journal_unit_after() {
  local c=$1 unit=$2 fields=${3:-} args=("${_KT_JSINCE[@]}")
  [ -n "$c" ] && args=(--after-cursor="$c")
  tgt_run journalctl --no-pager -o json "${args[@]}" | python3 -c '
import json, sys
unit = sys.argv[1]
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if unit not in (e.get("_SYSTEMD_UNIT"), e.get("UNIT")):
        continue
    m = e.get("MESSAGE", "")
    if isinstance(m, list):
        m = bytes(m).decode("utf-8", "replace")
    if sys.argv[2] == "fields":
        f = " ".join("{}={}".format(k, e[k]) for k in ("WORKER", "REASON") if k in e)
        m = "[{}] {}".format(f, m) if f else m
    print(m)
' "$unit" "$fields"
}

# workers: "SERIAL UNIT PID" lines of the active worker scopes
workers() { kt workers "$KT_APP"; }
show_workers() { printf '%s\n' "$1" | sed 's/^/          worker /'; }
count_lines() { printf '%s\n' "$1" | grep -c . ; }
max_serial() { printf '%s\n' "$1" | awk 'BEGIN { m = 0 } $1 + 0 > m { m = $1 + 0 } END { print m }'; }

# ---- load: a load generator in the test machine, counting failed requests -----------------------
# load_start NAME [MODE [CONNS [THREADS]]]: wrk against http://$KT_LISTEN/ until load_stop NAME.
# MODE keepalive (default: connections reused) or close ("Connection: close": one per request).
# How long wrk may take to hold its first connection: 30 s in the box; in the v2 tier's VM, whose
# guest runs ~6x slower than the host and shares the 2 cores with other VMs and builds, 180 s
# (KT_LOAD_START_S overrides both).
load_start_wait() { echo "${KT_LOAD_START_S:-$([ "$KT_TIER" = v2 ] && echo 180 || echo 30)}"; }
load_start() {
  local out
  _LOAD_MARK_N[$1]=0 _LOAD_MARK_BAD[$1]=0
  if out=$(kt load-start "$1" "${2:-keepalive}" "http://$KT_LISTEN/" "${3:-16}" "${4:-2}" "$(load_start_wait)" 2>&1); then
    [ -z "$out" ] || info "load generator $1: $out"
    return 0
  fi
  bad "load generator $1 did not start"
  printf '%s\n' "$out" | sed 's/^/          | /'
  return 1
}

# load_stop NAME STEP [witness]: stops it; prints its output and "STEP, NAME: served N, failed F (...)";
# a failed, refused, reset or timed-out request or a non-2xx response (any status outside 200-299,
# counted by wrk's script; wrk's own count is of statuses above 399 only) is a FAIL, unless the
# third argument is "witness" (a step whose failures are what it shows: the figures are reported,
# not judged; the scenario checks them itself). Sets
# LOAD_SERVED and LOAD_FAILED (LOAD_NON2XX of them non-2xx), LOAD_P99_US, LOAD_P999_US and LOAD_MAX_US
# (the completed requests' latency tail, 0 if unknown), and adds a row to the summary that
# load_summary prints.
LOAD_ROWS=()
_load_row() {  # _load_row STEP NAME SERVED FAILED DETAIL
  LOAD_ROWS+=("$(printf '%-34s %-7s %9s %7s   %s' "$@")")
}
load_stop() {
  local name=$1 step=$2 witness=${3:-} out res requests time connect read write timeout hung non2xx responses outside2xx statuses p99_us p999_us max_us
  out=$(kt load-stop "$name" 2>&1)
  printf '%s\n' "$out" | grep -v '^result: ' | sed 's/^/          | /'
  res=$(printf '%s\n' "$out" | sed -n 's/^result: //p' | tail -1)
  requests=0 time=0 connect=0 read=0 write=0 timeout=0 hung=0 non2xx=0 responses=-1 outside2xx=0 statuses=- p99_us=0 p999_us=0 max_us=0
  local kv
  for kv in $res; do
    case "$kv" in
      requests=*|time=*|connect=*|read=*|write=*|timeout=*|hung=*|non2xx=*|responses=*|outside2xx=*|statuses=*|p99_us=*|p999_us=*|max_us=*)
        printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
    esac
  done
  # the script's count includes wrk's (statuses above 399); without the script's line (wrk killed)
  # wrk's is all there is
  [ "$responses" -ge 0 ] && [ "$outside2xx" -gt "$non2xx" ] && non2xx=$outside2xx
  # shellcheck disable=SC2034  # read by the scenarios
  LOAD_SERVED=$requests
  LOAD_FAILED=$((connect + read + write + timeout + hung + non2xx))
  LOAD_NON2XX=$non2xx LOAD_P99_US=$p99_us LOAD_P999_US=$p999_us LOAD_MAX_US=$max_us
  _load_row "$step" "$name" "$requests" "$LOAD_FAILED" \
    "connect $connect, read $read, write $write, timeout $timeout, hung $hung, non-2xx $non2xx (statuses $statuses)"
  if [ "$witness" = witness ]; then
    info "$step, load $name: served $requests in $time, failed $LOAD_FAILED (connect $connect, read $read, write $write, timeout $timeout, hung $hung, non-2xx $non2xx; statuses $statuses)"
  elif [ -z "$res" ] || [ "$requests" = 0 ]; then
    bad "$step, load $name: no requests served ($time)"
  elif [ "$LOAD_FAILED" = 0 ]; then
    ok "$step, load $name: served $requests in $time, failed 0 (statuses $statuses)"
  else
    # the kinds that failed first: the summary of tests/run.sh keeps a failure's first 70 characters
    local kinds="" k
    for k in connect read write timeout hung non2xx; do [ "${!k}" = 0 ] || kinds="$kinds${kinds:+, }$k ${!k}"; done
    bad "$step, load $name: failed $LOAD_FAILED ($kinds) of $requests in $time (connect $connect, read $read, write $write, timeout $timeout, hung $hung, non-2xx $non2xx; statuses $statuses)"
  fi
}

# load_mark NAME STEP: the responses of the running load NAME since it started or since its last
# load_mark, as a row of the summary: served, and non-2xx (a status outside 200-299). A request
# that failed outright (connect, read, write, timeout) is seen by wrk alone, which counts it for its
# whole run: load_stop judges those. The counts are as wrk's threads last wrote them (every 200
# responses and each second), so a few hundred responses may land in the next step's row. No
# response at all, or a non-2xx one, is a FAIL. For one load spanning several steps.
declare -gA _LOAD_MARK_N=() _LOAD_MARK_BAD=()
load_mark() {
  local name=$1 step=$2 out kv responses=0 outside2xx=0 n bad
  out=$(kt load-count "$name" 2>&1)
  for kv in $out; do
    case "$kv" in responses=*|outside2xx=*) printf -v "${kv%%=*}" '%s' "${kv#*=}" ;; esac
  done
  n=$((responses - ${_LOAD_MARK_N[$name]:-0}))
  bad=$((outside2xx - ${_LOAD_MARK_BAD[$name]:-0}))
  _LOAD_MARK_N[$name]=$responses
  _LOAD_MARK_BAD[$name]=$outside2xx
  _load_row "$step" "$name" "$n" "$bad" "non-2xx $bad (connect, read, write, timeout errors: in the whole run's row)"
  if [ "$n" -le 0 ]; then
    bad "$step, load $name: no response during the step ($(printf '%s' "$out" | tr '\n' ' ' | cut -c 1-120))"
  elif [ "$bad" = 0 ]; then
    ok "$step, load $name: $n responses during the step, all 2xx"
  else
    bad "$step, load $name: $n responses during the step, $bad of them non-2xx"
  fi
}

load_summary() {  # the table of every load_stop so far
  local r
  say "requests served and failed, per step:"
  printf '          %-34s %-7s %9s %7s   %s\n' STEP LOAD SERVED FAILED "FAILURES BY KIND"
  for r in "${LOAD_ROWS[@]}"; do echo "          $r"; done
}
