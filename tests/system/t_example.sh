#!/bin/bash
# t_example: README's first command, as README gives it: `sudo scripts/run-example.sh`, here with
# --check so that it does not wait for Enter. On this machine (PID 1 is not systemd) it boots its
# own throwaway systemd, named kechi-example-<its pid> (the harness's boxes are kt-<pid>-NAME, so
# the two never collide), runs the example app there, checks that every worker is ready and every
# request is answered before and after a recycle, then takes that systemd down.
# This scenario checks that the script says OK and exits 0, that the app answered, and that
# nothing of the throwaway systemd is left: no state file, no cgroup, no process.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_example "README's scripts/run-example.sh: the example comes up, answers, and is cleaned up"
[ "$(id -u)" = 0 ] || skip "needs root"
[ "$(cat /proc/1/comm 2>/dev/null)" != systemd ] ||
  skip "this machine's PID 1 is systemd: run-example.sh would install the example on it for real"
if ! command -v cargo > /dev/null; then
  [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || skip "no cargo (run-example.sh builds kechi)"
  PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
export KT_STATE=${KT_STATE:-/run/kechi-test}

out=$(mktemp)
t0=$SECONDS
say "sudo scripts/run-example.sh --check (as root; its output follows)"
timeout --kill-after=30 600 bash "$KT_ROOT/scripts/run-example.sh" --check > "$out" 2>&1 < /dev/null
rc=$?
sed 's/^/          | /' "$out"
expect_eq "run-example.sh --check: exit status ($((SECONDS - t0)) s)" "$rc" 0
last=$(grep -v '^$' "$out" | tail -1)
expect_eq "its last line" "$last" "run-example.sh: OK"

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
rm -f "$out"
finish
