//! Body replay for the 401 retry: which request bodies are kept for a second send.
//!
//! The layer never buffers a body. Before the first send it asks a [`ReplayPolicy`] for a copy of the
//! body; with one, a 401 is retried with the copy, without one the request is sent once and its 401
//! returned as it is. The default, [`CommonBodies`], recognises the common cheap-to-copy body types
//! at run time, so any `http_body::Body` works with the layer with no glue.

use std::any::Any;
use std::fmt;

use bytes::{Buf, Bytes};
use http_body::Body;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full, Limited};

/// Decides whether (and how) a request body is kept for the retry after a 401.
///
/// The shape of tower-http's `follow_redirect` policy: [`clone_body`](Self::clone_body) returns a
/// body that sends the same bytes again, or `None` to send the request once and return its 401 as it
/// is. The default is [`CommonBodies`]; [`NiftyAuthLayer::clone_body_fn`](super::NiftyAuthLayer::clone_body_fn)
/// takes a closure, [`NiftyAuthLayer::replay_policy`](super::NiftyAuthLayer::replay_policy) any
/// implementation.
pub trait ReplayPolicy<B>: Clone {
    /// A body that will send the same bytes as `body`, or `None` if it is not to be replayed.
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// The default [`ReplayPolicy`]: replays the common body types that can be copied, recognised at run
/// time (no allocation, no trait for the body to implement); any other body is sent once.
///
/// - Replayed whatever their size, since a copy shares the bytes (a reference count):
///   [`Full<Bytes>`](Full), [`Empty<Bytes>`](Empty), [`Limited`] of either, and [`Either`] of
///   `Full<Bytes>` and `Empty<Bytes>` (either order).
///   So is `Full<&'static [u8]>`.
/// - Replayed up to the cap ([`NiftyAuthLayer::max_replay_body_bytes`](super::NiftyAuthLayer::max_replay_body_bytes),
///   64 KiB by default), since a copy copies the bytes: [`String`].
/// - Sent once: everything else, including streaming bodies ([`BoxBody`], [`UnsyncBoxBody`],
///   `hyper::body::Incoming`, [`StreamBody`](http_body_util::StreamBody)) and body types this policy
///   does not know (use [`clone_body_fn`](super::NiftyAuthLayer::clone_body_fn) for those).
///
/// Any body type is accepted: here a `StreamBody` (sent once, a 401 returned as it is) and a
/// `Limited<Full<Bytes>>` (replayed).
///
/// ```
/// # async fn run(auth: nifty_auth::NiftyAuth) -> Result<(), nifty_auth::BoxError> {
/// use bytes::Bytes;
/// use http_body::Frame;
/// use http_body_util::{Full, Limited, StreamBody};
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;
/// let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<Frames>>();
/// let svc = ServiceBuilder::new().layer(auth.layer()).service(client);
/// let frames = vec![Ok(Frame::data(Bytes::from_static(b"chunk")))];
/// let request = http::Request::post("https://openapi.niftypm.com/api/v1.0/files")
///     .body(StreamBody::new(futures_util::stream::iter(frames)))?;
/// let _response = svc.oneshot(request).await?;
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Limited<Full<Bytes>>>();
/// let svc = ServiceBuilder::new().layer(auth.layer()).service(client);
/// let request = http::Request::post("https://openapi.niftypm.com/api/v1.0/tasks")
///     .body(Limited::new(Full::new(Bytes::from_static(b"{}")), 1024))?;
/// let _response = svc.oneshot(request).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonBodies {
    /// The largest body (in bytes) that is copied for a replay.
    pub(crate) max_copy_bytes: u64,
}

impl CommonBodies {
    /// The default policy, copying bodies up to `max_copy_bytes` (free copies at any size).
    pub fn new(max_copy_bytes: usize) -> Self {
        CommonBodies {
            max_copy_bytes: max_copy_bytes as u64,
        }
    }
}

/// Writes a clone of `body` into `slot` if `body` is a `T` (and `B` is `T`): the clone comes back as a
/// `B` through the `Option<T>` slot, without boxing it.
#[inline]
fn clone_as<T: Clone + 'static, B: 'static>(body: &B, slot: &mut Option<B>) -> bool {
    let Some(body) = (body as &dyn Any).downcast_ref::<T>() else {
        return false;
    };
    if let Some(slot) = (slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        *slot = Some(body.clone());
    }
    true
}

impl<B: 'static> ReplayPolicy<B> for CommonBodies {
    #[inline]
    fn clone_body(&self, body: &B) -> Option<B> {
        let mut slot = None;
        // Shared bytes: a copy is a reference count, so any size.
        let _ = clone_as::<Full<Bytes>, B>(body, &mut slot)
            || clone_as::<Empty<Bytes>, B>(body, &mut slot)
            || clone_as::<Either<Full<Bytes>, Empty<Bytes>>, B>(body, &mut slot)
            || clone_as::<Either<Empty<Bytes>, Full<Bytes>>, B>(body, &mut slot)
            || clone_as::<Limited<Full<Bytes>>, B>(body, &mut slot)
            || clone_as::<Limited<Empty<Bytes>>, B>(body, &mut slot)
            || clone_as::<Full<&'static [u8]>, B>(body, &mut slot)
            // Owned bytes: a copy copies them, so only up to the cap.
            || self.copy_small_string(body, &mut slot);
        slot
    }
}

