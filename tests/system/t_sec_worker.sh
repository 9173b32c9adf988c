#!/bin/bash
# t_sec_worker: what a worker is allowed to be. Contract:
#  - identity: with `user`/`group` set, every uid (real, effective, saved, fs) of the worker is the
#    user's and every gid is the group's; its supplementary groups are empty even though the user
#    is a member of adm and disk in /etc/group (initgroups() would have given them); no
#    capabilities. With `user` unset the worker runs as nobody, never as root; with
#    user = "root" written out it runs as root; a user named otherwise with uid 0 (toor) is
#    refused by `kechictl check` and by kechid (exit 78).
#  - no shell: arguments and environment values holding $(...), `...`, ; and | reach the app
#    literally (its /proc/PID/cmdline and environ) and run nothing: the files they would touch
#    do not exist, though the same text through `sh -c` does create them.
#  - jemalloc.path: a copy that is world-writable, group-writable, owned by the app's user, or in
#    a world-writable directory (also when reached through a symlink) is refused by
#    `kechictl check` with a message saying why, and kechid refuses to start with it (exit 78,
#    unit failed); the app's user really could write each of the refused copies. A root-owned 0644
#    copy in a root-owned directory is accepted and is what the worker maps.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_sec_worker "workers: ids, groups, no shell, only a root-owned jemalloc"
tgt_up secwrk
kechi_install
tgt_sh "groupadd kechisec && usermod -aG adm,disk $KT_USER" || abort "groups"
info "id $KT_USER: $(tgt_run id "$KT_USER")"
uid=$(tgt_run id -u "$KT_USER"); gid=$(tgt_run getent group kechisec | cut -d: -f3)
LIB=$(tgt_run sh -c 'readlink -f /usr/lib/*-linux-gnu/libjemalloc.so.2' | head -1)
[ -n "$LIB" ] || abort "no libjemalloc.so.2 in the test machine"

# config EXTRA_TOP [EXTRA_SECTIONS]
config() {
  kechi_config <<EOF2
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
workers = 1
$1
[ready]
mode = "delay"
delay = "1s"
${2:-}
EOF2
}
# status_of PID FIELD: a line of /proc/PID/status, tabs as spaces
status_of() { tgt_run awk -v f="$2:" '$1 == f { $1 = ""; sub(/^ /, ""); print }' "/proc/$1/status"; }
restart_one() {  # restart with the current config, print the worker's pid
  tgt_run systemctl stop "kechi@$KT_APP"
  kechi_start > /dev/null || return 1
  kt wait-workers "$KT_APP" 1 0 30 | awk '{ print $3 }'
}

say "user = \"$KT_USER\", group = \"kechisec\""
config "user = \"$KT_USER\"
group = \"kechisec\""
pid=$(restart_one) || abort "kechi@demo did not start"
info "worker pid $pid"
expect_eq "Uid: real effective saved fs" "$(status_of "$pid" Uid)" "$uid $uid $uid $uid"
expect_eq "Gid: real effective saved fs" "$(status_of "$pid" Gid)" "$gid $gid $gid $gid"
expect_eq "Groups: (the user is in adm and disk)" "$(status_of "$pid" Groups)" ""
expect_eq "CapEff" "$(status_of "$pid" CapEff)" 0000000000000000
expect_eq "CapPrm" "$(status_of "$pid" CapPrm)" 0000000000000000
kechid_groups=$(status_of "$(unit_prop "kechi@$KT_APP" MainPID)" Groups)
info "kechid's own Groups: '$kechid_groups'"

say "user unset: nobody"
config ""
pid=$(restart_one) || abort "kechi@demo did not start without user"
expect_eq "Uid without user" "$(status_of "$pid" Uid)" "65534 65534 65534 65534"
expect_eq "Groups without user" "$(status_of "$pid" Groups)" ""

