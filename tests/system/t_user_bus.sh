#!/bin/bash
# t_user_bus: kechid run by an ordinary user talks to that user's own systemd manager over the
# user's bus ($XDG_RUNTIME_DIR/bus): its workers become scopes of the user manager, in
# kechi-demo.slice under user@UID.service, running as that user; they answer on a socket kechid
# binds itself; stopping kechid stops them and leaves no scope behind.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_user_bus "kechid --user: workers as scopes of the user's own manager"
tgt_up ubus
kechi_install
uid=$(tgt_run id -u "$KT_USER") || abort "no uid for $KT_USER"
rt=/run/user/$uid
port=8091

# The user's manager (user@UID.service, as lingering would start it; the test machine runs no
# logind) and its bus (dbus-user-session's dbus.socket).
tgt_run systemctl start "user@$uid.service" || abort "systemctl start user@$uid.service"
for _ in $(seq 1 60); do
  [ "$(tgt_run systemctl is-active "user@$uid.service")" = active ] && tgt_run test -S "$rt/bus" && break
  sleep 0.5
done
expect_eq "user@$uid.service" "$(tgt_run systemctl is-active "user@$uid.service")" active
check "the user's bus listens at $rt/bus" tgt_run test -S "$rt/bus"

# as the user, against the user's manager
as_user() { tgt_run runuser -u "$KT_USER" -- env XDG_RUNTIME_DIR="$rt" "$@"; }

# the standard demo app (user = the running user), on a socket kechid binds itself
demo_config "listen = [\"127.0.0.1:$port\"]"
conf=/etc/kechi/$KT_APP.toml

say "systemd-run --user (as $KT_USER): kechid --user $conf"
as_user systemd-run --user --unit=kechid-demo --collect -p Type=notify /usr/bin/kechid --user "$conf" \
  || abort "systemd-run --user kechid failed"
expect_eq "kechid-demo.service (user manager)" "$(as_user systemctl --user is-active kechid-demo.service)" active

scopes=""
for _ in $(seq 1 40); do
  scopes=$(as_user systemctl --user list-units --plain --no-legend --no-pager 'kechi-demo-*.scope' | awk '$3 == "active" { print $1 }' | sort)
  [ "$(count_lines "$scopes")" = 3 ] && break
  sleep 0.5
done
expect_eq "active worker scopes in the user manager" "$(printf %s "$scopes" | tr "\n" " ")" "kechi-demo-1.scope kechi-demo-2.scope kechi-demo-3.scope"
for s in $scopes; do
  expect_eq "$s's slice" "$(as_user systemctl --user show -p Slice --value "$s")" kechi-demo.slice
  cg=$(as_user systemctl --user show -p ControlGroup --value "$s")
  case "$cg" in
    */user@"$uid".service/kechi.slice/kechi-demo.slice/"$s" | */user@"$uid".service/kechi-demo.slice/"$s")
      ok "$s is in the user manager's tree: $cg" ;;
    *) bad "$s's control group: $cg" ;;
  esac
  procs=$(tgt_sh "grep -l '$s' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3" | tr '\n' ' ')
  [ -n "$procs" ] || bad "no process in $s"
  for p in $procs; do
    owner=$(tgt_run ps -o user= -p "$p" | tr -d ' ')
    [ -z "$owner" ] || expect_eq "process $p of $s runs as" "$owner" "$KT_USER"
  done
done

answers=""
for _ in $(seq 1 20); do
  answers=$(tgt_run curl -fsS --max-time 5 "http://127.0.0.1:$port/" 2>&1) && break
  sleep 0.5
done
if [ -n "$answers" ] && tgt_run curl -fsS --max-time 5 "http://127.0.0.1:$port/" > /dev/null; then
  ok "a worker answers on 127.0.0.1:$port: $(printf '%s' "$answers" | head -c 80)"
else
  bad "no answer on 127.0.0.1:$port: $answers"
fi

say "systemctl --user stop kechid-demo"
as_user timeout 120 systemctl --user stop kechid-demo.service || bad "systemctl --user stop failed"
left=""
for _ in $(seq 1 40); do
  left=$(as_user systemctl --user list-units --all --plain --no-legend --no-pager 'kechi-demo-*' | awk '{ print $1 }')
  [ -z "$left" ] && break
  sleep 0.5
done
expect_eq "kechi-demo-* units left in the user manager" "${left:-none}" none
expect_eq "hello.py processes left" "$(tgt_run pgrep -u "$KT_USER" -f hello.py | wc -l)" 0
finish
