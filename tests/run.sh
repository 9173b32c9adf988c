#!/bin/bash
# tests/run.sh — every test of kechi, in one command:  sudo tests/run.sh
#
#   1. installs what the tests need when it is missing (Debian/Ubuntu packages; cargo is assumed)
#   2. cargo fmt --check, cargo clippy --all-targets -- -D warnings, cargo build, cargo test
#      (cargo nextest when installed, plus the doc tests)
#   3. the system scenarios, tests/system/t_*.sh, against a real systemd (two at a time; the
#      cgroup v2 ones after the others, one at a time, in one VM booted for them all)
#   4. a summary table: PASS / FAIL / SKIP per step, with durations; exit status 1 on any FAIL
#
# Options:
#   --quick          steps 1-2 only (no system scenarios)
#   --system-only    step 3 only (expects binaries already built, or KECHI_BIN_DIR)
#   --only NAME      only this scenario (t_NAME.sh, NAME may omit t_ and .sh); repeatable
#   --jobs N         scenarios at once (default 2, KT_JOBS)
#   --no-install     never call apt-get
#   --no-packages    do not build the .deb/.rpm first (t_package then uses what is there, or skips);
#                    they are built only when t_package is to run
# Environment: KT_TEST_TIMEOUT (s per scenario, default 900), KT_LOGDIR (default
# target/system-tests), KECHI_BIN_DIR (binaries to test, default target/debug), KT_VM_SHARED=0
# (each cgroup v2 scenario boots a VM of its own).
# System scenarios need root; as another user they are reported as SKIP.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 2
ROOT=$PWD

quick=0 system_only=0 install=1 packages=1 jobs=${KT_JOBS:-2}
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --system-only) system_only=1 ;;
    --only) [ $# -ge 2 ] || { echo "--only needs a name" >&2; exit 2; }; only+=("$2"); shift ;;
    --only=*) only+=("${1#--only=}") ;;
    --jobs) [ $# -ge 2 ] || { echo "--jobs needs a number" >&2; exit 2; }; jobs=$2; shift ;;
    --no-install) install=0 ;;
    --no-packages) packages=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$quick" = 1 ] && [ "$system_only" = 1 ] && { echo "--quick and --system-only exclude each other" >&2; exit 2; }
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "--jobs wants a positive number" >&2; exit 2; }

LOGDIR=${KT_LOGDIR:-$ROOT/target/system-tests}
STEP_LOG=$(mktemp /tmp/kechi-step.XXXXXX)
trap 'rm -f "$STEP_LOG"' EXIT
declare -a R_NAME=() R_RESULT=() R_TIME=() R_NOTE=()
record() { R_NAME+=("$1"); R_RESULT+=("$2"); R_TIME+=("$3"); R_NOTE+=("${4:-}"); }
banner() { printf '\n##### %s\n' "$*"; }

# ---- 1. what the tests need ---------------------------------------------------------------------
# (lintian, rpm, man-db, zsh, fish: t_package checks the packages and the completions with them;
# busybox-static: t_sec_worker's statically linked worker; the app servers of the compatibility
# matrix's rows, t_compat_*: starman, libnet-server-ss-prefork-perl, uvicorn, puma, unicorn,
# ruby-rack, uwsgi, uwsgi-plugin-python3, nodejs; prometheus, prometheus-node-exporter:
# t_prometheus scrapes kechi's metrics with them and checks the example rules with promtool)
PACKAGES="libjemalloc2 python3 curl wrk starlet gunicorn procps util-linux dbus systemd
 lintian rpm man-db zsh fish busybox-static
 starman libnet-server-ss-prefork-perl uvicorn puma unicorn ruby-rack uwsgi uwsgi-plugin-python3 nodejs
 prometheus prometheus-node-exporter"
install_deps() {
  local p missing="" t0=$SECONDS
  command -v dpkg-query > /dev/null || { record "install packages" SKIP 0 "no dpkg here"; return 0; }
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  if [ -z "$missing" ]; then record "install packages" PASS 0 "all present"; return 0; fi
  if [ "$install" = 0 ] || [ "$(id -u)" != 0 ]; then
    record "install packages" SKIP 0 "missing:$missing (not root or --no-install)"; return 0
  fi
  banner "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; then
    record "install packages" PASS $((SECONDS - t0)) "installed:$missing"
  else
    record "install packages" FAIL $((SECONDS - t0)) "apt-get failed for:$missing"
  fi
}

# ---- 2. cargo ------------------------------------------------------------------------------------
# cargo where rustup put it, under sudo too (secure_path drops ~/.cargo/bin)
# shellcheck source=scripts/lib/cargo.sh
. scripts/lib/cargo.sh

