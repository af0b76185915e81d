//! `sagad healthcheck`: is the sagad on this host ready? A probe of `GET /readyz` for container
//! health checks (Docker's `HEALTHCHECK`), needing nothing but the sagad binary itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{DEFAULT_LISTEN, parse_duration};

#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// The address sagad listens on; a wildcard address (0.0.0.0, ::) is probed on loopback.
    #[arg(long, env = "SAGAD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Probe the sagad at this base URL instead (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// 0 when `/readyz` answers 200; otherwise 1 and one line on stderr saying why.
pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let url = readyz_url(&args);
    match probe(&url, args.timeout).await {
        Ok(()) => {
            println!("ready ({url})");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("not ready: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn readyz_url(args: &HealthcheckArgs) -> String {
    match &args.url {
        Some(base) => format!("{}/readyz", base.trim_end_matches('/')),
        None => {
            let mut addr = args.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            format!("http://{addr}/readyz")
        }
    }
}

async fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| root_cause(&e))?;
    let resp = http.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer from {url} within {timeout:?}")
        } else {
            format!("cannot reach {url}: {}", root_cause(&e))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // sagad's answer names the failed checks:
    // {"checks": {"database": true, "migrations": false, …}}.
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let failed: Vec<&str> = body["checks"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, ok)| ok.as_bool() == Some(false))
        .map(|(check, _)| check.as_str())
        .collect();
    Err(if failed.is_empty() {
        format!("{url} answered {status}")
    } else {
        format!("{url} answered {status}; failing: {}", failed.join(", "))
    })
}

/// What lies at the bottom of an error ("Connection refused (os error 111)"), on one line.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str, url: Option<&str>) -> HealthcheckArgs {
        HealthcheckArgs {
            listen: listen.parse().unwrap(),
            url: url.map(str::to_owned),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn probes_loopback_for_a_wildcard_listen_address_and_a_given_url_as_is() {
        assert_eq!(
            readyz_url(&args("0.0.0.0:8080", None)),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(
            readyz_url(&args("[::]:9000", None)),
            "http://[::1]:9000/readyz"
        );
        assert_eq!(
            readyz_url(&args("10.0.0.5:8080", None)),
            "http://10.0.0.5:8080/readyz"
        );
        assert_eq!(
            readyz_url(&args("0.0.0.0:8080", Some("http://sagad.internal:81/"))),
            "http://sagad.internal:81/readyz"
        );
    }
}
