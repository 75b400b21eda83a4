//! Reading files into resources.
//!
//! A `--config` path is a file, or a directory whose `*.yaml` / `*.yml`
//! entries are read (not recursively; dot-files skipped, so Kubernetes'
//! `..data` machinery is invisible; symlinks followed). Each file may hold
//! several YAML documents, and a document may be a `kind: List`.
//! Objects of kinds meshd does not read are skipped with one warning each.

use std::hash::{Hash, Hasher};
use std::io::Read as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use xxhash_rust::xxh64::Xxh64;

use super::resources::{Kind, Meta, Resource, ResourceId, Source};
use super::{host, yaml, Config, Problem, Sources};

pub use super::limits::MAX_FILE_BYTES;
use super::limits::{FileRefused, MAX_OBJECTS, MAX_TOTAL_BYTES};

/// The API group meshd reads and its served versions.
const GROUP: &str = "networking.istio.io";
const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Where one object sits, for messages.
struct Origin<'a> {
    file: &'a Arc<Path>,
    document: usize,
}

/// Loads every resource under `sources`. Never fails as a whole: problems
/// (errors and warnings) are returned beside whatever could be read.
pub fn load(sources: &Sources) -> (Config, Vec<Problem>) {
    parse_all(sources, read_all(sources))
}

/// Like [`load`], but `None` when the files hash to `last_hash`: the
/// hash covers the names and bytes read, so an unchanged set (a watcher's
/// burst of events, a ConfigMap flip to the same content) costs reading
/// and hashing, not parsing.
pub fn load_if_changed(sources: &Sources, last_hash: Option<u64>) -> Option<(Config, Vec<Problem>)> {
    let read = read_all(sources);
    if last_hash == Some(read.hash) {
        return None;
    }
    Some(parse_all(sources, read))
}

/// What reading the sources gave.
struct Read {
    /// Each file's name and text, in load order.
    texts: Vec<(Arc<Path>, String)>,
    /// xxh64 of the names and contents: every watcher event makes meshd
    /// read and hash the whole set (megabytes), and SipHash, the standard
    /// library's, is several times slower at it.
    hash: u64,
    /// Files and directories that could not be read.
    problems: Vec<Problem>,
}

/// Every file's text, and the hash of their names and contents.
fn read_all(sources: &Sources) -> Read {
    let mut problems = Vec::new();
    let mut hasher = Xxh64::new(0);
    let mut texts = Vec::new();
    let mut total: u64 = 0;
    for file in list_files(&sources.paths, &mut problems) {
        let file: Arc<Path> = Arc::from(file.as_path());
        let Some(text) = read_file(&file, &mut problems) else { continue };
        total += text.len() as u64;
        if total > MAX_TOTAL_BYTES {
            problems.push(Problem::error(Some(file), None, "", FileRefused::TotalBytes { total }.to_string()));
            break;
        }
        file.hash(&mut hasher);
        text.hash(&mut hasher);
        texts.push((file, text));
    }
    Read { texts, hash: hasher.finish(), problems }
}

fn parse_all(sources: &Sources, read: Read) -> (Config, Vec<Problem>) {
    let Read { texts, hash, mut problems } = read;
    let mut config = Config { namespace: sources.namespace.clone(), content_hash: hash, ..Config::default() };
    let mut objects = 0;
    for (file, text) in texts {
        if load_counted(&text, &file, &mut config, &mut problems, &mut objects).is_break() {
            break;
        }
    }
    problems.extend(super::validate::unapplied(&config));
    (config, problems)
}

/// Parses one file's text into `config`.
pub fn load_text(text: &str, file: &Arc<Path>, config: &mut Config, problems: &mut Vec<Problem>) {
    let _ = load_counted(text, file, config, problems, &mut 0);
}

