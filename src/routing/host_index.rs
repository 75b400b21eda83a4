//! Domain → virtual host index.
//!
//! Built once per configuration; looked up once per request. The lookup
//! never allocates for a Host that is already lower-case (the common case)
//! and costs one hash probe for an exact hit, plus one probe per `.` of the
//! host for the wildcard fallback: independent of the number of virtual
//! hosts.
//!
//! Precedence, as Envoy's: exact domain › longest suffix wildcard
//! (`*.foo.com`, `*foo.com`) › `*`.

use foldhash::HashMap;

/// Longest host lower-cased on the stack; longer ones (beyond DNS's 255
/// anyway) fall back to a `String`.
const STACK_HOST: usize = 256;

/// Finds a virtual host by Host header.
#[derive(Debug, Default)]
pub struct HostIndex {
    /// Exact domains, lower-case, no trailing dot.
    exact: HashMap<Box<str>, u32>,
    /// `*.foo.com` keyed by `.foo.com` (the dot kept, so the key is the
    /// host's suffix starting at one of its dots).
    dot_suffix: HashMap<Box<str>, u32>,
    /// Shortest and longest key of `dot_suffix`: suffixes outside the
    /// range are not probed, so a miss usually costs one hash.
    dot_suffix_lens: (usize, usize),
    /// `*foo.com` and the like (no dot right after the `*`), keyed by
    /// `foo.com`: a short list, longest first.
    other_suffix: Vec<(Box<str>, u32)>,
    /// `*`.
    any: Option<u32>,
}

// === impl HostIndex ===

impl HostIndex {
    /// Adds `domain` (a host, `*.suffix`, `*suffix` or `*`) for virtual host
    /// `vhost`. Returns false, changing nothing, if the domain is already
    /// taken: the first virtual host to claim a domain keeps it (and
    /// for a `vhost` index beyond 2^32, which no memory could hold).
    pub(crate) fn insert(&mut self, domain: &str, vhost: usize) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
        let Ok(vhost) = u32::try_from(vhost) else { return false };
        match domain.strip_prefix('*') {
            Some("") => {
                if self.any.is_some() {
                    return false;
                }
                self.any = Some(vhost);
                true
            }
            Some(suffix) if suffix.starts_with('.') => {
                let added = insert_new(&mut self.dot_suffix, suffix, vhost);
                let (min, max) = self.dot_suffix_lens;
                self.dot_suffix_lens = if min == 0 {
                    (suffix.len(), suffix.len())
                } else {
                    (min.min(suffix.len()), max.max(suffix.len()))
                };
                added
            }
            Some(suffix) => {
                if self.other_suffix.iter().any(|(s, _)| &**s == suffix) {
                    return false;
                }
                // Keep longest first so the first hit is the best one.
                let at = self.other_suffix.partition_point(|(s, _)| s.len() >= suffix.len());
                self.other_suffix.insert(at, (suffix.into(), vhost));
                true
            }
            None => insert_new(&mut self.exact, &domain, vhost),
        }
    }

    /// Number of domains indexed.
    pub fn len(&self) -> usize {
        self.exact.len() + self.dot_suffix.len() + self.other_suffix.len() + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the virtual host for `authority` (port ignored, trailing dot
    /// ignored, case-insensitive): exact, then longest `*.suffix`, then `*`.
    pub fn lookup(&self, authority: &str) -> Option<usize> {
        let host = strip_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_lower(host);
        }
        let mut buf = [0u8; STACK_HOST];
        if let Some(slot) = buf.get_mut(..host.len()) {
            slot.copy_from_slice(host.as_bytes());
            slot.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid; this never fails.
            return std::str::from_utf8(slot).ok().and_then(|h| self.lookup_lower(h));
        }
        self.lookup_lower(&host.to_ascii_lowercase())
    }

    /// The lookup proper, on a lower-case host without port or trailing dot.
    fn lookup_lower(&self, host: &str) -> Option<usize> {
        if let Some(&v) = self.exact.get(host) {
            return Some(v as usize);
        }
        // Longest `*.suffix`: suffixes starting at each dot, leftmost first.
        // A dot at position 0 would make the suffix the whole host, which a
        // wildcard does not cover (`*.foo.com` ∌ `foo.com`).
        let mut best: Option<(usize, u32)> = None;
        let (min, max) = self.dot_suffix_lens;
        if !self.dot_suffix.is_empty() && host.len() > min {
            // Suffixes shrink left to right: start where they fit, stop
            // when they are too short.
            let start = host.len().saturating_sub(max).max(1);
            for (i, b) in host.bytes().enumerate().skip(start) {
                if host.len() - i < min {
                    break;
                }
                if b == b'.' {
                    if let Some(&v) = self.dot_suffix.get(&host[i..]) {
                        best = Some((host.len() - i, v));
                        break;
                    }
                }
            }
        }
        // Other wildcards only win when strictly longer than the dot match.
        let floor = best.map_or(0, |(len, _)| len);
        for (suffix, v) in &self.other_suffix {
            if suffix.len() <= floor {
                break;
            }
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                best = Some((suffix.len(), *v));
                break;
            }
        }
        best.map(|(_, v)| v).or(self.any).map(|v| v as usize)
    }
}

