//! Optional API keys: with keys configured, every TextGeneration call needs
//! `authorization: Bearer <key>`. Compared in constant time.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::errors::GatewayError;

#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
}

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> Self {
        ApiKeys { keys: Arc::new(keys.into_iter().filter(|k| !k.is_empty()).map(String::into_bytes).collect()) }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Check every key without short-circuiting on the first byte difference.
        self.keys.iter().fold(false, |ok, k| ok | constant_time_eq(k, presented))
    }

    /// The tonic interceptor.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            return Ok(req);
        }
        let token =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match token {
            Some(t) if self.accepts(t.as_bytes()) => Ok(req),
            _ => Err(GatewayError::Unauthenticated.into()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap_or_else(|_| unreachable!()));
        }
        r
    }

    #[test]
    fn keys_on_and_off() {
        let off = ApiKeys::new(vec![]);
        assert!(off.check(req(None)).is_ok());
        let on = ApiKeys::new(vec!["s3cret".into(), "other".into()]);
        assert!(on.check(req(Some("Bearer s3cret"))).is_ok());
        assert!(on.check(req(Some("Bearer other"))).is_ok());
        assert_eq!(on.check(req(Some("Bearer wrong"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(on.check(req(Some("s3cret"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(on.check(req(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
