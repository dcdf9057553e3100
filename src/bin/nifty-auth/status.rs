//! `nifty-auth status`: what the profile holds, never a token or secret.

use std::time::SystemTime;

use serde_json::json;

use crate::failure::Failure;
use crate::profile::{unix_seconds, Profile, MIN_VALIDITY};
use crate::text::printable;

pub(crate) async fn status(profile: &Profile, as_json: bool) -> Result<(), Failure> {
    let saved = profile.load_client()?;
    let tokens = profile
        .file_store()
        .load()
        .await
        .map_err(|e| Failure::store("cannot read the profile's tokens", e))?;
    let now = SystemTime::now();
    let expires_at = tokens.as_ref().and_then(|t| t.expires_at());
    let expires_in = expires_at.map(|at| match at.duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    });
    let has_refresh_token = tokens.as_ref().is_some_and(|t| t.refresh_token().is_some());
    let expired = expires_in.is_some_and(|left| left <= 0);
    let due = expires_in.is_some_and(|left| left <= MIN_VALIDITY.as_secs() as i64);
    // Without a refresh token (or without tokens), only a new login helps. A revoked grant shows
    // only at the next refresh (`token` then exits 3).
    let reauthorization_required = tokens.is_none() || (due && !has_refresh_token);
    let client_id = std::env::var("NIFTY_CLIENT_ID")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| saved.as_ref().map(|c| c.client_id.clone()));
    // The token endpoint's text; a scope token is printable ASCII (RFC 6749 section 3.3), so
    // nothing of a valid scope is lost.
    let scope = tokens
        .as_ref()
        .and_then(|t| t.scope().map(|s| printable(s).into_owned()));

    if as_json {
        let value = json!({
            "profile": profile.name,
            "store": profile.tokens_path.display().to_string(),
            "client_id": client_id,
            "logged_in": tokens.is_some(),
            "expires_at": expires_at.map(rfc3339),
            "expires_at_unix": expires_at.map(unix_seconds),
            "expires_in_seconds": expires_in,
            "expired": expired,
            "scope": scope,
            "has_refresh_token": has_refresh_token,
            "reauthorization_required": reauthorization_required,
            "token_url": profile.token_url(saved.as_ref()),
            "api_url": profile.api_url(saved.as_ref()),
        });
        println!("{value:#}");
        return Ok(());
    }
    println!("profile:          {}", profile.name);
    println!("store:            {}", profile.tokens_path.display());
    println!("client id:        {}", client_id.as_deref().unwrap_or("-"));
    if tokens.is_none() {
        println!("logged in:        no (run `{}`)", profile.login_command());
        return Ok(());
    }
    match (expires_at, expires_in) {
        (Some(at), Some(left)) => {
            println!("expires:          {} ({})", rfc3339(at), relative(left))
        }
        _ => println!("expires:          unknown (no expires_in from Nifty)"),
    }
    println!("scope:            {}", scope.as_deref().unwrap_or("-"));
    println!(
        "refresh token:    {}",
        if has_refresh_token { "present" } else { "none" }
    );
    if reauthorization_required {
        println!(
            "re-authorization: required (run `{}`)",
            profile.login_command()
        );
    } else {
        println!("re-authorization: not needed");
    }
    Ok(())
}

/// "in 41 min", "2 h 5 min ago".
fn relative(seconds: i64) -> String {
    let abs = seconds.unsigned_abs();
    let span = if abs < 60 {
        format!("{abs} s")
    } else if abs < 3600 {
        format!("{} min", abs / 60)
    } else {
        format!("{} h {} min", abs / 3600, abs / 60 % 60)
    };
    if seconds >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC), from the days-to-civil algorithm of H. Hinnant.
fn rfc3339(at: SystemTime) -> String {
    let secs = unix_seconds(at);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(rfc3339(at), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn relative_says_in_or_ago() {
        assert_eq!(relative(2460), "in 41 min");
        assert_eq!(relative(-7500), "2 h 5 min ago");
        assert_eq!(relative(30), "in 30 s");
    }
}
