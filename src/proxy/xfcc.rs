//! `x-forwarded-client-cert` (XFCC) as an Istio ingress gateway's Envoy
//! sets it: `forward_client_cert_details: SANITIZE_SET` with
//! `set_current_client_cert_details` `subject`, `uri` and `dns`.
//!
//! - On a Gateway connection whose client presented a certificate (a
//!   `MUTUAL` server), any incoming XFCC is replaced with one element
//!   describing that certificate; on every other Gateway connection (clear
//!   text, or TLS without a client certificate) an incoming XFCC is
//!   removed, as Envoy's `SANITIZE_SET` does.
//! - The mesh listeners terminate no TLS; they leave the header untouched
//!   (Envoy's `ALWAYS_FORWARD_ONLY`). An Istio sidecar would drop it on a
//!   plain-text connection (its inbound `APPEND_FORWARD` and its outbound
//!   default `SANITIZE` both do): meshd's sidecar mode stays transparent,
//!   as it is for `x-forwarded-for`.
//!
//! The element is built once, after the handshake, in Envoy's order
//! (`ConnectionManagerUtility::mutateXfccRequestHeader`), its pairs joined
//! by `;`:
//!
//! - `By=` each URI SAN of the certificate meshd presented (none when it
//!   has no URI SAN, the usual case for a gateway's certificate);
//! - `Hash=` the lower-case hex SHA-256 of the client's leaf (DER);
//! - `Subject="…"` the leaf's subject in RFC 2253 form as OpenSSL's
//!   `XN_FLAG_RFC2253` prints it (last RDN first, `,` between RDNs, `+`
//!   within one, short names `CN`, `O`, …; `,+"\<>;` escaped with `\`, a
//!   leading `#` or space and a trailing space too, control and non-ASCII
//!   bytes as `\XX`); always quoted, even when empty;
//! - `URI=` each URI SAN of the leaf (`URI=` alone when it has none);
//! - `DNS=` each DNS SAN of the leaf.
//!
//! By, URI and DNS values are double-quoted when they hold `,`, `;`, `=`
//! or `"`, inner `"` written `\"`, as Envoy's header documentation asks
//! (Envoy itself writes them bare; the values Istio certificates carry
//! hold none of these, so both forms are the same there). An attribute
//! type outside the short-name table is printed as its dotted OID and its
//! value as `#` and the hex of its DER, as OpenSSL does for types it does
//! not know (OpenSSL knows a few rare ones meshd's table lacks).
//!
//! The header is set with the other forwarding headers, after the rule's
//! header operations: a VirtualService cannot overwrite it (in Envoy it
//! could).

use std::fmt::Write as _;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use x509_parser::asn1_rs::{Class, Tag, ToDer as _};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{self as oids, Oid};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the request path does with `x-forwarded-client-cert` on one
/// connection; decided when the connection is accepted (after its TLS
/// handshake), applied to every request.
#[derive(Clone, Debug, Default)]
pub enum ForwardClientCert {
    /// The header passes as the client sent it (the mesh listeners).
    #[default]
    Untouched,
    /// The header is removed (a Gateway connection without a client
    /// certificate).
    Sanitize,
    /// The header is replaced with this element, built from the client's
    /// certificate at the handshake.
    Set(Arc<HeaderValue>),
}

/// Why a client certificate could not be described.
#[derive(Debug, thiserror::Error)]
pub enum XfccError {
    #[error("a SAN or the subject holds bytes a header value cannot carry")]
    NotAHeaderValue,
}

// === impl ForwardClientCert ===

impl ForwardClientCert {
    /// The policy of a Gateway connection: `Set` when the client presented
    /// `leaf` (its first certificate, DER), else `Sanitize`. `local_uris`
    /// are the URI SANs of the certificate meshd presented (`By=`).
    pub fn gateway(leaf: Option<&[u8]>, local_uris: &[String]) -> Self {
        let Some(leaf) = leaf else { return ForwardClientCert::Sanitize };
        match HeaderValue::try_from(element(leaf, local_uris)).map_err(|_| XfccError::NotAHeaderValue) {
            Ok(value) => ForwardClientCert::Set(Arc::new(value)),
            Err(error) => {
                // The element is dropped, never forwarded in part: the
                // upstream sees no client identity rather than a wrong one.
                tracing::debug!(%error, "client certificate not forwarded");
                ForwardClientCert::Sanitize
            }
        }
    }

