//! Which file of the reference step each file of a new step is coded
//! against. Runs name their checkpoints in many ways, and consecutive steps
//! rarely use the same file names: `model_e01.safetensors` after
//! `model_e00.safetensors`, `global_step200/` after `global_step100/`,
//! shards `-00001-of-00004`. The rules, in order (docs/STORE.md, "Which
//! file is coded against which"):
//!
//! 1. the same path;
//! 2. a step of one file against a step of one file, whatever their names;
//! 3. paths equal once every run of digits is ignored (`step-100.pt` and
//!    `step-200.pt`; `global_step100/mp_rank_00.pt` and
//!    `global_step200/mp_rank_00.pt`): when as many files of each step are
//!    left with that pattern, they are paired in the order of their numbers
//!    (shards by their position in the set); otherwise none is.
//!
//! A file left without a partner is coded on its own.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Pairs each of `cur` (the new step's file paths) with at most one of
/// `refs` (the reference step's), each used at most once: `cur path ->
/// reference path`.
pub(crate) fn match_files<'a>(cur: &[&str], refs: &[&'a str]) -> HashMap<String, &'a str> {
    let mut out = HashMap::new();
    let ref_set: HashSet<&str> = refs.iter().copied().collect();
    let mut left_cur: Vec<&str> = Vec::new();
    let mut used: HashSet<&str> = HashSet::new();
    for &c in cur {
        match ref_set.get(c) {
            Some(&r) => {
                out.insert(c.to_string(), r);
                used.insert(r);
            }
            None => left_cur.push(c),
        }
    }
    let left_ref: Vec<&'a str> = refs.iter().copied().filter(|r| !used.contains(r)).collect();
    if left_cur.is_empty() || left_ref.is_empty() {
        return out;
    }
    if cur.len() == 1 && refs.len() == 1 {
        out.insert(left_cur[0].to_string(), left_ref[0]);
        return out;
    }
    // Group what is left by its path with the digits taken out.
    let mut groups: BTreeMap<String, (Vec<&str>, Vec<&'a str>)> = BTreeMap::new();
    for &c in &left_cur {
        groups.entry(pattern(c)).or_default().0.push(c);
    }
    for &r in &left_ref {
        groups.entry(pattern(r)).or_default().1.push(r);
    }
    for (_, (mut cs, mut rs)) in groups {
        if cs.len() != rs.len() {
            continue;
        }
        cs.sort_by_key(|p| numbers(p));
        rs.sort_by_key(|p| numbers(p));
        for (c, r) in cs.into_iter().zip(rs) {
            out.insert(c.to_string(), r);
        }
    }
    out
}

/// The path with every run of ASCII digits replaced by `#`.
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for ch in path.chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(ch);
            in_digits = false;
        }
    }
    out
}

/// The numbers in a path, in order (each saturating at `u128::MAX`), then
/// the path itself to break ties.
fn numbers(path: &str) -> (Vec<u128>, String) {
    let mut nums = Vec::new();
    let mut cur: Option<u128> = None;
    for ch in path.chars() {
        match ch.to_digit(10) {
            Some(d) => {
                let v = cur.unwrap_or(0);
                cur = Some(v.saturating_mul(10).saturating_add(d as u128));
            }
            None => {
                if let Some(v) = cur.take() {
                    nums.push(v);
                }
            }
        }
    }
    nums.extend(cur);
    (nums, path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(cur: &[&str], refs: &[&str]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = match_files(cur, refs)
            .into_iter()
            .map(|(c, r)| (c, r.to_string()))
            .collect();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn same_paths_first() {
        assert_eq!(
            m(&["a.safetensors", "b.json"], &["a.safetensors", "c.json"]),
            pairs(&[("a.safetensors", "a.safetensors")])
        );
    }

    #[test]
    fn single_files_whatever_their_names() {
        assert_eq!(
            m(&["model_e01.safetensors"], &["model_e00.safetensors"]),
            pairs(&[("model_e01.safetensors", "model_e00.safetensors")])
        );
        assert_eq!(m(&["x.bin"], &["y.pt"]), pairs(&[("x.bin", "y.pt")]));
    }

    #[test]
    fn step_numbers_in_folders_and_names() {
        assert_eq!(
            m(
                &[
                    "global_step200/mp_rank_00_model_states.pt",
                    "global_step200/zero_pp_rank_0_optim_states.pt",
                    "latest",
                ],
                &[
                    "global_step100/mp_rank_00_model_states.pt",
                    "global_step100/zero_pp_rank_0_optim_states.pt",
                    "latest",
                ]
            ),
            pairs(&[
                (
                    "global_step200/mp_rank_00_model_states.pt",
                    "global_step100/mp_rank_00_model_states.pt"
                ),
                (
                    "global_step200/zero_pp_rank_0_optim_states.pt",
                    "global_step100/zero_pp_rank_0_optim_states.pt"
                ),
                ("latest", "latest"),
            ])
        );
    }

    #[test]
    fn shards_by_their_position() {
        let cur = [
            "step-200-00002-of-00002.safetensors",
            "step-200-00001-of-00002.safetensors",
        ];
        let refs = [
            "step-100-00001-of-00002.safetensors",
            "step-100-00002-of-00002.safetensors",
        ];
        assert_eq!(
            m(&cur, &refs),
            pairs(&[
                (
                    "step-200-00001-of-00002.safetensors",
                    "step-100-00001-of-00002.safetensors"
                ),
                (
                    "step-200-00002-of-00002.safetensors",
                    "step-100-00002-of-00002.safetensors"
                ),
            ])
        );
        // Numbers compare as numbers, not as text.
        assert_eq!(
            m(&["s-9/a", "s-10/a"], &["s-100/a", "s-99/a"]),
            pairs(&[("s-10/a", "s-100/a"), ("s-9/a", "s-99/a")])
        );
    }

    #[test]
    fn unequal_groups_and_other_kinds_stay_unmatched() {
        // Resharded (2 shards -> 3): no pairing by position.
        assert!(m(
            &["m-1-of-3.st", "m-2-of-3.st", "m-3-of-3.st"],
            &["m-1-of-2.st", "m-2-of-2.st"]
        )
        .is_empty());
        // Other extensions are other files.
        assert!(m(&["a-2.json", "b"], &["a-1.safetensors", "c"]).is_empty());
    }
}
