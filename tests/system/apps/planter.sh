#!/bin/sh
# planter.sh — a hostile worker for t_sec_tmpdir. Before serving (as hello.py), it plants in its
# TMPDIR every kind of way out a careless wipe running as root would follow:
#   shadowlink   -> /srv/kechi-sec/shadow (a root-owned copy of a shadow file)
#   etcshadow    -> /etc/shadow
#   dirlink      -> /srv/kechi-sec/dir (a directory outside holding a file)
#   a/b/c/...    the same, nested, plus a relative ../../.. link out and links to . and ..
#   loop         -> itself
#   hard         a hard link to a/b/c/own: the only kind possible, inside the same tmpfs
#   crossfs.err  why a hard link to /srv/kechi-sec/appdir/appdata (a file of the worker's own
#                user, outside) failed: the TMPDIR is a filesystem of its own
set -u
t=$TMPDIR
out=/srv/kechi-sec
ln -s "$out/shadow" "$t/shadowlink"
ln -s /etc/shadow "$t/etcshadow"
ln -s "$out/dir" "$t/dirlink"
mkdir -p "$t/a/b/c"
echo "the worker's own" > "$t/a/b/c/own"
ln -s "$out/dir" "$t/a/b/c/dirlink"
ln -s "$out/shadow" "$t/a/b/c/shadowlink"
ln -s "../../../../../../../../../..$out/shadow" "$t/a/b/c/rel"
ln -s . "$t/a/dot"
ln -s .. "$t/a/b/dotdot"
ln -s "$t/loop" "$t/loop"
ln "$t/a/b/c/own" "$t/hard"
ln "$out/appdir/appdata" "$t/crossfs" 2> "$t/crossfs.err"
exec /usr/bin/python3 /usr/lib/kechi-test/hello.py
