#!/bin/bash
# t_sec_tmpdir: a hostile worker cannot make kechid touch anything outside its TMPDIR.
# The worker (apps/planter.sh) plants symlinks to a root-owned shadow copy, to /etc/shadow, to a
# directory outside, nested and relative ones, a link loop and a same-tmpfs hard link; a process
# of the same user outside the worker's scope keeps swapping an entry between a directory and a
# link to the outside directory during the recycle. Contract, after `kechictl recycle --wait`:
#  - every target outside is unchanged: inode, link count, size, mtime (ns), owner, mode, content;
#    the outside directories hold the same entries;
#  - the old TMPDIR path is gone, nothing is mounted there any more, and what the swapper keeps
#    writing (in the detached tmpfs it still has as cwd) never shows at the path.
# The links are shown to be real ways out first: as root, reading through them gives the
# targets' content, so a wipe that followed them as root would reach the real files.
# Hard links out of the TMPDIR are impossible (it is a tmpfs of its own: EXDEV), which the test
# checks against a hard link the same user can make on the outside filesystem.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_sec_tmpdir "planted symlinks, hard links and a swapped link survive a recycle's wipe untouched"
tgt_up sectmp
kechi_install
OUT=/srv/kechi-sec
# shellcheck disable=SC2016
tgt_sh "set -e
  mkdir -p $OUT/dir $OUT/appdir
  printf 'root:\$6\$kechi\$secret:19000:0:99999:7:::\n' > $OUT/shadow
  chmod 0640 $OUT/shadow; chown root:shadow $OUT/shadow
  echo 'outside, in a directory' > $OUT/dir/file
  echo 'the app user own data' > $OUT/appdir/appdata
  chown -R $KT_USER:$KT_USER $OUT/appdir
  touch -h -d '2001-02-03 04:05:06.123456789' $OUT/shadow $OUT/dir/file $OUT/appdir/appdata $OUT/dir $OUT/appdir /etc/shadow" \
  || abort "preparing the outside files"
# the same user can hard-link its file on the outside filesystem: so the EXDEV the worker gets
# below is the tmpfs boundary, not a permission (done before the snapshot: it changes appdir)
if tgt_run setpriv --reuid="$KT_USER" --regid="$KT_USER" --clear-groups ln "$OUT/appdir/appdata" "$OUT/appdir/probe"; then
  ok "on the outside filesystem, $KT_USER can hard-link appdata"
  tgt_run rm -f "$OUT/appdir/probe"
  tgt_run touch -h -d '2001-02-03 04:05:06.123456789' "$OUT/appdir"
else
  bad "$KT_USER cannot hard-link appdata even on its own filesystem: the EXDEV check below proves nothing"
fi
# one line per target: what a wipe must leave exactly as it is
snap() {
  # shellcheck disable=SC2016
  tgt_sh 'for f in /srv/kechi-sec/shadow /etc/shadow /srv/kechi-sec/dir/file /srv/kechi-sec/appdir/appdata /srv/kechi-sec/dir /srv/kechi-sec/appdir; do
      if [ -f "$f" ]; then h=$(sha256sum < "$f" | cut -c1-16); else h=$(ls -A "$f" | tr "\n" ","); fi
      echo "$f $(stat -c "ino=%i links=%h size=%s mtime=%.9Y %U:%G %a" "$f") $h"
    done'
}
before=$(snap)
printf '%s\n' "$before" | sed 's/^/          /'

kechi_config <<EOF2
command = ["$KT_INSIDE/planter.sh"]
user = "$KT_USER"
workers = 1
environment = { PORT = "8080" }
[ready]
mode = "delay"
delay = "1s"
EOF2
kechi_start || abort "kechi@demo did not start"
w=$(kt wait-workers "$KT_APP" 1 1 30) || abort "no worker"
read -r serial unit pid <<< "$w"
dir=$(kt envof "$pid" TMPDIR)
info "worker $serial ($unit, pid $pid), TMPDIR=$dir"
[ -n "$dir" ] || abort "the worker has no TMPDIR"
tgt_run test -L "$dir/loop" || abort "the worker did not plant its links in $dir"
tgt_run ls -la "$dir" "$dir/a/b/c" | sed 's/^/          | /'

