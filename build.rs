//! Build script: lays out kechid's code in the order of `link/kechid-order.ld` (release builds
//! for Linux).
//!
//! kechid's own memory is a goal (DESIGN.md), and most of it is its executable's pages. The
//! kernel maps up to 64 KiB around each page fault in a file (fault-around), so where the code
//! that runs while kechid supervises lies decides how much of the executable stays resident: in
//! the default layout it is spread over the whole binary and keeps nearly all of it mapped. The
//! linker script, measured and written by bench/footprint/link-order.sh, packs that code first,
//! then the code of events (recycles, reloads, kechictl) and of start-up. It only moves
//! functions; it is an `INSERT` script, so the linker's default layout stays as it is for the
//! rest. GNU ld and LLD both take it.
//!
//! `KECHI_LINK_ORDER=0` leaves it out (for a linker that does not take linker scripts).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/kechid-order.ld");
    println!("cargo:rerun-if-env-changed=KECHI_LINK_ORDER");
    let linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // Debug builds have other functions (little is inlined), and their size is not a goal.
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let wanted = env::var("KECHI_LINK_ORDER").as_deref() != Ok("0");
    if !(linux && release && wanted) {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&dir).join("link").join("kechid-order.ld");
    if !script.exists() {
        println!(
            "cargo:warning=no {}: kechid is linked in the compiler's order (more of it stays resident)",
            script.display()
        );
        return;
    }
    // Two arguments rather than -Wl,...: the path may hold a comma.
    println!("cargo:rustc-link-arg-bin=kechid=-Xlinker");
    println!(
        "cargo:rustc-link-arg-bin=kechid=--script={}",
        script.display()
    );
}