/// [`load_text`], counting objects into `objects` (the load's count so far)
/// and breaking, with an error, at the first past [`MAX_OBJECTS`].
fn load_counted(
    text: &str,
    file: &Arc<Path>,
    config: &mut Config,
    problems: &mut Vec<Problem>,
    objects: &mut usize,
) -> ControlFlow<()> {
    let mut index = 0;
    let mut flow = ControlFlow::Continue(());
    let parsed = yaml::for_each_document(text, |mut document| {
        let items = match document.get("kind").and_then(Value::as_str) {
            Some("List") => match document.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    let origin = Origin { file, document: index };
                    problems.push(origin.error(None, "items", "a List's items must be a sequence"));
                    index += 1;
                    return ControlFlow::Continue(());
                }
            },
            _ => vec![document],
        };
        *objects += items.len();
        if *objects > MAX_OBJECTS {
            let origin = Origin { file, document: index };
            problems.push(origin.error(None, "", FileRefused::Objects.to_string()));
            flow = ControlFlow::Break(());
            return flow;
        }
        for item in items {
            load_object(item, &Origin { file, document: index }, config, problems);
            index += 1;
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = parsed {
        let at = e.line.map(|l| format!("line {l}")).unwrap_or_default();
        problems.push(Problem::error(Some(file.clone()), None, at, format!("invalid YAML: {e}")));
    }
    flow
}

/// Files named by `paths`, in a stable order.
fn list_files(paths: &[PathBuf], problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match read_dir(path) {
                Ok(mut found) => {
                    found.sort();
                    files.extend(found);
                }
                Err(e) => problems.push(path_error(path, format!("cannot read directory: {e}"))),
            },
            Ok(_) => files.push(path.clone()),
            Err(e) => problems.push(path_error(path, format!("cannot read: {e}"))),
        }
    }
    files
}

fn read_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `metadata` follows symlinks; a dangling link is skipped silently,
        // as Kubernetes briefly leaves them during a ConfigMap update.
        if !name.starts_with('.') && is_yaml && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
    Ok(out)
}

fn read_file(file: &Arc<Path>, problems: &mut Vec<Problem>) -> Option<String> {
    let result = std::fs::metadata(file).and_then(|meta| {
        if meta.len() > MAX_FILE_BYTES {
            return Err(std::io::Error::other(FileRefused::FileBytes { size: meta.len() }));
        }
        // Read through `take`: a file that grows after `metadata` is still
        // read no further than the limit (and then refused as too large).
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(file)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(std::io::Error::other(FileRefused::FileBytes { size: bytes.len() as u64 }));
        }
        Ok(bytes)
    });
    match result.map(String::from_utf8) {
        Ok(Ok(text)) if text.is_empty() => {
            problems.push(Problem::error(Some(file.clone()), None, "", FileRefused::Empty.to_string()));
            None
        }
        Ok(Ok(text)) => Some(text),
        Ok(Err(e)) => {
            let at = e.utf8_error().valid_up_to();
            let message = format!("not UTF-8 text (invalid byte at offset {at}); binary file?");
            problems.push(Problem::error(Some(file.clone()), None, "", message));
            None
        }
        Err(e) => {
            problems.push(Problem::error(Some(file.clone()), None, "", format!("cannot read: {e}")));
            None
        }
    }
}

fn path_error(path: &Path, message: String) -> Problem {
    Problem::error(Some(Arc::from(path)), None, "", message)
}

