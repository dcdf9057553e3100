//! [`Head`]: what a 401 retry needs of a request besides its body, kept in one reused buffer.
//!
//! Cloning a `HeaderMap` costs two allocations plus one per header value built from a `&str` (the
//! first clone of such a value moves its bytes to shared storage), and cloning a `Uri` touches two
//! reference counts. This is paid by *every* request that might be retried, so the URI and the headers
//! are copied instead into one flat buffer, and rebuilt only for the rare retry. The buffers come from
//! a small per-thread pool and go back to it when the response comes: in a steady state the copy
//! allocates nothing.

use std::cell::RefCell;
use std::mem;

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, Method, Request, Uri, Version};

use crate::grant_id::GrantId;

/// Buffers kept per thread for reuse.
const POOLED_BUFFERS: usize = 16;
/// Buffers that grew beyond this are freed rather than kept (a rare huge head does not pin memory).
const MAX_POOLED_CAPACITY: usize = 4 * 1024;
/// The capacity a new buffer starts with: enough for the head of a typical API request.
const INITIAL_CAPACITY: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer from this thread's pool, or a new one.
#[inline]
fn take_buffer() -> Vec<u8> {
    POOL.try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(INITIAL_CAPACITY))
}

/// Gives `buffer` back to this thread's pool (or frees it if the pool is full or it grew large).
#[inline]
fn give_back(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_POOLED_CAPACITY {
        return;
    }
    buffer.clear();
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buffer);
            }
        }
    });
}

/// A request's extensions as a [`Head`] keeps them.
enum Kept {
    /// Exactly one extension, a [`GrantId`] (a grants-layer request that carries nothing else): one
    /// reference count, where cloning the `Extensions` would allocate its map and a box per value.
    Grant(GrantId),
    /// Anything else: a clone.
    Any(Extensions),
}

impl Kept {
    #[inline]
    fn of(extensions: &Extensions) -> Kept {
        if extensions.len() == 1 {
            if let Some(grant) = extensions.get::<GrantId>() {
                return Kept::Grant(grant.clone());
            }
        }
        Kept::Any(extensions.clone())
    }

    fn into_extensions(self) -> Extensions {
        match self {
            Kept::Grant(grant) => {
                let mut extensions = Extensions::new();
                extensions.insert(grant);
                extensions
            }
            Kept::Any(extensions) => extensions,
        }
    }
}

/// A copy of a request's method, URI, version, headers and extensions.
pub(crate) struct Head {
    method: Method,
    version: Version,
    extensions: Kept,
    /// `[uri len: u16][uri]`, then every header in order as
    /// `[name len: u16][name][sensitive: u8][value len: u16][value]`.
    bytes: Vec<u8>,
}

impl Drop for Head {
    fn drop(&mut self) {
        give_back(mem::take(&mut self.bytes));
    }
}

/// Appends `[len: u16][bytes]`; `None` if `bytes` is over 64 KiB.
#[inline]
fn put(buffer: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    buffer.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_le_bytes());
    buffer.extend_from_slice(bytes);
    Some(())
}

impl Head {
    /// Copies the head of `request`; `None` for a URI or header over 64 KiB (not replayed).
    #[inline]
    pub(crate) fn capture<B>(request: &Request<B>) -> Option<Head> {
        let mut head = Head {
            method: request.method().clone(),
            version: request.version(),
            extensions: Kept::of(request.extensions()),
            bytes: take_buffer(),
        };
        let bytes = &mut head.bytes;
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or_default();
        let authority = uri.authority().map_or("", |a| a.as_str());
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        let uri_len = if scheme.is_empty() {
            0
        } else {
            scheme.len() + 3
        } + authority.len()
            + path.len();
        bytes.extend_from_slice(&u16::try_from(uri_len).ok()?.to_le_bytes());
        if !scheme.is_empty() {
            bytes.extend_from_slice(scheme.as_bytes());
            bytes.extend_from_slice(b"://");
        }
        bytes.extend_from_slice(authority.as_bytes());
        bytes.extend_from_slice(path.as_bytes());
        for (name, value) in request.headers() {
            put(bytes, name.as_str().as_bytes())?;
            bytes.push(u8::from(value.is_sensitive()));
            put(bytes, value.as_bytes())?;
        }
        Some(head)
    }

