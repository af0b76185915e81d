//! The SSRF guard: endpoints may only point at public unicast addresses unless configuration
//! allow-lists a network. Refused: every block of the IANA special-purpose address registries
//! for IPv4 and IPv6 (loopback, private, shared, link-local, unique-local, documentation,
//! benchmarking, protocol assignments, …), multicast, reserved space and cloud-metadata
//! addresses. An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-translated,
//! IPv4-compatible, NAT64, 6to4, Teredo) is judged by the IPv4 address it carries.
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
        "{host} resolves to {addr}, {class}, which webhooks may not target (SAGAD_WEBHOOK_ALLOW_NETS allow-lists networks)"
    )]
    Refused {
        host: String,
        addr: IpAddr,
        class: Forbidden,
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

/// IPv4-mapped, IPv4-translated and NAT64 IPv6 addresses stand for the IPv4 address they
/// carry (for the allow-list: dialling them reaches that IPv4 address).
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some((v4, Form::Mapped | Form::Translated | Form::Nat64)) => IpAddr::V4(v4),
            _ => addr,
        },
        v4 => v4,
    }
}

/// Why an address may not be dialled: what it is, and for an IPv6 address that embeds an IPv4
/// one, how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    /// A noun phrase with its article: "a loopback address".
    pub class: &'static str,
    /// The IPv4 address an IPv6 address carries and the form that carries it.
    pub embedded: Option<(Ipv4Addr, &'static str)>,
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.embedded {
            None => f.write_str(self.class),
            Some((v4, form)) => write!(f, "{form} address embedding {v4}, {}", self.class),
        }
    }
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `::ffff:a.b.c.d` (RFC 4291).
    Mapped,
    /// `::ffff:0:a.b.c.d` (SIIT, RFC 7915).
    Translated,
    /// `::a.b.c.d`, deprecated (RFC 4291).
    Compatible,
    /// `64:ff9b::a.b.c.d` (RFC 6052).
    Nat64,
    /// `2002:aabb:ccdd::/48` (RFC 3056).
    SixToFour,
    /// `2001:0:<server>:<flags>:<port>:<client>`, the client address bit-inverted (RFC 4380).
    TeredoClient,
    TeredoServer,
}

impl Form {
    fn phrase(self) -> &'static str {
        match self {
            Form::Mapped => "an IPv4-mapped",
            Form::Translated => "an IPv4-translated",
            Form::Compatible => "an IPv4-compatible",
            Form::Nat64 => "a NAT64",
            Form::SixToFour => "a 6to4",
            Form::TeredoClient => "a Teredo (client)",
            Form::TeredoServer => "a Teredo (server)",
        }
    }
}

fn v4_of(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms above (the Teredo
/// server is reported by [`teredo_server`]).
fn embedded_v4(a: Ipv6Addr) -> Option<(Ipv4Addr, Form)> {
    let s = a.segments();
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some((v4_of(s[6], s[7]), Form::Mapped));
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some((v4_of(s[6], s[7]), Form::Translated));
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some((v4_of(s[6], s[7]), Form::Compatible));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((v4_of(s[6], s[7]), Form::Nat64));
    }
    if s[0] == 0x2002 {
        return Some((v4_of(s[1], s[2]), Form::SixToFour));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some((v4_of(!s[6], !s[7]), Form::TeredoClient));
    }
    None
}

fn teredo_server(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    (s[0] == 0x2001 && s[1] == 0).then(|| v4_of(s[2], s[3]))
}

/// The IANA IPv4 Special-Purpose Address Registry, plus multicast and cloud metadata; the first
/// match names the address.
const V4_SPECIAL: &[([u8; 4], u8, &str)] = &[
    ([169, 254, 169, 254], 32, "a cloud-metadata address"),
    ([100, 100, 100, 200], 32, "a cloud-metadata address"),
    ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
    ([10, 0, 0, 0], 8, "a private address"),
    ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
    ([127, 0, 0, 0], 8, "a loopback address"),
    ([169, 254, 0, 0], 16, "a link-local address"),
    ([172, 16, 0, 0], 12, "a private address"),
    ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
    ([192, 0, 2, 0], 24, "a documentation (TEST-NET-1) address"),
    ([192, 31, 196, 0], 24, "an AS112 address"),
    ([192, 52, 193, 0], 24, "an AMT address"),
    ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
    ([192, 168, 0, 0], 16, "a private address"),
    ([192, 175, 48, 0], 24, "an AS112 address"),
    ([198, 18, 0, 0], 15, "a benchmarking address"),
    (
        [198, 51, 100, 0],
        24,
        "a documentation (TEST-NET-2) address",
    ),
    ([203, 0, 113, 0], 24, "a documentation (TEST-NET-3) address"),
    ([224, 0, 0, 0], 4, "a multicast address"),
    ([255, 255, 255, 255], 32, "a broadcast address"),
    ([240, 0, 0, 0], 4, "a reserved address"),
];

/// The IANA IPv6 Special-Purpose Address Registry, plus multicast, site-local and cloud
/// metadata. The forms that embed an IPv4 address are decoded before this table is consulted.
const V6_SPECIAL: &[([u16; 8], u8, &str)] = &[
    (
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254],
        128,
        "a cloud-metadata address",
    ),
    ([0; 8], 128, "an unspecified address"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "a loopback address"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "a NAT64 local-use address",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
    ([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "a dummy-prefix address"),
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "an IETF protocol assignment address",
    ),
    (
        [0x2001, 0x0db8, 0, 0, 0, 0, 0, 0],
        32,
        "a documentation address",
    ),
    (
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "an AS112 address",
    ),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "an SRv6 SID address"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique-local address"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address"),
];