/// Classifies one object and, for a kind meshd reads, deserializes it.
fn load_object(mut object: Value, origin: &Origin<'_>, config: &mut Config, problems: &mut Vec<Problem>) {
    let Value::Object(_) = object else {
        problems.push(origin.error(None, "", "a document must be a mapping with apiVersion and kind"));
        return;
    };
    // Taken out first: the spec is moved into its typed form, not copied.
    let spec = object.get_mut("spec").map(Value::take).unwrap_or(Value::Null);
    let spec = if spec.is_null() { Value::Object(Default::default()) } else { spec };
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind_name = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or((api_version, ""));
    let kind = match Kind::from_name(kind_name) {
        Some(kind) if group == GROUP => kind,
        _ => {
            let what = if kind_name.is_empty() { "an object without kind" } else { kind_name };
            let message = format!("skipping {what} ({api_version}): not a kind meshd reads");
            problems.push(Problem::warning(Some(origin.file.clone()), None, "kind", message));
            return;
        }
    };
    let meta = match read_meta(&object, &config.namespace) {
        Ok(meta) => meta,
        Err(why) => {
            problems.push(origin.error(None, "metadata", format!("{kind}: {why}")));
            return;
        }
    };
    let id = ResourceId { kind, namespace: meta.namespace.clone(), name: meta.name.clone() };
    if !VERSIONS.contains(&version) {
        let message = format!("unsupported apiVersion {api_version:?}; expected {GROUP}/v1, v1beta1 or v1alpha3");
        problems.push(origin.error(Some(id), "apiVersion", message));
        return;
    }
    let envelope = Envelope { kind, api_version: api_version.to_owned(), meta, origin, id };
    match kind {
        Kind::VirtualService => push(&mut config.virtual_services, envelope, spec, problems),
        Kind::DestinationRule => push(&mut config.destination_rules, envelope, spec, problems),
        Kind::ServiceEntry => push(&mut config.service_entries, envelope, spec, problems),
        Kind::WorkloadEntry => push(&mut config.workload_entries, envelope, spec, problems),
        Kind::Gateway => push(&mut config.gateways, envelope, spec, problems),
    }
}

/// Everything about an object except its spec.
struct Envelope<'a> {
    kind: Kind,
    api_version: String,
    meta: Meta,
    origin: &'a Origin<'a>,
    id: ResourceId,
}

/// Deserializes `spec` with its field path on error and a warning for each
/// field meshd does not know (Istio would refuse those; meshd ignores them).
fn push<T: DeserializeOwned>(
    out: &mut Vec<Resource<T>>,
    envelope: Envelope<'_>,
    spec: Value,
    problems: &mut Vec<Problem>,
) {
    let Envelope { kind, api_version, meta, origin, id } = envelope;
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = {
        let mut track = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(spec, &mut track);
        serde_path_to_error::deserialize(ignored)
    };
    for path in unknown {
        problems.push(origin.warning(Some(id.clone()), format!("spec.{path}"), "unknown field, ignored"));
    }
    match parsed {
        Ok(spec) => out.push(Resource {
            kind,
            api_version,
            meta,
            spec,
            source: Source { file: origin.file.clone(), document: origin.document },
        }),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { "spec".to_owned() } else { format!("spec.{path}") };
            problems.push(origin.error(Some(id), field, e.into_inner().to_string()));
        }
    }
}

fn read_meta(object: &Value, default_namespace: &str) -> Result<Meta, String> {
    let metadata = object.get("metadata").ok_or("metadata is required")?;
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    check_object_name(name).map_err(|why| format!("metadata.name {name:?} invalid: {why}"))?;
    let namespace =
        metadata.get("namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty()).unwrap_or(default_namespace);
    check_namespace(namespace).map_err(|why| format!("metadata.namespace {namespace:?} invalid: {why}"))?;
    let labels = metadata
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    Ok(Meta {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        creation_timestamp: metadata.get("creationTimestamp").and_then(Value::as_str).map(str::to_owned),
        labels,
    })
}

/// Kubernetes' rule for a namespace, which the API server enforces and a
/// file does not: an RFC 1123 label ([`host::check_dns_label`], in lower
/// case). A namespace outside it would make hosts
/// (`NAME.NAMESPACE.svc.cluster.local`) no request can name.
fn check_namespace(namespace: &str) -> Result<(), String> {
    lower_case(namespace)?;
    host::check_dns_label(namespace)
}

/// Kubernetes' rule for an object name: an RFC 1123 subdomain (lower-case
/// letters, digits, `-` and `.`, starting and ending with a letter or
/// digit, at most 253).
fn check_object_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    lower_case(name)?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    if !name.bytes().all(allowed) {
        return Err("only lower-case letters, digits, '-' and '.' are allowed".into());
    }
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if !edge(name.as_bytes().first()) || !edge(name.as_bytes().last()) {
        return Err("must start and end with a lower-case letter or a digit".into());
    }
    Ok(())
}

fn lower_case(text: &str) -> Result<(), String> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("upper-case letters are not allowed".into());
    }
    Ok(())
}

// === impl Origin ===

