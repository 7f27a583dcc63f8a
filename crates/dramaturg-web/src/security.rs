//! Who may look (authentication) and which `POST`s are the dashboard's own
//! (CSRF protection).

use std::fmt;

use axum::http::{header, HeaderMap, Method, StatusCode};
use base64::Engine;
use subtle::ConstantTimeEq;

/// What the dashboard asks of every request ([`Dashboard::auth`](crate::Dashboard::auth)).
///
/// An empty token or password lets nobody in (every request gets 401):
/// an unset environment variable must not open the dashboard to a blank
/// password. Its `Debug` output hides the secrets.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>`, or HTTP basic auth with any user
    /// name and the token as password (what a browser's login prompt sends).
    Token(String),
    /// HTTP basic auth with this user name and password.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl Auth {
    /// A token ([`Auth::Token`]).
    pub fn token(token: impl Into<String>) -> Self {
        Self::Token(token.into())
    }

    /// A user and password ([`Auth::Basic`]).
    pub fn basic(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic { user: user.into(), password: password.into() }
    }

    /// Whether `headers` carry these credentials (never, for an empty
    /// secret).
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let secret = match self {
            Self::Token(token) => token,
            Self::Basic { password, .. } => password,
        };
        if secret.is_empty() {
            return false;
        }
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return matches!(self, Self::Token(token) if same(credentials, token));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        else {
            return false;
        };
        let (given_user, given_password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        match self {
            Self::Token(token) => same(given_password, token),
            // Both compared, whatever the first gives.
            Self::Basic { user, password } => same(given_user, user) & same(given_password, password),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Auth::Token(***)"),
            Self::Basic { user, .. } => write!(f, "Auth::Basic {{ user: {user:?}, password: *** }}"),
        }
    }
}

/// `a == b` in a time that does not tell where they differ.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The token every form of one dashboard carries: 32 random bytes in hex,
/// new for each [`Dashboard::router`](crate::Dashboard::router).
#[derive(Clone)]
pub(crate) struct CsrfToken(String);

impl CsrfToken {
    pub(crate) fn new() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a `POST` may act: it carries this token in its form, and
    /// the browser does not say it comes from another site.
    pub(crate) fn check(&self, headers: &HeaderMap, given: Option<&str>) -> Result<(), &'static str> {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site == Some("cross-site") {
            return Err("refused: the request comes from another site");
        }
        match given {
            Some(given) if same(given, &self.0) => Ok(()),
            Some(_) => Err("refused: the form's CSRF token is wrong (reload the page)"),
            None => Err("refused: the form carries no CSRF token"),
        }
    }
}

impl fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CsrfToken(***)")
    }
}

/// The answer to a request without the right credentials: 401 with a
/// basic-auth challenge, so that browsers ask.
pub(crate) fn unauthorized() -> (StatusCode, [(header::HeaderName, &'static str); 1], &'static str) {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"dramaturg\", charset=\"UTF-8\"")],
        "authentication required\n",
    )
}

/// Whether `method` changes state (everything but reads).
pub(crate) fn is_action(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::Auth;

    fn with(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn an_empty_secret_lets_nobody_in() {
        // "x:" and "" in base64: a blank password, as a browser's prompt sends it.
        for request in [with("Bearer "), with("Basic eDo="), with("Basic "), HeaderMap::new()] {
            assert!(!Auth::token("").allows(&request), "{request:?}");
            assert!(!Auth::basic("x", "").allows(&request), "{request:?}");
        }
        assert!(Auth::token("s3cret").allows(&with("Bearer s3cret")));
        assert!(!Auth::token("s3cret").allows(&with("Bearer ")));
    }
}