    /// The request again, with `body`; `None` if the URI or a header no longer parses (it came from
    /// an unchecked constructor). The URI and the header values are slices of the one buffer (no copy).
    pub(crate) fn into_request<B>(mut self, body: B) -> Option<Request<B>> {
        let mut request = Request::new(body);
        *request.method_mut() = mem::take(&mut self.method);
        *request.version_mut() = self.version;
        *request.extensions_mut() =
            mem::replace(&mut self.extensions, Kept::Any(Extensions::new())).into_extensions();
        let buf = bytes::Bytes::from(mem::take(&mut self.bytes));
        let mut at = 0;
        let uri = field(&buf, &mut at)?;
        *request.uri_mut() = Uri::from_maybe_shared(uri).ok()?;
        let headers = request.headers_mut();
        while at < buf.len() {
            let name = field(&buf, &mut at)?;
            let sensitive = *buf.get(at)? == 1;
            at += 1;
            let value = field(&buf, &mut at)?;
            let name = HeaderName::from_bytes(&name).ok()?;
            let mut value = HeaderValue::from_maybe_shared(value).ok()?;
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        Some(request)
    }
}

/// The `[len: u16][bytes]` field at `*at` in `buf`, as a slice sharing `buf`; advances `*at`.
fn field(buf: &bytes::Bytes, at: &mut usize) -> Option<bytes::Bytes> {
    let len = buf.get(*at..*at + 2)?;
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    let start = *at + 2;
    let end = start.checked_add(len).filter(|&end| end <= buf.len())?;
    *at = end;
    Some(buf.slice(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips_with_repeated_and_sensitive_headers() {
        let mut secret = HeaderValue::from_static("s3cret");
        secret.set_sensitive(true);
        let mut original = Request::post("https://api.example:8443/v1/items?x=1&y=%20")
            .version(Version::HTTP_2)
            .header("content-type", "application/json")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header("x-bytes", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .header("x-api-key", secret)
            .body(())
            .unwrap();
        original.extensions_mut().insert(42u32);

        let copy = Head::capture(&original)
            .unwrap()
            .into_request("body")
            .unwrap();

        assert_eq!(copy.method(), original.method());
        assert_eq!(copy.uri(), original.uri());
        assert_eq!(copy.uri().to_string(), original.uri().to_string());
        assert_eq!(copy.version(), original.version());
        assert_eq!(copy.headers(), original.headers());
        let multi: Vec<_> = copy.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
        assert!(copy.headers()["x-api-key"].is_sensitive());
        assert!(!copy.headers()["content-type"].is_sensitive());
        assert_eq!(copy.extensions().get::<u32>(), Some(&42));
        assert_eq!(*copy.body(), "body");
    }

    #[test]
    fn a_lone_grant_id_is_kept_without_cloning_the_extensions() {
        let grant = GrantId::new("workspace-7").unwrap();
        let mut original = Request::get("https://h/p").body(()).unwrap();
        original.extensions_mut().insert(grant.clone());

        let head = Head::capture(&original).unwrap();
        assert!(
            matches!(&head.extensions, Kept::Grant(kept) if *kept == grant),
            "a request whose only extension is a GrantId keeps just the id"
        );
        let copy = head.into_request(()).unwrap();
        assert_eq!(copy.extensions().get::<GrantId>(), Some(&grant));
        assert_eq!(copy.extensions().len(), 1);
    }

    #[test]
    fn a_grant_id_beside_other_extensions_keeps_them_all() {
        let grant = GrantId::new("workspace-7").unwrap();
        let mut original = Request::get("https://h/p").body(()).unwrap();
        original.extensions_mut().insert(grant.clone());
        original.extensions_mut().insert(42u32);

        let head = Head::capture(&original).unwrap();
        assert!(matches!(head.extensions, Kept::Any(_)));
        let copy = head.into_request(()).unwrap();
        assert_eq!(copy.extensions().get::<GrantId>(), Some(&grant));
        assert_eq!(copy.extensions().get::<u32>(), Some(&42));
    }

    #[test]
    fn relative_and_authority_form_uris_round_trip() {
        for uri in [
            "/api/v1.0/projects?limit=5",
            "*",
            "example.com:443",
            "http://h",
        ] {
            let original = Request::get(uri).body(()).unwrap();
            let copy = Head::capture(&original).unwrap().into_request(()).unwrap();
            assert_eq!(copy.uri(), original.uri(), "{uri}");
        }
    }

    #[test]
    fn a_dropped_head_gives_its_buffer_back_for_the_next_request() {
        let request = Request::get("https://h/p")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let first = Head::capture(&request).unwrap();
        let buffer = first.bytes.as_ptr();
        drop(first);
        let second = Head::capture(&request).unwrap();
        assert_eq!(second.bytes.as_ptr(), buffer, "the pooled buffer is reused");
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_small_buffers() {
        let request = Request::get("https://h/p").body(()).unwrap();
        let heads: Vec<_> = (0..POOLED_BUFFERS * 2)
            .map(|_| Head::capture(&request).unwrap())
            .collect();
        drop(heads);
        assert_eq!(POOL.with(|pool| pool.borrow().len()), POOLED_BUFFERS);
        give_back(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(POOL.with(|pool| pool
            .borrow()
            .iter()
            .all(|b| b.capacity() <= MAX_POOLED_CAPACITY)));
    }
}
