#!/bin/bash
# run-example.sh — the example app under kechid, on the built-in example config, in one command
# (as root; from another user, or where root's PATH lacks cargo, through sudo: cargo is found in
# ~/.cargo whatever sudo did to PATH):
#
#   scripts/run-example.sh                       # install what is missing, build, run, show it working
#   scripts/run-example.sh --check               # the same, then stop and clean up everything
#   scripts/run-example.sh --foreground          # without systemd: kechid --foreground, Ctrl-C stops
#   scripts/run-example.sh --foreground --check  # the same, checked, then stopped
#
# Where PID 1 is systemd, the example is installed for real (binaries in /usr/local/bin, units in
# /etc/systemd/system, /etc/kechi/example.toml) and `kechi@example` is started; it keeps running
# (`systemctl stop kechi@example` ends it). Where PID 1 is not systemd (containers, CI machines),
# a throwaway systemd is booted on a copy-on-write overlay of `/` (tests/system/lib/box.sh), the
# example runs inside it, on the box's own network, and everything is gone when you press Enter;
# the screen says how to reach it from this machine meanwhile (curl, a shell in the box).
# --foreground runs kechid without any systemd, on a copy of the example config that points at this
# clone's packaging/example-app.py, listening on 127.0.0.1:8080 of this machine.
#
# It checks what it shows: the service must become active with every worker ready, every request
# must be answered, before and after a recycle of all workers. Otherwise it says what failed,
# shows the unit's status and journal, and exits 1. --check does not wait for Enter: it stops the
# example and removes what it installed (or takes the throwaway systemd down), then prints
# "run-example.sh: OK" and exits 0.
# Environment: CARGO_TARGET_DIR (where cargo builds), KT_STATE (the throwaway systemd's state),
# EXAMPLE_LISTEN (--foreground's address, default 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
mode=systemd check=0
for a in "$@"; do
  case "$a" in
    --foreground) mode=foreground ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run-example.sh: run it as root (it installs packages and starts workers as another user)" >&2; exit 2; }

step() { printf '\n==> %s\n' "$*"; }
# fail RUN WHAT: the example is not working; show why and stop (the EXIT trap cleans up)
fail() {
  local run=$1
  shift
  printf '\nrun-example.sh: FAILED: %s\n' "$*" >&2
  $run systemctl status --no-pager --lines=0 kechi@example.socket kechi@example.service >&2 || true
  $run journalctl --no-pager -n 30 -u kechi@example.service >&2 || true
  exit 1
}

need=""
for p in libjemalloc2 python3 curl systemd dbus procps; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need="$need $p"
done
if [ -n "$need" ]; then
  step "installing:$need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need > /dev/null
fi
# shellcheck source=lib/cargo.sh
. scripts/lib/cargo.sh
use_cargo || { echo "run-example.sh: cargo is needed (https://rustup.rs; looked on PATH, in ~/.cargo and in \$SUDO_USER's ~/.cargo)" >&2; exit 1; }

step "building kechid and kechictl (release)"
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
BIN=$BIN/release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
URL=http://127.0.0.1:8080/
KECHICTL=/usr/local/bin/kechictl

install_into() {  # install_into RUN COPY: install the example through two commands (inside a box or not)
  local run=$1 copy=$2
  $copy "$BIN/kechid" /usr/local/bin/kechid
  $copy "$BIN/kechictl" /usr/local/bin/kechictl
  $copy units/kechi@.service /etc/systemd/system/kechi@.service
  $copy units/kechi@.socket /etc/systemd/system/kechi@.socket
  $copy units/kechi.slice /etc/systemd/system/kechi.slice
  $run mkdir -p /etc/kechi /usr/share/kechi /etc/systemd/system/kechi@example.socket.d
  $copy packaging/example-app.py /usr/share/kechi/example-app.py
  $copy packaging/example.toml /etc/kechi/example.toml
  # the example also answers on TCP (inside the throwaway systemd: on its own network)
  printf '[Socket]\nListenStream=127.0.0.1:8080\n' > "$tmp/tcp.conf"
  $copy "$tmp/tcp.conf" /etc/systemd/system/kechi@example.socket.d/tcp.conf
  $run sed -i 's#/usr/bin/kechid#/usr/local/bin/kechid#' /etc/systemd/system/kechi@.service
  $run systemctl daemon-reload
}

