//! Fuzz target: what workers send to kechid's notify socket (`kechi::readiness::parse`, the
//! sd_notify datagram format) and the `/proc/PID/cgroup` text kechid then maps the sender by
//! (`readiness::serial_from_cgroup`).
//!
//! Contract checked, for any bytes (a datagram is not necessarily UTF-8): no panic; `ready`
//! and `stopping` are set exactly when a line says `READY=1` / `STOPPING=1`; a status is at
//! most 256 characters and never holds a newline (it goes into kechid's own one-line
//! STATUS=); a serial is only found where the text names that app's scope.
#![no_main]

use kechi::app::AppName;
use kechi::readiness::{parse, serial_from_cgroup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = parse(data);
    let has_line = |want: &[u8]| data.split(|b| *b == b'\n').any(|l| l == want);
    assert_eq!(m.ready, has_line(b"READY=1"), "ready of {data:?}");
    assert_eq!(m.stopping, has_line(b"STOPPING=1"), "stopping of {data:?}");
    if let Some(s) = &m.status {
        assert!(s.chars().count() <= 256, "status too long: {s:?}");
        assert!(!s.contains('\n'), "status holds a newline: {s:?}");
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let app = AppName::new("demo").expect("a valid app name");
        if let Some(n) = serial_from_cgroup(&app, text) {
            assert!(
                text.contains(&app.scope_unit(n)),
                "serial {n} found in {text:?}, which does not name its scope"
            );
        }
    }
});
