//! Namespaces: a tenant's `allow=` prefixes. Sites that send fully qualified names
//! (no `-key-prefix`) must not write into each other's trees; a line whose metric path
//! starts with none of the tenant's prefixes is dropped and counted ("outside namespace").

use crate::batch::Batch;

/// The lines of `batch` inside `allow`, and how many were outside; `None` when every
/// line is inside (the batch is used as it is, no copy). With `-key-prefix`, `strip` is
/// the key name: the prefix the gateway added is not part of what the tenant wrote.
pub fn filter(batch: &Batch, allow: &[String], strip: Option<&str>) -> Option<(Batch, u64)> {
    let inside = |metric: &[u8]| {
        let own = match strip {
            Some(p) => metric
                .strip_prefix(p.as_bytes())
                .and_then(|m| m.strip_prefix(b"."))
                .unwrap_or(metric),
            None => metric,
        };
        allow.iter().any(|a| own.starts_with(a.as_bytes()))
    };
    if batch.lines().all(|(_, m)| inside(m)) {
        return None;
    }
    let mut kept = Vec::with_capacity(batch.data().len());
    let mut outside = 0;
    for (line, metric) in batch.lines() {
        if inside(metric) {
            kept.extend_from_slice(line);
        } else {
            outside += 1;
        }
    }
    let mut kept = Batch::from_plaintext(kept, None).0;
    if let Some(ip) = batch.source() {
        kept = kept.with_source(ip);
    }
    Some((kept, outside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_inside_and_counts_the_rest() {
        let (b, _) =
            Batch::from_plaintext(b"paris.a 1 1\nberlin.b 2 2\nparis.c 3 3\n".to_vec(), None);
        let allow = vec!["paris.".to_string()];
        let (kept, outside) = filter(&b, &allow, None).unwrap();
        assert_eq!(outside, 1);
        assert_eq!(kept.data().as_ref(), b"paris.a 1 1\nparis.c 3 3\n");
        let (p, _) = Batch::from_plaintext(b"paris.a 1 1\n".to_vec(), Some("site"));
        assert!(
            filter(&p, &allow, Some("site")).is_none(),
            "the key prefix is not the tenant's"
        );
    }
}
