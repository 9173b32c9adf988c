"""Each connection an strace -f -tt log shows accepted (accept4) and closed with nothing sent on it
nor end-of-file read from it: a request the server dropped."""
import collections, re, sys
pending, events = {}, collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"(\d+)\s+(\S+) (.*)", line.rstrip("\n"))
    if not m: continue
    pid, t, rest = m.groups()
    if rest.endswith("<unfinished ...>"):
        pending[pid] = (t, rest[: -len("<unfinished ...>")]); continue
    r = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
    if r and pid in pending:
        t, head = pending.pop(pid); rest = head + r.group(1)
    events[pid].append((t, rest))
lost=0; kinds=collections.Counter()
for pid, evs in events.items():
    oc={}
    for t,call in evs:
        m = re.match(r"accept4\(\d+,.*\) = (\d+)$", call)
        if m: oc[m.group(1)]=[t,[]]; continue
        m = re.match(r"(\w+)\((\d+),?", call)
        if m and m.group(2) in oc:
            if m.group(1)=='close':
                at,ops=oc.pop(m.group(2))
                if not any(o.startswith(('write','sendto','sendmsg')) for o in ops) and not any(o=='recvfrom=0' for o in ops):
                    lost+=1; print(pid,'accepted at',at,'closed unanswered at',t,ops)
            else:
                oc[m.group(2)][1].append(m.group(1)+('=0' if call.endswith('= 0') else ''))
print(lost,'accepted connections closed unanswered')
