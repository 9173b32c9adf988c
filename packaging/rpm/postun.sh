# %postun of kechi. On erase ($1 = 0) remove what the package and kechid made, and never the
# administrator's own files: /etc/kechi/APP.toml and drop-ins under /etc/systemd/system stay
# (rpm keeps an edited example as /etc/kechi/example.toml.sample.rpmsave).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -eq 0 ]; then
    # directories the package created but rpm does not own; only when empty
    rmdir /usr/share/kechi /etc/kechi 2>/dev/null || :
    # runtime files; not while a worker's temp dir is still mounted below it
    if [ -d /run/kechi ] && ! grep -q ' /run/kechi/' /proc/self/mountinfo 2>/dev/null; then
        rm -rf /run/kechi
    fi
    # man-db's formatted copies of the man pages (made by `man` as root), stale now
    if [ -d /var/cache/man ]; then
        find /var/cache/man -type f \( -name 'kechid.8*' -o -name 'kechictl.1*' -o -name 'kechi.toml.5*' \) \
            -exec rm -f {} + 2>/dev/null || true
    fi
    rm -f /var/lib/prometheus/node-exporter/kechi-*.prom
    # links made by `systemctl enable kechi@APP.socket` and the like, dangling now
    if [ -d /etc/systemd/system ]; then
        find /etc/systemd/system -type l -name 'kechi*' | while read -r link; do
            [ -e "$link" ] || rm -f "$link"
        done
    fi
fi
:
