#!/bin/bash
# fuzz/seeds.sh — (re)writes the committed seed corpora, fuzz/corpus/TARGET/seed-*, from the
# repository's own fixtures (tests/fixtures, packaging/example.toml) plus a few hand-written
# messages in the formats the targets take. Seeds are kept small: libFuzzer mutates short
# inputs faster, and a long capture (slabinfo) is cut to its header and a few rows.
#
# Usage: bash fuzz/seeds.sh   (from anywhere; rewrites only files named seed-*)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
C=fuzz/corpus
F=tests/fixtures
rm -f "$C"/*/seed-*
mkdir -p "$C"/{config,quantity,notify,control_request,control_reply,proc,cgroup,accept}

# ---- config: every fixture as it is; a few with an environment after a NUL byte ----------------
for f in $F/config/good/*.toml $F/config/bad/*.toml; do
  d=${f#"$F"/config/}
  cp "$f" "$C/config/seed-${d%%/*}-$(basename "$f" .toml)"
done
cp packaging/example.toml "$C/config/seed-example"
printf 'command = ["/bin/app"]\n\0KECHI_WORKERS=4\nKECHI_MEMORY_MAX=300M\nKILL_OLD_DELAY=10\n' \
  > "$C/config/seed-env-overlay"
printf 'command = ["/bin/app"]\n\0ENABLE_AUTO_RESTART=1\nAUTO_RESTART_INTERVAL=1h\nKECHI_COMMAND=["/bin/x", "-v"]\nKECHI_ENVIRONMENT={ A = "1" }\n' \
  > "$C/config/seed-env-aliases"
printf 'command = ["/bin/app"]\n\0KECHI_BOGUS=1\nKECHI_WORKER=2\nKECHI_READY_MODE=nope\nENABLE_AUTO_RESTART=maybe\n' \
  > "$C/config/seed-env-bad"

# ---- quantity -----------------------------------------------------------------------------------
i=0
for q in 512M 1.5G 1536K 0 4096 20000000T 1h30m 250ms "2 min" 1d2h 90 1500us 50% 12.5% 100% TERM \
  SIGQUIT term 9; do
  printf '%s' "$q" > "$C/quantity/seed-$i"; i=$((i + 1))
done

# ---- notify: datagrams, and /proc/PID/cgroup of a worker -------------------------------------
printf 'READY=1' > "$C/notify/seed-ready"
printf 'STATUS=warming up\nREADY=1\n' > "$C/notify/seed-status-ready"
printf 'X=1\nSTOPPING=1\nMAINPID=42\n' > "$C/notify/seed-stopping"
printf '0::/kechi.slice/kechi-demo.slice/kechi-demo-12.scope\n' > "$C/notify/seed-cgroup-v2"
cp $F/proc/sd252-hybrid/126/cgroup "$C/notify/seed-cgroup-hybrid"

# ---- control: byte 0 is the read size - 1, then what the peer sent ------------------------------
req() { printf '%b%s\0' "$1" "$2" > "$C/control_request/seed-$3"; }
req '\x03' '{"method":"io.kechi.Status","parameters":{}}' status
req '\xff' '{"method":"io.kechi.Recycle","parameters":{"worker":3}}' recycle-one
req '\x00' '{"method":"io.kechi.Recycle","parameters":{"worker":null,"all":true}}' recycle-all
req '\x10' '{"method":"io.kechi.Nope"}' unknown
rep() { printf '%b%s\0' "$1" "$2" > "$C/control_reply/seed-$3"; }
rep '\x07' '{"parameters":{"app":"demo","kechid_pid":1234,"generation":2,"workers_wanted":2,"workers":[{"serial":1,"pid":1300,"scope":"kechi-demo-1.scope","state":"ready","age_secs":3600,"generation":2,"jemalloc":true,"memory_bytes":52428800,"memory":{"rss":41943040,"pss":20971520,"uss":10485760,"shared":31457280,"shared_percent":75.0,"swap":0,"cgroup":52428800,"processes":3},"tmpdir":"/run/kechi/demo/tmp/1","tmpdir_bytes":4096},{"serial":2,"pid":1400,"scope":null,"state":"starting","age_secs":2,"generation":2,"jemalloc":null,"memory_bytes":null,"memory":null,"tmpdir":null,"tmpdir_bytes":null}],"summary":"2/2 ready","events":["1763900000 recycled worker 1 (max-age)"],"listening":["/run/kechi/demo.sock"]}}' status
rep '\x01' '{"parameters":{"serials":[1,2]}}' recycle
rep '\xff' '{"error":"io.kechi.PermissionDenied","parameters":{"message":"only root"}}' denied

# ---- proc: per-process files of every capture; slabinfo cut short -----------------------------
for d in $F/proc/*/; do
  cap=$(basename "$d")
  pid=$(find "$d" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*' | sort | head -1)
  for f in smaps_rollup status statm cgroup; do
    [ -f "$pid/$f" ] && cp "$pid/$f" "$C/proc/seed-$cap-$f"
  done
  [ -f "$d/slabinfo" ] && { head -2 "$d/slabinfo"; grep -E '^(dentry|inode_cache|kmalloc-64) ' "$d/slabinfo"; } \
    > "$C/proc/seed-$cap-slabinfo"
done
printf '4242 (python3 -m app) S 1 4242 4242 0 -1 4194560 1 0 0 0\n' > "$C/proc/seed-stat"

# ---- cgroup: the memory files of one scope per capture ----------------------------------------
for scope in $F/cgroup-v2/sd252-v2/kechi.slice/kechi-demo.slice/kechi-demo-1.scope \
  $F/cgroup-v1/sd252-hybrid/memory/kechi.slice/kechi-demo.slice/kechi-demo-1.scope; do
  v=$(echo "$scope" | cut -d/ -f3)
  for f in memory.stat memory.events memory.max memory.current memory.oom_control \
    memory.limit_in_bytes memory.usage_in_bytes cgroup.procs; do
    [ -f "$scope/$f" ] && head -c 3000 "$scope/$f" > "$C/cgroup/seed-$v-$f"
  done
done
printf 'kechi-demo.slice kechi-demo-1.scope\n' > "$C/cgroup/seed-unit"

# ---- accept: what /proc shows of a worker waiting for connections ------------------------------
printf '43 0x3 0x7ffd2a0 0x7ffd2a4 0x0 0x0 0x0 0x7ffd1f8 0x7f3e2a1\n' > "$C/accept/seed-syscall-accept"
printf '232 0x5 0x7ffd300 0x80 0xffffffff 0x0 0x0 0x7ffd1f8 0x7f3e2a1\n' > "$C/accept/seed-syscall-epoll"
printf 'running\n' > "$C/accept/seed-syscall-running"
printf 'pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\ntfd:        3 events:       19 data:                3  pos:0 ino:5a1f sdev:8\ntfd:        7 events:       19 data:                7  pos:0 ino:5a20 sdev:8\n' \
  > "$C/accept/seed-fdinfo"
printf 'socket:[23071]\n' > "$C/accept/seed-link"
# two addresses for accepted_from: 127.0.0.1:8080 (a listener's) and 127.0.0.1:8080 again
printf '\x00\x7f\x00\x00\x01\x1f\x90\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x7f\x00\x00\x01\x1f\x90' > "$C/accept/seed-addresses"
printf '\x03\x00\x00\x00\x01\x00\x00\x00\x07\x00\x00\x00\x01\x00\x00\x00' > "$C/accept/seed-pollfds"

echo "seeds: $(find "$C" -name 'seed-*' | wc -l) files, $(cat "$C"/*/seed-* | wc -c) bytes"
