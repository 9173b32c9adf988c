#!/bin/bash
# mem.sh — what the memory scenarios (t_mem_*.sh) share, on top of scenario.sh: kechid's memory
# figures as `kechictl status --json` and the journal give them, read in a few round trips.
#
#   mem_status                 kechictl status demo --json (raw), in MEM_STATUS; 1 if it failed
#   mem_workers_table JSON     one line per worker: serial pid state processes rss pss uss shared% cgroup
#   mem_field JSON EXPR        a Python expression over the status as `s` (e.g. "len(s['workers'])")
#   mem_total JSON METRIC      the sum over the workers of memory.METRIC (rss|pss|uss|cgroup), bytes
#   mem_journal CURSOR         kechid's journal records that carry REASON=, after CURSOR, one a line:
#                              "REASON=.. WORKER=.. PID=.. [RSS=.. PSS=.. USS=.. SHARED=.. CGROUP=..] | MESSAGE"
#   mem_wait_journal CURSOR ERE SECS   until a line of mem_journal matches ERE; prints the matches
#   mib BYTES                  "123.4 MiB"
#   mem_smaps PID...           straight from /proc/PID/smaps_rollup in the test machine (no kechi):
#                              "PID rss pss uss shared" in KiB, to check kechi's figures against
# shellcheck disable=SC2016  # Python code in single quotes

MEM_STATUS=""

mem_status() {
  MEM_STATUS=$(tgt_run kechictl status "$KT_APP" --json 2>&1) || return 1
  printf '%s' "$MEM_STATUS" | python3 -c 'import json, sys; json.load(sys.stdin)' 2>/dev/null
}

mem_field() {  # mem_field JSON EXPR
  printf '%s' "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
v = eval(sys.argv[1])
print(v if v is not None else "")
' "$2" 2>/dev/null
}

mem_total() {  # mem_total JSON METRIC
  mem_field "$1" "sum((w.get('memory') or {}).get('$2') or 0 for w in s['workers'])"
}

mem_workers_table() {
  printf '%s' "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
def mib(b):
    return "-" if b is None else "{:.1f}M".format(b / 1048576.0)
print("{:>6} {:>7} {:>9} {:>5} {:>9} {:>9} {:>9} {:>7} {:>9}".format(
    "serial", "pid", "state", "procs", "rss", "pss", "uss", "shared", "cgroup"))
for w in s["workers"]:
    m = w.get("memory") or {}
    sp = m.get("shared_percent")
    print("{:>6} {:>7} {:>9} {:>5} {:>9} {:>9} {:>9} {:>7} {:>9}".format(
        w["serial"], w["pid"], w["state"], m.get("processes", "-"), mib(m.get("rss")), mib(m.get("pss")),
        mib(m.get("uss")), "-" if sp is None else "{:.0f}%".format(sp), mib(m.get("cgroup"))))
' 2>&1
}

mib() { awk -v b="${1:-0}" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

mem_journal() {  # mem_journal CURSOR
  local c=$1 args=("${_KT_JSINCE[@]}")
  [ -n "$c" ] && args=(--after-cursor="$c")
  # filtered here, not with a journalctl match: see journal_unit_after in scenario.sh
  tgt_run journalctl --no-pager -o json "${args[@]}" | python3 -c '
import json, sys
unit = sys.argv[1]
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if "REASON" not in e or e.get("_SYSTEMD_UNIT") != unit:
        continue
    m = e.get("MESSAGE", "")
    if isinstance(m, list):
        m = bytes(m).decode("utf-8", "replace")
    f = " ".join("{}={}".format(k, e[k]) for k in
                 ("REASON", "WORKER", "PID", "RSS", "PSS", "USS", "SHARED", "CGROUP") if k in e)
    print("{} | {}".format(f, m))
' "kechi@$KT_APP.service"
}

mem_wait_journal() {  # mem_wait_journal CURSOR ERE SECS
  local end=$((SECONDS + $3)) lines
  while :; do
    lines=$(mem_journal "$1" | grep -E -- "$2")
    if [ -n "$lines" ]; then printf '%s\n' "$lines"; return 0; fi
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.5
  done
}

# a field of one mem_journal line: jfield LINE NAME
jfield() { printf '%s\n' "${1%% | *}" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

mem_smaps() {
  # shellcheck disable=SC2016
  tgt_run sh -c 'for p in "$@"; do
    awk -v p="$p" "/^Rss:/ { r = \$2 } /^Pss:/ { s = \$2 } /^Private_(Clean|Dirty):/ { u += \$2 }
      /^Shared_(Clean|Dirty):/ { h += \$2 } END { if (r != \"\") print p, r, s, u, h }" "/proc/$p/smaps_rollup" 2>/dev/null
  done' mem_smaps "$@"
}

# the children of a process in the test machine, one pid a line
mem_children() { tgt_run sh -c 'cat /proc/$1/task/*/children 2>/dev/null | tr " " "\n" | grep . | sort -n' kids "$1"; }

# mem_wait_procs UNIT N SECS: until the scope UNIT holds N processes; prints them
mem_wait_procs() {
  local end=$((SECONDS + $3)) p
  while :; do
    p=$(kt procs "$1")
    if [ "$(printf '%s\n' "$p" | grep -c .)" = "$2" ]; then printf '%s\n' "$p"; return 0; fi
    [ "$SECONDS" -lt "$end" ] || { printf '%s\n' "$p"; return 1; }
    sleep 0.2
  done
}

# mem_sampler_start NAME: `kechictl status --json` every second, inside the test machine (unit
# kt-mem-NAME, apps/mem_sampler.py), so that slow round trips from this host never thin the samples
mem_sampler_start() {
  tgt_run rm -f "/run/kt-mem-$1.jsonl"
  tgt_run systemd-run --quiet --unit="kt-mem-$1" --collect --service-type=exec \
    /usr/bin/python3 "$KT_INSIDE/mem_sampler.py" "$KT_APP" "/run/kt-mem-$1.jsonl" 1
}
# mem_sampler_stop NAME: stops it; prints its samples (JSON lines)
mem_sampler_stop() {
  tgt_run systemctl stop "kt-mem-$1" 2>/dev/null
  tgt_run cat "/run/kt-mem-$1.jsonl"
}

# mem_ready_init: sets MEM_READY, the [ready] section for Starlet apps: accept (kechid sees the
# children waiting in accept), with a delay of 8s for kernels without /proc/PID/syscall (User-mode
# Linux, a backend of the v2 VM), where kechid falls back to it. KT_READY_MODE overrides the mode.
MEM_READY=""
mem_ready_init() {
  local mode=${KT_READY_MODE:-accept}
  if [ "$mode" = accept ] && ! tgt_run test -e /proc/self/syscall; then
    info "no /proc/PID/syscall in the test machine: kechid cannot see a worker waiting in accept, and should fall back to ready.delay (8s)"
  fi
  MEM_READY=$(printf '[ready]\nmode = "%s"\ndelay = "8s"\ntimeout = "120s"' "$mode")
}