impl Origin<'_> {
    fn error(&self, id: Option<ResourceId>, field: impl Into<String>, message: impl Into<String>) -> Problem {
        let mut p = Problem::error(Some(self.file.clone()), id, field, message);
        self.locate(&mut p);
        p
    }

    fn warning(&self, id: Option<ResourceId>, field: impl Into<String>, message: impl Into<String>) -> Problem {
        let mut p = Problem::warning(Some(self.file.clone()), id, field, message);
        self.locate(&mut p);
        p
    }

    /// Names the document when no resource identifies the object.
    fn locate(&self, p: &mut Problem) {
        if p.resource.is_none() {
            let doc = format!("document {}", self.document);
            p.field = if p.field.is_empty() { doc } else { format!("{doc}: {}", p.field) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> (Config, Vec<Problem>) {
        let mut config = Config { namespace: "default".into(), ..Config::default() };
        let mut problems = Vec::new();
        load_text(text, &Arc::from(Path::new("test.yaml")), &mut config, &mut problems);
        (config, problems)
    }

    #[test]
    fn unchanged_files_are_not_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a]}\n";
        std::fs::write(&file, yaml).unwrap();
        let sources = Sources { paths: vec![dir.path().to_path_buf()], namespace: "default".into() };
        let (first, _) = load_if_changed(&sources, None).unwrap();
        assert_eq!(first.service_entries.len(), 1);
        assert!(load_if_changed(&sources, Some(first.content_hash)).is_none());
        std::fs::write(&file, yaml.replace("[a]", "[b]")).unwrap();
        let (changed, _) = load_if_changed(&sources, Some(first.content_hash)).unwrap();
        assert_ne!(changed.content_hash, first.content_hash);
        assert_eq!(load(&sources).0.content_hash, changed.content_hash);
    }

    #[test]
    fn names_and_namespaces_follow_kubernetes_rules() {
        let object = |name: &str, namespace: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name:?}, namespace: {namespace:?}}}\nspec: {{hosts: [a]}}\n")
        };
        for (name, namespace) in [("a", "default"), ("web.v1-2", "team-7"), ("0", "0")] {
            let (config, problems) = load_str(&object(name, namespace));
            assert_eq!((config.service_entries.len(), problems.len()), (1, 0), "{name} {namespace}: {problems:?}");
        }
        let long = "a".repeat(64);
        for (name, namespace, field) in [
            ("a", "defau:lt", "namespace"),
            ("a", "Default", "namespace"),
            ("a", "team.a", "namespace"),
            ("a", long.as_str(), "namespace"),
            ("-a", "default", "name"),
            ("a_b", "default", "name"),
            ("a.", "default", "name"),
        ] {
            let (config, problems) = load_str(&object(name, namespace));
            assert!(config.service_entries.is_empty(), "{name} {namespace} refused");
            let text = problems.iter().map(ToString::to_string).collect::<String>();
            assert!(text.contains(&format!("metadata.{field}")), "{name} {namespace}: {text}");
        }
    }

    #[test]
    fn reads_lists_and_documents() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1beta1\n  kind: VirtualService\n  metadata: {name: a}\n  spec: {hosts: [a]}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: b, namespace: x}\nspec: {host: b}\n";
        let (config, problems) = load_str(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.virtual_services[0].meta.namespace, "default");
        assert_eq!(config.destination_rules[0].meta.namespace, "x");
        assert_eq!(config.destination_rules[0].source.document, 1);
    }

    #[test]
    fn skips_other_kinds_with_a_warning() {
        let (config, problems) = load_str("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
        assert!(config.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].is_error());
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  http:\n  - timeout: soon\n";
        let (_, problems) = load_str(text);
        let line = problems[0].to_string();
        assert!(line.starts_with("test.yaml: VirtualService default/r: spec.http[0].timeout: "), "{line}");
    }

    #[test]
    fn unknown_fields_warn() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, bogus: 1}\n";
        let (config, problems) = load_str(text);
        assert_eq!(config.destination_rules.len(), 1);
        assert_eq!(problems[0].field, "spec.bogus");
    }
}