requests() {  # requests RUN N: N requests on TCP, each answered by a worker (one line each)
  local run=$1 n=$2 i body
  for i in $(seq 1 "$n"); do
    body=$($run curl -sS --max-time 10 "$URL" 2>&1) || fail "$run" "request $i: $body"
    case "$body" in
      "hello from worker "*) echo "$body" ;;
      *) fail "$run" "request $i was answered '$body', not by a worker" ;;
    esac
  done
}

ready_workers() {  # ready_workers RUN: how many workers kechictl reports ready
  $1 "$KECHICTL" status example --json 2> /dev/null |
    python3 -c 'import json, sys; print(sum(w["state"] == "ready" for w in json.load(sys.stdin)["workers"]))' 2> /dev/null ||
    echo 0
}

legend() {  # what the figures of `kechictl status` mean
  cat <<'TXT'
    what the figures say (kechictl(1) has them all):
      "N/M workers ready": ready workers / workers wanted. "X total": the app's memory, the
        sum of the CGROUP column (of PSS without systemd).
      AGE since the worker started; RSS all its resident pages; PSS its share of them (shared
        pages divided among their users); USS the pages only it maps (what ending it frees);
        SHARED the part of RSS shared with other processes; CGROUP what the kernel charges to
        its scope (its own pages, and the page cache and kernel memory it brought in); TMP its
        own TMPDIR's contents; JE jemalloc loaded in it.
TXT
}

show() {  # show RUN
  local run=$1 want state=""
  want=$(sed -n 's/^workers *= *\([0-9]*\).*/\1/p' packaging/example.toml)
  step "systemctl start kechi@example.socket kechi@example.service"
  $run systemctl start kechi@example.socket kechi@example.service || fail "$run" "systemctl start kechi@example"
  for _ in $(seq 1 300); do
    state=$($run systemctl is-active kechi@example.service || true)
    [ "$state" = active ] && [ "$(ready_workers "$run")" = "$want" ] && break
    sleep 0.2
  done
  [ "$state" = active ] || fail "$run" "kechi@example.service is $state, not active, after 60 s"
  [ "$(ready_workers "$run")" = "$want" ] || fail "$run" "not all $want workers ready after 60 s"
  echo "kechi@example.service: $state; STATUS=\"$($run systemctl show -p StatusText --value kechi@example.service)\""
  echo "(systemctl status kechi@example shows the same, with the process tree)"
  step "kechictl status example"
  $run "$KECHICTL" status example || fail "$run" "kechictl status example"
  legend
  step "requests through the socket systemd holds: curl $URL"
  requests "$run" 4
  step "kechictl recycle example --all --wait (replacements first, no request dropped)"
  $run "$KECHICTL" recycle example --all --wait > /dev/null || fail "$run" "kechictl recycle example --all --wait"
  $run "$KECHICTL" status example || fail "$run" "kechictl status example"
  [ "$(ready_workers "$run")" = "$want" ] || fail "$run" "not all $want workers ready after the recycle"
  requests "$run" 2
}

if [ "$mode" = foreground ]; then
  # A copy of the example config pointing at this clone's app; kechid keeps its runtime files
  # (control socket, serials) in a directory of its own, so that it meets no other kechid.
  listen=${EXAMPLE_LISTEN:-127.0.0.1:8080}
  URL=http://$listen/
  KECHICTL=$BIN/kechictl
  export KECHI_RUNTIME_DIR=$tmp/run
  mkdir -m 0755 "$KECHI_RUNTIME_DIR"
  chmod 0755 "$tmp"
  sed -e 's#/usr/share/kechi/example-app.py#'"$ROOT"'/packaging/example-app.py#' \
    -e 's#^directory *=.*#directory = "'"$ROOT"'/packaging"#' \
    -e 's#^\#\?listen *=.*#listen = ["'"$listen"'"]#' packaging/example.toml > "$tmp/example.toml"
  grep -q '^listen' "$tmp/example.toml" || { echo "run-example.sh: no listen key in packaging/example.toml" >&2; exit 1; }
  step "kechid --foreground $tmp/example.toml (packaging/example.toml, with this clone's paths)"
  if [ "$check" = 0 ]; then
    echo "try: curl $URL    status: KECHI_RUNTIME_DIR=$KECHI_RUNTIME_DIR $KECHICTL status example"
    echo "Ctrl-C stops it"
    "$BIN/kechid" --foreground "$tmp/example.toml"
    exit
  fi
  "$BIN/kechid" --foreground "$tmp/example.toml" > "$tmp/kechid.log" 2>&1 &
  kechid=$!
  # fail RUN WHAT, for this mode: kechid's log instead of the unit's journal
  fail() {
    printf '\nrun-example.sh: FAILED: %s\n' "$2" >&2
    tail -n 30 "$tmp/kechid.log" >&2
    kill -TERM "$kechid" 2> /dev/null && wait "$kechid"
    exit 1
  }
  want=$(sed -n 's/^workers *= *\([0-9]*\).*/\1/p' packaging/example.toml)
  for _ in $(seq 1 300); do
    [ "$(ready_workers "")" = "$want" ] && break
    kill -0 "$kechid" 2> /dev/null || fail "" "kechid exited"
    sleep 0.2
  done
  [ "$(ready_workers "")" = "$want" ] || fail "" "not all $want workers ready after 60 s"
  "$KECHICTL" status example || fail "" "kechictl status example"
  step "requests: curl $URL"
  requests "" 4
  step "kechictl recycle example --all --wait"
  "$KECHICTL" recycle example --all --wait > /dev/null || fail "" "kechictl recycle example --all --wait"
  [ "$(ready_workers "")" = "$want" ] || fail "" "not all $want workers ready after the recycle"
  requests "" 2
  step "--check: stopping kechid (SIGTERM)"
  kill -TERM "$kechid"
  rc=0
  wait "$kechid" || rc=$?
  [ "$rc" = 0 ] || { tail -n 30 "$tmp/kechid.log" >&2; echo "run-example.sh: FAILED: kechid exited with status $rc" >&2; exit 1; }
  left=$(find "$KECHI_RUNTIME_DIR" -mindepth 1 | tr '\n' ' ')
  [ -z "$left" ] || { echo "run-example.sh: FAILED: kechid left $left behind" >&2; exit 1; }
  echo "run-example.sh: OK"
  exit 0
