//! Worker discovery: a static list, plus DNS names re-resolved periodically (a Kubernetes
//! headless Service answers with one A record per ready pod).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Pool;

/// A DNS name to resolve into worker endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// `host:port`.
    pub host_port: String,
    /// "http" or "https".
    pub scheme: String,
}

impl DnsTarget {
    /// Parses `host:port` or `dns:///host:port` (scheme from `tls`).
    pub fn parse(s: &str, tls: bool) -> Result<Self, String> {
        let hp = s.trim_start_matches("dns:///").trim_start_matches("dns://");
        let (host, port) = hp.rsplit_once(':').ok_or_else(|| format!("worker DNS target `{s}` must be host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("worker DNS target `{s}` must be host:port"));
        }
        Ok(DnsTarget { host_port: hp.to_string(), scheme: if tls { "https" } else { "http" }.into() })
    }
}

/// Normalises a static worker address into an endpoint URI.
pub fn endpoint_uri(s: &str, tls: bool) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else {
        format!("{}://{s}", if tls { "https" } else { "http" })
    }
}

/// Resolves every target now and every `period`, adding new addresses to the pool and
/// removing the ones that disappeared (static workers are never touched).
pub async fn run_dns(pool: Arc<Pool>, targets: Vec<DnsTarget>, period: Duration) {
    let mut known: HashSet<String> = HashSet::new();
    loop {
        let mut seen = HashSet::new();
        let mut all_ok = true;
        for t in &targets {
            match tokio::net::lookup_host(&t.host_port).await {
                Ok(addrs) => {
                    for a in addrs {
                        seen.insert(format!("{}://{a}", t.scheme));
                    }
                }
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(target = %t.host_port, error = %e, "DNS resolution failed; keeping the previous workers");
                }
            }
        }
        for ep in seen.difference(&known) {
            if let Err(e) = pool.add(ep) {
                tracing::warn!(worker = %ep, error = %e, "cannot add worker");
            }
        }
        // A failed lookup must not empty the pool: only prune after a full success.
        if all_ok {
            for ep in known.difference(&seen) {
                pool.remove(ep);
            }
            known = seen;
        } else {
            known.extend(seen);
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(DnsTarget::parse("dns:///w.ns.svc:50061", false).unwrap().host_port, "w.ns.svc:50061");
        assert_eq!(DnsTarget::parse("w:1", true).unwrap().scheme, "https");
        assert!(DnsTarget::parse("nohost", false).is_err());
        assert!(DnsTarget::parse("h:notaport", false).is_err());
        assert_eq!(endpoint_uri("10.0.0.1:5", false), "http://10.0.0.1:5");
        assert_eq!(endpoint_uri("https://x:5", false), "https://x:5");
    }
}
