#!/bin/bash
# t_package: the built .deb in a real systemd, the way an operator uses it: dpkg -i starts nothing;
# the example app answers on its socket, started on demand; a drop-in with KECHI_* variables and
# `systemctl reload` change the workers; a socket drop-in adds TCP; reinstalling the package
# restarts kechid under load with no failed request (the workers are adopted); man pages, --help
# and completions are there; dpkg -r stops everything; dpkg --purge leaves only the admin's files.
# Also lintian on the .deb, and the .rpm's file list, scriptlets and an install into a throwaway
# root (on this host, when rpm is installed).
#
# The packages: $KECHI_DEB / $KECHI_RPM, else the newest in ${CARGO_TARGET_DIR:-target}/packages,
# else built now with packaging/build.sh (a release build) when cargo-deb and cargo-generate-rpm
# are installed; skipped otherwise.
# shellcheck source=tests/system/lib/scenario.sh
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_package "the .deb and .rpm: install, socket activation, drop-ins, upgrade under load, remove, purge"
command -v dpkg > /dev/null || skip "no dpkg here"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"

# ---- the packages ------------------------------------------------------------------------------
pkgdir=${CARGO_TARGET_DIR:-$KT_ROOT/target}/packages
newest() { find "$pkgdir" -maxdepth 1 -name "$1" -printf '%T@ %p\n' 2> /dev/null | sort -n | tail -1 | cut -d' ' -f2-; }
DEB=${KECHI_DEB:-$(newest 'kechi_*.deb')}
RPM=${KECHI_RPM:-$(newest 'kechi-*.rpm')}
if [ -z "$DEB" ]; then
  # installing the tools compiles them (many minutes): not within a scenario's time limit
  if ! cargo deb --version > /dev/null 2>&1 || ! cargo generate-rpm --version > /dev/null 2>&1; then
    skip "no .deb in $pkgdir, and cargo-deb or cargo-generate-rpm is not installed: run packaging/build.sh first"
  fi
  say "no .deb in $pkgdir: building the packages (packaging/build.sh)"
  buildlog=$(mktemp)
  out=$("$KT_ROOT/packaging/build.sh" 2> "$buildlog" || true)
  DEB=$(printf '%s\n' "$out" | grep '\.deb$' | tail -1)
  RPM=$(printf '%s\n' "$out" | grep '\.rpm$' | tail -1)
  [ -n "$DEB" ] || { tail -n 20 "$buildlog" | sed 's/^/          | /'; abort "packaging/build.sh made no .deb"; }
  rm -f "$buildlog"
fi
[ -f "$DEB" ] || abort "$DEB: no such file"
say "package: $DEB"

# ---- lintian and the .deb's fields (on this host) ---------------------------------------------
# tests/run.sh installs lintian: a machine without it cannot say the .deb is clean
if command -v lintian > /dev/null; then
  lint=$(lintian "$DEB" 2>&1 | grep -v '^running with root privileges')
  printf '%s\n' "$lint" | grep . | sed 's/^/          | /'
  if has "$lint" '^E: '; then bad "lintian: errors"; else ok "lintian: no errors"; fi
else
  bad "lintian is not installed, so the .deb was not checked (apt-get install lintian; tests/run.sh does)"
fi
depends=$(dpkg-deb -f "$DEB" Depends)
info "Depends: $depends"
dep_re='(^|, )libjemalloc2( |,|$)'
if [[ $depends =~ $dep_re ]]; then ok "the .deb depends on libjemalloc2"; else bad "the .deb's Depends lacks libjemalloc2: '$depends'"; fi

