# %preun of kechi. On erase ($1 = 0) stop every app: the socket units (so that no connection
# starts an app again) and the kechid instances (each stops its own workers), then whatever
# is left in kechi.slice. Not in one transaction: stopping the slice at once would have
# systemd signal the workers itself, bypassing stop.signal. On upgrade ($1 >= 1) nothing is
# stopped.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop 'kechi@*.socket' 'kechi@*.service' || :
    systemctl stop kechi.slice || :
fi
:
