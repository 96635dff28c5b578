//! Bearer-token auth for mutating endpoints. The token is a systemd credential
//! (`LoadCredential=api-token:/etc/homelab/api-token`); GET endpoints stay open.

use super::{ApiError, Request};
use anyhow::Context;
use std::path::PathBuf;

/// Name of the credential the units load the token as.
pub const CREDENTIAL: &str = "api-token";
/// Where a developer running a service by hand can point at a token file instead.
pub const TOKEN_FILE_ENV: &str = "HOMELAB_API_TOKEN_FILE";
const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone)]
pub enum Auth {
    /// Switched off explicitly in the configuration.
    Disabled,
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Disabled => "Auth::Disabled",
            Auth::Token(_) => "Auth::Token(<redacted>)",
        })
    }
}

impl Auth {
    /// The token from the credential (or `HOMELAB_API_TOKEN_FILE`); an error when auth is on and
    /// there is none, so a misconfigured service fails at start instead of accepting anyone.
    pub fn load(enabled: bool) -> anyhow::Result<Auth> {
        if !enabled {
            crate::log_warn!(
                "authentication is switched off in the configuration: anyone who can reach the port may change state"
            );
            return Ok(Auth::Disabled);
        }
        let path = token_path().context(
            "no API token: the unit must have LoadCredential=api-token:/etc/homelab/api-token \
             (or set HOMELAB_API_TOKEN_FILE when running by hand)",
        )?;
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the API token {}", path.display()))?;
        Auth::from_token(token.trim()).with_context(|| format!("API token {}", path.display()))
    }

    pub fn from_token(token: &str) -> anyhow::Result<Auth> {
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            anyhow::bail!("the token must be at least {MIN_TOKEN_LEN} characters without spaces");
        }
        Ok(Auth::Token(token.to_string()))
    }

    pub fn enabled(&self) -> bool {
        matches!(self, Auth::Token(_))
    }

    /// Ok when the request carries the right `Authorization: Bearer` token (or auth is off).
    pub fn check(&self, req: &Request) -> Result<(), ApiError> {
        let Auth::Token(expected) = self else {
            return Ok(());
        };
        let unauthorized = |msg: &str| {
            ApiError::new(401, msg)
                .with_header("WWW-Authenticate", "Bearer realm=\"homelab\"".to_string())
        };
        let Some(value) = req.header("authorization") else {
            return Err(unauthorized(
                "authentication required: send the header \"Authorization: Bearer <token>\" (the token is in /etc/homelab/api-token)",
            ));
        };
        let given = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(unauthorized(
                "the bearer token is wrong: use the one in /etc/homelab/api-token",
            ))
        }
    }
}

fn token_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = PathBuf::from(dir).join(CREDENTIAL);
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os(TOKEN_FILE_ENV).map(PathBuf::from)
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn req(auth: Option<&str>) -> Request {
        let r = Request::new(Method::Post, "/x");
        match auth {
            Some(a) => r.with_header("Authorization", a),
            None => r,
        }
    }

    #[test]
    fn bearer_token_is_required_and_compared() {
        let auth = Auth::from_token("0123456789abcdef0123").unwrap();
        assert!(
            auth.check(&req(Some("Bearer 0123456789abcdef0123")))
                .is_ok()
        );
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("0123456789abcdef0123"),
            Some("Bearer "),
            Some("Bearer 0123456789abcdef012"),
        ] {
            let e = auth.check(&req(bad)).unwrap_err();
            assert_eq!(e.status, 401, "{bad:?}");
            assert_eq!(e.headers[0].0, "WWW-Authenticate");
        }
        assert!(Auth::Disabled.check(&req(None)).is_ok());
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(Auth::from_token("short").is_err());
        assert!(Auth::from_token("0123456789 abcdef0123").is_err());
        assert!(
            format!("{:?}", Auth::from_token("0123456789abcdef0123").unwrap()).contains("redacted")
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
