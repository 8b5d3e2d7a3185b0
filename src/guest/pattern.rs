//! Shell-style glob matching of port names (`*.vport`), on the whole name.
//!
//! Supports `*` (any run, including empty), `?` (one character), `[abc]`,
//! `[a-z]`, `[!abc]` / `[^abc]` and `\` to escape the next character. No
//! special meaning for `/` or a leading `.`: port names are not paths.

/// True when `name` matches `pattern` from start to end.
// Kept over the glob crate: glob::Pattern has no `\` escape or `[^...]`
// and refuses an unclosed `[`; globset and fast-glob give `/` and `{a,b}`
// meanings a port name must not get.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`: linear in
    // practice and never recursive, whatever the pattern.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket expression starting at `p[start] == '['`.
/// Returns whether it matched and the index after the closing `]`, or None
/// when the bracket is never closed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&hi| hi != ']') {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn star_suffix_matches_whole_name_only() {
        assert!(glob_match("*.vport", "s-1-VM.vport"));
        assert!(glob_match("*.vport", ".vport"));
        assert!(!glob_match("*.vport", "s-1-VM.vport.old"));
        assert!(!glob_match("*.vport", "org.qemu.guest_agent.0"));
    }

    #[test]
    fn question_mark_and_classes() {
        assert!(glob_match("?-1-VM.vport", "s-1-VM.vport"));
        assert!(glob_match("[sv]-*-VM.vport", "v-215-VM.vport"));
        assert!(!glob_match("[!sv]-*-VM.vport", "v-215-VM.vport"));
        assert!(glob_match("r-[0-9]*", "r-42-VM.vport"));
        assert!(!glob_match("r-[0-9]*", "r-x-VM.vport"));
    }

    #[test]
    fn literal_pattern_is_exact() {
        assert!(glob_match("s-1-VM.vport", "s-1-VM.vport"));
        assert!(!glob_match("s-1-VM.vport", "s-1-VM.vpor"));
        assert!(!glob_match("s-1-VM.vpor", "s-1-VM.vport"));
    }

    #[test]
    fn escapes_and_unclosed_brackets_are_literal() {
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(glob_match("a[b", "a[b"));
    }

    #[test]
    fn several_stars_backtrack() {
        assert!(glob_match("*a*b*c", "xxaxxbxxc"));
        assert!(!glob_match("*a*b*c", "xxaxxcxxb"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
    }
}
