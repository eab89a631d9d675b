//! The upstream policy every request of every pack goes through (`[upstream]` in the config):
//! the networks an upstream may be in, the largest body read, the pages one read may follow and the
//! longest `Retry-After` obeyed; with the pieces of the shared `reqwest::Client` that enforce it
//! while connecting: the resolver that refuses non-public addresses ([`GuardedResolver`], so a name
//! that resolves, or later re-resolves, to `169.254.169.254` is refused as the connection is made)
//! and the redirect policy that follows only redirects on the request's own origin.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use syncfleet_shared::config::UpstreamConfig;

/// Redirects one request follows, each on the request's own origin; another one, or one to another
/// origin, is not followed and its 3xx fails the request.
pub const MAX_REDIRECTS: usize = 5;

/// What every upstream request may do (`[upstream]`, [`UpstreamConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPolicy {
    /// Non-public networks an upstream may be in all the same (the sandbox and tests: loopback).
    pub allow_networks: Vec<ipnet::IpNet>,
    /// Largest answer body read; a larger one fails the request for good.
    pub max_body_bytes: u64,
    /// Most pages one read of one entity follows ([`super::Pages`]).
    pub max_pages: u64,
    /// Longest `Retry-After` waited for; a longer hint fails the request (transient, no cool-down).
    pub max_retry_after: Duration,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy::from_config(&UpstreamConfig::default())
    }
}

impl UpstreamPolicy {
    pub fn from_config(config: &UpstreamConfig) -> Self {
        UpstreamPolicy {
            allow_networks: config.networks(),
            max_body_bytes: config.max_body_bytes,
            max_pages: config.max_pages,
            max_retry_after: Duration::from_secs(config.max_retry_after_secs),
        }
    }

    /// `Ok` when an upstream may be at `ip`: a public address, or one in `allow_networks`.
    pub fn check(&self, ip: IpAddr) -> Result<(), NonPublicAddress> {
        let canonical = ip.to_canonical();
        let Some(kind) = non_public(canonical) else {
            return Ok(());
        };
        if self.allow_networks.iter().any(|n| n.contains(&ip) || n.contains(&canonical)) {
            return Ok(());
        }
        Err(NonPublicAddress { address: canonical, kind, host: None })
    }
}

/// An upstream address the policy refuses. Its text names the address and the setting that allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonPublicAddress {
    pub address: IpAddr,
    /// The kind of network: `loopback`, `private`, `link-local`, …
    pub kind: &'static str,
    /// The name that resolved to it, when one did.
    pub host: Option<String>,
}

impl fmt::Display for NonPublicAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream address {}", self.address)?;
        if let Some(host) = &self.host {
            write!(f, " (of {host})")?;
        }
        write!(f, " is in a non-public network ({}); allow it with upstream.allow_networks", self.kind)
    }
}

impl std::error::Error for NonPublicAddress {}

/// The kind of non-public network `ip` is in, or `None` for a public address. IPv4-mapped and
/// NAT64 / 6to4 addresses are judged by the IPv4 address they carry.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared address space (CGNAT)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "reserved",
        (198, 18..=19, _) => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    Some(match s {
        // IPv4-compatible (deprecated): never a real upstream.
        [0, 0, 0, 0, 0, 0, _, _] => "reserved",
        // NAT64: the IPv4 address it reaches decides.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return non_public_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "private",
        [0x100, 0, 0, 0, ..] => "reserved",
        // 6to4: the IPv4 address it carries decides.
        [0x2002, hi, lo, ..] => return non_public_v4(embedded(hi, lo)),
        [0x2001, 0, ..] | [0x2001, 0xdb8, ..] => "reserved",
        [x, ..] if x & 0xfe00 == 0xfc00 => "private",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "private",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// The resolver of the shared client: the system's (`getaddrinfo` through tokio), keeping only the
/// addresses the policy allows. A name whose addresses are all refused fails the connection with
/// [`NonPublicAddress`]. Since it runs for every new connection, a name that re-resolves to a
/// private address later (DNS rebinding) is refused then too. IP literals never reach a resolver:
/// the client checks them before sending.
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<UpstreamPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match refused {
                Some(mut e) if allowed.is_empty() => {
                    e.host = Some(host);
                    Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// Follows a redirect only to the origin the request was sent to (checked to be the integration's
/// before sending), at most [`MAX_REDIRECTS`] of them; otherwise stops, and the client fails the
/// request on the 3xx. reqwest keeps every header on a same-origin redirect, so credentials never
/// follow one elsewhere.
pub(super) fn redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let previous = attempt.previous();
        // The first of `previous` is the request itself.
        let same_origin = previous.first().is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && previous.len() <= MAX_REDIRECTS { attempt.follow() } else { attempt.stop() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_ranges_are_named() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private"),
            ("fc12::1", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:0a00:0001::1", "private"),
        ] {
            assert_eq!(non_public(ip(addr)), Some(kind), "{addr}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allowed_networks_open_non_public_addresses() {
        let policy = UpstreamPolicy::default();
        let e = policy.check(ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "upstream address 169.254.169.254 is in a non-public network (link-local); allow it with \
             upstream.allow_networks"
        );
        assert!(policy.check(ip("8.8.8.8")).is_ok());
        let config = UpstreamConfig { allow_networks: vec!["127.0.0.0/8".into(), "::1".into()], ..Default::default() };
        let policy = UpstreamPolicy::from_config(&config);
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.1")).is_ok(), "the mapped form of an allowed address");
        assert!(policy.check(ip("::1")).is_ok());
        assert!(policy.check(ip("10.0.0.1")).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_non_public_addresses() {
        let policy = Arc::new(UpstreamPolicy::default());
        let resolver = GuardedResolver { policy };
        let e = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("(of localhost) is in a non-public network (loopback)"), "{e}");
        let config = UpstreamConfig { allow_networks: vec!["127.0.0.0/8".into(), "::1".into()], ..Default::default() };
        let resolver = GuardedResolver { policy: Arc::new(UpstreamPolicy::from_config(&config)) };
        let found: Vec<_> = resolver.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty(), "{found:?}");
    }
}