# ---- 1. install: nothing starts ----------------------------------------------------------------
tgt_up pkg
# Docker-style images carry a policy-rc.d that forbids every service action; the maintainer
# scripts honour it (deb-systemd-invoke). A real installation has none.
tgt_run rm -f /usr/sbin/policy-rc.d
tgt_copy_in "$KT_ROOT/tests/system/lib/inside.sh" "$KT_INSIDE/kt" || abort "copying the inside helper in"
tgt_copy_in "$DEB" /root/kechi.deb || abort "copying the .deb in"
# paths with "kechi" in them that the machine had before the package (the test machine is an
# overlay of the host: whatever the host holds is not the package's doing)
kechi_paths() {
  # shellcheck disable=SC2016
  tgt_run sh -c 'find /etc /usr /lib /run /var -xdev -path "*kechi*" 2>/dev/null' |
    grep -v -e "^$KT_INSIDE" -e '^/run/kt-load' -e '^/run/kechi-test' -e '^/etc/systemd/system/kechi-test-box' | sort
}
before_install=$(kechi_paths)
if out=$(tgt_run dpkg -i /root/kechi.deb 2>&1); then ok "dpkg -i"; else
  printf '%s\n' "$out" | sed 's/^/          | /'; abort "dpkg -i failed"
fi
expect_eq "package state" "$(tgt_run dpkg-query -W -f '${Status}' kechi)" "install ok installed"
for f in /usr/bin/kechid /usr/bin/kechictl /lib/systemd/system/kechi@.service /lib/systemd/system/kechi@.socket \
  /lib/systemd/system/kechi.slice /etc/kechi/example.toml.sample /usr/share/kechi/example-app.py \
  /usr/share/man/man8/kechid.8.gz /usr/share/man/man1/kechictl.1.gz /usr/share/man/man5/kechi.toml.5.gz \
  /usr/share/bash-completion/completions/kechictl /usr/share/zsh/vendor-completions/_kechictl \
  /usr/share/fish/vendor_completions.d/kechictl.fish; do
  if tgt_run test -e "$f"; then ok "installed $f"; else bad "missing $f"; fi
done
# (kechi-test-box.target is the test machine's own)
active=$(tgt_run systemctl list-units --plain --no-legend --state=active 'kechi*' | awk '$1 != "kechi-test-box.target" { print $1 }' | tr '\n' ' ')
expect_eq "kechi units active after installing" "${active:-none}" none

# ---- 2. the example app, started on demand through its socket ----------------------------------
tgt_run cp /etc/kechi/example.toml.sample "/etc/kechi/$KT_APP.toml"
if out=$(tgt_run kechictl check "$KT_APP" 2>&1); then ok "kechictl check $KT_APP: $out"; else
  printf '%s\n' "$out" | sed 's/^/          | /'; abort "the example does not pass kechictl check"
fi
tgt_run systemctl enable --now "kechi@$KT_APP.socket" > /dev/null 2>&1 || abort "systemctl enable --now kechi@$KT_APP.socket"
expect_eq "kechi@$KT_APP.socket" "$(unit_prop "kechi@$KT_APP.socket" ActiveState)" active
expect_eq "kechi@$KT_APP.service before the first request" "$(unit_prop "kechi@$KT_APP.service" ActiveState)" inactive
body=$(tgt_run curl -sS --max-time 60 --unix-socket "/run/kechi/$KT_APP.sock" http://localhost/ 2>&1)
case "$body" in
  "hello from worker "*) ok "first request on /run/kechi/$KT_APP.sock: $body" ;;
  *) bad "first request on /run/kechi/$KT_APP.sock: '$body'" ;;
esac
expect_eq "kechi@$KT_APP.service after it" "$(unit_state_within "kechi@$KT_APP.service" active 60)" active
w=$(kt wait-workers "$KT_APP" 2 1 60) || bad "want 2 workers"
show_workers "$w"
# what `systemctl status` shows (src/driver/requests.rs, status_text): ready/wanted, memory once sampled,
# jemalloc (the example enables it), the last restart or recycle
status_re='^2/2 workers ready(, [0-9.]+[KMG]?B? total)?, jemalloc in 2, no restarts$'
end=$((SECONDS + 30))
until status=$(unit_prop "kechi@$KT_APP.service" StatusText); [[ $status =~ $status_re ]] || [ "$SECONDS" -ge "$end" ]; do
  sleep 0.5
