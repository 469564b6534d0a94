//! Plain aligned text tables.

use std::fmt;

/// A table printed with columns padded to their widest cell; text columns
/// are left-aligned, numeric ones right-aligned.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Option<Vec<String>>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Some(cells));
    }

    /// A horizontal rule before the next row.
    pub fn separator(&mut self) {
        self.rows.push(None);
    }
}

fn numeric(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-')
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in self.rows.iter().flatten() {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line =
            |f: &mut fmt::Formatter<'_>, cells: &[String], align_numbers: bool| -> fmt::Result {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, &w))| {
                        if align_numbers && i > 0 && numeric(c) {
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