step() {  # step NAME CMD...: run, time, record
  local name=$1 t0=$SECONDS rc
  shift
  banner "$name: $*"
  # The output is kept so a failure's summary line can say why, not only its exit status (the
  # summary is what a CI log's tail shows).
  "$@" 2>&1 | tee "$STEP_LOG"; rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then
    record "$name" PASS $((SECONDS - t0))
  else
    record "$name" FAIL $((SECONDS - t0)) "exit status $rc: $(step_why "$STEP_LOG")"
  fi
  return "$rc"
}
# step_why LOG: the last line of LOG that says what failed (cut to 160 characters)
step_why() {
  sed 's/\x1b[[(][0-9;]*[A-Za-z]\?//g' "$1" | grep -E 'FAIL|[Ee]rror|failed|panicked|^Diff in' |
    tail -n 1 | sed 's/^[[:space:]]*//' | cut -c1-160
}

cargo_steps() {
  if ! use_cargo; then record "cargo" FAIL 0 "cargo not found (install rustup)"; return 1; fi
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy" cargo clippy --all-targets -- -D warnings
  step "cargo build" cargo build || return 1
  if cargo nextest --version > /dev/null 2>&1; then
    step "cargo nextest" cargo nextest run
    step "cargo test --doc" cargo test --doc
  else
    step "cargo test" cargo test
  fi
  return 0
}

# ---- 3. system scenarios -------------------------------------------------------------------------
scenarios() {
  local f n o
  for f in tests/system/t_*.sh; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .sh)
    if [ ${#only[@]} -gt 0 ]; then
      for o in "${only[@]}"; do
        o=${o%.sh}; o=${o#t_}
        [ "$n" = "t_$o" ] && { echo "$f"; break; }
      done
    else
      echo "$f"
    fi
  done
}

declare -A RUN_PID_NAME=() RUN_START=()
running=0


start_scenario() {
  local f=$1 n
  n=$(basename "$f" .sh)
  timeout --kill-after=30 "${KT_TEST_TIMEOUT:-900}" bash "$f" > "$LOGDIR/$n.log" 2>&1 < /dev/null &
  RUN_PID_NAME[$!]=$n
  RUN_START[$!]=$SECONDS

  running=$((running + 1))
  echo "... $n started (log: ${LOGDIR#"$ROOT"/}/$n.log)"
}

finish_one() {  # wait for any scenario; print its log; record it
  local pid rc n dur note
  wait -n -p pid; rc=$?
  [ -n "${pid:-}" ] || return 1
  n=${RUN_PID_NAME[$pid]}
  dur=$((SECONDS - RUN_START[$pid]))
  unset "RUN_PID_NAME[$pid]"
  running=$((running - 1))
  banner "$n (exit status $rc, $dur s)"
  cat "$LOGDIR/$n.log"
  case "$rc" in
    0) record "$n" PASS "$dur" ;;
    77) note=$(grep -m1 -o 'SKIPPED (.*)' "$LOGDIR/$n.log" || echo "skipped"); record "$n" SKIP "$dur" "$note" ;;
    124|137) record "$n" FAIL "$dur" "timed out after ${KT_TEST_TIMEOUT:-900}s" ;;
    *) record "$n" FAIL "$dur" "$(grep -m1 -E '^ +FAIL ' "$LOGDIR/$n.log" | sed 's/^ *FAIL *//' | cut -c 1-70)" ;;
  esac
}

# shellcheck disable=SC2317  # called by the trap
on_interrupt() {
  local p
  echo "interrupted: stopping the scenarios (they take their test machines down)" >&2
  for p in "${!RUN_PID_NAME[@]}"; do kill -TERM "$p" 2> /dev/null; done
  wait
  shared_vm_down
  exit 130
}

system_steps() {
  local list f
  list=$(scenarios)
  if [ -z "$list" ]; then record "system scenarios" FAIL 0 "none matched: ${only[*]:-}"; return; fi
  if [ "$(id -u)" != 0 ]; then
    for f in $list; do record "$(basename "$f" .sh)" SKIP 0 "needs root (sudo tests/run.sh)"; done
    return
  fi
  mkdir -p "$LOGDIR"
  # test machines left behind by earlier runs that were killed outright
  ( . tests/system/lib/vm.sh && box_reap && vm_reap )
  trap on_interrupt INT TERM
  banner "system scenarios: $(echo "$list" | wc -l), $jobs at a time (the cgroup v2 ones last, one at a time)"
  # The cgroup v2 scenarios boot a VM under emulation: beside another scenario's load its boot
  # often hangs (seen at load average ~10), so they run after the others, alone.
  for f in $(printf '%s\n' "$list" | grep -v '_v2\.sh$'); do
    while [ "$running" -ge "$jobs" ]; do finish_one; done
    start_scenario "$f"
  done
  local v2
  v2=$(v2_order "$(printf '%s\n' "$list" | grep '_v2\.sh$')")
  [ -z "$v2" ] || while [ "$running" -gt 0 ]; do finish_one; done
  [ -z "$v2" ] || shared_vm_up "$(echo "$v2" | wc -l)"
  for f in $v2; do
    while [ "$running" -gt 0 ]; do finish_one; done
    start_scenario "$f"
  done
  while [ "$running" -gt 0 ]; do finish_one; done
  shared_vm_down
  trap - INT TERM
}