done
if [[ $status =~ $status_re ]]; then ok "STATUS=$status"; else bad "STATUS='$status', want /$status_re/"; fi

# ---- 2b. the same example without systemd: kechid --foreground on the packaged sample ----------
# (no listen key and no socket unit: the example app binds 127.0.0.1:8080 of the test machine
# itself; kechid keeps its runtime files apart from the service's)
fg_ready() {
  tgt_run env KECHI_RUNTIME_DIR=/run/kechi-fg kechictl status example --json 2> /dev/null |
    python3 -c 'import json, sys; print(sum(w["state"] == "ready" for w in json.load(sys.stdin)["workers"]))' 2> /dev/null
}
tgt_run mkdir -p /root/fg /run/kechi-fg
tgt_run cp /etc/kechi/example.toml.sample /root/fg/example.toml
if tgt_run systemd-run --quiet --unit=kt-fg-example --service-type=exec -E KECHI_RUNTIME_DIR=/run/kechi-fg \
  /usr/bin/kechid --foreground /root/fg/example.toml; then
  end=$((SECONDS + 60))
  until [ "$(fg_ready)" = 2 ] || [ "$SECONDS" -ge "$end" ]; do sleep 0.5; done
  expect_eq "kechid --foreground /etc/kechi/example.toml.sample (a copy): workers ready" "$(fg_ready)" 2
  body=$(tgt_run curl -sS --max-time 30 http://127.0.0.1:8080/ 2>&1)
  case "$body" in
    "hello from worker "*) ok "--foreground example on 127.0.0.1:8080: $body" ;;
    *) bad "--foreground example on 127.0.0.1:8080: '$body'" ;;
  esac
  tgt_run systemctl stop kt-fg-example
  expect_eq "kechid --foreground: exit status on SIGTERM" "$(unit_prop kt-fg-example ExecMainStatus)" 0
  expect_eq "its runtime files left" "$(tgt_run find /run/kechi-fg -mindepth 1 | tr '\n' ' ')" ""
  tgt_run systemctl reset-failed kt-fg-example 2> /dev/null
else
  bad "systemd-run kechid --foreground /root/fg/example.toml"
fi
# (the scratch folders of this check are the test's, not the package's: gone before the purge
# looks for leftovers)
tgt_run rm -rf /run/kechi-fg /root/fg

# ---- 3. policy from a drop-in ------------------------------------------------------------------
# 120M: the example's memory.high (112M) and recycle-above (96M) stay below it
printf '[Service]\nEnvironment=KECHI_WORKERS=3 KECHI_MEMORY_MAX=120M\n' |
  tgt_write "/etc/systemd/system/kechi@$KT_APP.service.d/policy.conf"
tgt_run systemctl daemon-reload
reload_cursor=$(journal_cursor)
tgt_run systemctl reload "kechi@$KT_APP" || bad "systemctl reload kechi@$KT_APP"
ready_3() {  # every worker replaced (serials above the old ones), 3 ready, each scope at 120M
  tgt_run kechictl status "$KT_APP" --json 2> /dev/null | python3 -c '
import json, sys
st = json.load(sys.stdin)
ws = [w for w in st["workers"] if w["state"] != "gone"]
ok = len(ws) == 3 and all(w["state"] == "ready" and w["serial"] > int(sys.argv[1]) for w in ws)
print(" ".join("{}:{}:{}".format(w["serial"], w["state"], w.get("scope")) for w in ws))
sys.exit(0 if ok else 1)' "$1"
}
old_max=$(max_serial "$w")
old_w=$w
end=$((SECONDS + 240))
until st=$(ready_3 "$old_max"); do
  [ "$SECONDS" -lt "$end" ] || break
  sleep 1
done
if ready_3 "$old_max" > /dev/null; then ok "kechictl status --json after the reload: $st"; else bad "after the reload: $st"; fi
w=$(workers)
show_workers "$w"
while read -r _ unit _; do
  [ -n "$unit" ] || continue
  expect_eq "MemoryMax of $unit" "$(unit_prop "$unit" MemoryMax)" $((120 << 20))
