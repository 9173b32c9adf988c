#!/bin/bash
# t_example: README's first command, as README gives it: `scripts/run-example.sh` as root, here
# with --check so that it does not wait for Enter, and with the PATH of a root shell that has no
# ~/.cargo/bin in it (a fresh login, or sudo's secure_path): the script must find cargo itself.
# On this machine (PID 1 is not systemd) it boots its own throwaway systemd, named
# kechi-example-<its pid> (the harness's boxes are kt-<pid>-NAME, so the two never collide), runs
# the example app there, checks that every worker is ready and every request is answered before
# and after a recycle, then takes that systemd down.
# This scenario checks that the script says OK and exits 0, that the app answered, that its screen
# fits a 50-line terminal with the lines it adds when it waits for Enter, and that nothing of the
# throwaway systemd is left: no state file, no cgroup, no process.
# Then `run-example.sh --foreground --check`: kechid without systemd, on the example config
# pointed at this clone's app, answering, recycling, and leaving nothing in its runtime directory.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_example "README's scripts/run-example.sh: the example comes up, answers, and is cleaned up"
[ "$(id -u)" = 0 ] || skip "needs root"
[ "$(cat /proc/1/comm 2>/dev/null)" != systemd ] ||
  skip "this machine's PID 1 is systemd: run-example.sh would install the example on it for real"
command -v cargo > /dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] ||
  skip "no cargo (run-example.sh builds kechi)"
export KT_STATE=${KT_STATE:-/run/kechi-test}
# a root shell's PATH, without ~/.cargo/bin
BARE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

out=$(mktemp)
t0=$SECONDS
say "scripts/run-example.sh --check (as root, PATH=$BARE_PATH; its output follows)"
PATH=$BARE_PATH timeout --kill-after=30 600 bash "$KT_ROOT/scripts/run-example.sh" --check > "$out" 2>&1 < /dev/null
rc=$?
sed 's/^/          | /' "$out"
expect_eq "run-example.sh --check: exit status ($((SECONDS - t0)) s)" "$rc" 0
last=$(grep -v '^$' "$out" | tail -1)
expect_eq "its last line" "$last" "run-example.sh: OK"

# what a person sees: the screen, and the 4 lines (how to reach it, a shell) it adds before waiting
# for Enter, within 50 lines
lines=$(wc -l < "$out")
if [ $((lines + 4)) -le 50 ]; then ok "its screen: $lines lines, $((lines + 4)) when it waits for Enter (fits 50)"; else bad "its screen: $lines lines (+4 when it waits for Enter): more than a 50-line terminal"; fi
if grep -q '"X total": the app.s memory' "$out"; then ok "it says what the status figures mean"; else bad "no legend of the status figures on its screen"; fi
if grep -qE '^ +[0-9]+ +[0-9]+ +kechi-example-[0-9]+\.scope +ready +[0-9]+[smhd]+ ' "$out"; then ok "AGE has a unit"; else bad "AGE without a unit in the status table"; fi

answers=$(grep -c '^hello from worker [0-9]' "$out")
# four requests, then two after recycling every worker
expect_eq "requests answered by a worker" "$answers" 6
after=$(sed -n '/kechictl recycle example --all --wait/,$p' "$out" | grep '^hello from worker ' | awk '{ print $4 }' | sort -u | tr '\n' ' ')
info "workers answering after the recycle: $after"
if [ -n "$after" ] && ! [[ " $after" =~ \ [12]\  ]]; then ok "after the recycle only new workers answer ($after)"; else bad "after the recycle: workers '$after' (want serials above 2)"; fi

name=$(sed -n 's/^==> booting a throwaway systemd \(kechi-example-[0-9]*\) .*/\1/p' "$out")
if [ -n "$name" ]; then ok "it booted its own throwaway systemd: $name"; else bad "no throwaway systemd named in its output"; fi
if [ -n "$name" ]; then
  left=$(find "$KT_STATE" -maxdepth 1 -name "$name.*" 2> /dev/null | tr '\n' ' ')
  expect_eq "state files of $name left in $KT_STATE" "${left:-none}" none
  cgs=$(find /sys/fs/cgroup -maxdepth 2 -type d -name "kechi-test-$name" 2> /dev/null | tr '\n' ' ')
  expect_eq "cgroups of $name left" "${cgs:-none}" none
  # a process of the example (kechid, the workers, the box's systemd) would still run from its
  # overlay or in one of those cgroups
  procs=$(grep -l "kechi-test-$name" /proc/[0-9]*/cgroup 2> /dev/null | cut -d/ -f3 | tr '\n' ' ')
  expect_eq "processes left in its cgroups" "${procs:-none}" none
  mnts=$(grep -c "$name" /proc/self/mountinfo)
  expect_eq "mounts of $name left on this host" "$mnts" 0
fi

# ---- without systemd: --foreground --check, on a port of its own ---------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "scripts/run-example.sh --foreground --check (EXAMPLE_LISTEN=127.0.0.1:$port)"
t0=$SECONDS
EXAMPLE_LISTEN=127.0.0.1:$port PATH=$BARE_PATH timeout --kill-after=30 300 \
  bash "$KT_ROOT/scripts/run-example.sh" --foreground --check > "$out" 2>&1 < /dev/null
rc=$?
sed 's/^/          | /' "$out"
expect_eq "run-example.sh --foreground --check: exit status ($((SECONDS - t0)) s)" "$rc" 0
expect_eq "its last line" "$(grep -v '^$' "$out" | tail -1)" "run-example.sh: OK"
expect_eq "requests answered by a worker" "$(grep -c '^hello from worker [0-9]' "$out")" 6
after=$(sed -n '/kechictl recycle example --all --wait/,$p' "$out" | grep '^hello from worker ' | awk '{ print $4 }' | sort -u | tr '\n' ' ')
if [ -n "$after" ] && ! [[ " $after" =~ \ [12]\  ]]; then ok "after the recycle only new workers answer ($after)"; else bad "after the recycle: workers '$after' (want serials above 2)"; fi
rm -f "$out"
finish
