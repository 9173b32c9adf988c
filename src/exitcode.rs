//! kechid's exit codes: a contract with systemd (`RestartPreventExitStatus=`) and operators.

/// Stopped on request; every worker is gone.
pub const OK: i32 = 0;
/// A runtime failure kechid could not carry on from (D-Bus lost, a spawn machinery error).
pub const FAILURE: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// Workers crashed more than `restart.burst` times within `restart.window` without getting
/// ready. Restarting kechid would only crash them again, so the unit stays failed.
pub const CRASH_LOOP: i32 = 69;
/// The configuration is invalid (EX_CONFIG): restarting cannot help until it is fixed.
pub const CONFIG: i32 = 78;
