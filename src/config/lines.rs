//! Byte offsets (what TOML spans are) to 1-based line numbers (what users read).

/// Start offset of every line of a text.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// The 1-based line holding byte `offset` (offsets past the end give the last line).
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let t = "a = 1\nb = 2\n\nc = 3";
        let idx = LineIndex::new(t);
        assert_eq!(idx.line(0), 1);
        assert_eq!(idx.line(5), 1); // the newline itself
        assert_eq!(idx.line(6), 2);
        assert_eq!(idx.line(12), 3);
        assert_eq!(idx.line(13), 4);
        assert_eq!(idx.line(999), 4);
        assert_eq!(LineIndex::new("").line(0), 1);
    }
}
