#!/bin/bash
# tests/compat-matrix.sh — kechi's compatibility matrix (docs/APP-SERVERS.md), in one command:
# runs every row (tests/system/t_compat_*.sh, through tests/run.sh), collects the COMPAT lines each
# row prints at its end (tests/system/lib/zero.sh), and rewrites the table between the
# "<!-- matrix:begin -->" and "<!-- matrix:end -->" lines of docs/APP-SERVERS.md.
#
#   sudo tests/compat-matrix.sh                    run every row (one at a time), then the table
#   tests/compat-matrix.sh --from-logs [DIR]       no run: the table from the logs in DIR (default
#                                                  target/system-tests, where tests/run.sh and CI
#                                                  leave them)
#
# Options:
#   --only NAME      run only this row (t_compat_NAME.sh; repeatable); the table keeps the other
#                    rows' results found in the log directory
#   --jobs N         rows at once (default 1: a row's p99 is less disturbed by no other row)
#   --from-logs [DIR]  build the table from DIR/*.log without running anything
#   --doc FILE       the file whose table to rewrite (default docs/APP-SERVERS.md)
#   --print          print the table on stdout, rewrite no file
#   -h, --help       this text
# Environment: KT_LOGDIR (default target/system-tests), KECHI_BIN_DIR (binaries to test).
#
# A row is green only when both of its loads (keep-alive and "Connection: close") had 0 failed
# requests; a row whose log has no COMPAT line (it failed before the end, or was skipped) is listed
# as such. The p99 ratio is the whole run's p99 (through every step) over the row's steady p99
# (the same loads for 5 s before the first step). Exit status: 0 every row green, 1 otherwise,
# 2 bad usage.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 2
ROOT=$PWD

logdir=${KT_LOGDIR:-$ROOT/target/system-tests} run=1 jobs=1 doc=docs/APP-SERVERS.md print=0
only=()
argv=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --from-logs) run=0
      if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then logdir=$(readlink -f "$2"); shift; fi ;;
    --from-logs=*) run=0; logdir=$(readlink -f "${1#--from-logs=}") ;;
    --only) [ $# -ge 2 ] || { echo "--only needs a row name (e.g. starlet)" >&2; exit 2; }; only+=("$2"); shift ;;
    --only=*) only+=("${1#--only=}") ;;
    --jobs) [ $# -ge 2 ] || { echo "--jobs needs a number" >&2; exit 2; }; jobs=$2; shift ;;
    --doc) [ $# -ge 2 ] || { echo "--doc needs a file" >&2; exit 2; }; doc=$2; shift ;;
    --print) print=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "--jobs wants a positive number" >&2; exit 2; }

