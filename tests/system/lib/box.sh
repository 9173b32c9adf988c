#!/bin/bash
# box.sh — a throwaway, real systemd to test kechi against.
#
# Boots this machine's own systemd as PID 1 of fresh pid/mount/cgroup/uts/ipc/net namespaces, on a
# copy-on-write overlay of `/` whose upper layer is a tmpfs. Nothing done inside reaches the host's
# files: every write lands in that tmpfs and vanishes at `down`. Used where the machine's PID 1 is
# not systemd (CI and development VMs), which is exactly where kechi cannot otherwise be tested.
#
# As a library (bash):
#   source tests/system/lib/box.sh
#   name=$(box_name scopes)           # unique per test process: kt-<pid>-scopes
#   box_up "$name"                    # boots; prints the box's init pid; waits for running/degraded
#   box_run "$name" systemctl status  # root inside the box: its /, its systemd, its D-Bus
#   box_copy_in "$name" target/debug/kechid /usr/bin/kechid     # file mode kept
#   box_down "$name"                  # power off, remove its cgroups and state
# Every box started by a process is taken down when that process exits (EXIT trap); on a failing
# exit (status other than 0 and 77) the state of each box is dumped first (box_diag).
#
# As a command:
#   tests/system/lib/box.sh up NAME | run NAME CMD... | sh NAME | copy-in NAME SRC DST
#                           | diag NAME | down NAME | ls | reap (boxes of test processes gone)
#
# Environment: KT_STATE (default /run/kechi-test), KT_BOX_TMPFS (size of the upper layer, default
# 4G), KT_BOOT_TIMEOUT (s, default 60), KT_RUN_TIMEOUT (s per box_run, default 300; 0 = none).
#
# Safety: systemd must never boot on the host's real root (at boot it empties /tmp, applies
# sysctls, loads modules, ...). The boot path below refuses to exec systemd unless it is PID 1 of a
# new pid namespace, in a mount namespace other than the host's, with `/` switched (pivot_root) to
# an overlay whose upper layer is a tmpfs; the host's root is then detached from the box entirely.
# Inside, /proc/sys and /sys are read-only, /dev is a minimal private one, and the units that touch
# the kernel globally (sysctl, modules, binfmt, udev) are masked.

KT_STATE=${KT_STATE:-/run/kechi-test}
_BOX_SELF=$(readlink -f "${BASH_SOURCE[0]}")
_BOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
_BOX_TARGET=kechi-test-box.target
# units with no business in a throwaway box, or that would reach the host's kernel state
_BOX_MASK="systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service
 proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount sys-kernel-config.mount
 sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount
 systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service
 systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-hwdb-update.service
 systemd-remount-fs.service systemd-fsck-root.service systemd-random-seed.service
 systemd-timesyncd.service systemd-pstore.service systemd-logind.service getty.target
 console-getty.service timers.target e2scrub_reap.service cron.service postgresql.service
 ldconfig.service systemd-firstboot.service systemd-machine-id-commit.service
 dev-hugepages.mount dev-mqueue.mount"
declare -a _BOX_MINE=()
declare -a _BOX_EXIT_HOOKS=()

_box_say() { echo "box: $*" >&2; }
_box_err() { echo "box: $*" >&2; }