say "user = \"root\" written out: root"
config 'user = "root"'
pid=$(restart_one) || abort "kechi@demo did not start with user = root"
expect_eq "Uid with user = \"root\"" "$(status_of "$pid" Uid)" "0 0 0 0"

say "user = \"toor\", another name for uid 0: refused"
tgt_run useradd -o -u 0 -g 0 -M -s /usr/sbin/nologin toor || bad "useradd toor"
expect_eq "id -u toor (setresuid to it would make the worker root)" "$(tgt_run id -u toor)" 0
config 'user = "toor"'
out=$(tgt_run kechictl check "$KT_APP" 2>&1); rc=$?
case "$rc:$out" in
  1:*'user "toor" has uid 0'*) ok "kechictl check refuses it (exit 1): $(printf '%s' "$out" | head -1 | cut -c1-140)" ;;
  *) bad "kechictl check with user = \"toor\": exit $rc: $out" ;;
esac
tgt_run systemctl stop "kechi@$KT_APP"
if tgt_run timeout 60 systemctl start "kechi@$KT_APP" 2> /dev/null; then
  bad "kechi@demo started with user = \"toor\""
else
  expect_eq "kechi@demo with user = \"toor\": kechid's exit status" "$(unit_prop "kechi@$KT_APP" ExecMainStatus)" 78
fi
tgt_run systemctl reset-failed "kechi@$KT_APP"

say "shell metacharacters in the command and the environment"
tgt_run rm -f /tmp/pwned-arg /tmp/pwned-semi /tmp/pwned-tick /tmp/pwned-pipe /tmp/pwned-env
# shellcheck disable=SC2016
kechi_config <<'EOF2'
command = ["/usr/bin/python3", "/usr/lib/kechi-test/hello.py", "$(touch /tmp/pwned-arg)", "; touch /tmp/pwned-semi", "`touch /tmp/pwned-tick`", "| touch /tmp/pwned-pipe"]
user = "kechitest"
workers = 1
environment = { EVIL = "$(touch /tmp/pwned-env)" }
[ready]
mode = "delay"
delay = "1s"
EOF2
pid=$(restart_one) || abort "kechi@demo did not start with metacharacters in its command"
sleep 1
# shellcheck disable=SC2016
expect_eq "the worker's argv" "$(tgt_run sh -c 'tr "\0" "|" < /proc/$1/cmdline' argv "$pid")" \
  '/usr/bin/python3|/usr/lib/kechi-test/hello.py|$(touch /tmp/pwned-arg)|; touch /tmp/pwned-semi|`touch /tmp/pwned-tick`|| touch /tmp/pwned-pipe|'
# shellcheck disable=SC2016
expect_eq "EVIL in its environment" "$(kt envof "$pid" EVIL)" '$(touch /tmp/pwned-env)'
expect_eq "the worker serves" "$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$KT_LISTEN/")" 200
for f in arg semi tick pipe env; do
  if tgt_run test -e "/tmp/pwned-$f"; then bad "/tmp/pwned-$f exists: something ran a shell"; else ok "/tmp/pwned-$f does not exist"; fi
done
# the same text through a shell, as the same user, does run: the files are creatable
# shellcheck disable=SC2016
tgt_run setpriv --reuid="$KT_USER" --regid="$KT_USER" --clear-groups sh -c 'true $(touch /tmp/pwned-arg) ; touch /tmp/pwned-semi'
if tgt_run test -e /tmp/pwned-arg && tgt_run test -e /tmp/pwned-semi; then
  ok "through sh -c the same text creates /tmp/pwned-arg and /tmp/pwned-semi"
else
  bad "even sh -c did not create the files: the checks above prove nothing"
fi

