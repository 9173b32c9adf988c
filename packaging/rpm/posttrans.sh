# %posttrans of kechi: once the whole transaction is done, restart the kechi@APP.service
# instances that are running (none on a first install), so that an upgrade takes effect.
# `try-restart` leaves stopped apps stopped. No connection is dropped: the workers outlive
# kechid in scopes of their own, the listening sockets are held by systemd, and the new kechid
# adopts the running workers. Socket units are never restarted.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    systemctl try-restart 'kechi@*.service' ||
        echo "kechi: restarting the running kechi@*.service instances failed; see systemctl status 'kechi@*'" >&2
fi
:
