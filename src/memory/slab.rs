//! Parser for `/proc/slabinfo` (format 2.1), used to watch the `dentry` cache, which temp-file
//! churn on a disk filesystem inflates (SPEC, problem 3).
//!
//! Contract: [`parse_slabinfo`] accepts the text of a `slabinfo - version: 2.x` file and returns
//! every cache row; it rejects other versions (columns could mean other things) and rows with
//! fewer than the five leading numbers. It never panics. Reading the real file needs root
//! (it is mode 0400); that is the reader's business, not this parser's.

use super::MemError;

/// One row of `/proc/slabinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlabCache {
    pub name: String,
    pub active_objs: u64,
    pub num_objs: u64,
    /// Bytes per object, as the allocator lays it out (padding and metadata included).
    pub objsize: u64,
    pub objperslab: u64,
    pub pagesperslab: u64,
    /// From the `slabdata` part; `None` if a kernel leaves that part out.
    pub num_slabs: Option<u64>,
}

impl SlabCache {
    /// `num_objs * objsize`: the bytes of every allocated object slot, in use or free.
    pub fn bytes(&self) -> u64 {
        self.num_objs.saturating_mul(self.objsize)
    }

    /// Whole pages held by the cache: `num_slabs * pagesperslab * page_size`. Slightly more than
    /// [`SlabCache::bytes`] because of the tail of each slab.
    pub fn slab_bytes(&self, page_size: u64) -> Option<u64> {
        self.num_slabs?
            .checked_mul(self.pagesperslab)?
            .checked_mul(page_size)
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SlabInfo {
    pub caches: Vec<SlabCache>,
}

impl SlabInfo {
    /// The cache called exactly `name`.
    pub fn get(&self, name: &str) -> Option<&SlabCache> {
        self.caches.iter().find(|c| c.name == name)
    }

    /// Bytes of the `dentry` cache ([`SlabCache::bytes`]), if the kernel has one of that name.
    pub fn dentry_bytes(&self) -> Option<u64> {
        self.get("dentry").map(SlabCache::bytes)
    }
}

/// Parses the text of `/proc/slabinfo`.
pub fn parse_slabinfo(text: &str) -> Result<SlabInfo, MemError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) => {
            let version = first
                .strip_prefix("slabinfo - version:")
                .map(str::trim)
                .ok_or_else(|| MemError::parse(1, "expected \"slabinfo - version: 2.1\""))?;
            if !version.starts_with("2.") {
                return Err(MemError::parse(
                    1,
                    format!("slabinfo version {version}: only 2.x is understood"),
                ));
            }
        }
        None => return Err(MemError::parse(1, "empty file")),
    }

    let mut caches = Vec::new();
    for (i, line) in lines {
        let lineno = i + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(':');
        let head = parts.next().unwrap_or_default();
        let mut words = head.split_whitespace();
        let name = words
            .next()
            .ok_or_else(|| MemError::parse(lineno, "row without a cache name"))?;
        let mut nums = [0u64; 5];
        for (slot, what) in nums.iter_mut().zip([
            "active_objs",
            "num_objs",
            "objsize",
            "objperslab",
            "pagesperslab",
        ]) {
            let w = words
                .next()
                .ok_or_else(|| MemError::parse(lineno, format!("{name}: no {what}")))?;
            *slot = w.parse().map_err(|_| {
                MemError::parse(lineno, format!("{name}: {what} is not a number: {w:?}"))
            })?;
        }
        // `: slabdata <active_slabs> <num_slabs> <sharedavail>` comes last.
        let num_slabs = parts.find_map(|p| {
            let mut w = p.split_whitespace();
            (w.next() == Some("slabdata"))
                .then(|| w.nth(1).and_then(|n| n.parse().ok()))
                .flatten()
        });
        caches.push(SlabCache {
            name: name.to_owned(),
            active_objs: nums[0],
            num_objs: nums[1],
            objsize: nums[2],
            objperslab: nums[3],
            pagesperslab: nums[4],
            num_slabs,
        });
    }
    Ok(SlabInfo { caches })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        let p = format!("{}/tests/fixtures/proc/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn dentry_on_the_6_18_host() {
        // dentry  74993  75012  192  21  1 : tunables 0 0 0 : slabdata 3572 3572 0
        let s = parse_slabinfo(&fixture("sd252-hybrid/slabinfo")).unwrap();
        let d = s.get("dentry").unwrap();
        assert_eq!((d.active_objs, d.num_objs, d.objsize), (74993, 75012, 192));
        assert_eq!(
            (d.objperslab, d.pagesperslab, d.num_slabs),
            (21, 1, Some(3572))
        );
        assert_eq!(s.dentry_bytes(), Some(75012 * 192));
        assert_eq!(d.slab_bytes(4096), Some(3572 * 4096));
    }

    #[test]
    fn dentry_in_the_v2_vm() {
        // dentry  3044  3045  192  21  1 : tunables 0 0 0 : slabdata 145 145 0
        let s = parse_slabinfo(&fixture("sd252-v2/slabinfo")).unwrap();
        assert_eq!(s.dentry_bytes(), Some(3045 * 192));
        assert!(s.caches.len() > 50, "{}", s.caches.len());
    }

    #[test]
    fn every_captured_slabinfo_parses() {
        for sys in [
            "sd252-hybrid",
            "sd252-v2",
            "sd252-v2-throttled",
            "host-plain",
        ] {
            let s = parse_slabinfo(&fixture(&format!("{sys}/slabinfo"))).unwrap();
            assert!(s.dentry_bytes().unwrap() > 0, "{sys}");
            assert!(s.caches.iter().all(|c| c.num_slabs.is_some()), "{sys}");
            assert!(s.get("no-such-cache").is_none());
        }
    }

    #[test]
    fn refuses_other_formats() {
        assert!(parse_slabinfo("").is_err());
        let e = parse_slabinfo("slabinfo - version: 1.1\n").unwrap_err();
        assert!(e.to_string().contains("only 2.x"), "{e}");
        let e = parse_slabinfo("slabinfo - version: 2.1\ndentry 1 2 x 4 5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: dentry: objsize is not a number: \"x\""
        );
        let e = parse_slabinfo("slabinfo - version: 2.1\ndentry 1 2\n").unwrap_err();
        assert!(e.to_string().contains("no objsize"), "{e}");
    }
}
