//! Request-path normalisation before routing, as Istio's default `BASE`
//! path normalisation does it (Envoy `normalize_path: true`, spec §1.5):
//! RFC 3986 §5.2.4 dot-segment removal, with `%2e`/`%2E` counted as a dot.
//! Slashes are not merged and escaped slashes are kept. The normalised path
//! is both what routes match and what goes upstream, so `/x/../admin`
//! cannot slip past a `prefix: /admin` rule.

/// The normalised form of `path`, or `None` when it is already normal (the
/// common case, checked without allocating).
pub fn normalize(path: &str) -> Option<String> {
    if !needs_work(path) {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let count = segments.clone().count();
    for (i, segment) in segments.enumerate() {
        let last = i + 1 == count;
        match dots(segment) {
            1 => {
                if last {
                    out.push("");
                }
            }
            2 => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            _ => out.push(segment),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    (normal != path).then_some(normal)
}

/// Whether any segment might be `.` or `..` (possibly percent-encoded).
fn needs_work(path: &str) -> bool {
    path.split('/').any(|s| dots(s) > 0)
}

/// 1 for a `.` segment, 2 for `..`, 0 otherwise (`%2e` counts as `.`).
fn dots(segment: &str) -> usize {
    let bytes = segment.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            i += 1;
        } else if bytes.len() >= i + 3
            && bytes[i] == b'%'
            && bytes[i + 1] == b'2'
            && bytes[i + 2].eq_ignore_ascii_case(&b'e')
        {
            i += 3;
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn removes_dot_segments() {
        assert_eq!(normalize("/a/b"), None);
        assert_eq!(normalize("/"), None);
        assert_eq!(normalize("/x/../exact").as_deref(), Some("/exact"));
        assert_eq!(normalize("/./pre/a/./b").as_deref(), Some("/pre/a/b"));
        assert_eq!(normalize("/re/1/../2").as_deref(), Some("/re/2"));
        assert_eq!(normalize("/..").as_deref(), Some("/"));
        assert_eq!(normalize("/../../a").as_deref(), Some("/a"));
        assert_eq!(normalize("/a/..").as_deref(), Some("/"));
        assert_eq!(normalize("/a/b/.").as_deref(), Some("/a/b/"));
        assert_eq!(normalize("/a/%2e%2E/b").as_deref(), Some("/b"));
        assert_eq!(normalize("/a/.../b"), None);
        assert_eq!(normalize("/a/.b/..c"), None);
        assert_eq!(normalize("/a//b"), None);
    }
}
