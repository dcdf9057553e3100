//! The fake's grant model, without HTTP: grants, their one-time codes (with PKCE), refresh tokens
//! (rotation and replay detection) and access tokens (expiry on the tokio clock, revocation).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Identifies one grant (one user's consent: its codes, refresh tokens and access tokens) of a
/// [`FakeNifty`](super::FakeNifty).
///
/// The API's `GET /api/v1.0/users/me` answers it as the JSON number `"grant"` ([`GrantKey::get`]);
/// [`FakeNifty::grant_of_bearer`](super::FakeNifty::grant_of_bearer) maps a token to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey(pub(super) u64);

impl GrantKey {
    /// The number of this grant (1 for the first one a fake started, then 2, …), as the API's
    /// `users/me` answer shows it.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a successful `authorization_code` or `refresh_token` request is given.
pub(super) struct Issued {
    pub(super) access_token: String,
    /// `None` when the refresh kept the old refresh token (rotation off).
    pub(super) refresh_token: Option<String>,
    /// The `expires_in`, if any.
    pub(super) lifetime: Option<Duration>,
}

/// Why a grant request gets `invalid_grant`: the `error_description`.
pub(super) struct Rejected(pub(super) &'static str);

/// What the fake counts per grant (see [`super::FakeGrant`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GrantCounts {
    pub(super) token_calls: usize,
    pub(super) token_calls_in_flight: usize,
    pub(super) max_token_calls_in_flight: usize,
    pub(super) invalid_grants: usize,
    pub(super) api_calls: usize,
    pub(super) unauthorized: usize,
}

struct GrantState {
    /// The current refresh token, once one was issued.
    refresh_token: Option<String>,
    revoked: bool,
    counts: GrantCounts,
}

struct CodeState {
    grant: GrantKey,
    redirect_uri: String,
    used: bool,
    /// The PKCE `code_challenge` (S256) of the authorize request, if it sent one.
    challenge: Option<String>,
}

struct AccessState {
    grant: Option<GrantKey>,
    expires_at: Option<Instant>,
    revoked: bool,
}

pub(super) struct Model {
    pub(super) token_lifetime: Option<Duration>,
    pub(super) rotation: bool,
    replay_revokes_grant: bool,
    next_grant: u64,
    next_token: u64,
    grants: HashMap<GrantKey, GrantState>,
    codes: HashMap<String, CodeState>,
    /// Every refresh token ever issued (current or retired) → its grant.
    refresh_tokens: HashMap<String, GrantKey>,
    access_tokens: HashMap<String, AccessState>,
    /// The grant most recently issued a refresh token or presented to the token endpoint.
    pub(super) last_grant: Option<GrantKey>,
    pub(super) replays: usize,
}

impl Model {
    pub(super) fn new(
        token_lifetime: Option<Duration>,
        rotation: bool,
        replay_revokes_grant: bool,
    ) -> Self {
        Self {
            token_lifetime,
            rotation,
            replay_revokes_grant,
            next_grant: 1,
            next_token: 1,
            grants: HashMap::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            last_grant: None,
            replays: 0,
        }
    }

    pub(super) fn new_grant(&mut self) -> GrantKey {
        let key = GrantKey(self.next_grant);
        self.next_grant += 1;
        self.grants.insert(
            key,
            GrantState {
                refresh_token: None,
                revoked: false,
                counts: GrantCounts::default(),
            },
        );
        key
    }

    /// A fresh, unguessable-enough id: `{kind}-{label}-{serial}-{16 random hex digits}`. The
    /// serial makes ids unique; the random part keeps two fakes' ids apart.
    fn mint(&mut self, kind: &str, label: &dyn std::fmt::Display) -> String {
        let serial = self.next_token;
        self.next_token += 1;
        format!("{kind}-{label}-{serial}-{:016x}", fastrand::u64(..))
    }

    /// A one-time code of `grant`, bound to `redirect_uri` and, with PKCE, to `challenge`.
    pub(super) fn issue_code(
        &mut self,
        grant: GrantKey,
        redirect_uri: &str,
        challenge: Option<String>,
    ) -> String {
        let code = self.mint("code", &grant);
        self.codes.insert(
            code.clone(),
            CodeState {
                grant,
                redirect_uri: redirect_uri.to_owned(),
                used: false,
                challenge,
            },
        );
        code
    }

    /// Issues a refresh token for `grant` and makes it the grant's current one (an older one is
    /// retired: presenting it again is a replay).
    pub(super) fn issue_refresh_token(&mut self, grant: GrantKey) -> String {
        let token = self.mint("rt", &grant);
        self.refresh_tokens.insert(token.clone(), grant);
        if let Some(state) = self.grants.get_mut(&grant) {
            state.refresh_token = Some(token.clone());
        }
        token
    }

    /// An access token of `grant` (or of no grant), expiring after `lifetime` (`None`: never).
    pub(super) fn issue_access_token(
        &mut self,
        grant: Option<GrantKey>,
        lifetime: Option<Duration>,
    ) -> String {
        let token = match grant {
            Some(grant) => self.mint("at", &grant),
            None => self.mint("at", &"s"),
        };
        self.access_tokens.insert(
            token.clone(),
            AccessState {
                grant,
                expires_at: lifetime.and_then(|l| Instant::now().checked_add(l)),
                revoked: false,
            },
        );
        token
    }

