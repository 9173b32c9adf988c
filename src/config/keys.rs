//! The list of every configuration key, their `KECHI_*` variable names, and "did you mean"
//! suggestions for misspelt keys and variables.
//!
//! [`KEYS`] is the one ordered list the rest of the config module agrees on: the shape check
//! rejects anything not in it, the env overlay maps variables onto it, and the renderers print
//! it in this order. Tests in `raw`, `env` and `render` assert they cover exactly this list.

/// Sections (TOML tables) and the keys inside them, in the order of SPEC.md.
pub const SECTIONS: &[&str] = &[
    "ready", "stop", "memory", "recycle", "restart", "jemalloc", "tmpdir", "control", "idle",
];

/// Every key, as a dotted path, in the order of SPEC.md (top-level keys first).
pub const KEYS: &[&str] = &[
    "command",
    "directory",
    "user",
    "group",
    "workers",
    "environment",
    "listen",
    "ready.mode",
    "ready.delay",
    "ready.timeout",
    "stop.signal",
    "stop.timeout",
    "memory.max",
    "memory.high",
    "memory.swap-max",
    "memory.metric",
    "memory.recycle-above",
    "memory.app-budget",
    "memory.min-shared",
    "memory.child-signal",
    "recycle.max-age",
    "recycle.jitter",
    "recycle.min-interval",
    "recycle.max-concurrent",
    "recycle.check-interval",
    "restart.backoff",
    "restart.backoff-max",
    "restart.burst",
    "restart.window",
    "jemalloc.enabled",
    "jemalloc.path",
    "jemalloc.conf",
    "tmpdir.enabled",
    "tmpdir.size",
    "control.group",
    "idle.stop-after",
];

/// Prefix of the variables that override keys.
pub const ENV_PREFIX: &str = "KECHI_";

/// `memory.recycle-above` -> `KECHI_MEMORY_RECYCLE_ABOVE`.
pub fn env_var(key: &str) -> String {
    let mut v = String::from(ENV_PREFIX);
    for c in key.chars() {
        v.push(match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        });
    }
    v
}

/// The key a `KECHI_*` variable sets, if any. Matched against the generated names rather than
/// by reversing the mangling, because `_` is ambiguous (section separator or dash).
pub fn key_for_env_var(var: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| env_var(k) == var)
}

/// Closest candidate to `wrong` when it is close enough to be a plausible typo.
pub fn suggest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let w = norm(wrong);
    let limit = (w.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &norm(c)), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Suggestion for an unknown key at dotted path `path` (e.g. `memory.maxx`, or `max-age` at
/// the top level, which suggests `recycle.max-age`).
pub fn suggest_key(path: &str) -> Option<&'static str> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let candidates = KEYS.iter().chain(SECTIONS).copied();
    suggest(path, candidates).or_else(|| {
        // A right key in the wrong table: compare leaf names only.
        let mut found = KEYS
            .iter()
            .copied()
            .filter(|k| k.rsplit('.').next() == Some(leaf));
        let first = found.next();
        if found.next().is_some() { None } else { first }
    })
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(env_var("workers"), "KECHI_WORKERS");
        assert_eq!(env_var("memory.max"), "KECHI_MEMORY_MAX");
        assert_eq!(env_var("recycle.max-age"), "KECHI_RECYCLE_MAX_AGE");
        assert_eq!(
            env_var("memory.recycle-above"),
            "KECHI_MEMORY_RECYCLE_ABOVE"
        );
        assert_eq!(env_var("jemalloc.enabled"), "KECHI_JEMALLOC_ENABLED");
        assert_eq!(
            key_for_env_var("KECHI_RESTART_BACKOFF_MAX"),
            Some("restart.backoff-max")
        );
        assert_eq!(key_for_env_var("KECHI_NOPE"), None);
    }

    #[test]
    fn env_names_are_unambiguous() {
        let mut names: Vec<String> = KEYS.iter().map(|k| env_var(k)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest_key("memory.maxx"), Some("memory.max"));
        assert_eq!(
            suggest_key("memory.recycle_above"),
            Some("memory.recycle-above")
        );
        assert_eq!(suggest_key("worker"), Some("workers"));
        assert_eq!(suggest_key("max-age"), Some("recycle.max-age"));
        assert_eq!(suggest_key("recylce"), Some("recycle"));
        assert_eq!(suggest_key("completely-unrelated"), None);
        // "timeout" is in both ready and stop: no single suggestion
        assert_eq!(suggest_key("timeout"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
