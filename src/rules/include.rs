//! `include PATH-or-GLOB;` — which files an include names.
//!
//! carbon-c-relay treats a path holding `*`, `?` or a `[…]` pair as a glob(3) pattern and
//! reads the matches in glob's (sorted) order; a pattern that matches nothing fails the
//! load. Wildcards are supported in the last path component only, which covers the
//! `conf.d/*.conf` layout includes exist for, without a glob dependency.

use std::path::{Path, PathBuf};

/// The files `pattern` names, in the order they are read.
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let is_glob = pattern.contains('*')
        || pattern.contains('?')
        || (pattern.contains('[') && pattern.contains(']'));
    if !is_glob {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let path = Path::new(pattern);
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return Err(format!("include pattern '{pattern}' names no file")),
    };
    let dir_str = dir.to_string_lossy();
    if dir_str.contains('*') || dir_str.contains('?') || dir_str.contains('[') {
        return Err(format!(
            "include pattern '{pattern}': wildcards are supported in the file name only"
        ));
    }
    let re = regex::Regex::new(&glob_to_regex(name))
        .map_err(|e| format!("include pattern '{pattern}' is not a valid glob: {e}"))?;
    let rd = std::fs::read_dir(dir).map_err(|e| format!("include pattern '{pattern}': {e}"))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') || name.starts_with('.'))
        .filter(|n| re.is_match(n))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!(
            "include pattern '{pattern}' did not match any files"
        ));
    }
    let keep_dot = path.parent().is_some_and(|d| !d.as_os_str().is_empty());
    Ok(names
        .into_iter()
        .map(|n| {
            if keep_dot {
                dir.join(n)
            } else {
                PathBuf::from(n)
            }
        })
        .collect())
}

/// One path component's glob as an anchored regex: `*`, `?`, `[…]` / `[!…]`.
fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' || c == '&' || c == '~' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_sorted_and_refuses_empty_matches() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.conf", "a.conf", "c.txt"] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let pat = format!("{}/*.conf", d.path().display());
        let got = expand(&pat).unwrap();
        assert_eq!(got, vec![d.path().join("a.conf"), d.path().join("b.conf")]);
        assert!(expand(&format!("{}/*.none", d.path().display())).is_err());
        assert_eq!(
            expand("plain.conf").unwrap(),
            vec![PathBuf::from("plain.conf")]
        );
    }
}
