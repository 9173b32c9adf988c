#!/bin/bash
# t_mem_control: who may use kechid's control socket (/run/kechi/demo.ctl).
#  - without control.group: root only. `kechictl status demo` as nobody, or as a member of any
#    group, exits 4 with a message that says permission denied and who may; root gets the status.
#  - with control.group = "kechiops" (after a reload, then after a restart): members of kechiops
#    (as a supplementary or as the primary group) get `kechictl status` and may `kechictl recycle`;
#    a user outside it is still refused with exit status 4, also when the socket file's mode is
#    opened to everyone (kechid checks the peer's credentials itself).
#  - `kechictl list`: root sees demo running with 2/2 workers ready; nobody sees demo listed as
#    "running (permission denied)", with no figures.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$KT_ROOT/tests/system/lib/mem.sh"

scenario t_mem_control "kechictl as an unprivileged user: refused; with control.group, its members only"
tgt_up memctl
kechi_install
tgt_sh 'groupadd kechiops && useradd -M -s /usr/sbin/nologin -G kechiops alice &&
  useradd -M -s /usr/sbin/nologin bob && useradd -M -s /usr/sbin/nologin -g kechiops carol' \
  || abort "creating the group kechiops and the users alice, bob, carol"
info "$(tgt_sh 'id alice; id bob; id carol; id nobody' | tr '\n' ';' | sed 's/;/; /g')"

config() {  # config [CONTROL_SECTION]
  kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 2

[memory]
max = "64M"

[ready]
mode = "notify"
timeout = "30s"
${1:-}
EOF
}

# as USER CMD...: the command as USER (with USER's groups from /etc/group); sets AS_OUT, AS_RC
as() {
  local u=$1; shift
  AS_OUT=$(tgt_run runuser -u "$u" -- "$@" 2>&1); AS_RC=$?
}

# refused USER STEP: `kechictl status demo` as USER must exit 4 with a clear message
refused() {
  as "$1" kechictl status "$KT_APP"
  if [ "$AS_RC" = 4 ]; then
    ok "$2: kechictl status $KT_APP as $1: exit 4"
  else
    bad "$2: kechictl status $KT_APP as $1: exit $AS_RC (want 4)"
  fi
  printf '%s\n' "$AS_OUT" | head -n 3 | sed 's/^/          | /'
  if has "$AS_OUT" -i 'permission denied' && has "$AS_OUT" -E 'root|control\.group'; then
    ok "$2: the message says permission denied, and who may"
  else
    bad "$2: the message does not say 'permission denied' and who may (root, control.group)"
  fi
}

# allowed USER STEP: `kechictl status demo` as USER works and shows the workers
allowed() {
  as "$1" kechictl status "$KT_APP"
  # (a pattern match, not printf | grep -q: with pipefail, grep leaving early can fail printf)
  if [ "$AS_RC" = 0 ] && [[ $AS_OUT == *"workers ready"* ]]; then
    ok "$2: kechictl status $KT_APP as $1: exit 0, the status"
    printf '%s\n' "$AS_OUT" | head -n 1 | sed 's/^/          | /'
  else
    bad "$2: kechictl status $KT_APP as $1: exit $AS_RC"
    printf '%s\n' "$AS_OUT" | head -n 3 | sed 's/^/          | /'
  fi
}

ctl_mode() { tgt_run stat -c '%a %U:%G' "/run/kechi/$KT_APP.ctl"; }