    /// Sets, removes or keeps the header of an upstream request.
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            ForwardClientCert::Untouched => {}
            ForwardClientCert::Sanitize => {
                headers.remove(&X_FORWARDED_CLIENT_CERT);
            }
            ForwardClientCert::Set(value) => {
                headers.insert(X_FORWARDED_CLIENT_CERT.clone(), HeaderValue::clone(value));
            }
        }
    }
}

/// The XFCC element for the client certificate `leaf` (DER): `By`,
/// `Hash`, `Subject`, `URI`, `DNS`. A certificate x509-parser cannot read
/// (rustls accepted it, so this is unexpected) gets its hash, an empty
/// subject and an empty URI, as Envoy writes for missing details.
pub fn element(leaf: &[u8], local_uris: &[String]) -> String {
    let mut out = String::with_capacity(256);
    for uri in local_uris {
        push_pair(&mut out, "By", uri);
    }
    push_pair(&mut out, "Hash", &sha256_hex(leaf));
    let parsed = X509Certificate::from_der(leaf).ok().map(|(_, cert)| cert);
    let subject = parsed.as_ref().map(|cert| rfc2253(cert.subject())).unwrap_or_default();
    separate(&mut out);
    let _ = write!(out, "Subject=\"{subject}\"");
    let sans = parsed.as_ref().map(subject_alt_names).unwrap_or_default();
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|san| match san {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if uris.is_empty() {
        // Envoy keeps the key when the certificate has no URI SAN.
        push_pair(&mut out, "URI", "");
    }
    for uri in uris {
        push_pair(&mut out, "URI", uri);
    }
    for san in &sans {
        if let GeneralName::DNSName(dns) = san {
            push_pair(&mut out, "DNS", dns);
        }
    }
    out
}

/// The URI SANs of the certificate `der` (empty when it has none or
/// cannot be read): the `By=` values of the connections it serves.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    subject_alt_names(&cert)
        .into_iter()
        .filter_map(|san| match san {
            GeneralName::URI(uri) => Some(uri.to_owned()),
            _ => None,
        })
        .collect()
}

/// The certificate's SANs, in their order (none when the extension is
/// absent or malformed).
fn subject_alt_names<'a>(cert: &X509Certificate<'a>) -> Vec<GeneralName<'a>> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        _ => Vec::new(),
    }
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn separate(out: &mut String) {
    if !out.is_empty() {
        out.push(';');
    }
}