# --------------------------------------------------------------------------------------------
# names and state
box_name() {  # box_name SUFFIX -> kt-<pid of the test>-SUFFIX (unique while the test runs)
  local n="kt-$$-${1:-box}"
  echo "${n:0:40}"
}
_box_check_name() { [[ ${1:-} =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || { _box_err "bad box name '${1:-}' (letters, digits, _ . -; at most 40)"; return 1; }; }
_box_pidfile() { echo "$KT_STATE/$1.pid"; }
_box_log() { echo "$KT_STATE/$1.log"; }
_box_fsdir() { echo "$KT_STATE/$1.fs"; }
_box_cgname() { echo "kechi-test-$1"; }

# the host's cgroup mounts: "v1 <dir>" per v1 hierarchy (named ones too), or "v2 <dir>"
_box_host_cgroups() {
  awk '$9 == "cgroup" || $9 == "cgroup2" { print ($9 == "cgroup" ? "v1" : "v2"), $5 }' /proc/self/mountinfo \
    | grep -E ' /sys/fs/cgroup(/|$)' | sort -u
}
_box_cg_dirs() {  # every cgroup directory the box NAME owns on the host, one per hierarchy
  local cg kind dir
  cg=$(_box_cgname "$1")
  while read -r kind dir; do echo "$dir/$cg"; done < <(_box_host_cgroups)
}

# The box's init: its host pid, after checking that it really is the box's init (a stale pid file
# must never make us signal or enter an unrelated process).
_box_init_pid() {
  local name=$1 pid comm cg
  pid=$(cat "$(_box_pidfile "$name")" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r comm 2>/dev/null < "/proc/$pid/comm" || return 1
  [ "$comm" = systemd ] || return 1
  [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || return 1
  cg=$(_box_cgname "$name")
  grep -q "/$cg\(/\|\$\)" "/proc/$pid/cgroup" 2>/dev/null || return 1
  echo "$pid"
}
box_alive() { _box_init_pid "$1" > /dev/null; }

# --------------------------------------------------------------------------------------------
# inside the new namespaces, as their PID 1, before systemd
_box_boot_inner() {
  set -euo pipefail
  local name=$1 host_mntns=$2 top R hostpid c kind dir rel opts
  top=$(_box_fsdir "$name")
  # the guards: a fresh pid namespace (we are its init) and a mount namespace of our own
  [ "$$" = 1 ] || { echo "refusing: not PID 1 of a new pid namespace" >&2; exit 1; }
  [ "$(readlink /proc/self/ns/mnt)" != "$host_mntns" ] || { echo "refusing: still in the host's mount namespace" >&2; exit 1; }
  # /proc is still the host's here: /proc/self/stat opened by the shell itself gives our host pid
  read -r hostpid _ < /proc/self/stat
  mount --make-rprivate /
  mkdir -p "$top"
  mount -t tmpfs -o "size=${KT_BOX_TMPFS:-4G},mode=755" "kechi-test-$name" "$top"
  mkdir -p "$top/upper" "$top/work" "$top/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$top/upper,workdir=$top/work" "$top/root"
  R=$top/root
  [ "$(findmnt -n -o FSTYPE --mountpoint "$R")" = overlay ] || { echo "refusing: $R is not an overlay" >&2; exit 1; }
  [ "$(findmnt -n -o FSTYPE --mountpoint "$top")" = tmpfs ] || { echo "refusing: $top is not a tmpfs" >&2; exit 1; }

  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  for c in sys sysrq-trigger; do  # kernel-wide knobs: read-only, as systemd-nspawn does
    [ -e "$R/proc/$c" ] || continue
    mount --bind "$R/proc/$c" "$R/proc/$c"
    mount -o remount,bind,ro "$R/proc/$c"
  done
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"

  # a minimal /dev of our own; the host's /dev/shm and device nodes stay out of reach
  mount -t tmpfs -o mode=755,nosuid,size=4m devtmp "$R/dev"
  for c in null zero full random urandom tty; do
    touch "$R/dev/$c"
    mount --bind "/dev/$c" "$R/dev/$c"
  done
  if [ -e /dev/kmsg ]; then  # the kernel log, read-only: where OOM kills are reported
    touch "$R/dev/kmsg"; mount --bind /dev/kmsg "$R/dev/kmsg"; mount -o remount,bind,ro "$R/dev/kmsg"
  fi
  mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
  ln -s /proc/self/fd "$R/dev/fd"
  ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  # systemd (PID 1) writes its own messages to /dev/console: make that the box's log file
  touch "$R/dev/console"; mount --bind "$(_box_log "$name")" "$R/dev/console"

  # cgroups: the box's cgroup namespace is rooted in kechi-test-NAME of every hierarchy
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup"
  if [ -d /sys/fs/cgroup/memory ]; then  # v1 or hybrid host: the same hierarchies inside
    while read -r kind dir; do
      rel=${dir#/sys/fs/cgroup}; rel=${rel#/}
      [ -n "$rel" ] || continue
      mkdir -p "$R/sys/fs/cgroup/$rel"
      if [ "$kind" = v2 ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/$rel"
      elif [ "$rel" = systemd ]; then
        mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup/systemd"
      else
        opts=$(_box_v1_opts "$dir")
        mount -t cgroup -o "$opts,nosuid,nodev,noexec" cgroup "$R/sys/fs/cgroup/$rel"
        for c in ${opts//,/ }; do  # "cpu,cpuacct" is also reachable as cpu/ and cpuacct/
          [ -e "$R/sys/fs/cgroup/$c" ] || ln -s "$rel" "$R/sys/fs/cgroup/$c"
        done
      fi
    done < <(_box_host_cgroups)
    if ! mountpoint -q "$R/sys/fs/cgroup/systemd" 2> /dev/null; then  # systemd's own v1 hierarchy
      mkdir -p "$R/sys/fs/cgroup/systemd"
      mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup/systemd"
    fi
  else                                   # pure v2 host
    umount "$R/sys/fs/cgroup"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
  fi
  mount -t tmpfs -o mode=755,nosuid,nodev run "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"

  # the box's own configuration (lands in the upper layer)
  echo "kechi-test-$name" > "$R/etc/hostname"
  : > "$R/etc/fstab"
  rm -f "$R/.dockerenv" "$R/run/.containerenv"
  tr -d '-' < /proc/sys/kernel/random/uuid > "$R/etc/machine-id"
  mkdir -p "$R/etc/systemd/system"
  for c in $_BOX_MASK; do ln -sfn /dev/null "$R/etc/systemd/system/$c"; done
  cat > "$R/etc/systemd/system/$_BOX_TARGET" <<'EOF'
[Unit]
Description=Test box: basic system, journal and D-Bus only
Requires=basic.target dbus.socket
Wants=dbus.service systemd-journald.service
After=basic.target dbus.socket
AllowIsolate=yes
EOF
  echo "$hostpid" > "$(_box_pidfile "$name")"

  # switch the root to the overlay and drop every path to the host's root
  cd "$R"
  mkdir -p "$R/.kechi-test-oldroot"
  pivot_root . .kechi-test-oldroot
  cd /
  umount -l /.kechi-test-oldroot
  rmdir /.kechi-test-oldroot
  # last check, in the new root: / must be the overlay
  [ "$(findmnt -n -o FSTYPE --mountpoint /)" = overlay ] || { echo "refusing: / is not the overlay" >&2; exit 1; }
  exec env -i container=kechi-test PATH="$_BOX_PATH" LANG=C.UTF-8 \
    /lib/systemd/systemd --system --unit="$_BOX_TARGET" --log-target=journal --show-status=no --log-level=info
}

# mount options of a host v1 hierarchy (its controllers, e.g. "cpu,cpuacct" or "net_cls,net_prio")
_box_v1_opts() {
  awk -v d="$1" '$5 == d { n = split($0, a, " - "); split(a[2], b, " "); print b[3]; exit }' /proc/self/mountinfo \
    | tr ',' '\n' | grep -vE '^(rw|ro|relatime|noatime|nosuid|nodev|noexec|clone_children|nsdelegate|memory_recursiveprot|favordynmods)$' \
    | paste -sd, -
}

# --------------------------------------------------------------------------------------------
# host side
box_up() {
  local name=${1:-} log unshare_pid pid="" s="" deadline
  _box_check_name "$name" || return 1
  [ "$(id -u)" = 0 ] || { _box_err "needs root"; return 1; }
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    _box_err "this machine's PID 1 is systemd: boxes are for machines without it (use systemd-nspawn there)"; return 1
  fi
  if box_alive "$name"; then _box_err "box $name is already up"; return 1; fi
  mkdir -p "$KT_STATE"
  chmod 700 "$KT_STATE"
  log=$(_box_log "$name")
  rm -f "$(_box_pidfile "$name")"
  : > "$log"
  _BOX_MINE+=("$name")
  _box_install_trap
  (
    # a cgroup of its own in every hierarchy, so that the box's cgroup namespace is rooted there
    local kind dir cg
    cg=$(_box_cgname "$name")
    while read -r kind dir; do
      mkdir -p "$dir/$cg"
      if [ "$kind" = v1 ] && [ -f "$dir/cpuset.cpus" ]; then
        cat "$dir/cpuset.cpus" > "$dir/$cg/cpuset.cpus"; cat "$dir/cpuset.mems" > "$dir/$cg/cpuset.mems"
      fi
      if [ "$kind" = v2 ] && [ "$dir" = /sys/fs/cgroup ]; then  # pure v2: delegate the controllers
        sed 's/\([a-z_]\+\)/+\1/g' "$dir/cgroup.controllers" > "$dir/cgroup.subtree_control" 2>/dev/null || true
      fi
      echo "$BASHPID" > "$dir/$cg/cgroup.procs"
    done < <(_box_host_cgroups)
    exec env KT_STATE="$KT_STATE" KT_BOX_TMPFS="${KT_BOX_TMPFS:-4G}" \
      setsid unshare --pid --fork --mount --cgroup --uts --ipc --net \
      bash "$_BOX_SELF" __boot "$name" "$(readlink /proc/self/ns/mnt)"
  ) >> "$log" 2>&1 < /dev/null &
  unshare_pid=$!
  deadline=$((SECONDS + ${KT_BOOT_TIMEOUT:-60}))
  while :; do
    pid=$(_box_init_pid "$name" || true)
    [ -n "$pid" ] && break
    if ! kill -0 "$unshare_pid" 2>/dev/null; then
      _box_err "box $name: the boot script ended before systemd started; its output:"; tail -n 40 "$log" >&2
      box_down "$name"; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      _box_err "box $name: systemd did not start within ${KT_BOOT_TIMEOUT:-60}s; output:"; tail -n 40 "$log" >&2
      box_down "$name"; return 1
    fi
    sleep 0.05
  done
  while :; do
    s=$(_box_nsenter "$pid" timeout 5 systemctl is-system-running 2>/dev/null || true)
    case "$s" in running|degraded) break ;; esac
    if ! box_alive "$name"; then
      _box_err "box $name: systemd died while booting (state: ${s:-unknown}); output:"; tail -n 40 "$log" >&2
      box_down "$name"; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      _box_err "box $name: not running after ${KT_BOOT_TIMEOUT:-60}s (state: ${s:-unknown})"
      box_diag "$name"; box_down "$name"; return 1
    fi
    sleep 0.1
  done
  if [ "$s" = degraded ]; then
    _box_say "box $name is up but degraded; failed units:"
    _box_nsenter "$pid" systemctl --failed --no-legend --no-pager >&2 || true
  fi
  echo "$pid"
}

_box_nsenter() {  # _box_nsenter PID CMD...: CMD in every namespace and the root of PID, clean env
  local pid=$1; shift
  nsenter -t "$pid" -m -u -i -n -p -C -r -w \
    env -i PATH="$_BOX_PATH" HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

box_run() {  # box_run NAME CMD...: stdin, stdout, stderr and the exit status pass through
  local name=${1:-} pid t=${KT_RUN_TIMEOUT:-300}
  shift || true
  pid=$(_box_init_pid "$name") || { _box_err "no box $name is up"; return 1; }
  [ $# -ge 1 ] || { _box_err "box_run: no command"; return 1; }
  if [ "$t" -gt 0 ] 2>/dev/null; then
    timeout -k 5 "$t" nsenter -t "$pid" -m -u -i -n -p -C -r -w \
      env -i PATH="$_BOX_PATH" HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
  else
    _box_nsenter "$pid" "$@"
  fi
}

box_copy_in() {  # box_copy_in NAME HOST_PATH BOX_PATH: copy one file in, mode kept
  local name=$1 src=$2 dst=$3 mode
  [ -f "$src" ] || { _box_err "copy-in: no file $src"; return 1; }
  mode=$(stat -c %a "$src")
  box_run "$name" sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"' copy-in "$dst" "$mode" < "$src"
}

box_diag() {  # what the box looks like: failed units, kechi units, the end of the journal
  local name=$1
  box_alive "$name" || { _box_say "box $name is not up; end of its console log:"; tail -n 40 "$(_box_log "$name")" >&2 2>/dev/null; return 0; }
  {
    echo "======== box $name: systemctl --failed"
    KT_RUN_TIMEOUT=20 box_run "$name" systemctl --failed --no-pager 2>&1 || true
    echo "======== box $name: kechi units"
    KT_RUN_TIMEOUT=20 box_run "$name" systemctl list-units --all --no-pager 'kechi*' 2>&1 || true
    # the box's journald also imports the host's whole kernel log: keep the box's own lines, and
    # the kernel's lines about the box's cgroups (OOM kills)
    echo "======== box $name: kernel lines about its cgroups (journalctl -k | grep /$(_box_cgname "$name")/)"
    KT_RUN_TIMEOUT=20 box_run "$name" journalctl -k -b --no-pager 2>&1 | grep -F "/$(_box_cgname "$name")/" | tail -n 20 || true
    echo "======== box $name: journalctl -b | grep -v ' kernel: ' | tail -n 80"
    KT_RUN_TIMEOUT=20 box_run "$name" journalctl -b --no-pager 2>&1 | grep -v ' kernel: ' | tail -n 80 || true
    echo "======== end of box $name"
  } >&2
}

box_down() {
  local name=$1 pid d
  pid=$(_box_init_pid "$name" || true)
  if [ -n "$pid" ]; then
    kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true   # systemd: poweroff
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      _box_say "box $name did not power off in 10s: killing its init"
      kill -9 "$pid" 2>/dev/null || true             # ends every process of its pid namespace
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  # the cgroups: wait until the namespace's last processes are gone, then remove them
  for d in $(_box_cg_dirs "$name"); do
    [ -d "$d" ] || continue
    for _ in $(seq 1 50); do
      [ -z "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
      sleep 0.1
    done
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && _box_say "could not remove cgroup $d"
  done
  rmdir "$(_box_fsdir "$name")" 2>/dev/null || true
  rm -f "$(_box_pidfile "$name")"
  [ -n "${KT_KEEP_LOGS:-}" ] || rm -f "$(_box_log "$name")"
  local keep=() n
  for n in "${_BOX_MINE[@]}"; do [ "$n" = "$name" ] || keep+=("$n"); done
  _BOX_MINE=("${keep[@]}")
  return 0
}

box_ls() {
  local f n
  for f in "$KT_STATE"/*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    box_alive "$n" && echo "$n $(cat "$f")"
  done
  return 0
}

# boxes named kt-PID-* whose test process PID is gone (killed without a chance to clean up)
box_reap() {
  local f n owner
  for f in "$KT_STATE"/kt-*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    owner=${n#kt-}; owner=${owner%%-*}
    [[ $owner =~ ^[0-9]+$ ]] || continue
    kill -0 "$owner" 2> /dev/null && continue
    _box_say "taking down $n, left behind by process $owner"
    box_down "$n"
  done
  return 0
}

# --------------------------------------------------------------------------------------------
# cleanup: every box this process started goes down when it exits
box_on_exit() { _BOX_EXIT_HOOKS+=("$*"); }  # run CMD at exit, before the boxes go down
_box_install_trap() {
  [ -n "${_BOX_TRAP_SET:-}" ] && return 0
  _BOX_TRAP_SET=1
  trap '_box_exit_handler' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
_box_exit_handler() {
  local rc=$? h n
  set +e
  for h in "${_BOX_EXIT_HOOKS[@]}"; do eval "$h"; done
  if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
    for n in "${_BOX_MINE[@]}"; do box_diag "$n"; done
  fi
  for n in "${_BOX_MINE[@]}"; do box_down "$n"; done
  if declare -F _vm_on_exit > /dev/null; then _vm_on_exit "$rc"; fi
  exit "$rc"
}

# --------------------------------------------------------------------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    __boot) _box_boot_inner "$2" "$3" ;;
    up)
      [ $# -eq 2 ] || { echo "usage: $0 up NAME" >&2; exit 2; }
      box_up "$2"
      _BOX_MINE=()   # the command-line form leaves the box up
      ;;
    run) [ $# -ge 3 ] || { echo "usage: $0 run NAME CMD..." >&2; exit 2; }; n=$2; shift 2; box_run "$n" "$@" ;;
    sh) [ $# -eq 2 ] || { echo "usage: $0 sh NAME" >&2; exit 2; }; KT_RUN_TIMEOUT=0 box_run "$2" /bin/bash -l ;;
    copy-in) [ $# -eq 4 ] || { echo "usage: $0 copy-in NAME SRC DST" >&2; exit 2; }; box_copy_in "$2" "$3" "$4" ;;
    diag) [ $# -eq 2 ] || { echo "usage: $0 diag NAME" >&2; exit 2; }; box_diag "$2" ;;
    down) [ $# -eq 2 ] || { echo "usage: $0 down NAME" >&2; exit 2; }; box_down "$2" ;;
    ls) box_ls ;;
    reap) box_reap ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
fi
