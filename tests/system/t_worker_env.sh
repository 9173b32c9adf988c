#!/bin/bash
# t_worker_env: what each worker gets: jemalloc loaded, kechi's variables, a TMPDIR of its own
# (0700, the app's user, on a tmpfs mounted for it, distinct per worker) that is wiped when the
# worker ends; setuid programs still work for it (no no_new_privs). MALLOC_CONF is kechi's default
# (src/jemalloc.rs). A statically linked worker, which ignores LD_PRELOAD, runs: kechid warns in
# the journal that jemalloc is not loaded in it and carries on.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_worker_env "jemalloc, environment and a private tmpfs TMPDIR per worker"
tgt_up env
kechi_install
demo_config
kechi_start || abort "kechi@demo did not start"
w=$(workers)
show_workers "$w"
[ "$(count_lines "$w")" = 3 ] || abort "want 3 worker scopes, got $(count_lines "$w")"
mainpid=$(unit_prop kechi@demo MainPID)
# kechi's default, as the code says it (the demo config leaves jemalloc.conf empty)
default_conf=$(sed -n '/^pub const DEFAULT_CONF/,/;/p' "$KT_ROOT/src/jemalloc.rs" | grep -o '"[^"]*"' | tr -d '"')
[ -n "$default_conf" ] || abort "no DEFAULT_CONF in src/jemalloc.rs"

envof() { tgt_run sh -c 'tr "\0" "\n" < /proc/$1/environ | sed -n "s/^$2=//p"' env "$1" "$2"; }
in_worker_ns() { local pid=$1; shift; tgt_run nsenter -t "$pid" -m "$@"; }

dirs=""
victim=""; victim_dir=""
while read -r serial unit pid; do
  [ -n "$serial" ] || continue
  say "worker $serial ($unit, pid $pid)"
  [ "$pid" != - ] || { bad "$unit has no worker process"; continue; }
  lib=$(tgt_run sh -c 'grep -o "/[^ ]*libjemalloc[^ ]*" /proc/$1/maps | sort -u | head -1' maps "$pid")
  if [ -n "$lib" ]; then ok "jemalloc mapped in pid $pid: $lib"; else bad "no libjemalloc in /proc/$pid/maps"; fi
  preload=$(envof "$pid" LD_PRELOAD)
  case "$preload" in *libjemalloc*) ok "LD_PRELOAD=$preload" ;; *) bad "LD_PRELOAD='$preload' does not name jemalloc" ;; esac
  expect_eq "MALLOC_CONF (kechi's default)" "$(envof "$pid" MALLOC_CONF)" "$default_conf"
  expect_eq "KECHI_APP" "$(envof "$pid" KECHI_APP)" demo
  expect_eq "KECHI_WORKER" "$(envof "$pid" KECHI_WORKER)" "$serial"
  expect_eq "PORT (the app's environment)" "$(envof "$pid" PORT)" 8080
  ns=$(envof "$pid" NOTIFY_SOCKET)
  case "$ns" in
    "") bad "no NOTIFY_SOCKET (ready.mode = notify needs kechid's)" ;;
    /run/systemd/notify) bad "NOTIFY_SOCKET is systemd's own socket, not kechid's" ;;
    *) ok "NOTIFY_SOCKET is kechid's: $ns" ;;
  esac
  expect_eq "NoNewPrivs (setuid programs work)" "$(tgt_run awk '$1 == "NoNewPrivs:" { print $2 }' "/proc/$pid/status")" 0

  dir=$(envof "$pid" TMPDIR)
  if [ -z "$dir" ]; then bad "worker $pid has no TMPDIR"; continue; fi
  info "TMPDIR=$dir"
  expect_eq "TMPDIR mode, owner, type (as the worker sees it)" \
    "$(in_worker_ns "$pid" stat -c '%a %U %F' "$dir")" "700 kechitest directory"
  expect_eq "TMPDIR filesystem" "$(in_worker_ns "$pid" stat -f -c %T "$dir")" tmpfs
  read -r mnt fstype <<< "$(kt mountof "$pid" "$dir")"
  info "mount holding it: $mnt ($fstype)"
  case "$mnt" in
    /|/run|/tmp|/dev/shm|/var/tmp|"") bad "TMPDIR is on the shared mount '$mnt', not on a tmpfs of kechi's" ;;
    *) ok "TMPDIR is on a tmpfs of its own: $mnt" ;;
  esac
  seen=$(tgt_run findmnt -n -o TARGET -T "$dir")
  info "the same path seen from outside the worker: on '$seen'"
  dirs="$dirs $dir"
  if [ -z "$victim" ]; then victim=$pid; victim_dir=$dir; victim_serial=$serial; fi