impl CommonBodies {
    /// A `String` body is copied only up to the cap.
    #[inline]
    fn copy_small_string<B: 'static>(&self, body: &B, slot: &mut Option<B>) -> bool {
        match (body as &dyn Any).downcast_ref::<String>() {
            Some(text) if text.len() as u64 <= self.max_copy_bytes => {
                clone_as::<String, B>(body, slot)
            }
            Some(_) => true,
            None => false,
        }
    }
}

/// A [`ReplayPolicy`] from a closure; made by
/// [`NiftyAuthLayer::clone_body_fn`](super::NiftyAuthLayer::clone_body_fn).
#[derive(Clone, Copy)]
pub struct CloneBodyFn<F>(pub(crate) F);

impl<F, B> ReplayPolicy<B> for CloneBodyFn<F>
where
    F: Fn(&B) -> Option<B> + Clone,
{
    #[inline]
    fn clone_body(&self, body: &B) -> Option<B> {
        (self.0)(body)
    }
}

impl<F> fmt::Debug for CloneBodyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CloneBodyFn")
    }
}

/// A body type of your own that can copy itself for the retry.
///
/// Not needed for the layer to accept a body: [`CommonBodies`] (the default) handles the common
/// types and any other body is sent once. For a body type you define, implement this trait and pass
/// its method to [`clone_body_fn`](super::NiftyAuthLayer::clone_body_fn):
///
/// ```
/// use nifty_auth::NiftyAuth;
/// use nifty_auth::replay::ReplayableBody;
/// # use std::pin::Pin; use std::task::{Context, Poll};
/// # use bytes::Bytes; use http_body::{Body, Frame};
///
/// #[derive(Clone)]
/// struct MyJsonBody(Bytes);
/// # impl Body for MyJsonBody {
/// #     type Data = Bytes; type Error = std::convert::Infallible;
/// #     fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> { Poll::Ready(None) }
/// # }
///
/// impl ReplayableBody for MyJsonBody {
///     fn try_clone_body(&self) -> Option<Self> {
///         Some(self.clone()) // a reference count
///     }
/// }
///
/// # fn run(auth: NiftyAuth) {
/// let layer = auth.layer().clone_body_fn(MyJsonBody::try_clone_body);
/// # let _ = layer; }
/// ```
pub trait ReplayableBody: Body + Sized {
    /// A body that will send the same bytes again, or `None` if this body cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

impl<D: Buf + Clone> ReplayableBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D: Buf> ReplayableBody for Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayableBody for String {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<L, R> ReplayableBody for Either<L, R>
where
    L: ReplayableBody,
    R: ReplayableBody<Data = L::Data>,
    L::Error: Into<crate::BoxError>,
    R::Error: Into<crate::BoxError>,
{
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.try_clone_body().map(Either::Left),
            Either::Right(r) => r.try_clone_body().map(Either::Right),
        }
    }
}

impl<D: Buf, E> ReplayableBody for BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D: Buf, E> ReplayableBody for UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl ReplayableBody for hyper::body::Incoming {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CommonBodies = CommonBodies { max_copy_bytes: 4 };

    fn replays<B: 'static>(body: B) -> bool {
        POLICY.clone_body(&body).is_some()
    }

    #[test]
    fn shared_bytes_are_replayed_whatever_their_size() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let copy = POLICY.clone_body(&Full::new(big.clone())).unwrap();
        assert_eq!(copy.size_hint().exact(), Some(1 << 20));
        assert!(replays(Empty::<Bytes>::new()));
        assert!(replays(Either::<Full<Bytes>, Empty<Bytes>>::Left(
            Full::new(big.clone())
        )));
        assert!(replays(Either::<Empty<Bytes>, Full<Bytes>>::Left(
            Empty::new()
        )));
        assert!(replays(Limited::new(Full::new(big), 2 << 20)));
    }

    #[test]
    fn owned_bytes_are_replayed_only_up_to_the_cap() {
        assert_eq!(
            POLICY.clone_body(&"abcd".to_owned()).as_deref(),
            Some("abcd")
        );
        assert!(!replays("abcde".to_owned()));
        assert!(replays(Full::new(&b"static bytes are never copied"[..])));
    }

    #[test]
    fn streaming_and_unknown_bodies_are_not_replayed() {
        assert!(!replays(BoxBody::new(Full::new(Bytes::new()))));
        assert!(!replays(Full::new(std::collections::VecDeque::from(vec![
            1u8
        ]))));
        assert!(!replays(Either::<Full<Bytes>, String>::Left(Full::new(
            Bytes::new()
        ))));
    }

    #[test]
    fn a_closure_policy_decides_for_any_type() {
        let policy = CloneBodyFn(|b: &Full<&'static [u8]>| Some(*b));
        assert!(policy.clone_body(&Full::new(&b"x"[..])).is_some());
    }
}
