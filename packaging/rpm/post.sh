# %post of kechi: make systemd see the units. Installing starts nothing.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
