#!/bin/bash
# bench/seedbox/run.sh [--quick]: the first seed's box as a benchmark (issue 14, point 5). Five
# apps on a 1 GiB machine, one busy and four visited now and then, run three ways with the same
# traffic, each in a fresh cgroup v2 VM (../shared/vmbox, qemu backend: 1 GiB, 2 vCPUs, PSI):
#   plain       all five as plain systemd services, always running (no kechi)
#   kechi       all five under kechi (kechi@APP), always running: no [idle], no kechi.conf
#   kechi-new   the same with `[idle] stop-after` (the four visited apps), and /etc/kechi/kechi.conf's `[box] budget` and
#               `[box] pressure`: the idle apps are started by their socket on a visit and stop
#               again once idle
# Run as root from the repository:  sudo bash bench/seedbox/run.sh   (about 25 minutes; --quick:
# 60 s of traffic a configuration, about 10 minutes). Needs cargo build --release (kechid,
# kechictl) and cargo build --example openload first.
#
# The apps (bench/seedbox/apps/, Debian's servers, as in their compatibility rows):
#   starlet   the busy one: plackup -s Starlet --max-workers=4 (one master, four children), its
#             children keeping SB_LEAK_KB of every request (a cache that only grows; Starlet's own
#             --max-reqs-per-child is set out of reach so that it does not hide the growth)
#   gunicorn  2 sync workers;  puma -w 2 --preload;  uWSGI --master, 2 processes;  Node.js
# Each builds SB_MB MiB of data at load (half random, half text: zram packs it ~2:1, as a heap).
# The VM gets a zram swap device of SB_SWAP (the seed's box is "always in swap"; the VM has no
# disk, and zram is the one swap it can have), the same in all three.
#
# Traffic, the same in each configuration, for SB_SECONDS:
#   busy      bench/openload (open loop: latency counted from each request's due time, no
#             coordinated omission), SB_RATE requests a second on kept-alive connections to starlet
#   visits    bench/seedbox/visit.py: each idle app every SB_PERIOD seconds, the four spread over the
#             period; a visit is 5 requests, each on its own connection; the first one's time to
#             first byte is the visit's cold start when the app was stopped
# Recorded every second (bench/seedbox/sample.py): memory used (MemTotal - MemAvailable), swap
# used, oom_kill, the box's memory PSI, and each app's cgroup (its service, or its kechi slice with
# kechid): memory.current, memory.swap.current, processes. Raw figures go to
# bench/results/seedbox/CONFIG/, the report (bench/seedbox/report.py) to docs/benchmarks/seedbox.md
# and seedbox.png.
#
# Knobs: SB_SECONDS (300), SB_RATE (20), SB_PERIOD (75), SB_LEAK_KB (96), SB_MB (40), SB_SWAP
# (512M), SB_STOP_AFTER (30s), SB_BUDGET (300M), SB_PRESSURE ("some 10% 10s"), SB_CONFIGS
# ("plain kechi kechi-new"), SB_JEMALLOC (1: kechi's default allocator for the workers; 0:
# `[jemalloc] enabled = false`, the servers' own malloc as in the plain services), SB_OUT (where
# the raw figures go), SB_DOCS (where the report goes: docs/benchmarks).
KT_TIER=v2
. "$(dirname "$(readlink -f "$0")")/../../tests/system/lib/scenario.sh"
ROOT=$KT_ROOT
HERE=$ROOT/bench/seedbox
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
SB_SECONDS=${SB_SECONDS:-$([ "$QUICK" = 1 ] && echo 60 || echo 300)}
SB_RATE=${SB_RATE:-20}
SB_PERIOD=${SB_PERIOD:-$([ "$QUICK" = 1 ] && echo 40 || echo 75)}
SB_LEAK_KB=${SB_LEAK_KB:-96}
SB_MB=${SB_MB:-40}
SB_SWAP=${SB_SWAP:-512M}
SB_STOP_AFTER=${SB_STOP_AFTER:-$([ "$QUICK" = 1 ] && echo 15s || echo 30s)}
SB_BUDGET=${SB_BUDGET:-300M}
SB_PRESSURE=${SB_PRESSURE:-some 10% 10s}
SB_CONFIGS=${SB_CONFIGS:-plain kechi kechi-new}
SB_JEMALLOC=${SB_JEMALLOC:-1}
OUT=${SB_OUT:-$ROOT/bench/results/seedbox}
D=/usr/lib/kechi-seed     # the bench's files in the VM
# kechid and kechictl of a release build: a debug kechid is 90 MB, in the VM's RAM (its root is a tmpfs)
export KECHI_BIN_DIR=${KECHI_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
[ -x "$KECHI_BIN_DIR/kechid" ] || { echo "no $KECHI_BIN_DIR/kechid: cargo build --release" >&2; exit 1; }
# openload runs from the host's file system as the VM sees it (/host), not copied into its RAM
OPENLOAD=${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/openload
[ -x "$OPENLOAD" ] || { echo "no $OPENLOAD: cargo build --example openload" >&2; exit 1; }

APPS="starlet gunicorn puma uwsgi node"
IDLE_APPS="gunicorn puma uwsgi node"
declare -A PORT=([starlet]=8081 [gunicorn]=8082 [puma]=8083 [uwsgi]=8084 [node]=8085)
UWSGI_COMMON='"/usr/bin/uwsgi", "--master", "--processes", "2", "--plugin", "python3", "--protocol", "http", "--route-run", "addheader:Connection: close", "--hook-master-start", "unix_signal:15 gracefully_kill_them_all", "--wsgi-file", "'$D'/seed_wsgi.py", "--callable", "app"'
# an app's command under kechi (its sockets come from kechi@APP.socket), as a TOML array
kechi_command() {
  case $1 in
    starlet) echo "[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"--max-reqs-per-child=10000000\", \"$D/seed.psgi\"]" ;;
    gunicorn) echo '["/usr/bin/gunicorn", "--workers", "2", "seed_wsgi:app"]' ;;
    puma) echo "[\"/usr/bin/puma\", \"-C\", \"$KT_INSIDE/puma_kechi.rb\", \"-e\", \"production\", \"-w\", \"2\", \"--preload\", \"-b\", \"unix:///run/kechi/puma.sock\", \"-b\", \"tcp://127.0.0.1:${PORT[puma]}\", \"$D/seed.ru\"]" ;;
    uwsgi) echo "[$UWSGI_COMMON]" ;;
    node) echo "[\"/usr/bin/node\", \"$D/seed_node.js\"]" ;;
  esac
}
# the same app as a plain service's ExecStart= (it binds its own port; node gets a socket unit)
plain_command() {
  case $1 in
    starlet) echo "/usr/bin/plackup -s Starlet -E deployment --max-workers=4 --max-reqs-per-child=10000000 --listen 127.0.0.1:${PORT[starlet]} $D/seed.psgi" ;;
    gunicorn) echo "/usr/bin/gunicorn --workers 2 -b 127.0.0.1:${PORT[gunicorn]} seed_wsgi:app" ;;
    puma) echo "/usr/bin/puma -C $KT_INSIDE/puma_kechi.rb -e production -w 2 --preload -b tcp://127.0.0.1:${PORT[puma]} $D/seed.ru" ;;
    uwsgi) echo "/usr/bin/uwsgi --master --processes 2 --plugin python3 --protocol http --socket 127.0.0.1:${PORT[uwsgi]} --route-run \"addheader:Connection: close\" --die-on-term --wsgi-file $D/seed_wsgi.py --callable app" ;;
    node) echo "/usr/bin/node $D/seed_node.js" ;;
  esac
}
app_env() { if [ "$1" = starlet ]; then echo "SEED_MB=$SB_MB SEED_LEAK_KB=$SB_LEAK_KB"; else echo "SEED_MB=$SB_MB"; fi; }
stop_signal() { echo TERM; }

