//! Optional bearer-token authentication for the Flight service.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The token of an `authorization` value `<scheme> <token>` whose scheme is
/// `Bearer` in any case (RFC 7235 §2.1: the scheme is case-insensitive; one
/// or more spaces follow it).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Checks `authorization: Bearer <token>` on every call when a token is
/// configured. Comparison takes the same time whatever the bytes; the token
/// is never logged.
pub fn interceptor(token: Option<String>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(expected) = &token else { return Ok(req) };
        let offered =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token).unwrap_or("");
        if bool::from(offered.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token (authorization: Bearer <LONGBOW_AUTH_TOKEN>)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        interceptor(Some("s3cret".into()))(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn token_is_required_when_configured() {
        assert_eq!(call(Some("Bearer s3cret")), Ok(()));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            assert_eq!(call(Some(&format!("{scheme} s3cret"))), Ok(()), "{scheme}: the scheme is case-insensitive");
        }
        assert_eq!(call(Some("Bearer   s3cret")), Ok(()), "1*SP after the scheme");
        assert_eq!(call(Some("Basic s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(Some("Bearers3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(Some("Bearer s3cret ")), Err(tonic::Code::Unauthenticated), "the token is compared exactly");
        assert_eq!(call(Some("Bearer s3cre")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(None), Err(tonic::Code::Unauthenticated));
        assert!(interceptor(None)(Request::new(())).is_ok());
    }
}
