//! Body replay for the 401 retry: [`ReplayableBody`].

use bytes::Buf;
use http_body::Body;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full};

/// A request body that can be sent a second time, for the retry after a 401.
///
/// Before sending a request, the layer asks its body for a copy with [`try_clone_body`]
/// (only when the body's [`size_hint`](Body::size_hint) says it is at most the replay cap, 64 KiB by
/// default). If it gets one, a 401 is retried with the copy; if not, the request is sent once and its
/// 401 returned as it is. Nothing is ever buffered by the layer: a body that can be copied is copied
/// (for [`Full<Bytes>`] a reference-count increment), a body that cannot is streamed untouched.
///
/// Implemented for [`Full`], [`Empty`], [`String`] and [`Either`] of two replayable bodies (copies),
/// and for streaming bodies — [`BoxBody`], [`UnsyncBoxBody`], `hyper::body::Incoming` — which return
/// `None`. For a body type of your own, implement it (return `None` to opt out of retries):
///
/// ```
/// use nifty_auth::ReplayableBody;
/// # use std::pin::Pin; use std::task::{Context, Poll};
/// # use bytes::Bytes; use http_body::{Body, Frame};
///
/// struct MyStreamingBody;
/// # impl Body for MyStreamingBody {
/// #     type Data = Bytes; type Error = std::convert::Infallible;
/// #     fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> { Poll::Ready(None) }
/// # }
///
/// impl ReplayableBody for MyStreamingBody {
///     fn try_clone_body(&self) -> Option<Self> {
///         None // streamed once; a 401 is returned as it is
///     }
/// }
/// ```
///
/// [`try_clone_body`]: ReplayableBody::try_clone_body
/// [`Full<Bytes>`]: Full
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

/// A copy of `body` if it is at most `max_bytes` long (by its size hint) and can be copied.
#[inline]
pub(crate) fn replay_copy<B: ReplayableBody>(body: &B, max_bytes: u64) -> Option<B> {
    let hint = body.size_hint();
    let len = hint.exact().or(hint.upper())?;
    if len > max_bytes {
        return None;
    }
    body.try_clone_body()
}