fi

if [ "$(cat /proc/1/comm)" = systemd ]; then
  install_into "" "install -D -m 0644"
  chmod 0755 /usr/local/bin/kechid /usr/local/bin/kechictl /usr/share/kechi/example-app.py
  show ""
  if [ "$check" = 0 ]; then
    step "running; try: curl $URL; stop it with: systemctl stop kechi@example.socket kechi@example"
    exit 0
  fi
  step "--check: stopping the example and removing what was installed"
  systemctl stop kechi@example.socket kechi@example.service
  rm -rf /usr/local/bin/kechid /usr/local/bin/kechictl /etc/systemd/system/kechi@.service \
    /etc/systemd/system/kechi@.socket /etc/systemd/system/kechi.slice /etc/kechi/example.toml \
    /usr/share/kechi/example-app.py /etc/systemd/system/kechi@example.socket.d
  systemctl daemon-reload
  left=$(systemctl list-units --all --plain --no-legend 'kechi*' | awk '$3 != "inactive" { print $1 }' | tr '\n' ' ')
  [ -z "$left" ] || { echo "run-example.sh: FAILED: still active after stopping: $left" >&2; exit 1; }
  echo "run-example.sh: OK"
  exit 0
fi

# No systemd here: a throwaway one.
# shellcheck source=../tests/system/lib/box.sh
. tests/system/lib/box.sh
# Named after this process (like the test harness's kt-PID-NAME boxes, which it cannot collide
# with): two runs at once each get their own. box.sh takes it down when this script exits.
name=kechi-example-$$
step "booting a throwaway systemd $name (this machine's PID 1 is $(cat /proc/1/comm), not systemd)"
trap - EXIT
# shellcheck disable=SC2016  # expanded when the hook runs
box_on_exit 'rm -rf "$tmp"'
box_up "$name" > /dev/null || { echo "run-example.sh: FAILED: the throwaway systemd did not boot" >&2; exit 1; }
run() { box_run "$name" "$@"; }
copy() { box_copy_in "$name" "$1" "$2"; }
install_into run copy
show run
if [ "$check" = 0 ]; then
  pidfile=$KT_STATE/$name.pid
  step "the example runs in the throwaway systemd $name, on its own network; from this machine:"
  echo "  curl it:     nsenter -t \$(cat $pidfile) -n curl $URL"
  echo "  a shell:     $ROOT/tests/system/lib/box.sh sh $name"
  echo "               (there: kechictl status example, systemctl status kechi@example, journalctl -u kechi@example)"
  printf '%s' "press Enter to tear it down "
  read -r _ || true
fi
step "taking the throwaway systemd down"
box_down "$name"
if box_alive "$name" || [ -e "$KT_STATE/$name.pid" ]; then
  echo "run-example.sh: FAILED: the throwaway systemd $name is still up" >&2; exit 1
fi
echo "run-example.sh: OK"
