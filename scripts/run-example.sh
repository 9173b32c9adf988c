#!/bin/bash
# run-example.sh — the example app under kechid, on the built-in example config, in one command:
#
#   sudo scripts/run-example.sh                # install what is missing, build, run, show it working
#   sudo scripts/run-example.sh --check        # the same, then stop and clean up everything
#   sudo scripts/run-example.sh --foreground   # without systemd: kechid --foreground, Ctrl-C stops
#
# Where PID 1 is systemd, the example is installed for real (binaries in /usr/local/bin, units in
# /etc/systemd/system, /etc/kechi/example.toml) and `kechi@example` is started; it keeps running
# (`systemctl stop kechi@example` ends it). Where PID 1 is not systemd (containers, CI machines),
# a throwaway systemd is booted on a copy-on-write overlay of `/` (tests/system/lib/box.sh), the
# example runs inside it, and everything is gone when you press Enter.
#
# It checks what it shows: the service must become active with every worker ready, every request
# must be answered, before and after a recycle of all workers. Otherwise it says what failed,
# shows the unit's status and journal, and exits 1. --check does not wait for Enter: it stops the
# example and removes what it installed (or takes the throwaway systemd down), then prints
# "run-example.sh: OK" and exits 0.
# Environment: CARGO_TARGET_DIR (where cargo builds), KT_STATE (the throwaway systemd's state).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
mode=systemd check=0
for a in "$@"; do
  case "$a" in
    --foreground) mode=foreground ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
[ "$mode$check" != foreground1 ] || { echo "--check needs systemd; --foreground runs until Ctrl-C" >&2; exit 2; }
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
command -v cargo > /dev/null || { echo "run-example.sh: cargo is needed (https://rustup.rs)" >&2; exit 1; }

step "building kechid and kechictl (release)"
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
BIN=$BIN/release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

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

requests() {  # requests RUN N: N requests on TCP, each answered by a worker
  local run=$1 n=$2 i body
  for i in $(seq 1 "$n"); do
    body=$($run curl -sS --max-time 10 http://127.0.0.1:8080/ 2>&1) || fail "$run" "request $i: $body"
    case "$body" in
      "hello from worker "*) echo "$body" ;;
      *) fail "$run" "request $i was answered '$body', not by a worker" ;;
    esac
  done
}

ready_workers() {  # ready_workers RUN: how many workers kechictl reports ready
  $1 /usr/local/bin/kechictl status example --json 2> /dev/null |
    python3 -c 'import json, sys; print(sum(w["state"] == "ready" for w in json.load(sys.stdin)["workers"]))' 2> /dev/null ||
    echo 0
}

show() {  # show RUN
  local run=$1 want state=""
  want=$(sed -n 's/^workers *= *\([0-9]*\).*/\1/p' packaging/example.toml)
  step "systemctl start kechi@example (socket and service)"
  $run systemctl start kechi@example.socket kechi@example.service || fail "$run" "systemctl start kechi@example"
  for _ in $(seq 1 300); do
    state=$($run systemctl is-active kechi@example.service || true)
    [ "$state" = active ] && [ "$(ready_workers "$run")" = "$want" ] && break
    sleep 0.2
  done
  [ "$state" = active ] || fail "$run" "kechi@example.service is $state, not active, after 60 s"
  [ "$(ready_workers "$run")" = "$want" ] || fail "$run" "not all $want workers ready after 60 s"
  $run systemctl status --no-pager --lines=0 kechi@example.service kechi-example.slice || true
  step "kechictl status example"
  $run /usr/local/bin/kechictl status example || fail "$run" "kechictl status example"
  step "requests through the socket systemd holds"
  requests "$run" 4
  step "kechictl recycle example --all --wait (replacements first, no request dropped)"
  $run /usr/local/bin/kechictl recycle example --all --wait || fail "$run" "kechictl recycle example --all --wait"
  $run /usr/local/bin/kechictl status example || fail "$run" "kechictl status example"
  [ "$(ready_workers "$run")" = "$want" ] || fail "$run" "not all $want workers ready after the recycle"
  requests "$run" 2
}

if [ "$mode" = foreground ]; then
  step "kechid --foreground packaging/example.toml (Ctrl-C stops it)"
  sed 's#/usr/share/kechi/example-app.py#'"$ROOT"'/packaging/example-app.py#; s#^listen *=.*##' packaging/example.toml > "$tmp/example.toml"
  grep -q '^listen' "$tmp/example.toml" || sed -i '1i listen = ["127.0.0.1:8080"]' "$tmp/example.toml"
  echo "try: curl http://127.0.0.1:8080/"
  "$BIN/kechid" --foreground "$tmp/example.toml"
  exit
fi

if [ "$(cat /proc/1/comm)" = systemd ]; then
  install_into "" "install -D -m 0644"
  chmod 0755 /usr/local/bin/kechid /usr/local/bin/kechictl /usr/share/kechi/example-app.py
  show ""
  if [ "$check" = 0 ]; then
    step "running; stop it with: systemctl stop kechi@example.socket kechi@example"
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
  step "the example runs in the throwaway systemd $name; press Enter to tear it down"
  read -r _ || true
fi
step "taking the throwaway systemd down"
box_down "$name"
if box_alive "$name" || [ -e "$KT_STATE/$name.pid" ]; then
  echo "run-example.sh: FAILED: the throwaway systemd $name is still up" >&2; exit 1
fi
echo "run-example.sh: OK"