/// Appends `;key=value`, the value double-quoted when it holds one of
/// XFCC's separators or a quote.
fn push_pair(out: &mut String, key: &str, value: &str) {
    separate(out);
    out.push_str(key);
    out.push('=');
    if value.contains([',', ';', '=', '"']) {
        out.push('"');
        out.push_str(&value.replace('"', "\\\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// `name` as OpenSSL's `X509_NAME_print_ex(…, XN_FLAG_RFC2253)` prints it.
fn rfc2253(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attribute);
        }
    }
    out
}

/// `TYPE=value` for one attribute: the short name (else the dotted OID),
/// and the escaped string, or `#` and the hex of the value's DER when the
/// type is unknown or the value is not a string.
fn push_attribute(out: &mut String, attribute: &AttributeTypeAndValue<'_>) {
    let value = attribute.attr_value();
    let name = short_name(attribute.attr_type());
    match name {
        Some(name) => out.push_str(name),
        None => out.push_str(&attribute.attr_type().to_id_string()),
    }
    out.push('=');
    let universal = value.class() == Class::Universal;
    match name.and(universal.then(|| decode_string(value.tag(), value.data)).flatten()) {
        Some(text) => escape_rfc2253(out, &text),
        None => {
            out.push('#');
            for byte in value.to_der_vec().unwrap_or_default() {
                let _ = write!(out, "{byte:02X}");
            }
        }
    }
}

/// OpenSSL's short name of the attribute types subjects use.
fn short_name(oid: &Oid<'_>) -> Option<&'static str> {
    let table: [(&Oid<'static>, &'static str); 21] = [
        (&oids::OID_X509_COMMON_NAME, "CN"),
        (&oids::OID_X509_COUNTRY_NAME, "C"),
        (&oids::OID_X509_LOCALITY_NAME, "L"),
        (&oids::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (&oids::OID_X509_STREET_ADDRESS, "street"),
        (&oids::OID_X509_ORGANIZATION_NAME, "O"),
        (&oids::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (&oids::OID_X509_TITLE, "title"),
        (&oids::OID_X509_SURNAME, "SN"),
        (&oids::OID_X509_GIVEN_NAME, "GN"),
        (&oids::OID_X509_INITIALS, "initials"),
        (&oids::OID_X509_SERIALNUMBER, "serialNumber"),
        (&oids::OID_X509_DN_QUALIFIER, "dnQualifier"),
        (&oids::OID_DOMAIN_COMPONENT, "DC"),
        (&oids::OID_PKCS9_EMAIL_ADDRESS, "emailAddress"),
        (&oids::OID_X509_POSTAL_CODE, "postalCode"),
        (&oids::OID_X509_DESCRIPTION, "description"),
        (&oids::OID_X509_BUSINESS_CATEGORY, "businessCategory"),
        (&oids::OID_X509_NAME, "name"),
        (&oids::OID_X509_GENERATION_QUALIFIER, "generationQualifier"),
        (&oids::OID_USERID, "UID"),
    ];
    table.iter().find(|(known, _)| *known == oid).map(|(_, name)| *name)
}

/// The text of a string-typed value; `None` for other types.
fn decode_string(tag: Tag, data: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        // OpenSSL reads T61 strings as Latin-1.
        Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units = data.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        Tag::UniversalString => data
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends `text` with RFC 2253's escapes, as OpenSSL's
/// `ASN1_STRFLGS_RFC2253` writes them.
fn escape_rfc2253(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    for (i, &byte) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match byte {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b'#' if first => out.push_str("\\#"),
            b' ' if first || last => out.push_str("\\ "),
            0x00..=0x1f | 0x7f..=0xff => {
                let _ = write!(out, "\\{byte:02X}");
            }
            _ => out.push(char::from(byte)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_separators_are_quoted() {
        let mut out = String::new();
        push_pair(&mut out, "URI", "spiffe://cluster.local/ns/default/sa/client");
        push_pair(&mut out, "URI", "https://x/?a=b;c,d");
        push_pair(&mut out, "DNS", "say\"hi\"");
        push_pair(&mut out, "URI", "");
        assert_eq!(
            out,
            r#"URI=spiffe://cluster.local/ns/default/sa/client;URI="https://x/?a=b;c,d";DNS="say\"hi\"";URI="#
        );
    }

    #[test]
    fn rfc2253_escapes_as_openssl() {
        let escaped = |text: &str| {
            let mut out = String::new();
            escape_rfc2253(&mut out, text);
            out
        };
        assert_eq!(escaped("Sue, Grabbit and Runn"), r"Sue\, Grabbit and Runn");
        assert_eq!(escaped(r#"a+b"c\d<e>f;g=h"#), r#"a\+b\"c\\d\<e\>f\;g=h"#);
        assert_eq!(escaped("#1 # "), r"\#1 #\ ");
        assert_eq!(escaped(" x"), r"\ x");
        assert_eq!(escaped("tab\there"), r"tab\09here");
        assert_eq!(escaped("café"), r"caf\C3\A9");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn strings_of_every_type_decode() {
        assert_eq!(decode_string(Tag::PrintableString, b"US").as_deref(), Some("US"));
        assert_eq!(decode_string(Tag::TeletexString, &[0x63, 0xe9]).as_deref(), Some("c\u{e9}"));
        assert_eq!(decode_string(Tag::BmpString, &[0, 0x41, 0, 0xe9]).as_deref(), Some("A\u{e9}"));
        assert_eq!(decode_string(Tag::UniversalString, &[0, 0, 0, 0x41]).as_deref(), Some("A"));
        assert_eq!(decode_string(Tag::BmpString, &[0xd8, 0x00]), None, "a lone surrogate");
        assert_eq!(decode_string(Tag::Integer, &[1]), None);
    }

    #[test]
    fn policies_apply_to_the_request_headers() {
        let forged = HeaderValue::from_static("Hash=forged");
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_CLIENT_CERT, forged.clone());
        ForwardClientCert::Untouched.apply(&mut headers);
        assert_eq!(headers.get(&X_FORWARDED_CLIENT_CERT), Some(&forged));
        let set = ForwardClientCert::Set(Arc::new(HeaderValue::from_static("Hash=ab")));
        set.apply(&mut headers);
        assert_eq!(headers.get_all(&X_FORWARDED_CLIENT_CERT).iter().collect::<Vec<_>>(), ["Hash=ab"]);
        ForwardClientCert::Sanitize.apply(&mut headers);
        assert!(headers.get(&X_FORWARDED_CLIENT_CERT).is_none());
        assert!(matches!(ForwardClientCert::gateway(None, &[]), ForwardClientCert::Sanitize));
    }

    /// Envoy's element for a certificate with a subject needing escapes, a
    /// URI SAN and two DNS SANs, behind a proxy certificate with a URI SAN.
    #[test]
    fn element_of_a_client_certificate() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
        let names = vec!["client.example".to_owned(), "alt.example".to_owned()];
        let mut params = CertificateParams::new(names).expect("params");
        let spiffe = "spiffe://cluster.local/ns/default/sa/client";
        params.subject_alt_names.push(SanType::URI(spiffe.try_into().expect("URI")));
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CountryName, "US");
        subject.push(DnType::OrganizationName, "Acme, \"Widgets\" Inc.");
        subject.push(DnType::CommonName, "café client");
        params.distinguished_name = subject;
        let cert = params.self_signed(&KeyPair::generate().expect("key")).expect("certificate");
        let der = cert.der().as_ref();
        assert_eq!(uri_sans(der), [spiffe]);
        let by = ["spiffe://cluster.local/ns/istio-system/sa/ingress".to_owned()];
        let expected = format!(
            r#"By={};Hash={};Subject="CN=caf\C3\A9 client,O=Acme\, \"Widgets\" Inc.,C=US";URI={spiffe};DNS=client.example;DNS=alt.example"#,
            by[0],
            sha256_hex(der),
        );
        assert_eq!(element(der, &by), expected);
        let policy = ForwardClientCert::gateway(Some(der), &by);
        assert!(matches!(&policy, ForwardClientCert::Set(value) if value.as_bytes() == expected.as_bytes()));
    }

    /// A type OpenSSL has no name for: its dotted OID and `#` with the
    /// value's DER in hex.
    #[test]
    fn unknown_attribute_types_are_dumped() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]), "x");
        subject.push(DnType::CommonName, "c");
        params.distinguished_name = subject;
        let cert = params.self_signed(&KeyPair::generate().expect("key")).expect("certificate");
        let (_, parsed) = X509Certificate::from_der(cert.der()).expect("parse");
        assert_eq!(rfc2253(parsed.subject()), "CN=c,1.3.6.1.4.1.99999.1=#0C0178");
    }

    #[test]
    fn an_unreadable_certificate_still_gets_its_hash() {
        let element = element(b"not a certificate", &["spiffe://td/ns/gw/sa/ingress".to_owned()]);
        let hash = sha256_hex(b"not a certificate");
        assert_eq!(element, format!("By=spiffe://td/ns/gw/sa/ingress;Hash={hash};Subject=\"\";URI="));
        assert!(uri_sans(b"not a certificate").is_empty());
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
