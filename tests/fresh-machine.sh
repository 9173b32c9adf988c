#!/bin/bash
# tests/fresh-machine.sh — README's "Two commands", as a newcomer types them, on a clean clone.
#
#   tests/fresh-machine.sh [--full] [--warm] [--keep] [--only nosudo|sudo]
#
# Clones this repository's committed HEAD (uncommitted changes are not in it) into a new folder
# under /tmp, takes the commands from the code block of README's "Two commands" section (so that
# this check fails when README changes and what it says no longer works), and runs each of them,
# as root, from the clone, twice:
#
#   nosudo  as root on a machine without sudo: in a private mount namespace whose /usr/bin hides
#           sudo (an overlay with a whiteout), with a bare environment (HOME=/root, PATH of
#           Debian's root shell without ~/.cargo/bin): the commands exactly as README gives them;
#   sudo    as README tells any other user: `sudo` in front of each, same bare environment (sudo's
#           secure_path drops ~/.cargo/bin too). Needs sudo installed (SKIPPED otherwise).
#
# Each command gets the flag that makes it finish on its own: run-example.sh `--check` (it would
# wait for Enter), and tests/run.sh `--quick` (fmt, clippy, build, unit tests; the whole run takes
# about 30 minutes and runs the scenarios, which the harness runs anyway) unless --full.
# Prints PASS/FAIL per command and variant with durations; exit status 1 on any FAIL.
#
# Options: --full (tests/run.sh without --quick), --warm (copy this repository's target/ into the
# clone first: the dependencies need not be compiled again; without it the clone builds from
# cold, as on a fresh machine), --keep (leave the clone), --only VARIANT.
# Needs root, git, unshare, and cargo under ~/.cargo (rustup's place).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 2
ROOT=$PWD

full=0 warm=0 keep=0 variants="nosudo sudo"
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full=1 ;;
    --warm) warm=1 ;;
    --keep) keep=1 ;;
    --only) [ $# -ge 2 ] || { echo "--only needs nosudo or sudo" >&2; exit 2; }; variants=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "fresh-machine.sh: run it as root (README's commands are run as root)" >&2; exit 2; }

# ---- README's commands ---------------------------------------------------------------------------
# the first ```sh block of the "## Two commands" section; a command is a line less its comment
readme_commands() {
  awk '/^## Two commands/ { sec = 1; next }
       sec && /^## / { exit }
       sec && /^```sh/ { blk = 1; next }
       blk && /^```/ { exit }
       blk { sub(/[ \t]*#.*/, ""); if ($0 != "") print }' README.md
}
mapfile -t COMMANDS < <(readme_commands)
[ "${#COMMANDS[@]}" -gt 0 ] || { echo "fresh-machine.sh: no commands in README's \"Two commands\" code block" >&2; exit 1; }
for c in "${COMMANDS[@]}"; do
  case "$c" in
    sudo\ *) echo "fresh-machine.sh: README's command '$c' starts with sudo: as root on a machine without sudo it cannot work" >&2; exit 1 ;;
  esac
done

flags_for() {  # the flag that makes a README command finish by itself
  case "$1" in
    *run-example.sh*) echo "--check" ;;
    *tests/run.sh*) [ "$full" = 1 ] || echo "--quick" ;;
  esac
}

# ---- the clone -----------------------------------------------------------------------------------
work=$(mktemp -d /tmp/kechi-fresh.XXXXXX)
chmod 0755 "$work"
cleanup() { [ "$keep" = 1 ] && { echo "clone kept: $work/kechi"; return; }; rm -rf "$work"; }
trap cleanup EXIT
git clone --quiet --no-hardlinks "$ROOT" "$work/kechi" || { echo "fresh-machine.sh: git clone failed" >&2; exit 1; }
echo "clean clone of $(git -C "$work/kechi" rev-parse --short HEAD) in $work/kechi"
if [ "$warm" = 1 ] && [ -d "$ROOT/target" ]; then
  echo "--warm: copying target/ into the clone"
  cp -a "$ROOT/target" "$work/kechi/" 2> /dev/null || true
  rm -rf "$work/kechi/target/system-tests"
fi

# ---- one variant ---------------------------------------------------------------------------------
# What runs inside the private mount namespace: hide sudo (nosudo), check the environment is what
# a newcomer has, then the command. Arguments: VARIANT COMMAND-LINE.
inner() {
  local variant=$1 line=$2 ov
  if [ "$variant" = nosudo ]; then
    ov=$(mktemp -d /tmp/kechi-fresh-ov.XXXXXX)
    mount -t tmpfs fresh-ov "$ov" && mkdir "$ov/upper" "$ov/work" &&
      mknod "$ov/upper/sudo" c 0 0 && mknod "$ov/upper/sudoedit" c 0 0 &&
      mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$ov/upper,workdir=$ov/work" /usr/bin ||
      { echo "cannot hide sudo (overlay on /usr/bin)"; return 1; }
    if command -v sudo > /dev/null; then echo "sudo is still there: $(command -v sudo)"; return 1; fi
  else
    command -v sudo > /dev/null || { echo "no sudo"; return 1; }
  fi
  if command -v cargo > /dev/null; then echo "cargo is on PATH ($(command -v cargo)): not a newcomer's root shell"; return 1; fi
  echo "\$ $line"
  bash -c "$line"
}

declare -a R_NAME=() R_RESULT=() R_TIME=()
run_variant() {
  local variant=$1 c line t0 rc log
  for c in "${COMMANDS[@]}"; do
    line="$c"
    [ "$variant" = sudo ] && line="sudo $c"
    f=$(flags_for "$c")
    [ -n "$f" ] && line="$line $f"
    log=$work/$variant-$(basename "${c%% *}" .sh).log
    printf '\n##### %s: %s\n' "$variant" "$line"
    t0=$SECONDS
    (
      cd "$work/kechi" || exit 2
      exec env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM="${TERM:-dumb}" LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        unshare --mount --propagation private bash -c "$(declare -f inner); inner \"\$@\"" inner "$variant" "$line"
    ) < /dev/null > "$log" 2>&1
    rc=$?
    tail -n 25 "$log"
    R_NAME+=("$variant: $line")
    R_TIME+=($((SECONDS - t0)))
    if [ "$rc" = 0 ]; then R_RESULT+=(PASS); else R_RESULT+=("FAIL ($rc)"); fi
  done
}

for v in $variants; do
  case "$v" in
    nosudo) run_variant nosudo ;;
    sudo)
      if [ -x /usr/bin/sudo ]; then run_variant sudo
      else R_NAME+=("sudo: (every command)"); R_RESULT+=("SKIP (no sudo here: apt-get install sudo)"); R_TIME+=(0); fi ;;
    *) echo "unknown variant $v (nosudo or sudo)" >&2; exit 2 ;;
  esac
done

printf '\n##### fresh-machine summary\n'
fails=0
for i in "${!R_NAME[@]}"; do
  printf '%-12s %5ss  %s\n' "${R_RESULT[$i]%% *}" "${R_TIME[$i]}" "${R_NAME[$i]}"
  case "${R_RESULT[$i]}" in FAIL*) fails=$((fails + 1)) ;; esac
done
passed=$(printf '%s\n' "${R_RESULT[@]}" | grep -c '^PASS')
echo "$passed passed, $fails failed"
[ "$fails" = 0 ]
