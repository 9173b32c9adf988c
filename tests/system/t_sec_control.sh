#!/bin/bash
# t_sec_control: who may use kechid's control socket is decided by the peer's kernel credentials,
# not by the socket file's mode. Contract:
#  - without control.group, a user other than root gets kechictl exit 4 (denied) for status and
#    recycle, even after the socket is made 0666: the connection then goes through (a raw client
#    gets kechid's io.kechi.PermissionDenied reply, not EACCES) and is still refused, and no worker
#    is recycled; reload is not a control request, and that user cannot send kechid SIGHUP;
#  - with control.group set (applied by `systemctl reload`), a member (by a supplementary group)
#    can read status and recycle; a non-member still gets exit 4, with the socket 0666 again; the
#    member's process with its groups dropped gets exit 4 (the groups of the connecting process
#    count, not what the user database says).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_sec_control "control socket: peer credentials decide, a 0666 socket file changes nothing"
tgt_up secctl
kechi_install
CTL=/run/kechi/$KT_APP.ctl
tgt_sh "groupadd kechiops && useradd -M -s /usr/sbin/nologin intruder && useradd -M -s /usr/sbin/nologin -G kechiops ops1" \
  || abort "creating users intruder and ops1 (group kechiops)"
info "intruder: $(tgt_run id intruder); ops1: $(tgt_run id ops1)"
config() {  # config [CONTROL_GROUP]
  kechi_config <<EOF2
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
workers = 2
[ready]
mode = "delay"
delay = "1s"
[control]
group = "${1:-}"
EOF2
}
config
kechi_start || abort "kechi@demo did not start"
w0=$(kt wait-workers "$KT_APP" 2 1 30) || abort "not 2 workers"
show_workers "$w0"
mainpid=$(unit_prop "kechi@$KT_APP" MainPID)

as() { local u=$1; shift; tgt_run setpriv --reuid="$u" --regid="$u" --init-groups "$@"; }
# ctl_rc USER ARGS...: kechictl's exit status as USER
ctl_rc() { local u=$1; shift; as "$u" kechictl "$@" > /dev/null 2>&1; echo $?; }
# raw USER METHOD: what a client of USER gets on the socket: the reply, or the connect error
raw() {
  # shellcheck disable=SC2016
  as "$1" python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect: " + e.strerror); sys.exit()
s.sendall(b"{\"method\":\"" + sys.argv[2].encode() + b"\",\"parameters\":{}}\0")
print(s.recv(65536).rstrip(b"\0").decode()[:120])' "$CTL" "$2"
}
serials() { workers | awk '{ print $1 }' | tr '\n' ' '; }

say "no control.group: the socket is root's"
info "$(tgt_run stat -c '%A %U:%G %n' "$CTL")"
expect_eq "intruder: kechictl status, exit" "$(ctl_rc intruder status "$KT_APP")" 4
expect_eq "intruder: kechictl recycle --all, exit" "$(ctl_rc intruder recycle "$KT_APP" --all)" 4
expect_eq "ops1 (no control.group yet): kechictl status, exit" "$(ctl_rc ops1 status "$KT_APP")" 4
expect_eq "root: kechictl status, exit" "$(tgt_run kechictl status "$KT_APP" > /dev/null 2>&1; echo $?)" 0

say "chmod 666 $CTL: the file lets anyone connect, kechid must still refuse"
tgt_run chmod 666 "$CTL"
info "$(tgt_run stat -c '%A %U:%G %n' "$CTL")"
got=$(raw intruder io.kechi.Status)
case "$got" in *io.kechi.PermissionDenied*) ok "intruder connects (file mode let it) and kechid answers: $got" ;;
  *) bad "intruder's raw Status got: $got" ;; esac
got=$(raw intruder io.kechi.Recycle)
case "$got" in *io.kechi.PermissionDenied*) ok "raw Recycle refused: $got" ;; *) bad "intruder's raw Recycle got: $got" ;; esac
before=$(serials)
expect_eq "intruder: kechictl status, exit" "$(ctl_rc intruder status "$KT_APP")" 4
expect_eq "intruder: kechictl recycle --all, exit" "$(ctl_rc intruder recycle "$KT_APP" --all)" 4
expect_eq "ops1: kechictl recycle --all, exit" "$(ctl_rc ops1 recycle "$KT_APP" --all)" 4
sleep 3
expect_eq "workers after the refused recycles (no recycle happened)" "$(serials)" "$before"
if as intruder kill -HUP "$mainpid" 2> /dev/null; then bad "intruder could send SIGHUP (reload) to kechid $mainpid"; else ok "intruder cannot send SIGHUP (reload) to kechid $mainpid"; fi

say "control.group = kechiops, applied by systemctl reload"
config kechiops
tgt_run systemctl reload "kechi@$KT_APP" || bad "systemctl reload"
end=$((SECONDS + 60))
until [ "$(tgt_run stat -c '%a %G' "$CTL")" = "660 kechiops" ] || [ $SECONDS -ge $end ]; do sleep 0.5; done
expect_eq "socket mode and group" "$(tgt_run stat -c '%a %G' "$CTL")" "660 kechiops"
kt wait-new "$KT_APP" 2 0 90 > /dev/null  # the reload's roll
w1=$(kt wait-workers "$KT_APP" 2 1 90) || bad "not 2 workers after the reload"
expect_eq "ops1: kechictl status, exit" "$(ctl_rc ops1 status "$KT_APP")" 0
s=$(printf '%s\n' "$w1" | awk 'NR == 1 { print $1 }')
expect_eq "ops1: kechictl recycle --worker $s --wait, exit" "$(ctl_rc ops1 recycle "$KT_APP" --worker "$s" --wait --timeout 90s)" 0
case " $(serials) " in *" $s "*) bad "worker $s still there after the ops1's recycle" ;; *) ok "worker $s replaced on the ops1's request: $(serials)" ;; esac
expect_eq "intruder: kechictl status, exit" "$(ctl_rc intruder status "$KT_APP")" 4
tgt_run chmod 666 "$CTL"
info "$(tgt_run stat -c '%A %U:%G %n' "$CTL")"
got=$(raw intruder io.kechi.Status)
case "$got" in *io.kechi.PermissionDenied*) ok "socket 0666 again: intruder connects and is refused: $got" ;;
  *) bad "intruder's raw Status got: $got" ;; esac
before=$(serials)
expect_eq "intruder: kechictl recycle --all, exit" "$(ctl_rc intruder recycle "$KT_APP" --all)" 4
expect_eq "ops1 with its groups dropped: kechictl status, exit" \
  "$(tgt_run setpriv --reuid=ops1 --regid=ops1 --clear-groups kechictl status "$KT_APP" > /dev/null 2>&1; echo $?)" 4
sleep 3
expect_eq "workers after the refused recycle" "$(serials)" "$before"
finish
