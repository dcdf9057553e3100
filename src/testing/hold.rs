//! Answers held back until the test releases them: [`ApiHold`] (one API answer) and [`TokenHold`]
//! (every token answer).

use std::fmt;

use tokio::sync::{oneshot, watch};

/// An API answer held back by [`FakeNifty::hold_next_api_answer`](super::FakeNifty::hold_next_api_answer).
///
/// Dropping it releases the answer too.
pub struct ApiHold {
    arrived: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

/// The fake's side of a hold.
pub(super) struct Held {
    arrived: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

pub(super) fn pair() -> (Held, ApiHold) {
    let (arrived_tx, arrived_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    (
        Held {
            arrived: arrived_tx,
            release: release_rx,
        },
        ApiHold {
            arrived: Some(arrived_rx),
            release: Some(release_tx),
        },
    )
}

impl Held {
    /// Says the request arrived, then waits for the release (or the [`ApiHold`]'s drop).
    pub(super) async fn wait(self) {
        let _ = self.arrived.send(());
        let _ = self.release.await;
    }
}

impl ApiHold {
    /// Waits until the held request has arrived at the fake (its head and body read). Returns at
    /// once if it already has; returns when the fake stops otherwise.
    pub async fn arrived(&mut self) {
        if let Some(arrived) = self.arrived.take() {
            let _ = arrived.await;
        }
    }

    /// Lets the fake answer the held request.
    pub fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

impl fmt::Debug for ApiHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiHold")
            .field("arrived", &self.arrived.is_none())
            .field("released", &self.release.is_none())
            .finish()
    }
}

/// Token answers held back by
/// [`FakeNifty::hold_token_answers`](super::FakeNifty::hold_token_answers) until this is released
/// or dropped.
#[must_use = "dropping the hold releases it at once"]
pub struct TokenHold {
    /// The fake's switch: `true` while token answers are held.
    pub(super) held: watch::Sender<bool>,
}

impl TokenHold {
    /// Lets the held token requests (and every later one) be answered.
    pub fn release(self) {}
}

impl Drop for TokenHold {
    fn drop(&mut self) {
        self.held.send_replace(false);
    }
}

impl fmt::Debug for TokenHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHold")
    }
}
