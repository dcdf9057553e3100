//! [`ProxyBody`]: a client's request body on its way upstream.
//!
//! A body of at most [`MAX_REPLAY_BYTES`] is read whole first and kept (its bytes shared, not
//! copied) so the layer can send it again after a 401; a larger one is streamed: the bytes read while
//! finding out, then the rest as it arrives, never held whole. Which bodies are replayed is decided
//! by the layer's replay policy, given [`ProxyBody::try_clone`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// The largest request body kept for the retry after a 401 (the layer's default cap).
pub(crate) const MAX_REPLAY_BYTES: usize =
    nifty_auth::NiftyAuthLayer::DEFAULT_MAX_REPLAY_BODY_BYTES;

/// A request body sent upstream.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// The whole body (and its trailers), replayable.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// The first bytes read, then the rest of the client's body: sent once.
    Streaming { head: Option<Bytes>, rest: Incoming },
}

impl ProxyBody {
    /// Reads up to [`MAX_REPLAY_BYTES`] of `body`: all of it gives a buffered body, more a streaming
    /// one. A body whose `Content-Length` is already over the cap is streamed without reading.
    pub(crate) async fn read(mut body: Incoming) -> Result<ProxyBody, hyper::Error> {
        if body.is_end_stream() {
            return Ok(ProxyBody::Buffered {
                data: None,
                trailers: None,
            });
        }
        if body
            .size_hint()
            .exact()
            .is_some_and(|len| len > MAX_REPLAY_BYTES as u64)
        {
            return Ok(ProxyBody::Streaming {
                head: None,
                rest: body,
            });
        }
        let mut data = BytesMut::new();
        loop {
            let Some(frame) = body.frame().await.transpose()? else {
                return Ok(ProxyBody::Buffered {
                    data: Some(data.freeze()),
                    trailers: None,
                });
            };
            match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > MAX_REPLAY_BYTES {
                        return Ok(ProxyBody::Streaming {
                            head: Some(data.freeze()),
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    // Trailers end the body.
                    return Ok(ProxyBody::Buffered {
                        data: Some(data.freeze()),
                        trailers: frame.into_trailers().ok(),
                    });
                }
            }
        }
    }

    /// A copy sending the same bytes (a reference count), for a buffered body; `None` for a
    /// streaming one. The proxy's replay policy.
    pub(crate) fn try_clone(&self) -> Option<ProxyBody> {
        match self {
            ProxyBody::Buffered { data, trailers } => Some(ProxyBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            ProxyBody::Streaming { .. } => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ProxyBody::Streaming { head, rest } => {
                if let Some(head) = head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(head))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            ProxyBody::Streaming { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Streaming { head, rest } => {
                let head = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(head));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(head));
                }
                hint
            }
        }
    }
}