    /// The `authorization_code` grant.
    pub(super) fn exchange_code(
        &mut self,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
    ) -> Result<Issued, Rejected> {
        let grant = match self.codes.get_mut(code) {
            None => return Err(Rejected("unknown authorization code")),
            Some(state) if state.used => return Err(Rejected("authorization code already used")),
            Some(state) if redirect_uri != Some(state.redirect_uri.as_str()) => {
                return Err(Rejected(
                    "redirect_uri does not match the authorization request",
                ))
            }
            Some(state)
                if state.challenge.as_ref().is_some_and(|challenge| {
                    code_verifier.map(crate::authorize::s256_challenge).as_ref() != Some(challenge)
                }) =>
            {
                return Err(Rejected(
                    "PKCE code_verifier does not match the code_challenge",
                ))
            }
            Some(state) => {
                state.used = true;
                state.grant
            }
        };
        if !self.grant_live(grant) {
            return Err(Rejected("grant revoked"));
        }
        let refresh_token = self.issue_refresh_token(grant);
        Ok(self.success(grant, Some(refresh_token)))
    }

    /// The `refresh_token` grant, with rotation and replay detection.
    pub(super) fn refresh(&mut self, refresh_token: &str) -> Result<Issued, Rejected> {
        let Some(&grant) = self.refresh_tokens.get(refresh_token) else {
            return Err(Rejected("unknown refresh token"));
        };
        self.last_grant = Some(grant);
        let Some(state) = self.grants.get_mut(&grant) else {
            return Err(Rejected("grant revoked"));
        };
        if state.revoked {
            return Err(Rejected("grant revoked"));
        }
        if state.refresh_token.as_deref() != Some(refresh_token) {
            self.replays += 1;
            if self.replay_revokes_grant {
                state.revoked = true;
            }
            return Err(Rejected("refresh token already used"));
        }
        let new_refresh_token = self.rotation.then(|| self.issue_refresh_token(grant));
        Ok(self.success(grant, new_refresh_token))
    }

    fn success(&mut self, grant: GrantKey, refresh_token: Option<String>) -> Issued {
        let lifetime = self.token_lifetime;
        let access_token = self.issue_access_token(Some(grant), lifetime);
        self.last_grant = Some(grant);
        Issued {
            access_token,
            refresh_token,
            lifetime,
        }
    }

    /// The grant a token request is about: the grant of its `code` or `refresh_token` (current or
    /// retired), if the fake issued it.
    pub(super) fn grant_of_request(
        &self,
        code: Option<&str>,
        refresh_token: Option<&str>,
    ) -> Option<GrantKey> {
        code.and_then(|code| self.codes.get(code).map(|c| c.grant))
            .or_else(|| refresh_token.and_then(|rt| self.refresh_tokens.get(rt).copied()))
    }

    /// The grant `access_token` was issued for, whether or not it is still valid.
    pub(super) fn grant_of_access_token(&self, access_token: &str) -> Option<GrantKey> {
        self.access_tokens.get(access_token)?.grant
    }

    fn grant_live(&self, grant: GrantKey) -> bool {
        self.grants.get(&grant).is_some_and(|g| !g.revoked)
    }

    pub(super) fn access_token_valid(&self, token: &str) -> bool {
        let Some(access) = self.access_tokens.get(token) else {
            return false;
        };
        !access.revoked
            && access.grant.is_none_or(|g| self.grant_live(g))
            && access.expires_at.is_none_or(|at| Instant::now() < at)
    }

    /// How long ago `token` expired, if it is a known, unrevoked token of a live grant (or of no
    /// grant) that has expired.
    pub(super) fn access_token_overdue(&self, token: &str) -> Option<Duration> {
        let access = self.access_tokens.get(token)?;
        let expires_at = access.expires_at?;
        let now = Instant::now();
        (!access.revoked && access.grant.is_none_or(|g| self.grant_live(g)) && now >= expires_at)
            .then(|| now - expires_at)
    }

    /// Revokes the access tokens of `grant`, or every access token if `None`.
    pub(super) fn revoke_access_tokens(&mut self, grant: Option<GrantKey>) {
        for token in self.access_tokens.values_mut() {
            if grant.is_none_or(|g| token.grant == Some(g)) {
                token.revoked = true;
            }
        }
    }

    /// Revokes the whole grant: its refresh tokens and access tokens stop working.
    pub(super) fn revoke_grant(&mut self, grant: GrantKey) {
        if let Some(state) = self.grants.get_mut(&grant) {
            state.revoked = true;
        }
    }

    pub(super) fn grant_revoked(&self, grant: GrantKey) -> bool {
        !self.grant_live(grant)
    }

    pub(super) fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.refresh_tokens
            .get(refresh_token)
            .is_some_and(|&grant| {
                self.current_refresh_token(grant).as_deref() == Some(refresh_token)
            })
    }

    /// The current refresh token of `grant`; `None` if it has none or it is revoked.
    pub(super) fn current_refresh_token(&self, grant: GrantKey) -> Option<String> {
        let state = self.grants.get(&grant)?;
        if state.revoked {
            return None;
        }
        state.refresh_token.clone()
    }

    pub(super) fn counts(&self, grant: GrantKey) -> GrantCounts {
        self.grants
            .get(&grant)
            .map(|g| g.counts)
            .unwrap_or_default()
    }

    /// Updates the counts of `grant`, if there is one and the fake knows it.
    pub(super) fn count(&mut self, grant: Option<GrantKey>, update: impl FnOnce(&mut GrantCounts)) {
        if let Some(state) = grant.and_then(|g| self.grants.get_mut(&g)) {
            update(&mut state.counts);
        }
    }
}
