//! Header hygiene between client and backend: hop-by-hop removal (RFC 9110
//! section 7.6.1) and the X-Forwarded-* set.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
/// A request that came chunked also loses any `Content-Length`, so the
/// backend can never see two conflicting framings (request smuggling).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
}

/// Which X-Forwarded-* headers to set.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    pub for_: bool,
    pub proto: bool,
    pub host: bool,
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Append the client address to X-Forwarded-For and set -Proto and -Host.
pub fn add_forwarded(h: &mut HeaderMap, f: Forwarded, client: IpAddr, scheme: &'static str) {
    if f.for_ {
        let ip = client.to_string();
        let v = match h.get(&XFF).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(XFF.clone(), v);
        }
    }
    if f.proto {
        h.insert(XFP.clone(), HeaderValue::from_static(scheme));
    }
    if f.host {
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert(XFH.clone(), host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(&XFF, "10.0.0.1".parse().unwrap());
        h.insert(header::HOST, "example.org".parse().unwrap());
        let all = Forwarded {
            for_: true,
            proto: true,
            host: true,
        };
        add_forwarded(&mut h, all, "127.0.0.9".parse().unwrap(), "http");
        assert_eq!(h[&XFF], "10.0.0.1, 127.0.0.9");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "example.org");
    }
}
