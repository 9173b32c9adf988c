"""uvicorn-term-race: uvicorn's graceful stop (TERM) closes connections it accepted and has not
read, with no kechi involved (docs/APP-SERVERS.md, "uvicorn"). Holds a listener on
127.0.0.1:PORT, runs uvicorn --fd 3 --header connection:close on it, and replaces it 6 times
(a new one started, then TERM to the old one). Run it under strace with load from wrk:

    strace -f -tt -o st.txt -e trace=accept4,close,read,recvfrom,write,sendto,sendmsg,exit_group \
        python3 bench/uvicorn-term-race/holder.py 18751 &
    sleep 5; wrk -t2 -c16 -d16s -H 'Connection: close' http://127.0.0.1:18751/
    python3 bench/uvicorn-term-race/unanswered.py st.txt
"""
import os, socket, subprocess, time, signal, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
cmd = ["/usr/bin/uvicorn", "--fd", "3", "--no-access-log", "--header", "connection:close", "hello_asgi:app"]
cwd = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "system", "apps")
old = subprocess.Popen(cmd, pass_fds=(3,), cwd=cwd, stderr=subprocess.DEVNULL)
time.sleep(4)
for i in range(6):
    time.sleep(2)
    new = subprocess.Popen(cmd, pass_fds=(3,), cwd=cwd, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    print("TERM", old.pid, time.time(), flush=True)
    old.send_signal(signal.SIGTERM); old.wait()
    old = new
time.sleep(2)
old.send_signal(signal.SIGTERM); old.wait()