# v2_order LIST: the cgroup v2 scenarios in the order they share one VM: t_pressure_v2 last, since
# it drives the VM into swap and memory fragmentation that no reset undoes
v2_order() {
  printf '%s\n' "$1" | grep -v '/t_pressure_v2\.sh$' | grep .
  printf '%s\n' "$1" | grep '/t_pressure_v2\.sh$'
}

# shared_vm_up N: one VM for the N cgroup v2 scenarios, each of which resets it when it starts
# (scenario.sh): a boot under emulation takes 10-25 s, and 60-300 s when attempts hang, so one boot
# instead of N. When it does not come up, each scenario boots its own (and reports that).
# KT_VM_SHARED=0 makes each scenario boot its own.
shared_vm_up() {
  [ "${KT_VM_SHARED:-}" != 0 ] && [ "$1" -gt 1 ] || { unset KT_VM_SHARED; return 0; }
  local name="kt-$$-v2" t0=$SECONDS
  banner "the cgroup v2 VM for the $1 v2 scenarios: $name"
  if (. tests/system/lib/vm.sh && _VM_MINE=() && vm_up "$name" && _VM_MINE=()); then
    export KT_VM_SHARED=$name
    echo "$name is up ($((SECONDS - t0)) s)"
  else
    unset KT_VM_SHARED
    echo "the shared VM did not come up ($((SECONDS - t0)) s): each v2 scenario boots its own"
  fi
}

shared_vm_down() {
  [ -n "${KT_VM_SHARED:-}" ] || return 0
  (. tests/system/lib/vm.sh && vm_down "$KT_VM_SHARED")
  unset KT_VM_SHARED
}

# ---- run -----------------------------------------------------------------------------------------
T0=$SECONDS
install_deps
build_ok=1
if [ "$system_only" = 0 ]; then
  cargo_steps || build_ok=0
fi
if [ "$quick" = 0 ]; then
  # the .deb and .rpm for t_package (installs cargo-deb and cargo-generate-rpm when missing):
  # only when t_package is among the scenarios to run (matched in bash: `scenarios | grep -q`
  # fails under pipefail once grep stops reading early)
  if [ "$build_ok" = 1 ] && [ "$packages" = 1 ] && [ "$(id -u)" = 0 ] && [[ $'\n'"$(scenarios)"$'\n' == *$'\n'tests/system/t_package.sh$'\n'* ]]; then
    if use_cargo; then
      step "packages" bash packaging/build.sh || true
    else
      record "packages" FAIL 0 "cargo not found (install rustup)"
    fi
  fi
  if [ "$build_ok" = 1 ]; then
    system_steps
  else
    for f in $(scenarios); do record "$(basename "$f" .sh)" SKIP 0 "not run: the build failed"; done
  fi
  # short fuzz runs and the quick benchmarks with their regression bounds (each script records
  # its own figures; see fuzz/README.md and bench/README.md)
  if [ "$build_ok" = 1 ] && [ "$system_only" = 0 ] && [ -z "${only[*]:-}" ]; then
    [ -f fuzz/ci.sh ] && step "fuzz (short)" bash fuzz/ci.sh
    [ -f bench/ci.sh ] && step "benchmarks (quick)" bash bench/ci.sh
  fi
fi

# ---- 4. summary ----------------------------------------------------------------------------------
fails=0
banner "summary ($((SECONDS - T0)) s)"
printf '%-28s %-6s %6s  %s\n' STEP RESULT TIME NOTE
for i in "${!R_NAME[@]}"; do
  printf '%-28s %-6s %5ss  %s\n' "${R_NAME[$i]}" "${R_RESULT[$i]}" "${R_TIME[$i]}" "${R_NOTE[$i]}"
  [ "${R_RESULT[$i]}" = FAIL ] && fails=$((fails + 1))
done
if [ "$fails" -gt 0 ]; then
  echo "$fails step(s) FAILED"
  exit 1
fi
echo "no failures"
exit 0