say "without control.group"
config
kechi_start || abort "kechi@demo did not start"
w=$(kt wait-workers "$KT_APP" 2 1 30) || abort "not 2 workers within 30 s"
info "/run/kechi/$KT_APP.ctl: $(ctl_mode)"
allowed root "no group"
refused nobody "no group"
refused alice "no group"
as nobody kechictl status "$KT_APP" --json
expect_eq "no group: kechictl status $KT_APP --json as nobody, exit status" "$AS_RC" 4
# kechictl list: root sees the app running with its ready/wanted workers; nobody sees that it
# runs, and that its status is refused (not "stopped": the control socket is there)
as root kechictl list
printf '%s\n' "$AS_OUT" | sed 's/^/          | /'
row=$(printf '%s\n' "$AS_OUT" | awk -v app="$KT_APP" '$1 == app { print $2, $4 }')
expect_eq "no group: kechictl list as root, exit status" "$AS_RC" 0
expect_eq "no group: kechictl list as root, $KT_APP's state and ready/wanted workers" "$row" "running 2/2"
as nobody kechictl list
printf '%s\n' "$AS_OUT" | sed 's/^/          | /'
expect_eq "no group: kechictl list as nobody, exit status" "$AS_RC" 0
row=$(printf '%s\n' "$AS_OUT" | awk -v app="$KT_APP" '$1 == app')
if [[ $row =~ ^$KT_APP\ +running\ \(permission\ denied\)\ +-\ +-\ +-$ ]]; then
  ok "no group: kechictl list as nobody: $KT_APP running (permission denied), no pid, workers nor memory"
else
  bad "no group: kechictl list as nobody: row '$row' (want '$KT_APP running (permission denied) - - -')"
fi

say "control.group = \"kechiops\", applied by systemctl reload"
config '
[control]
group = "kechiops"'
top=$(max_serial "$(workers)")
tgt_run timeout 120 systemctl reload "kechi@$KT_APP" || bad "systemctl reload kechi@$KT_APP failed"
kt wait-new "$KT_APP" 2 $((top + 1)) 60 > /dev/null || info "the workers were not all replaced by the reload within 60 s"
info "/run/kechi/$KT_APP.ctl after the reload: $(ctl_mode)"
as alice kechictl status "$KT_APP"
if [ "$AS_RC" = 0 ]; then
  ok "after reload: alice (supplementary group kechiops) gets the status"
else
  bad "after reload: alice (in kechiops) still refused, exit $AS_RC; socket $(ctl_mode); kechictl config: $(tgt_run kechictl config "$KT_APP" 2>&1 | grep -i 'control.group' | tr -s ' ')"
fi

say "control.group = \"kechiops\", after systemctl restart kechi@$KT_APP"
tgt_run timeout 120 systemctl restart "kechi@$KT_APP" || bad "systemctl restart kechi@$KT_APP failed"
expect_eq "/run/kechi/$KT_APP.ctl mode and owner" "$(ctl_mode)" "660 root:kechiops"
allowed alice "group"
allowed carol "group (primary)"
allowed root "group"
refused bob "group"
refused nobody "group"

say "write commands: kechictl recycle"
w=$(workers)
top=$(max_serial "$w")
first=$(printf '%s\n' "$w" | awk 'NR == 1 { print $1 }')
as bob kechictl recycle "$KT_APP" --worker "$first"
expect_eq "kechictl recycle as bob (not in kechiops), exit status" "$AS_RC" 4
as alice kechictl recycle "$KT_APP" --worker "$first"
expect_eq "kechictl recycle $KT_APP --worker $first as alice, exit status" "$AS_RC" 0
printf '%s\n' "$AS_OUT" | head -n 2 | sed 's/^/          | /'
if w2=$(kt wait-new "$KT_APP" 2 $((first + 1)) 60); then
  ok "worker $first replaced (serials now $(printf '%s\n' "$w2" | awk '{ print $1 }' | tr '\n' ' '))"
else
  bad "worker $first not replaced within 60 s"
fi
[ "$(max_serial "$(workers)")" -gt "$top" ] || bad "no new worker after the recycle"

say "the socket file opened to everyone (chmod 666): kechid itself still refuses bob"
tgt_run chmod 666 "/run/kechi/$KT_APP.ctl"
refused bob "mode 666"
allowed alice "mode 666"
tgt_run chmod 660 "/run/kechi/$KT_APP.ctl"
finish