fn insert_new(map: &mut HashMap<Box<str>, u32>, key: &str, vhost: u32) -> bool {
    if map.contains_key(key) {
        return false;
    }
    map.insert(key.into(), vhost);
    true
}

/// `host` of `host`, `host:port`, `[v6]` or `[v6]:port`. A bare IPv6
/// address (several colons, no brackets) is returned whole.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(colon) if !authority[..colon].contains(':') => &authority[..colon],
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(domains: &[&str]) -> HostIndex {
        let mut index = HostIndex::default();
        for (i, d) in domains.iter().enumerate() {
            assert!(index.insert(d, i), "{d}");
        }
        index
    }

    #[test]
    fn exact_ignores_port_case_and_trailing_dot() {
        let idx = index(&["reviews.default.svc.cluster.local", "reviews", "10.0.0.1", "fd00::1"]);
        assert_eq!(idx.lookup("reviews.default.svc.cluster.local"), Some(0));
        assert_eq!(idx.lookup("reviews.default.svc.cluster.local.:9080"), Some(0));
        assert_eq!(idx.lookup("Reviews.Default.SVC.cluster.local"), Some(0));
        assert_eq!(idx.lookup("reviews:9080"), Some(1));
        assert_eq!(idx.lookup("REVIEWS"), Some(1));
        assert_eq!(idx.lookup("10.0.0.1:80"), Some(2));
        assert_eq!(idx.lookup("[fd00::1]:80"), Some(3));
        assert_eq!(idx.lookup("[FD00::1]"), Some(3));
        assert_eq!(idx.lookup("fd00::1"), Some(3));
        assert_eq!(idx.lookup("ratings"), None);
        assert_eq!(idx.lookup(""), None);
    }

    #[test]
    fn first_claim_keeps_a_domain() {
        let mut idx = index(&["a.com", "*.b.com", "*c.com", "*"]);
        assert!(!idx.insert("A.com.", 9));
        assert!(!idx.insert("*.b.com", 9));
        assert!(!idx.insert("*c.com", 9));
        assert!(!idx.insert("*", 9));
        assert_eq!(idx.lookup("a.com"), Some(0));
        assert_eq!(idx.len(), 4);
    }

    #[test]
    fn wildcards_longest_suffix_then_any() {
        let idx = index(&["*.foo.com", "*.a.foo.com", "*-bar.com", "*x-bar.com", "exact.foo.com"]);
        assert_eq!(idx.lookup("exact.foo.com"), Some(4));
        assert_eq!(idx.lookup("b.foo.com"), Some(0));
        assert_eq!(idx.lookup("z.b.foo.com:8080"), Some(0));
        assert_eq!(idx.lookup("b.a.foo.com"), Some(1));
        assert_eq!(idx.lookup("B.A.FOO.COM"), Some(1));
        assert_eq!(idx.lookup("a.foo.com"), Some(0));
        // `*.foo.com` does not cover `foo.com`.
        assert_eq!(idx.lookup("foo.com"), None);
        assert_eq!(idx.lookup("my-bar.com"), Some(2));
        assert_eq!(idx.lookup("box-bar.com"), Some(3));
        assert_eq!(idx.lookup("-bar.com"), None);
        let with_any = index(&["*.foo.com", "*"]);
        assert_eq!(with_any.lookup("foo.com"), Some(1));
        assert_eq!(with_any.lookup("a.foo.com"), Some(0));
    }

    #[test]
    fn longer_non_dot_wildcard_beats_shorter_dot_wildcard() {
        let idx = index(&["*.com", "*bar-foo.com"]);
        assert_eq!(idx.lookup("x.bar-foo.com"), Some(1));
        assert_eq!(idx.lookup("x.other.com"), Some(0));
        let idx = index(&["*.bar-foo.com", "*-foo.com"]);
        assert_eq!(idx.lookup("x.bar-foo.com"), Some(0));
    }

    #[test]
    fn suffix_probes_respect_length_bounds() {
        let idx = index(&["*.com", "*.very.long.example.org"]);
        assert_eq!(idx.lookup("x.com"), Some(0));
        assert_eq!(idx.lookup("a.b.c.d.e.f.com"), Some(0));
        assert_eq!(idx.lookup("a.very.long.example.org"), Some(1));
        assert_eq!(idx.lookup("z.b.c.very.long.example.org"), Some(1));
        assert_eq!(idx.lookup("very.long.example.org"), None);
        assert_eq!(idx.lookup(".com"), None);
        assert_eq!(idx.lookup("com"), None);
    }

    #[test]
    fn long_upper_case_host_falls_back_to_heap() {
        let label = "A".repeat(63);
        let host = format!("{label}.{label}.{label}.{label}.{label}.com");
        assert!(host.len() > STACK_HOST);
        let idx = index(&[&host.to_ascii_lowercase()]);
        assert_eq!(idx.lookup(&host), Some(0));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("[::1"), "[::1");
    }
}