say "the planted links lead out (what a wipe that follows them, as root, would reach)"
expect_eq "as root, $dir/shadowlink reads" "$(tgt_run cat "$dir/shadowlink" | cut -d: -f1-2)" 'root:$6$kechi$secret'
expect_eq "as root, $dir/a/b/c/rel reads" "$(tgt_run cat "$dir/a/b/c/rel" | cut -d: -f1-2)" 'root:$6$kechi$secret'
expect_eq "$dir/etcshadow resolves to" "$(tgt_run readlink -f "$dir/etcshadow")" /etc/shadow
expect_eq "$dir/a/b/c/dirlink lists" "$(tgt_run ls "$dir/a/b/c/dirlink/")" file
expect_eq "links of the same-tmpfs hard link $dir/hard" "$(tgt_run stat -c %h "$dir/hard")" 2
err=$(tgt_run cat "$dir/crossfs.err")
case "$err" in *"cross-device"*) ok "a hard link out of the TMPDIR fails: $err" ;; *) bad "a hard link out of the TMPDIR did not fail with EXDEV: '$err'" ;; esac

say "a process of $KT_USER outside the worker's scope swaps $dir/x between a directory and a link to $OUT/dir"
# shellcheck disable=SC2016
tgt_run systemd-run --quiet --unit=kt-swapper --uid="$KT_USER" --gid="$KT_USER" -p WorkingDirectory="$dir" \
  sh -c 'n=0; while :; do rm -rf x; ln -s /srv/kechi-sec/dir x; rm -f x; mkdir x; ln -s /srv/kechi-sec/dir x/y; echo > x/f; ln -sfn /srv/kechi-sec/dir x/y/z 2>/dev/null; n=$((n+1)); echo $n > count; done' \
  || abort "starting the swapper"
sleep 1
c1=$(tgt_run cat "$dir/count")
info "swaps so far: $c1"

say "kechictl recycle $KT_APP --worker $serial --wait"
if tgt_run timeout 90 kechictl recycle "$KT_APP" --worker "$serial" --wait > /dev/null; then ok "recycled worker $serial"; else bad "kechictl recycle failed"; fi
kt wait-gone "$pid" 30 || bad "the old worker $pid is still alive"
w2=$(kt wait-workers "$KT_APP" 1 $((serial + 1)) 30) || bad "no replacement worker"
show_workers "$w2"
expect_eq "the swapper is still running (it swapped during the wipe)" "$(tgt_run systemctl is-active kt-swapper)" active
sleep 0.5
c2=$(tgt_run sh -c "nsenter -t \$(systemctl show -p MainPID --value kt-swapper) -m cat /proc/\$(systemctl show -p MainPID --value kt-swapper)/cwd/count" 2>/dev/null)
# still counting after the wipe: its cwd is the detached tmpfs, which lives on without a path
if [ -n "$c2" ] && [ "$c2" -gt "$c1" ]; then ok "the swapper kept swapping through the wipe: $c1 -> $c2 swaps"; else bad "the swapper did not keep swapping ($c1 -> '$c2'): the race was not exercised"; fi

say "after the wipe"
if tgt_run test -e "$dir" || tgt_run test -L "$dir"; then bad "$dir still exists: $(tgt_run ls -la "$dir" 2>&1 | tr '\n' ' ')"; else ok "$dir is gone"; fi
holders=$(kt mounted-anywhere "$dir" | tr '\n' ' ')
if [ -z "$holders" ]; then ok "no process sees a mount at $dir"; else bad "a mount at $dir is still seen by pids: $holders"; fi
tgt_run systemctl stop kt-swapper
after=$(snap)
if [ "$before" = "$after" ]; then
  ok "every target outside is unchanged (inode, links, size, mtime, owner, mode, content, entries)"
else
  bad "something outside changed:"
  diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed 's/^/          /'
fi
if tgt_run test -e "$dir"; then bad "$dir came back after the swapper stopped"; else ok "$dir still absent after the swapper stopped"; fi
finish