fn v4_in(a: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(a: Ipv6Addr, net: [u16; 8], len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(a) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn v4_class(a: Ipv4Addr) -> Option<&'static str> {
    V4_SPECIAL
        .iter()
        .find(|(net, len, _)| v4_in(a, *net, *len))
        .map(|(_, _, class)| *class)
}

/// Why an address is not a public unicast one, or `None` if it is.
pub fn forbidden_class(addr: IpAddr) -> Option<Forbidden> {
    let v6 = match addr {
        IpAddr::V4(v4) => {
            return v4_class(v4).map(|class| Forbidden {
                class,
                embedded: None,
            });
        }
        IpAddr::V6(v6) => v6,
    };
    // An address that carries an IPv4 one is what that address is. The deprecated
    // IPv4-compatible form is refused whatever it carries; 6to4 and Teredo go to a public relay
    // and on to the embedded address, so that must be public too (and a Teredo server).
    if let Some((v4, form)) = embedded_v4(v6) {
        if let Some(class) = v4_class(v4) {
            return Some(Forbidden {
                class,
                embedded: Some((v4, form.phrase())),
            });
        }
        if let Some(server) = teredo_server(v6)
            && let Some(class) = v4_class(server)
        {
            return Some(Forbidden {
                class,
                embedded: Some((server, Form::TeredoServer.phrase())),
            });
        }
        return (form == Form::Compatible).then_some(Forbidden {
            class: "a deprecated address form",
            embedded: Some((v4, form.phrase())),
        });
    }
    let class = V6_SPECIAL
        .iter()
        .find(|(net, len, _)| v6_in(v6, *net, *len))
        .map(|(_, _, class)| *class)
        .or_else(|| {
            // Global unicast is 2000::/3; the rest is unallocated.
            (v6.segments()[0] & 0xe000 != 0x2000).then_some("a reserved (unallocated) address")
        })?;
    Some(Forbidden {
        class,
        embedded: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Names for the table below: a public one, a rebinding one (public and private answers).
    fn fake_dns() -> Resolver {
        Arc::new(|host: String| {
            Box::pin(async move {
                match host.as_str() {
                    "localhost" => Ok(vec![ip("127.0.0.1"), ip("::1")]),
                    "public.example" => Ok(vec![ip("93.184.216.34")]),
                    "rebind.example" => Ok(vec![ip("93.184.216.34"), ip("10.1.2.3")]),
                    _ => Err(io::Error::other("no such host")),
                }
            })
        })
    }

    /// URL forms, each with the start of the reason it is refused (or `None`: accepted).
    const URL_FORMS: &[(&str, Option<&str>)] = &[
        // IPv4 in its many spellings (the URL parser normalises them all).
        ("http://127.0.0.1/", Some("a loopback")),
        ("http://127.1/", Some("a loopback")),
        ("http://2130706433/", Some("a loopback")),
        ("http://0x7f000001/", Some("a loopback")),
        ("http://0177.0.0.1/", Some("a loopback")),
        ("http://0/", Some("an unspecified")),
        ("http://0.0.0.0:8080/", Some("an unspecified")),
        ("http://localhost/", Some("a loopback")),
        ("http://rebind.example/", Some("a private")),
        ("http://10.0.0.1/", Some("a private")),
        ("http://172.31.255.255/", Some("a private")),
        ("http://192.168.0.1/", Some("a private")),
        ("http://100.64.0.1/", Some("a shared")),
        ("http://100.100.100.200/", Some("a cloud-metadata")),
        (
            "http://169.254.169.254/latest/meta-data/",
            Some("a cloud-metadata"),
        ),
        ("http://169.254.0.1/", Some("a link-local")),
        ("http://192.0.0.1/", Some("an IETF protocol assignment")),
        ("http://192.0.0.170/", Some("an IETF protocol assignment")),
        ("http://192.0.2.10/", Some("a documentation")),
        ("http://198.51.100.7/", Some("a documentation")),
        ("http://203.0.113.9/", Some("a documentation")),
        ("http://198.18.0.1/", Some("a benchmarking")),
        ("http://198.19.255.254/", Some("a benchmarking")),
        ("http://192.88.99.1/", Some("a 6to4 relay")),
        ("http://192.31.196.1/", Some("an AS112")),
        ("http://224.0.0.1/", Some("a multicast")),
        ("http://239.255.255.250/", Some("a multicast")),
        ("http://240.0.0.1/", Some("a reserved")),
        ("http://255.255.255.255/", Some("a broadcast")),
        // IPv6.
        ("http://[::1]/", Some("a loopback")),
        ("http://[0:0:0:0:0:0:0:1]/", Some("a loopback")),
        ("http://[::]/", Some("an unspecified")),
        ("http://[fe80::1]/", Some("a link-local")),
        ("http://[fec0::1]/", Some("a site-local")),
        ("http://[fc00::1]/", Some("a unique-local")),
        ("http://[fd12:3456::1]/", Some("a unique-local")),
        ("http://[fd00:ec2::254]/", Some("a cloud-metadata")),
        ("http://[ff02::1]/", Some("a multicast")),
        ("http://[2001:db8::1]/", Some("a documentation")),
        ("http://[3fff::1]/", Some("a documentation")),
        ("http://[100::1]/", Some("a discard-only")),
        ("http://[2001:2::1]/", Some("an IETF protocol assignment")),
        ("http://[2001:10::1]/", Some("an IETF protocol assignment")),
        ("http://[2620:4f:8000::1]/", Some("an AS112")),
        ("http://[5f00::1]/", Some("an SRv6")),
        ("http://[4000::1]/", Some("a reserved")),
        // IPv6 carrying IPv4.
        (
            "http://[::ffff:127.0.0.1]/",
            Some("an IPv4-mapped address embedding 127.0.0.1"),
        ),
        (
            "http://[::ffff:7f00:1]/",
            Some("an IPv4-mapped address embedding 127.0.0.1"),
        ),
        (
            "http://[::ffff:a9fe:a9fe]/",
            Some("an IPv4-mapped address embedding 169.254.169.254"),
        ),
        (
            "http://[::ffff:0:a00:1]/",
            Some("an IPv4-translated address embedding 10.0.0.1"),
        ),
        (
            "http://[::127.0.0.1]/",
            Some("an IPv4-compatible address embedding 127.0.0.1"),
        ),
        (
            "http://[::8.8.8.8]/",
            Some("an IPv4-compatible address embedding 8.8.8.8, a deprecated"),
        ),
        (
            "http://[64:ff9b::7f00:1]/",
            Some("a NAT64 address embedding 127.0.0.1"),
        ),
        (
            "http://[64:ff9b::192.168.1.1]/",
            Some("a NAT64 address embedding 192.168.1.1"),
        ),
        ("http://[64:ff9b:1::a00:1]/", Some("a NAT64 local-use")),
        (
            "http://[64:ff9b:1:ffff::808:808]/",
            Some("a NAT64 local-use"),
        ),
        (
            "http://[2002:7f00:1::]/",
            Some("a 6to4 address embedding 127.0.0.1"),
        ),
        (
            "http://[2002:a00:1::1]/",
            Some("a 6to4 address embedding 10.0.0.1"),
        ),
        (
            "http://[2002:c612:1::1]/",
            Some("a 6to4 address embedding 198.18.0.1"),
        ),
        // Teredo: server 65.54.227.120, client bit-inverted (!127.0.0.1 = 128.255.255.254).
        (
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            Some("a Teredo (client) address embedding 127.0.0.1"),
        ),
        (
            "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
            Some("a Teredo (client) address embedding 10.0.0.1"),
        ),
        (
            "http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/",
            Some("a Teredo (server) address embedding 10.0.0.1"),
        ),
        // Public: accepted.
        ("http://93.184.216.34/", None),
        ("https://public.example/hook", None),
        ("http://[2606:2800:220:1::1]/", None),
        ("http://[::ffff:8.8.8.8]/", None),
        ("http://[64:ff9b::808:808]/", None),
        ("http://[2002:808:808::1]/", None),
        ("http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/", None),
        ("http://192.0.3.1/", None),
        ("http://198.20.0.1/", None),
    ];

    #[tokio::test]
    async fn url_forms_are_judged_by_the_address_they_reach() {
        let config = crate::outbound::OutboundConfig {
            allow_http: true,
            resolver: fake_dns(),
            ..crate::config::Settings::dev().outbound
        };
        let mut wrong = Vec::new();
        for (url, expected) in URL_FORMS {
            let verdict = config.check_url(url).await;
            let ok = match (expected, &verdict) {
                (None, Ok(_)) => true,
                (Some(reason), Err(e)) => e.contains(&format!(", {reason}")),
                _ => false,
            };
            if !ok {
                wrong.push(format!("{url}: expected {expected:?}, got {verdict:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_allow_list_permits_listed_networks_only() {
        let g = Guard::new(
            vec!["127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())],
            system_resolver(),
        );
        assert!(g.check_addr("h", ip("127.0.0.1")).is_ok());
        assert!(g.check_addr("h", ip("::ffff:127.0.0.1")).is_ok());
        assert!(g.check_addr("h", ip("64:ff9b::7f00:1")).is_ok());
        assert!(g.check_addr("h", ip("::1")).is_err());
        assert!(g.check_addr("h", ip("10.0.0.1")).is_err());
    }
}
