#!/bin/bash
# t_harness: the test machine itself, before any kechi scenario relies on it: a box boots a real
# systemd on an overlay, runs commands (exit status, stdin), takes files in, runs a scope with a
# memory limit, has a user of its own, runs beside another box, and leaves nothing when it goes down.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_harness "boot, run, copy in, scopes, users, parallel boxes, cleanup"
[ "$KT_TIER" = v1 ] || skip "the harness check is for boxes (tier v1)"
# systemd empties /tmp at boot: on the host's real root that would destroy data; never here
marker=$(mktemp /tmp/kt-host-marker.XXXXXX)
box_on_exit "rm -f $marker"
tgt_up harness
a=$T
check "the host's /tmp is untouched by the boot" test -e "$marker"
expect_eq "PID 1 inside" "$(box_run "$a" cat /proc/1/comm)" systemd
expect_eq "systemd state" "$(box_run "$a" systemctl is-system-running)" running
expect_eq "root filesystem inside" "$(box_run "$a" findmnt -n -o FSTYPE /)" overlay
expect_eq "hostname" "$(box_run "$a" hostname)" "kechi-test-$a"
box_run "$a" sh -c 'exit 7'; expect_eq "exit status passes through" "$?" 7
expect_eq "stdin passes through" "$(echo hello | box_run "$a" cat)" hello
expect_eq "D-Bus" "$(box_run "$a" busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.DBus.Peer Ping && echo pong)" pong

say "files: writes stay inside"
f=$(mktemp)
printf '#!/bin/sh\necho copied\n' > "$f"; chmod 750 "$f"
box_copy_in "$a" "$f" /usr/local/bin/kt-copied
expect_eq "copied file runs" "$(box_run "$a" /usr/local/bin/kt-copied)" copied
expect_eq "its mode is kept" "$(box_run "$a" stat -c %a /usr/local/bin/kt-copied)" 750
check "the host has no /usr/local/bin/kt-copied" test ! -e /usr/local/bin/kt-copied
box_run "$a" sh -c 'echo box > /etc/kt-written; touch /tmp/kt-marker'
check "a write to /etc inside does not reach the host" test ! -e /etc/kt-written
rm -f "$f"

say "a transient scope with MemoryMax, as a user of the box"
box_run "$a" useradd --system kt-user
check "the user exists inside" box_run "$a" id kt-user
check "... and not on the host" bash -c '! id kt-user > /dev/null 2>&1'
out=$(box_run "$a" systemd-run --scope --quiet --unit=kt-probe --slice=kechi-probe.slice -p MemoryMax=50M \
  --uid=kt-user -- sh -c 'id -un; grep -E "^[0-9]+:(memory)?:" /proc/self/cgroup | head -1')
info "$out"
expect_eq "scope runs as" "$(printf '%s\n' "$out" | head -1)" kt-user
case "$out" in *"/kechi.slice/kechi-probe.slice/kt-probe.scope"*) ok "scope in kechi.slice/kechi-probe.slice" ;; *) bad "scope not where expected" ;; esac
out=$(box_run "$a" systemd-run --scope --quiet --unit=kt-probe2 -p MemoryMax=50M -- sh -c \
  'if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max;
   else cat /sys/fs/cgroup/memory$(grep ":memory:" /proc/self/cgroup | cut -d: -f3)/memory.limit_in_bytes; fi')
expect_eq "the kernel's limit of a MemoryMax=50M scope" "$out" 52428800

say "a second box beside the first"
b=$(box_name harness2)
box_up "$b" > /dev/null || abort "second box did not boot"
expect_eq "second box's hostname" "$(box_run "$b" hostname)" "kechi-test-$b"
check "the first box's user is not in the second" bash -c "! $(printf '%q' "$KT_ROOT/tests/system/lib/box.sh") run $b id kt-user > /dev/null 2>&1"
check "the first box's /tmp marker is not in the second" box_run "$b" test ! -e /tmp/kt-marker
check "the host's /tmp has no marker" test ! -e /tmp/kt-marker
expect_eq "boxes listed" "$(box_ls | awk '{ print $1 }' | grep -cE "^($a|$b)$")" 2

say "down: nothing left"
pid=$(_box_init_pid "$b")
box_down "$b"
check "second box's init is gone" bash -c "! kill -0 $pid 2> /dev/null"
left=$(for d in $(_box_cg_dirs "$b"); do [ -d "$d" ] && echo "$d"; done)
expect_eq "its cgroups left on the host" "$left" ""
check "its state files are gone" bash -c "! ls $KT_STATE/$b.* > /dev/null 2>&1"
check "box_run refuses a box that is down" bash -c "! $(printf '%q' "$KT_ROOT/tests/system/lib/box.sh") run $b true 2> /dev/null"
check "the first box still runs" box_run "$a" true

finish
