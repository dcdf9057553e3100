//! [`FakeService`]: the fake's handler as a tower `Service`, without TCP.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{select, Either};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Body;
use tokio::sync::Notify;

use super::server::Inner;

/// The fake as a tower `Service`, from [`FakeNifty::service`](super::FakeNifty::service): each
/// request goes straight to the fake's handler, in the caller's task, with no socket.
///
/// Clones share the fake. Always ready.
#[derive(Clone)]
pub struct FakeService {
    inner: Arc<Inner>,
}

impl FakeService {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for FakeService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeService")
            .field("base_url", &self.inner.base_url)
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for FakeService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
{
    type Response = Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Response<Full<Bytes>>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reset = Notify::new();
            let handled = pin!(inner.handle(request, &reset));
            // `notify_one` keeps a permit, so a reset requested before this is polled still counts.
            let reset_requested = pin!(reset.notified());
            match select(handled, reset_requested).await {
                Either::Left((response, _)) => Ok(response),
                Either::Right(_) => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "FakeNifty: connection reset (TokenFault::Reset)",
                )),
            }
        })
    }
}
