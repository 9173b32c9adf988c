//! `kechictl check` and `kechictl config` on fixture files: output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(rel)
}

/// Runs kechictl with a clean environment plus `env`, so the caller's KECHI_* cannot leak in.
fn kechictl(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kechictl"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_ok() {
    let f = fixture("good/no-jemalloc.toml");
    let out = kechictl(&["check", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", f.display()));
}

#[test]
fn check_invalid_prints_every_problem_and_exits_1() {
    let f = fixture("bad/many-problems.toml");
    let out = kechictl(&["check", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("many-problems.toml:4: workers: got 1000"),
        "{err}"
    );
    assert!(err.lines().count() >= 5, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_uses_the_process_environment() {
    let f = fixture("good/no-jemalloc.toml");
    let out = kechictl(&["check", f.to_str().unwrap()], &[("KECHI_WORKERS", "0")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("environment: KECHI_WORKERS: got \"0\""));
}

#[test]
fn unreadable_file_exits_3() {
    let out = kechictl(&["check", "/nonexistent/kechi/app.toml"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("/nonexistent/kechi/app.toml: cannot read: "));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(kechictl(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(kechictl(&["check"], &[]).status.code(), Some(2));
    assert_eq!(
        kechictl(&["check", "Not An App"], &[]).status.code(),
        Some(2)
    );
}

#[test]
fn help_documents_exit_codes() {
    let out = kechictl(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for code in [
        "0  success",
        "1  the configuration is invalid",
        "2  usage",
        "3  cannot read",
    ] {
        assert!(help.contains(code), "{help}");
    }
}

#[test]
fn config_of_a_file_shows_values_and_sources() {
    let f = fixture("good/no-jemalloc.toml");
    let out = kechictl(&["config", f.to_str().unwrap()], &[("KILL_OLD_DELAY", "3")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |key: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    assert_eq!(row("ready.mode"), "ready.mode delay alias KILL_OLD_DELAY");
    assert_eq!(row("workers"), "workers 2 default");
    assert_eq!(
        row("jemalloc.enabled"),
        format!("jemalloc.enabled false {}:5", f.display())
    );
    assert!(text(&out.stderr).contains("this shell's environment"));
}

#[test]
fn config_json() {
    let f = fixture("good/no-jemalloc.toml");
    let out = kechictl(&["config", "--json", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["app"], "no-jemalloc");
    assert_eq!(v["keys"]["command"]["value"][0], "/bin/sleep");
    assert_eq!(v["keys"]["command"]["source"]["line"], 2);
    assert_eq!(v["keys"]["workers"]["source"]["kind"], "default");
}
