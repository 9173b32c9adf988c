#!/bin/bash
# fuzz/ci.sh — the short fuzz runs CI does (tests/run.sh runs it as the "fuzz (short)" step).
#
#   1. installs cargo-fuzz when missing (`cargo install --locked`; CI caches ~/.cargo);
#   2. builds every target of fuzz/Cargo.toml with the stable toolchain and no sanitizer
#      (see fuzz/README.md: the targets are safe Rust, and `--sanitizer none` needs no nightly);
#   3. runs each target for FUZZ_SECONDS (default 10) from its committed seeds, one at a time,
#      with a per-input timeout of 10 s, into a throwaway corpus (the repository is not changed);
#   4. prints executions, exec/s, coverage and corpus size per target; exits 1 on any crash,
#      panic, timeout or out-of-memory, naming the input that caused it (kept under
#      fuzz/artifacts/TARGET/) and the command that replays it.
#
# Environment: FUZZ_SECONDS (per target), FUZZ_TARGETS (space-separated subset),
# CARGO_TARGET_DIR (default fuzz/target). Needs a C++ compiler for libFuzzer (g++ on Debian).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")" || exit 2
FUZZ=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-10}

# cargo where rustup put it, also under sudo (whose secure_path drops ~/.cargo/bin)
# shellcheck source=../scripts/lib/cargo.sh
. ../scripts/lib/cargo.sh
use_cargo || { echo "fuzz: cargo not found (install rustup)" >&2; exit 1; }

if ! command -v c++ > /dev/null && command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
  echo "fuzz: installing g++ (libFuzzer is C++)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ > /dev/null
fi
if ! cargo fuzz --version > /dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz || { echo "fuzz: cannot install cargo-fuzz" >&2; exit 1; }
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
t0=$SECONDS
echo "fuzz: building $(echo $targets | wc -w) targets ($(cargo fuzz --version))"
cargo fuzz build --sanitizer none || { echo "fuzz: build failed" >&2; exit 1; }
echo "fuzz: built in $((SECONDS - t0)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -a rows=()
failed=0
for t in $targets; do
  dict=""
  case "$t" in
    config) dict=-dict=$FUZZ/dicts/config.dict ;;
    control_*) dict=-dict=$FUZZ/dicts/control.dict ;;
  esac
  mkdir -p "$work/$t" "$FUZZ/artifacts/$t"
  # The first corpus directory gets what the run finds; the seeds are only read.
  cargo fuzz run --sanitizer none "$t" "$work/$t" "$FUZZ/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 $dict \
    > "$work/$t.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$')
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
  corp=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*')
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result=FAIL
    failed=$((failed + 1))
    echo "fuzz: $t FAILED (exit status $rc); the end of its log:"
    tail -40 "$work/$t.log"
    art=$(grep -o 'artifact_prefix=[^;]*; Test unit written to [^ ]*' "$work/$t.log" | sed 's/.*written to //' | tail -1)
    [ -n "$art" ] && echo "fuzz: replay with: cd fuzz && cargo fuzz run --sanitizer none $t ${art#"$FUZZ"/}"
  fi
  rows+=("$(printf '%-16s %-5s %10s %8s %6s %7s %6s' "$t" "$result" "${execs:--}" "${speed:--}" "${cov:--}" "${ft:--}" "${corp:--}")")
done

printf '\n%-16s %-5s %10s %8s %6s %7s %6s\n' TARGET RESULT EXECS EXEC/S COV FT CORPUS
printf '%s\n' "${rows[@]}"
echo "fuzz: $((SECONDS - t0)) s in all, ${SECONDS_EACH} s per target"
[ "$failed" = 0 ] || { echo "fuzz: $failed target(s) failed"; exit 1; }
