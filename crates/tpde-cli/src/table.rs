//! Plain aligned text tables.

use std::fmt;

/// A table printed with columns padded to their widest cell; text columns
/// are left-aligned, numeric ones (and `-`, `?`) right-aligned. [`Table::fit`] narrows the
/// first column (names) so that the table fits a width.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Option<Vec<String>>>,
    /// The first column's width when it is narrower than its longest cell.
    first_width: Option<usize>,
}

/// The first column is never narrowed below this.
const MIN_FIRST: usize = 16;

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            first_width: None,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Some(cells));
    }

    /// A horizontal rule before the next row.
    pub fn separator(&mut self) {
        self.rows.push(None);
    }

    /// Narrows the first column, shortening its long cells in the middle,
    /// so that every line is at most `width` characters (as far as the
    /// other columns allow).
    pub fn fit(&mut self, width: usize) {
        let widths = self.widths();
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        if total > width {
            let first = widths[0].saturating_sub(total - width).max(MIN_FIRST);
            if first < widths[0] {
                self.first_width = Some(first);
            }
        }
    }

    /// Whether [`Table::fit`] shortened some cell.
    pub fn shortened(&self) -> bool {
        self.first_width.is_some()
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in self.rows.iter().flatten() {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        widths
    }
}

/// `s` in at most `width` characters: its middle replaced by `...`.
fn shorten(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let keep = width.saturating_sub(3);
    let tail = keep / 2;
    let head = keep - tail;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}...{end}")
}

fn numeric(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '?')
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths = self.widths();
        if let Some(w) = self.first_width {
            widths[0] = w;
        }
        let line =
            |f: &mut fmt::Formatter<'_>, cells: &[String], align_numbers: bool| -> fmt::Result {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, &w))| {
                        let c = if i == 0 { shorten(c, w) } else { c.clone() };
                        if align_numbers && i > 0 && numeric(&c) {
                            format!("{c:>w$}")
                        } else {
                            format!("{c:<w$}")
                        }
                    })
                    .collect();
                writeln!(f, "{}", parts.join("  ").trim_end())
            };
        line(f, &self.head, false)?;
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        writeln!(f, "{}", rule.join("  "))?;
        for r in &self.rows {
            match r {
                Some(cells) => line(f, cells, true)?,
                None => writeln!(f, "{}", rule.join("  "))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_shortens_the_first_column_in_the_middle() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec![
            "encoder.layers.0.self_attn.out_proj.weight".into(),
            "1".into(),
        ]);
        t.row(vec!["short".into(), "22".into()]);
        t.fit(30);
        let s = t.to_string();
        for l in s.lines() {
            assert!(l.chars().count() <= 30, "{l}");
        }
        assert!(s.contains("encoder.laye...proj.weight   1"), "{s}");
        assert!(s.contains("short"), "{s}");
        assert!(t.shortened());
    }
}