done <<< "$w"
expect_eq "distinct TMPDIRs" "$(printf '%s' "$dirs" | tr ' ' '\n' | sort -u | grep -c .)" 3

say "a file written by worker $victim_serial's user in its TMPDIR, then the worker ends"
# shellcheck disable=SC2016
tgt_run nsenter -t "$victim" -m setpriv --reuid=kechitest --regid=kechitest --init-groups \
  sh -c 'echo x > "$1/f" && ls -l "$1/f"' write "$victim_dir" | sed 's/^/          /'
expect_eq "file as seen by the worker" "$(in_worker_ns "$victim" cat "$victim_dir/f" 2>&1)" x
# another user may not look inside
if tgt_run setpriv --reuid=nobody --regid=nogroup --clear-groups ls "$victim_dir" > /dev/null 2>&1; then
  bad "user nobody can list $victim_dir"
else
  ok "user nobody cannot list $victim_dir"
fi
tgt_run kill -TERM "$victim"
if kt wait-gone "$victim" 30; then ok "worker $victim ended after SIGTERM"; else bad "worker $victim still alive 30 s after SIGTERM"; fi
if w2=$(kt wait-workers demo 3 $(( $(max_serial "$w") + 1 )) 30); then
  ok "replaced: 3 workers again"
else
  bad "not back to 3 workers with a new serial within 30 s"
fi
show_workers "$w2"
if tgt_run test -e "$victim_dir/f"; then bad "$victim_dir/f still exists (seen from the box)"; else ok "$victim_dir/f is gone (seen from the box)"; fi
if tgt_run nsenter -t "$mainpid" -m test -e "$victim_dir/f"; then bad "$victim_dir/f still exists (seen by kechid)"; else ok "$victim_dir/f is gone (seen by kechid)"; fi
holders=$(kt mounted-anywhere "$victim_dir" | tr '\n' ' ')
if [ -z "$holders" ]; then ok "no process sees a mount at $victim_dir any more"; else bad "a mount at $victim_dir is still seen by pids: $holders"; fi

say "a statically linked worker (busybox-static): LD_PRELOAD is ignored; kechid warns, does not fail"
static=/bin/busybox
if ! tgt_run test -x "$static"; then
  bad "no $static (apt-get install busybox-static; tests/run.sh does): the static-worker case was not run"
elif tgt_run sh -c 'readelf -l "$1" | grep -q INTERP' static "$static"; then
  bad "$static is dynamically linked here (want busybox-static): the static-worker case was not run"
else
  tgt_run systemctl stop kechi@demo 2> /dev/null  # (its socket could start it again: not used here)
  kechi_config <<EOF
command = ["$static", "sleep", "3600"]
user = "$KT_USER"
workers = 2

[ready]
mode = "delay"
delay = "1s"
EOF
  cursor=$(journal_cursor)
  kechi_start || abort "kechi@demo did not start with a static worker"
  w=$(kt wait-workers demo 2 1 30) || bad "want 2 static workers"
  show_workers "$w"
  warned=""
  end=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$end" ]; do
    warned=$(journal_unit_after "$cursor" kechi@demo.service fields | grep -F 'jemalloc is not loaded in the worker')
    [ "$(count_lines "$warned")" -ge 2 ] && break
    sleep 1
  done
  printf '%s\n' "$warned" | grep . | sed 's/^/          | /'
  expect_eq "journal: workers warned about (jemalloc not loaded)" "$(count_lines "$warned")" 2
  while read -r serial _ pid; do
    [ -n "$serial" ] || continue
    case "$(envof "$pid" LD_PRELOAD)" in *libjemalloc*) ok "worker $serial got LD_PRELOAD all the same" ;; *) bad "worker $serial has no LD_PRELOAD" ;; esac
    if tgt_run grep -q libjemalloc "/proc/$pid/maps"; then bad "jemalloc mapped in static worker $pid"; else ok "jemalloc not mapped in static worker $pid"; fi
  done <<< "$w"
  sleep 3
  expect_eq "kechi@demo with static workers, a few seconds later" "$(tgt_run systemctl is-active kechi@demo)" active
  expect_eq "NRestarts" "$(unit_prop kechi@demo NRestarts)" 0
  expect_eq "worker scopes" "$(count_lines "$(workers)")" 2
  status=$(unit_prop kechi@demo StatusText)
  if [[ $status == "2/2 workers ready"*", jemalloc in 0,"* ]]; then ok "STATUS=$status"; else bad "STATUS='$status', want 2/2 ready and jemalloc in 0"; fi
fi

finish