done <<< "$w"
out=$(tgt_run kechictl config "$KT_APP" 2> /dev/null | awk '$1 == "workers" || $1 == "memory.max"')
printf '%s\n' "$out" | sed 's/^/          | /'
if has "$out" 'KECHI_MEMORY_MAX'; then ok "kechictl config names the variable"; else bad "kechictl config: memory.max not from KECHI_MEMORY_MAX"; fi
# `journalctl -u kechi@APP` tells why each worker was replaced: REASON=reload, one record per old
# worker, after the record of the reload itself
log=$(journal_unit_after "$reload_cursor" "kechi@$KT_APP.service" fields)
printf '%s\n' "$log" | grep 'REASON=' | sed 's/^/          | /'
reloaded=$(printf '%s\n' "$log" | grep -c '^\[REASON=reload\] configuration reloaded from ')
expect_eq "journal: REASON=reload records of the reload" "$reloaded" 1
recycled=$(printf '%s\n' "$log" | grep -oE '^\[WORKER=[0-9]+ REASON=reload\] recycling worker' | sort -u | grep -c .)
expect_eq "journal: workers recycled with REASON=reload (one per old worker)" "$recycled" "$(count_lines "$(printf '%s\n' "$old_w")")"

# ---- 4. TCP from a socket drop-in --------------------------------------------------------------
tgt_run systemctl stop "kechi@$KT_APP.socket" "kechi@$KT_APP.service"
printf '[Socket]\nListenStream=%s\n' "$KT_LISTEN" | tgt_write "/etc/systemd/system/kechi@$KT_APP.socket.d/listen.conf"
tgt_run systemctl daemon-reload
tgt_run systemctl start "kechi@$KT_APP.socket" || bad "systemctl start kechi@$KT_APP.socket"
body=$(tgt_run curl -sS --max-time 60 "http://$KT_LISTEN/" 2>&1)
case "$body" in
  "hello from worker "*) ok "request on $KT_LISTEN: $body" ;;
  *) bad "request on $KT_LISTEN: '$body'" ;;
esac
w=$(kt wait-workers "$KT_APP" 3 1 60) || bad "want 3 workers"
show_workers "$w"

# ---- 5. upgrade (the same package again) under load --------------------------------------------
before_main=$(unit_prop "kechi@$KT_APP.service" MainPID)
before_pids=$(printf '%s\n' "$w" | awk '{ print $3 }' | sort | tr '\n' ' ')
load_start upgrade keepalive
sleep 2
if out=$(tgt_run dpkg -i /root/kechi.deb 2>&1); then ok "dpkg -i again (upgrade)"; else
  printf '%s\n' "$out" | sed 's/^/          | /'; bad "dpkg -i again failed"
fi
end=$((SECONDS + 60))
while :; do
  main=$(unit_prop "kechi@$KT_APP.service" MainPID)
  state=$(unit_prop "kechi@$KT_APP.service" ActiveState)
  [ "$state" = active ] && [ "$main" != 0 ] && [ "$main" != "$before_main" ] && break
  [ "$SECONDS" -lt "$end" ] || break
  sleep 0.5
done
sleep 3
load_stop upgrade "reinstall of the package"
expect_eq "kechi@$KT_APP.service after the upgrade" "$state" active
if [ "$main" != "$before_main" ]; then ok "kechid restarted: pid $before_main -> $main"; else bad "kechid was not restarted (pid $main)"; fi
w=$(workers)
after_pids=$(printf '%s\n' "$w" | awk '{ print $3 }' | sort | tr '\n' ' ')
expect_eq "worker pids (adopted, not restarted)" "$after_pids" "$before_pids"

# ---- 6. man pages, --help, completions ---------------------------------------------------------
for page in kechid kechictl kechi.toml; do
  n=$(tgt_run env MANPAGER=cat MANWIDTH=80 man "$page" 2> /dev/null | grep -c .)
  if [ "${n:-0}" -gt 20 ]; then ok "man $page ($n lines)"; else bad "man $page"; fi
