#!/bin/bash
# t_dropin: a unit drop-in overrides the app file (Environment=KECHI_WORKERS=4), applied by
# `systemctl daemon-reload` + `systemctl reload kechi@demo` under load: 4 workers, 0 failed
# requests; removing the drop-in the same way goes back to the file's 2 workers, 0 failed requests.
# One pair of wrk runs (lib/zero.sh) spans both steps; a row per step, and wrk's totals for both.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_dropin "Environment=KECHI_WORKERS=4 in a drop-in + daemon-reload + reload: 4 workers, no failed request"
[ -x /usr/bin/gunicorn ] || skip "no gunicorn (Debian package gunicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND='["/usr/bin/gunicorn", "--workers", "1", "hello_wsgi:app"]'
ZD_PROCS=2   # gunicorn's arbiter and 1 worker
ZD_WORKERS=2
DROPIN=/etc/systemd/system/kechi@$KT_APP.service.d/workers.conf

tgt_up dropin
kechi_install
zd_config 1
kechi_start || abort "kechi@demo did not start"
zd_steady "start (workers = 2 in the file)"

# config_line KEY: the effective value and its source, as kechictl config shows them
config_line() { tgt_run kechictl config "$KT_APP" 2>&1 | grep -E "^ *$1 " | head -1 | sed 's/  */ /g'; }

step="drop-in KECHI_WORKERS=4"
say "$step: $DROPIN, daemon-reload, reload; under load"
printf '[Service]\nEnvironment=KECHI_WORKERS=4\n' | tgt_write "$DROPIN" || abort "writing $DROPIN"
zd_loads_begin || abort "no load generator"
cursor=$(journal_cursor)
tgt_run systemctl daemon-reload || bad "$step: systemctl daemon-reload"
expect_eq "$step: the unit's Environment" "$(unit_prop "kechi@$KT_APP" Environment)" KECHI_WORKERS=4
zd_reload "$step"
ZD_WORKERS=4
t0=$SECONDS
if w=$(kt wait-workers "$KT_APP" 4 0 120); then ok "$step: 4 worker scopes after $((SECONDS - t0)) s"; else bad "$step: not 4 worker scopes within 120 s"; fi
show_workers "$w"
zd_wait_new "$step (the reload's roll)" 2
zd_settle
journal_unit_after "$cursor" "kechi@$KT_APP.service" fields | head -n 30 | sed 's/^/          | /'
zd_steady "$step"
info "kechictl config: $(config_line workers)"
zd_loads_mark "$step"

step="drop-in removed"
say "$step: rm $DROPIN, daemon-reload, reload; under load"
tgt_run rm -f "$DROPIN"
tgt_run systemctl daemon-reload || bad "$step: systemctl daemon-reload"
expect_eq "$step: the unit's Environment" "$(unit_prop "kechi@$KT_APP" Environment)" ""
zd_reload "$step"
ZD_WORKERS=2
if why=$(kt steady "$KT_APP" 2 "$ZD_PROCS" "$KT_USER" 120); then ok "$step: back to 2 workers"; else bad "$step: not back to 2 workers within 120 s: $why"; fi
zd_settle
zd_steady "$step"
info "kechictl config: $(config_line workers)"
zd_loads_mark "$step"
zd_loads_end "whole run (both steps)"
load_summary
finish
