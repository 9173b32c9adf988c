#!/bin/bash
# bench/run.sh NAME [--quick] [ARGS...]: runs one benchmark, bench/NAME/run.sh, from the repository
# root. Every benchmark takes --quick (under 5 minutes) and writes its raw figures under
# bench/results/NAME/ and its report (tables, PNG plots, the command, the machine, the date) under
# docs/benchmarks/ (docs/BENCHMARKS.md is then rebuilt from those reports by bench/assemble.py).
# `bench/run.sh list` names them; `bench/run.sh all [--quick]` runs every one.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 1

list() { for d in bench/*/; do [ -x "$d/run.sh" ] && basename "$d"; done; }

case "${1:-}" in
  "" | -h | --help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "benchmarks: $(list | tr '\n' ' ')"
    exit 0 ;;
  list) list; exit 0 ;;
  all)
    shift
    rc=0
    for b in $(list); do echo "##### $b"; bash "bench/$b/run.sh" "$@" || rc=1; done
    python3 bench/assemble.py || rc=1
    exit "$rc" ;;
esac
name=$1
shift
[ -x "bench/$name/run.sh" ] || { echo "bench/run.sh: no benchmark '$name' (have: $(list | tr '\n' ' '))" >&2; exit 2; }
bash "bench/$name/run.sh" "$@"
rc=$?
# docs/BENCHMARKS.md is put together from every report (bench/assemble.py)
python3 bench/assemble.py || rc=1
exit "$rc"
