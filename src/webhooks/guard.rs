//! The SSRF guard: endpoints may not point at loopback, private, link-local, unique-local,
//! multicast, unspecified or cloud-metadata addresses unless configuration allow-lists them.
//!
//! Checked twice: when an endpoint is registered (every address its host resolves to), and at
//! delivery time inside the HTTP client's resolver, so the address actually dialled is the one that
//! passed the check (a DNS answer that changes between the two cannot slip through).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::IpNet;

/// Host name → addresses. Injectable so tests can map a name to any address without real DNS.
pub type Resolver = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync,
>;

/// The system resolver (getaddrinfo through tokio).
pub fn system_resolver() -> Resolver {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error(
        "{host} resolves to {addr}, a {class} address, which webhooks may not target (SAGAD_WEBHOOK_ALLOW_NETS allow-lists networks)"
    )]
    Refused {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("cannot resolve {host}: {reason}")]
    Unresolvable { host: String, reason: String },
}

#[derive(Clone)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
    resolver: Resolver,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("allow", &self.allow).finish()
    }
}

impl Guard {
    pub fn new(allow: Vec<IpNet>, resolver: Resolver) -> Self {
        Self {
            allow: Arc::new(allow),
            resolver,
        }
    }

    /// `Err` with the reason when `addr` may not be dialled.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        let Some(class) = forbidden_class(addr) else {
            return Ok(());
        };
        let canonical = canonical(addr);
        if self
            .allow
            .iter()
            .any(|n| n.contains(&addr) || n.contains(&canonical))
        {
            return Ok(());
        }
        Err(GuardError::Refused {
            host: host.to_owned(),
            addr,
            class,
        })
    }

    /// Resolves `host` (or takes an IP literal) and checks every address; returns them all.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs =
            match bare.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (self.resolver)(bare.to_owned()).await.map_err(|e| {
                    GuardError::Unresolvable {
                        host: host.to_owned(),
                        reason: e.to_string(),
                    }
                })?,
            };
        if addrs.is_empty() {
            return Err(GuardError::Unresolvable {
                host: host.to_owned(),
                reason: "no addresses".into(),
            });
        }
        // One forbidden address refuses the host: a name that mixes public and internal answers
        // is exactly what a rebinding attacker serves.
        for a in &addrs {
            self.check_addr(host, *a)?;
        }
        Ok(addrs)
    }

    /// Checks a URL's host (used at registration and, for IP literals, before each attempt: the
    /// HTTP client does not consult its resolver for literals).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<Vec<IpAddr>, GuardError> {
        let host = url.host_str().unwrap_or_default();
        self.resolve(host).await
    }
}

/// The HTTP client's resolver: the names it dials are resolved and checked here, and only the
/// checked addresses are handed to the connector.
impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = Guard::resolve(&guard, &host).await?;
            let iter: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(iter)
        })
    }
}

/// IPv4-mapped and NAT64 IPv6 addresses stand for the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                    let o = v6.octets();
                    IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
                } else {
                    addr
                }
            }
        },
        v4 => v4,
    }
}

/// Why an address is not a public unicast one, or `None` if it is.
pub fn forbidden_class(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) || a == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud-metadata")
    } else if a.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_class(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
        Some("cloud-metadata")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if a.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn classifies_internal_addresses() {
        for (a, class) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.3.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud-metadata"),
            ("169.254.1.1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd12::1", "unique-local"),
            ("fd00:ec2::254", "cloud-metadata"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
        ] {
            assert_eq!(forbidden_class(ip(a)), Some(class), "{a}");
        }
        for a in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert_eq!(forbidden_class(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn the_allow_list_permits_listed_networks_only() {
        let g = Guard::new(
            vec!["127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())],
            system_resolver(),
        );
        assert!(g.check_addr("h", ip("127.0.0.1")).is_ok());
        assert!(g.check_addr("h", ip("::ffff:127.0.0.1")).is_ok());
        assert!(g.check_addr("h", ip("::1")).is_err());
        assert!(g.check_addr("h", ip("10.0.0.1")).is_err());
    }
}
