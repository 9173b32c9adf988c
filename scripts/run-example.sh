#!/bin/bash
# run-example.sh — the example app under kechid, on the built-in example config, in one command:
#
#   sudo scripts/run-example.sh            # install what is missing, build, run, show it working
#   sudo scripts/run-example.sh --foreground   # without systemd: kechid --foreground, Ctrl-C stops
#
# Where PID 1 is systemd, the example is installed for real (binaries in /usr/local/bin, units in
# /etc/systemd/system, /etc/kechi/example.toml) and `kechi@example` is started; it keeps running
# (`systemctl stop kechi@example` ends it). Where PID 1 is not systemd (containers, CI machines),
# a throwaway systemd is booted on a copy-on-write overlay of `/` (tests/system/lib/box.sh), the
# example runs inside it, and everything is gone when you press Enter.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
mode=systemd
case "${1:-}" in
  --foreground) mode=foreground ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run-example.sh: run it as root (it installs packages and starts workers as another user)" >&2; exit 2; }

step() { printf '\n==> %s\n' "$*"; }

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
BIN=$ROOT/target/release

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
  # the example also answers on TCP, so a browser or curl on the host can reach it
  printf '[Socket]\nListenStream=127.0.0.1:8080\n' > /tmp/kechi-example-tcp.conf
  $copy /tmp/kechi-example-tcp.conf /etc/systemd/system/kechi@example.socket.d/tcp.conf
  $run sed -i 's#/usr/bin/kechid#/usr/local/bin/kechid#' /etc/systemd/system/kechi@.service
  $run systemctl daemon-reload
}

show() {  # show RUN
  local run=$1
  step "systemctl start kechi@example (socket and service)"
  $run systemctl start kechi@example.socket kechi@example.service
  for _ in $(seq 1 50); do
    [ "$($run systemctl is-active kechi@example.service)" = active ] && break; sleep 0.2
  done
  $run systemctl status --no-pager --lines=0 kechi@example.service kechi-example.slice || true
  step "kechictl status example"
  $run /usr/local/bin/kechictl status example || true
  step "requests through the socket systemd holds"
  for _ in 1 2 3 4; do $run curl -s --max-time 5 http://127.0.0.1:8080/ || true; done
  step "kechictl recycle example --all --wait (replacements first, no request dropped)"
  $run /usr/local/bin/kechictl recycle example --all --wait || true
  $run /usr/local/bin/kechictl status example || true
}

if [ "$mode" = foreground ]; then
  step "kechid --foreground packaging/example.toml (Ctrl-C stops it)"
  sed 's#/usr/share/kechi/example-app.py#'"$ROOT"'/packaging/example-app.py#; s#^listen *=.*##' packaging/example.toml > /tmp/example.toml
  grep -q '^listen' /tmp/example.toml || sed -i '1i listen = ["127.0.0.1:8080"]' /tmp/example.toml
  echo "try: curl http://127.0.0.1:8080/"
  exec "$BIN/kechid" --foreground /tmp/example.toml
fi

if [ "$(cat /proc/1/comm)" = systemd ]; then
  install_into "" "install -D -m 0644"
  chmod 0755 /usr/local/bin/kechid /usr/local/bin/kechictl /usr/share/kechi/example-app.py
  show ""
  step "running; stop it with: systemctl stop kechi@example.socket kechi@example"
  exit 0
fi

# No systemd here: a throwaway one.
# shellcheck source=../tests/system/lib/box.sh
. tests/system/lib/box.sh
name=kechi-example
step "booting a throwaway systemd (this machine's PID 1 is $(cat /proc/1/comm), not systemd)"
box_up "$name" > /dev/null
run() { box_run "$name" "$@"; }
copy() { box_copy_in "$name" "$1" "$2"; }
install_into run copy
show run
step "the example runs in the throwaway systemd; press Enter to tear it down"
read -r _ || true