say "jemalloc.path: only a copy nobody but root can change"
tgt_run systemctl stop "kechi@$KT_APP"
# shellcheck disable=SC2016
tgt_sh "set -e; mkdir -p /opt/jm/ok /opt/jm/open
  for n in world group user link; do mkdir -p /opt/jm/\$n; cp $LIB /opt/jm/\$n/libjemalloc.so.2; done
  cp $LIB /opt/jm/ok/libjemalloc.so.2; cp $LIB /opt/jm/open/libjemalloc.so.2
  chmod 0666 /opt/jm/world/libjemalloc.so.2
  chmod 0664 /opt/jm/group/libjemalloc.so.2; chgrp $KT_USER /opt/jm/group/libjemalloc.so.2
  chown $KT_USER /opt/jm/user/libjemalloc.so.2
  chmod 0777 /opt/jm/open
  chmod 0666 /opt/jm/link/libjemalloc.so.2; ln -s /opt/jm/link/libjemalloc.so.2 /opt/jm/ok/via-link.so" \
  || abort "preparing the library copies"
jm_config() {  # jm_config PATH FILE: a config with jemalloc.path = PATH, written to FILE
  tgt_write "$2" <<EOF2
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
workers = 1
[ready]
mode = "delay"
delay = "1s"
[jemalloc]
path = "$1"
EOF2
}
for c in "world/libjemalloc.so.2:writable by group or others" "group/libjemalloc.so.2:writable by group or others" \
         "user/libjemalloc.so.2:owned by uid $uid" "open/libjemalloc.so.2:writable by group or others" \
         "ok/via-link.so:writable by group or others"; do
  p=/opt/jm/${c%%:*}; why=${c#*:}
  # the copy is a real library, and the app's user could replace its code
  if tgt_run setpriv --reuid="$KT_USER" --regid="$KT_USER" --init-groups sh -c "test -w '$p' || test -w '$(dirname "$(tgt_run readlink -f "$p")")'" &&
     tgt_run env LD_PRELOAD="$p" /bin/true 2> /dev/null; then
    ok "$p: loadable, and $KT_USER can change it"
  else
    bad "$p: not a library $KT_USER can change: refusing it proves nothing"
  fi
  jm_config "$p" /tmp/jm.toml
  out=$(tgt_run kechictl check /tmp/jm.toml 2>&1); rc=$?
  case "$rc:$out" in
    1:*"jemalloc.path: refusing to preload"*"$why"*) ok "kechictl check refuses $p (exit 1): $(printf '%s' "$out" | head -1 | cut -c1-160)" ;;
    *) bad "kechictl check on $p: exit $rc: $out" ;;
  esac
done
jm_config /opt/jm/world/libjemalloc.so.2 "/etc/kechi/$KT_APP.toml"
if tgt_run timeout 60 systemctl start "kechi@$KT_APP" 2> /dev/null; then
  bad "kechi@demo started with a world-writable jemalloc"
else
  expect_eq "kechi@demo with a world-writable jemalloc: kechid's exit status" "$(unit_prop "kechi@$KT_APP" ExecMainStatus)" 78
  j=$(tgt_run journalctl -u "kechi@$KT_APP" --no-pager -o cat | grep -m1 'refusing to preload')
  if [ -n "$j" ]; then ok "journal: $(printf '%s' "$j" | cut -c1-160)"; else bad "the journal does not say why"; fi
fi
tgt_run systemctl reset-failed "kechi@$KT_APP"
jm_config /opt/jm/ok/libjemalloc.so.2 "/etc/kechi/$KT_APP.toml"
expect_eq "kechictl check with the root-owned 0644 copy, exit" "$(tgt_run kechictl check "$KT_APP" > /dev/null 2>&1; echo $?)" 0
kechi_start > /dev/null || abort "kechi@demo did not start with the root-owned copy"
pid=$(kt wait-workers "$KT_APP" 1 0 30 | awk '{ print $3 }')
expect_eq "the worker maps" "$(tgt_run grep -o '/opt/jm/[^ ]*' "/proc/$pid/maps" | sort -u)" /opt/jm/ok/libjemalloc.so.2
finish