if [ "$run" = 1 ]; then
  rows=()
  if [ ${#only[@]} -gt 0 ]; then
    for o in "${only[@]}"; do
      o=${o%.sh}; o=${o#t_}; o=${o#compat_}
      [ -e "tests/system/t_compat_$o.sh" ] || { echo "no row $o (tests/system/t_compat_$o.sh)" >&2; exit 2; }
      rows+=(--only "compat_$o")
    done
  else
    for f in tests/system/t_compat_*.sh; do rows+=(--only "$(basename "$f" .sh)"); done
  fi
  [ ${#rows[@]} -gt 0 ] || { echo "no tests/system/t_compat_*.sh" >&2; exit 2; }
  KT_COMPAT_KNOWN_LOSS=1 KT_LOGDIR=$logdir tests/run.sh --system-only --no-packages --no-install --jobs "$jobs" "${rows[@]}"
fi
[ -d "$logdir" ] || { echo "no log directory $logdir (run the rows first, or name one with --from-logs DIR)" >&2; exit 2; }

cmdline="tests/compat-matrix.sh${argv[*]:+ ${argv[*]}}"
python3 - "$logdir" "$doc" "$print" "$cmdline" "$(nproc)" <<'PY'
import datetime, glob, os, re, shlex, sys

logdir, doc, to_stdout, cmdline, cores = sys.argv[1:6]

def parse(line):
    f = {}
    for tok in shlex.split(line)[1:]:
        k, _, v = tok.partition("=")
        f[k] = v
    return f

cands = {}       # (row, tier) -> [fields], from every log
missing = []     # t_compat_* logs with no COMPAT line
for path in sorted(glob.glob(os.path.join(logdir, "*.log"))):
    with open(path, errors="replace") as fh:
        text = fh.read()
    found = [parse(l) for l in text.splitlines() if l.startswith("COMPAT ")]
    name = os.path.basename(path)[:-4]
    if not found:
        if name.startswith("t_compat_"):
            skipped = re.search(r"SKIPPED \((.*)\)", text)
            failed = re.search(r"^ +FAIL +(.*)$", text, re.M)
            missing.append((name, "skipped: " + skipped.group(1) if skipped
                            else "failed before its end: " + failed.group(1) if failed else "no result"))
        continue
    verdict = re.search(r"FAIL: (\d+) of \d+ checks failed", text)
    for f in found:
        f["log"] = name
        f["other_fails"] = int(verdict.group(1)) if verdict else 0
        cands.setdefault((f.get("row", name), f.get("tier", "v1")), []).append(f)
rows = {}        # (row, tier) -> {load: fields}, from the newest log that has the row
for key, lst in cands.items():
    newest = max(lst, key=lambda f: f.get("date", ""))["log"]
    rows[key] = {f.get("load"): f for f in lst if f["log"] == newest}

def num(s, default=0):
    try:
        return int(s)
    except (TypeError, ValueError):
        return default

def ratio(f):
    r = f.get("p99_ratio", "-")
    return "-" if r == "-" else "×" + r

out = []
out.append("| row | server | command | socket unit | ready | stop | steps | keep-alive: served | failed | p99 | close: served | failed | p99 | |")
out.append("| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
all_green = True
for (row, tier), loads in sorted(rows.items()):
    ka, cl = loads.get("keepalive", {}), loads.get("close", {})
    any_f = ka or cl
    failed = num(ka.get("failed"), 1) + num(cl.get("failed"), 1) if ka and cl else None
    green = failed == 0
    all_green &= green
    label = row if tier == "v1" else "{} ({})".format(row, tier)
    # (logs from before the field have no socket= at all: left blank)
    socket = any_f.get("socket")
    if socket is not None and not socket.startswith("TCP only"):
        socket = ("Unix + TCP " + socket).strip()
    cells = [label, any_f.get("server", ""), "`{}`".format(any_f.get("command", "")),
             "" if socket is None else socket,
             any_f.get("ready", ""),
             any_f.get("stop", ""), any_f.get("steps", "")]
    for f in (ka, cl):
        cells += [f.get("served", "-"), f.get("failed", "-"), ratio(f)] if f else ["-", "-", "-"]
    verdict = "🟢 0 failed" if green else "🔴 {} failed".format(failed if failed is not None else "?")
    if not green and any_f.get("known"):
        verdict += ": " + any_f["known"]
    if any_f.get("other_fails"):
        verdict += " ({} checks of its test failed: see {}.log)".format(any_f["other_fails"], any_f["log"])
    cells.append(verdict)
    out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
for name, why in missing:
    if not any(f["log"] == name for v in rows.values() for f in v.values()):
        all_green = False
        out.append("| {} | | | | | | | | | | | | 🔴 {} |".format(name[len("t_compat_"):], why.replace("|", "\\|")))
out.append("")
out.append("Latency in milliseconds, steady phase (5 s before the first step) and the whole run (every step), per load:")
out.append("")
out.append("| row | load | p99 steady | p99 run | p99.9 run | max run | row took | load average at its end | date (UTC) |")
out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
for (row, tier), loads in sorted(rows.items()):
    label = row if tier == "v1" else "{} ({})".format(row, tier)
    for load in ("keepalive", "close"):
        f = loads.get(load)
        if not f:
            continue
        out.append("| {} | {} | {} | {} | {} | {} | {} s | {} | {} |".format(
            label, load, f.get("p99_steady_ms"), f.get("p99_ms"), f.get("p999_ms"), f.get("max_ms"),
            f.get("secs"), f.get("loadavg"), f.get("date", "").replace("T", " ").rstrip("Z")))
out.append("")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
with open("/proc/loadavg") as fh:
    la = " ".join(fh.read().split()[:3])
out.append("Generated {} by `{}` from `{}` ({} cores; load average {} when the table was made).".format(
    now, cmdline, os.path.relpath(logdir) if not os.path.relpath(logdir).startswith("..") else logdir, cores, la))
table = "\n".join(out)

if to_stdout == "1":
    print(table)
else:
    with open(doc) as fh:
        text = fh.read()
    b, e = "<!-- matrix:begin -->", "<!-- matrix:end -->"
    if b not in text or e not in text or text.index(b) > text.index(e):
        sys.exit("{}: no '{}' line followed by a '{}' line to put the table between".format(doc, b, e))
    head, rest = text.split(b, 1)
    _, tail = rest.split(e, 1)
    with open(doc + ".tmp", "w") as fh:
        fh.write(head + b + "\n" + table + "\n" + e + tail)
    os.replace(doc + ".tmp", doc)
    print("{}: the matrix rewritten ({} rows{})".format(doc, len(rows), ", every one green" if all_green and rows else ""))
sys.exit(0 if all_green and rows else 1)
PY
