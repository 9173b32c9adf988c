#!/bin/bash
# bench/footprint/link-order.sh [--steady SECS] [--keep DIR]
#
# Regenerates link/kechid-order.ld, the order in which the linker lays out kechid's functions
# (build.rs passes it to the release link of kechid). Why: the kernel maps up to 64 KiB around
# every page fault in a file mapping (fault-around), so a function run once every few seconds
# keeps its whole 64 KiB neighbourhood of the executable resident. In the default layout the
# ~140 KiB of code kechid runs while it only supervises is spread over the whole binary and keeps
# nearly all of its 1.7 MiB of code mapped; packed together, it keeps a few windows.
#
# How the groups are found: in a throwaway box with a real systemd (as bench/footprint/run.sh),
# a uprobe on the entry of every function of an unstripped release build counts its calls
# (bench/footprint/uprobes.py; kechid runs as in production, at nearly full speed). The counts
# are read at the ends of three phases:
#   startup  from exec until 8 workers run and 10 s have passed
#   steady   SECS seconds (default 120) of supervising, nothing else happening
#   events   kechictl status (text and JSON), recycle --all --wait, kill -9 of a worker (kechid
#            starts a new one), systemctl reload (re-reads the config, replaces every worker)
# and what runs when kechid gives back its pages, 2 s after the status request (src/trim.rs),
# counts as steady: it runs right after the pages were dropped, every time.
# Twice: with no memory policy (statm and the cgroup figure every 5 s), and with every policy that
# reads each worker's smaps_rollup every second. A function called in the steady phase of either
# run goes to .text.kechid_steady, else in an events phase to .text.kechid_events, else at
# start-up to .text.kechid_startup; the rest (never run here: error paths, panics, the backtrace
# printer, D-Bus object-server code kechid never serves) stays in .text behind them.
#
# Each function is named by a pattern that leaves out what changes from build to build (the hash
# of legacy Rust symbol names, the crate disambiguators and back-references of v0 names, LLVM's
# numeric suffixes of local symbols), so the script keeps working across dependency and compiler
# updates as long as the functions keep their paths; one it no longer matches is merely laid out
# in .text. Regenerate it when kechid's steady-state code changes (CI's bound on kechid's USS,
# bench/ci.sh, is what notices).
#
# Needs root (the box, tracefs); builds the unstripped release build into target/link-order.
# --keep DIR keeps the raw counts there.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ROOT=$(readlink -f "$HERE/../..")
# shellcheck source=tests/system/lib/scenario.sh
. "$ROOT/tests/system/lib/scenario.sh"
# shellcheck source=bench/footprint/supervisors.sh
. "$HERE/supervisors.sh"

STEADY=120 KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steady) STEADY=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h | --help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "link-order: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || skip "needs root (it boots a systemd in a throwaway box)"

WORK=$(mktemp -d /tmp/kechi-link-order.XXXXXX)
export CARGO_TARGET_DIR=$ROOT/target/link-order
echo "link-order: building the unstripped release build in $CARGO_TARGET_DIR" >&2
(cd "$ROOT" && CARGO_PROFILE_RELEASE_STRIP=false nice -n 10 cargo build --release --bins) || exit 1
export KECHI_BIN_DIR=$CARGO_TARGET_DIR/release
/usr/bin/python3 "$HERE/link-order.py" functions "$KECHI_BIN_DIR/kechid" > "$WORK/functions" || exit 1

PROBES=/usr/lib/kechi-test/uprobes
scenario link-order "which of kechid's functions run at start-up, in the steady state, for events"
keep() { [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp -r "$WORK"/* "$KEEP"/ && echo "link-order: raw counts and logs in $KEEP" >&2; }
box_on_exit "tgt_run journalctl -b --no-pager -o short-monotonic > '$WORK/journal' 2>&1; tgt_run $PROBES remove; keep; rm -rf '$WORK'"
tgt_up blinkorder
kechi_install
tgt_copy_in "$HERE/inside.sh" "$FP_IN" || abort "copying the benchmark helper in"
tgt_copy_in "$HERE/uprobes.py" "$PROBES" || abort "copying the probe helper in"
tgt_copy_in "$WORK/functions" /var/tmp/link-order.functions || abort "copying the function list in"
tgt_run "$PROBES" add /usr/bin/kechid /var/tmp/link-order.functions || abort "no uprobes"
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "kechi@$KT_APP.socket"

for pol in off on; do
  run=$WORK/run-$pol
  mkdir -p "$run"
  snap() { tgt_run "$PROBES" counts > "$run/counts-$1" || abort "reading the counts"; }
  fp_kechi_config 8 "$pol"
  snap 0
  say "policies $pol: start-up"
  tgt_run timeout 120 systemctl start "kechi@$KT_APP.service" || abort "kechi@$KT_APP did not start"
  tgt_run "$FP_IN" wait-count "$KT_USER" 8 120 || abort "not running its 8 workers"
  sleep 10
  snap 1
  say "policies $pol: steady for $STEADY s"
  sleep "$STEADY"
  snap 2
  say "policies $pol: events"
  tgt_run timeout 60 kechictl status "$KT_APP" > /dev/null || bad "kechictl status"
  sleep 1
  snap 3
  sleep 4  # kechid gives back its pages 2 s after the request: that code runs after every release
  snap 4
  tgt_run timeout 60 kechictl status "$KT_APP" --json > /dev/null || bad "kechictl status --json"
  tgt_run timeout 300 kechictl recycle "$KT_APP" --all --wait > /dev/null || bad "kechictl recycle --all --wait"
  tgt_run sh -c "kill -KILL \$(pgrep -u $KT_USER | head -1)"
  sleep 5
  tgt_run "$FP_IN" wait-count "$KT_USER" 8 60 || bad "no new worker after kill -9"
  tgt_run timeout 120 systemctl reload "kechi@$KT_APP.service" || bad "systemctl reload"
  sleep 20
  tgt_run "$FP_IN" wait-count "$KT_USER" 8 60 || bad "not 8 workers after the reload"
  snap 5
  awk '$2 > 0' "$run/counts-5" | wc -l | sed "s/^/          functions run so far: /"
  tgt_run timeout 120 systemctl stop "kechi@$KT_APP.service" || bad "systemctl stop"
  tgt_run "$FP_IN" wait-count "$KT_USER" 0 60 || bad "workers left after the stop"
done
tgt_run "$PROBES" remove

if [ "$_KT_FAILS" = 0 ]; then
  /usr/bin/python3 "$HERE/link-order.py" script --binary "$KECHI_BIN_DIR/kechid" \
    --commit "$(git -C "$ROOT" rev-parse --short HEAD)" --steady "$STEADY" \
    "$WORK/run-off" "$WORK/run-on" > "$WORK/kechid-order.ld" &&
    cp "$WORK/kechid-order.ld" "$ROOT/link/kechid-order.ld" && say "wrote link/kechid-order.ld"
fi
finish