done
# the whole output first, matched in bash: `cmd | grep -q` can fail under pipefail when grep leaves
# before the writer is done
out=$(tgt_run kechictl --help)
if [[ $'\n'$out == *$'\nCommands:'* ]]; then ok "kechictl --help"; else bad "kechictl --help"; fi
out=$(tgt_run kechid --help)
if [[ $out == *'Exit codes'* ]]; then ok "kechid --help"; else bad "kechid --help"; fi
# shellcheck disable=SC2016
comp=$(tgt_run bash -c 'source /usr/share/bash-completion/completions/kechictl
COMP_WORDS=(kechictl st); COMP_CWORD=1; _kechictl; echo "${COMPREPLY[*]}"
COMP_WORDS=(kechictl status ""); COMP_CWORD=2; _kechictl; echo "${COMPREPLY[*]}"' 2>&1)
expect_eq "bash completion of 'kechictl st', 'kechictl status '" "$(printf '%s' "$comp" | tr '\n' '|')" "status|$KT_APP"
# zsh: compinit finds the file on Debian's fpath and binds both commands to it; loaded, it defines
# its helpers, and the one listing apps finds this one (compadd stubbed: it only works inside a
# completion widget, which needs a terminal)
if tgt_run sh -c 'command -v zsh' > /dev/null; then
  # shellcheck disable=SC2016
  comp=$(tgt_run zsh -f -c '
fpath=(/usr/share/zsh/vendor-completions $fpath)
autoload -Uz compinit && compinit -u -D
print -r -- "${_comps[kechictl]} ${_comps[kechid]}"
_arguments() { return 1 }
_wanted() { print -r -- "${(@P)${@[-1]}}" }
service=kechictl; source /usr/share/zsh/vendor-completions/_kechictl
_kechi_apps' 2>&1)
  expect_eq "zsh: compinit's bindings of kechictl, kechid | apps offered" "$(printf '%s' "$comp" | tr '\n' '|')" "_kechictl _kechictl|$KT_APP"
else
  bad "zsh is not installed: its completion was not exercised (apt-get install zsh; tests/run.sh does)"
fi
if tgt_run sh -c 'command -v fish' > /dev/null; then
  expect_eq "fish completion of 'kechictl status '" \
    "$(tgt_run fish -c 'complete -C"kechictl status "' 2>&1 | cut -f1 | tr '\n' ' ')" "$KT_APP "
else
  bad "fish is not installed: its completion was not exercised (apt-get install fish; tests/run.sh does)"
fi

# ---- 7. dpkg -r: everything stops --------------------------------------------------------------
if out=$(tgt_run dpkg -r kechi 2>&1); then ok "dpkg -r kechi"; else
  printf '%s\n' "$out" | sed 's/^/          | /'; bad "dpkg -r failed"
fi
left=$(tgt_run systemctl list-units --all --plain --no-legend 'kechi*' | awk '$3 != "inactive" && $1 != "kechi-test-box.target" { print $1 "=" $3 }' | tr '\n' ' ')
expect_eq "kechi units still running after dpkg -r" "${left:-none}" none
expect_eq "processes of user nobody" "$(tgt_run pgrep -u nobody | grep -c .)" 0
for f in /usr/bin/kechid /usr/bin/kechictl /lib/systemd/system/kechi@.service; do
  if tgt_run test -e "$f"; then bad "$f still there after dpkg -r"; else ok "$f removed"; fi
done
if tgt_run test -e "/etc/kechi/$KT_APP.toml"; then ok "the admin's /etc/kechi/$KT_APP.toml kept"; else bad "/etc/kechi/$KT_APP.toml removed"; fi

# ---- 8. dpkg --purge: nothing left but the admin's files ---------------------------------------
if out=$(tgt_run dpkg --purge kechi 2>&1); then ok "dpkg --purge kechi"; else
  printf '%s\n' "$out" | sed 's/^/          | /'; bad "dpkg --purge failed"
fi
left=$(comm -13 <(printf '%s\n' "$before_install") <(kechi_paths) | grep .)
want=$(printf '%s\n' "/etc/kechi" "/etc/kechi/$KT_APP.toml" "/etc/systemd/system/kechi@$KT_APP.service.d" \
  "/etc/systemd/system/kechi@$KT_APP.service.d/policy.conf" "/etc/systemd/system/kechi@$KT_APP.socket.d" \
  "/etc/systemd/system/kechi@$KT_APP.socket.d/listen.conf" | sort)
if [ "$left" = "$want" ]; then
  ok "after purge only the admin's files are left: $(printf '%s' "$left" | tr '\n' ' ')"
else
  bad "after purge, unexpected files (+) or missing admin files (-):"
  diff <(printf '%s\n' "$want") <(printf '%s\n' "$left") | grep '^[<>]' | sed 's/^</          -/; s/^>/          +/'
fi

# ---- the .rpm (on this host) -------------------------------------------------------------------
if [ -z "$RPM" ] || [ ! -f "$RPM" ]; then
  info "no .rpm next to the .deb: rpm checks not run"
elif ! command -v rpm > /dev/null; then
  bad "rpm is not installed here, so the .rpm was not checked (apt-get install rpm; tests/run.sh does)"
else
  say "package: $RPM"
  files=$(rpm -qlp "$RPM" 2>&1)
  rpm_listed=0
  for f in /usr/bin/kechid /usr/bin/kechictl /usr/lib/systemd/system/kechi@.service \
    /usr/lib/systemd/system/kechi@.socket /usr/lib/systemd/system/kechi.slice /etc/kechi/example.toml.sample \
    /usr/share/man/man8/kechid.8.gz /usr/share/man/man1/kechictl.1.gz /usr/share/man/man5/kechi.toml.5.gz \
    /usr/share/bash-completion/completions/kechictl /usr/share/zsh/site-functions/_kechictl \
    /usr/share/fish/vendor_completions.d/kechictl.fish; do
    if has "$files" -x "$f"; then ok "rpm -qlp: $f"; else
      bad "rpm -qlp: no $f"
      # once: what rpm did list (and said), and what the build left to pack
      if [ "$rpm_listed" = 0 ]; then
        rpm_listed=1
        printf '%s\n' "$files" | sed 's/^/          | /'
        ls -l "$(dirname "$RPM")/../release/man" 2>&1 | sed 's/^/          | /'
      fi
    fi
  done
  req=$(rpm -qp --requires "$RPM" 2> /dev/null)
  if has "$req" -x jemalloc; then ok "rpm requires jemalloc"; else bad "rpm does not require jemalloc"; fi
  scripts=$(rpm -qp --scripts "$RPM" 2> /dev/null)
  if has "$scripts" "try-restart 'kechi@\*.service'"; then ok "rpm scriptlets: try-restart on upgrade"; else bad "rpm scriptlets: no try-restart"; fi
  if printf '%s\n' "$scripts" | grep -v '^ *#' | grep -q "systemctl start\|systemctl enable"; then bad "rpm scriptlets start or enable something"; else ok "rpm scriptlets start nothing"; fi
  root=$(mktemp -d)
  # dependencies aside (the root is empty), scriptlets aside (no /bin/sh and no systemd in it)
  if rpm --root "$root" --dbpath /var/lib/rpm --initdb &&
     rpm --root "$root" --dbpath /var/lib/rpm -i --nodeps --noscripts "$RPM" 2> /dev/null; then
    ok "rpm -i --root (--nodeps --noscripts): $(find "$root" -type f ! -path "$root/var/lib/rpm/*" | grep -c .) files"
    if rpm --root "$root" --dbpath /var/lib/rpm -V --nodeps kechi; then ok "rpm -V in that root"; else bad "rpm -V in that root"; fi
  else
    bad "rpm -i --root failed"
  fi
  rm -rf "$root"
fi
finish