install_common() {
  kechi_install
  local f
  for f in "$HERE"/apps/* "$HERE/sample.py" "$HERE/visit.py"; do
    tgt_copy_in "$f" "$D/$(basename "$f")" || abort "copying $f in"
  done
  # zram swap: the same in every configuration
  if [ "$SB_SWAP" != 0 ]; then
    # (insmod: the VM's module tree has no modules.dep for modprobe; zram needs zsmalloc)
    # shellcheck disable=SC2016
    tgt_sh 'k=/lib/modules/$(uname -r)/kernel; insmod $k/mm/zsmalloc.ko; insmod $k/drivers/block/zram/zram.ko' \
      || abort "loading zram"
    tgt_sh "echo $SB_SWAP > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null && swapon /dev/zram0" \
      || abort "zram swap of $SB_SWAP"
  fi
  info "VM: $(tgt_sh "awk '/^(MemTotal|MemAvailable|SwapTotal):/ { printf \"%s %d MiB  \", \$1, \$2 / 1024 }' /proc/meminfo")"
}

setup_plain() {
  local a
  for a in $APPS; do
    {
      printf '[Unit]\nDescription=seed box app %s (plain service)\n[Service]\nUser=%s\nWorkingDirectory=%s\n' "$a" "$KT_USER" "$D"
      printf 'Environment=%s\nExecStart=%s\nKillSignal=%s\nTimeoutStopSec=30\n' "$(app_env "$a")" "$(plain_command "$a")" "$(stop_signal "$a")"
    } | tgt_write "/etc/systemd/system/seed-$a.service" || abort "writing seed-$a.service"
  done
  printf '[Socket]\nListenStream=127.0.0.1:%s\n' "${PORT[node]}" | tgt_write /etc/systemd/system/seed-node.socket || abort "seed-node.socket"
  tgt_run systemctl daemon-reload || abort "daemon-reload"
  tgt_run systemctl start seed-node.socket || abort "seed-node.socket"
  for a in $APPS; do tgt_run timeout 180 systemctl start "seed-$a.service" || bad "systemctl start seed-$a"; done
}

# setup_kechi NEW: the five apps under kechi; NEW=1 adds [idle], budget and pressure
setup_kechi() {
  local new=$1 a idle=""
  for a in $APPS; do
    # the busy app is never idle: no stop-after (with one, the pause before the traffic, when the
    # idle apps are left to stop, would stop it too, and the load would begin with its cold start)
    idle=""
    [ "$new" = 1 ] && [ "$a" != starlet ] && idle=$'\n[idle]\nstop-after = "'"$SB_STOP_AFTER"'"'
    printf '[Socket]\nListenStream=127.0.0.1:%s\n' "${PORT[$a]}" | tgt_write "/etc/systemd/system/kechi@$a.socket.d/tcp.conf" \
      || abort "drop-in of kechi@$a.socket"
    tgt_write "/etc/kechi/$a.toml" <<EOF || abort "writing /etc/kechi/$a.toml"
command = $(kechi_command "$a")
directory = "$D"
user = "$KT_USER"
workers = 1
environment = { $(app_env "$a" | sed -E 's/([A-Z_]+)=([^ ]+)/\1 = "\2"/g; s/" /", /g') }

[memory]
max = "600M"

[ready]
mode = "accept"
timeout = "120s"

[stop]
signal = "$(stop_signal "$a")"
timeout = "30s"

[jemalloc]
enabled = $([ "$SB_JEMALLOC" = 1 ] && echo true || echo false)
$idle
EOF
  done
  if [ "$new" = 1 ]; then
    printf '[box]\nbudget = "%s"\npressure = "%s"\n' "$SB_BUDGET" "$SB_PRESSURE" | tgt_write /etc/kechi/kechi.conf || abort "kechi.conf"
  fi
  tgt_run systemctl daemon-reload || abort "daemon-reload"
  for a in $APPS; do
    if [ "$new" = 1 ] && [ "$a" != starlet ]; then
      tgt_run systemctl start "kechi@$a.socket" || bad "systemctl start kechi@$a.socket"
    else
      tgt_run timeout 180 systemctl start "kechi@$a" || bad "systemctl start kechi@$a"
    fi
  done
  say "/etc/kechi/starlet.toml:"
  tgt_run cat /etc/kechi/starlet.toml | sed 's/^/          | /'
  [ "$new" = 1 ] && { say "/etc/kechi/kechi.conf:"; tgt_run cat /etc/kechi/kechi.conf | sed 's/^/          | /'; }
}

# first_requests: one request to each app, until it answers (a cold start for a socket-started app;
# a plain service's port is refused until its server has loaded the app)
first_requests() {
  local a r
  for a in $APPS; do
    # shellcheck disable=SC2016
    r=$(tgt_run sh -c 'for i in $(seq 1 240); do
        r=$(curl -sS -o /dev/null -m 120 -w "%{http_code} %{time_starttransfer}" "$1" 2>/dev/null) && [ "${r%% *}" = 200 ] && break
        sleep 0.5; done; echo "$r (after $i tries)"' first "http://127.0.0.1:${PORT[$a]}/" 2>&1)
    info "$a: first request: $r"
    [ "${r%% *}" = 200 ] || bad "$a: first request: $r"
  done
}

run_config() {
  local cfg=$1 dir=$OUT/$1 cg a apps_cg="" t0 secs
  mkdir -p "$dir"
  say "===== configuration $cfg"
  tgt_up "seed${cfg//-/}"
  install_common
  case $cfg in
    plain) setup_plain ;;
    kechi) setup_kechi 0 ;;
    kechi-new) setup_kechi 1 ;;
  esac
  first_requests
  for a in $APPS; do
    if [ "$cfg" = plain ]; then cg=/sys/fs/cgroup/system.slice/seed-$a.service; else cg=/sys/fs/cgroup/kechi.slice/kechi-$a.slice; fi
    apps_cg="$apps_cg $a=$cg"
  done
  # the idle apps of kechi-new stop before the traffic starts, as they would on the box
  if [ "$cfg" = kechi-new ]; then
    sleep "${SB_STOP_AFTER%s}"
    for _ in $(seq 1 60); do
      n=0
      for a in $IDLE_APPS; do [ "$(tgt_run systemctl is-active "kechi@$a")" = active ] && n=$((n + 1)); done
      [ "$n" = 0 ] && break
      sleep 1
    done
    info "idle apps still running before the traffic: $n"
  fi
  secs=$((SB_SECONDS + 10))
  # shellcheck disable=SC2086
  tgt_run systemd-run --quiet --unit=seed-sample --collect /usr/bin/python3 "$D/sample.py" /run/seed-samples.csv "$secs" $apps_cg \
    || abort "sampler"
  sleep 5
  tgt_run systemd-run --quiet --unit=seed-busy --collect --service-type=exec "/host$OPENLOAD" \
    --addr "127.0.0.1:${PORT[starlet]}" --rate "$SB_RATE" --duration "$SB_SECONDS" --mode keepalive --timeout 10 \
    --out /run/seed-busy.csv || abort "openload"
  local visits=""
  for a in $IDLE_APPS; do visits="$visits $a=${PORT[$a]}"; done
  # shellcheck disable=SC2086
  tgt_run systemd-run --quiet --unit=seed-visit --collect /usr/bin/python3 "$D/visit.py" /run/seed-visits.csv "$SB_SECONDS" "$SB_PERIOD" 5 $visits \
    || abort "visitor"
  t0=$SECONDS
  say "$cfg: traffic for $SB_SECONDS s ($SB_RATE req/s to starlet; a visit to each other app every $SB_PERIOD s)"
  while [ $((SECONDS - t0)) -lt "$((SB_SECONDS + 8))" ]; do
    sleep 30
    info "[+$((SECONDS - t0))s] $(KT_RUN_TIMEOUT=60 tgt_sh 'tail -n 1 /run/seed-samples.csv' 2>&1 | cut -c 1-200)"
  done
  for u in seed-busy seed-visit seed-sample; do
    KT_RUN_TIMEOUT=200 tgt_run sh -c 'for i in $(seq 1 180); do systemctl -q is-active "$1" || exit 0; sleep 1; done; exit 1' w "$u" \
      || info "$u still running after 180 s more"
  done
  KT_RUN_TIMEOUT=120 tgt_run cat /run/seed-samples.csv > "$dir/samples.csv"
  KT_RUN_TIMEOUT=120 tgt_run cat /run/seed-busy.csv | gzip -9 > "$dir/busy.csv.gz"
  KT_RUN_TIMEOUT=120 tgt_run cat /run/seed-visits.csv > "$dir/visits.csv"
  # every journal entry with a REASON (recycles, restarts, idle stops), and the kernel's OOM lines
  KT_RUN_TIMEOUT=120 tgt_run journalctl -b --no-pager -o json | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if "REASON" in e or "oom" in str(e.get("MESSAGE", "")).lower():
        m = e.get("MESSAGE", "")
        print(json.dumps({k: e.get(k) for k in ("__REALTIME_TIMESTAMP", "_SYSTEMD_UNIT", "APP", "WORKER", "REASON", "MESSAGE") if k in e}))
' > "$dir/events.jsonl"
  KT_RUN_TIMEOUT=60 tgt_sh 'dmesg | grep -i "out of memory\|oom-kill\|invoked oom" || true' > "$dir/dmesg-oom.txt"
  {
    echo "config: $cfg"
    echo "date: $(date -u +%FT%TZ)"
    echo "host_loadavg_end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "vm_loadavg_end: $(tgt_run cat /proc/loadavg | cut -d' ' -f1-3)"
    echo "seconds: $SB_SECONDS rate: $SB_RATE period: $SB_PERIOD leak_kb: $SB_LEAK_KB mb: $SB_MB swap: $SB_SWAP"
    echo "stop_after: $SB_STOP_AFTER budget: $SB_BUDGET pressure: $SB_PRESSURE jemalloc: $SB_JEMALLOC"
    echo "vm_kernel: $(tgt_run uname -r)"
  } > "$dir/meta.txt"
  info "$cfg: $(wc -l < "$dir/samples.csv") samples, $(gzip -dc "$dir/busy.csv.gz" | wc -l) busy requests, $(($(wc -l < "$dir/visits.csv") - 1)) visit requests, $(wc -l < "$dir/events.jsonl") events"
  vm_down "$T"
}

scenario seedbox "the seed's box: five apps on 1 GiB, plain services vs kechi vs kechi with idle stop, budget and pressure"
H_LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for c in $SB_CONFIGS; do run_config "$c"; done
{
  echo "command: sudo bash bench/seedbox/run.sh${1:+ $1}"
  echo "servers: $(for p in starlet gunicorn puma uwsgi-core nodejs; do printf '%s %s, ' "$p" "$(dpkg-query -W -f='${Version}' "$p" 2> /dev/null)"; done | sed 's/, $//'); VM: vmbox qemu (TCG, no KVM), 1 GiB, 2 vCPUs, Linux $(cat "$OUT/plain/meta.txt" "$OUT/kechi-new/meta.txt" 2> /dev/null | sed -n 's/^vm_kernel: //p' | head -1), systemd 252, pure cgroup v2, zram swap (lzo-rle)"
  echo "host: $(nproc) CPUs, $(awk '/^MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r); load average at start $H_LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/run.txt"
/usr/bin/python3 "$HERE/report.py" "$OUT" "${SB_DOCS:-$ROOT/docs/benchmarks}" || bad "report.py"
finish
