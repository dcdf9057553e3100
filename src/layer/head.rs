//! [`Head`]: what a 401 retry needs of a request besides its body, kept in one allocation.
//!
//! Cloning a `HeaderMap` costs two allocations plus one per header value built from a `&str` (the
//! first clone of such a value moves its bytes to shared storage). This is paid by *every* request
//! that might be retried, so the head is copied instead into one flat buffer (and rebuilt only for
//! the rare retry).

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, Method, Request, Uri, Version};

/// A copy of a request's method, URI, version, headers and extensions.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    extensions: Extensions,
    /// Every header in order, each as `[name len: u16][name][sensitive: u8][value len: u16][value]`.
    headers: Bytes,
}

/// Header bytes up to this size live inside the (already boxed) retry state: no allocation of
/// their own. Typical API requests (a user agent, an accept, a content type) fit.
const INLINE: usize = 256;

/// The flat header buffer: inline when small, on the heap when not.
#[expect(
    clippy::large_enum_variant,
    reason = "the inline variant is the point: it lives in the already boxed retry state"
)]
enum Bytes {
    Inline { len: u16, buf: [u8; INLINE] },
    Heap(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..usize::from(*len)],
            Bytes::Heap(vec) => vec,
        }
    }
}

/// Appends to a fixed buffer or a vector.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes into an inline array (the caller checked the total size first).
struct Cursor<'a> {
    buf: &'a mut [u8; INLINE],
    len: usize,
}

impl Sink for Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }
}

/// Writes every header of `headers` into `sink`; `None` for a name or value over 64 KiB.
fn write_headers(headers: &http::HeaderMap, sink: &mut impl Sink) -> Option<()> {
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        let bytes = value.as_bytes();
        sink.put(&u16::try_from(name.len()).ok()?.to_le_bytes());
        sink.put(name);
        sink.put(&[u8::from(value.is_sensitive())]);
        sink.put(&u16::try_from(bytes.len()).ok()?.to_le_bytes());
        sink.put(bytes);
    }
    Some(())
}

impl Head {
    /// Copies the head of `request`; `None` for a header longer than 64 KiB (not replayed).
    #[inline]
    pub(crate) fn capture<B>(request: &Request<B>) -> Option<Head> {
        let headers = request.headers();
        let size: usize = headers
            .iter()
            .map(|(name, value)| 5 + name.as_str().len() + value.len())
            .sum();
        let buf = if size <= INLINE {
            let mut buf = [0u8; INLINE];
            let mut cursor = Cursor {
                buf: &mut buf,
                len: 0,
            };
            write_headers(headers, &mut cursor)?;
            Bytes::Inline {
                len: u16::try_from(cursor.len).ok()?,
                buf,
            }
        } else {
            let mut vec = Vec::with_capacity(size);
            write_headers(headers, &mut vec)?;
            Bytes::Heap(vec)
        };
        Some(Head {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            extensions: request.extensions().clone(),
            headers: buf,
        })
    }

    /// The request again, with `body`; `None` if a header no longer parses (it came from an
    /// unchecked constructor).
    pub(crate) fn into_request<B>(self, body: B) -> Option<Request<B>> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.extensions_mut() = self.extensions;
        let headers = request.headers_mut();
        let mut rest = self.headers.as_slice();
        while !rest.is_empty() {
            let (name, tail) = take(rest)?;
            let (&sensitive, tail) = tail.split_first()?;
            let (value, tail) = take(tail)?;
            rest = tail;
            let name = HeaderName::from_bytes(name).ok()?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(sensitive == 1);
            headers.append(name, value);
        }
        Some(request)
    }
}

/// Splits a `[len: u16][bytes]` field off the front of `buf`.
fn take(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips_with_repeated_and_sensitive_headers() {
        let mut secret = HeaderValue::from_static("s3cret");
        secret.set_sensitive(true);
        let mut original = Request::post("https://api.example/v1/items?x=1&y=%20")
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
    fn small_heads_stay_inline_and_large_ones_round_trip_from_the_heap() {
        let request = Request::get("/").header("accept", "*/*").body(()).unwrap();
        assert!(matches!(
            Head::capture(&request).unwrap().headers,
            Bytes::Inline { .. }
        ));

        let long = "x".repeat(1000);
        let request = Request::get("/")
            .header("x-long", long.as_str())
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let head = Head::capture(&request).unwrap();
        assert!(matches!(head.headers, Bytes::Heap(_)));
        let copy = head.into_request(()).unwrap();
        assert_eq!(copy.headers(), request.headers());
    }
}
