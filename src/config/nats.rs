//! `nats`: the servers, one authentication method, TLS files and the
//! timeouts of connecting and of JetStream requests (SPEC 2).

use std::path::PathBuf;
use std::time::Duration;

use super::values::{duration, path_buf, secret, string, Secret, Section};
use super::Problem;

/// How jetway authenticates to NATS; at most one method.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    CredentialsFile(PathBuf),
    NkeySeedFile(PathBuf),
    Token(Secret),
    UserPassword { user: String, password: Secret },
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub auth: NatsAuth,
    pub tls: TlsConfig,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

const KEYS: [&str; 9] = [
    "url",
    "credentials_file",
    "nkey_seed_file",
    "token",
    "user",
    "password",
    "tls",
    "connect_timeout",
    "request_timeout",
];

const TLS_KEYS: [&str; 3] = ["ca_file", "cert_file", "key_file"];

/// Whether `scheme://user:pass@host` (or `user@host`) carries credentials.
fn url_has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .contains('@')
}

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> NatsConfig {
    let nats = top.child("nats", &KEYS, p);
    let url = nats.or("url", "nats://127.0.0.1:4222".to_string(), string, p);
    let urls: Vec<String> = url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        p.push(Problem {
            path: "nats.url".into(),
            message: "at least one server URL is required".into(),
        });
    }
    for u in &urls {
        // Checked before parsing so that neither message echoes a password.
        if url_has_credentials(u) {
            p.push(Problem {
                path: "nats.url".into(),
                message: "a server URL must not carry credentials; use nats.user and nats.password, nats.token or a credentials file".into(),
            });
        } else if u.parse::<async_nats::ServerAddr>().is_err() {
            p.push(Problem {
                path: "nats.url".into(),
                message: format!("`{u}` is not a NATS URL such as nats://127.0.0.1:4222"),
            });
        }
    }

    let creds = nats.opt("credentials_file", path_buf, p);
    let seed = nats.opt("nkey_seed_file", path_buf, p);
    let token = nats.opt("token", secret, p);
    let user = nats.opt("user", string, p);
    let password = nats.opt("password", secret, p);
    for (key, file) in [("credentials_file", &creds), ("nkey_seed_file", &seed)] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                p.push(Problem {
                    path: nats.path(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let methods = [
        creds.is_some(),
        seed.is_some(),
        token.is_some(),
        user.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if methods > 1 {
        p.push(Problem {
            path: "nats".into(),
            message: "set only one of credentials_file, nkey_seed_file, token, user/password"
                .into(),
        });
    }
    if user.is_some() != password.is_some() {
        p.push(Problem {
            path: "nats.password".into(),
            message: "user and password go together".into(),
        });
    }
    let auth = match (creds, seed, token, user, password) {
        (Some(c), _, _, _, _) => NatsAuth::CredentialsFile(c),
        (_, Some(s), _, _, _) => NatsAuth::NkeySeedFile(s),
        (_, _, Some(t), _, _) => NatsAuth::Token(t),
        (_, _, _, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
        _ => NatsAuth::None,
    };

    let tls_section = nats.child("tls", &TLS_KEYS, p);
    let tls = TlsConfig {
        ca_file: tls_section.opt("ca_file", path_buf, p),
        cert_file: tls_section.opt("cert_file", path_buf, p),
        key_file: tls_section.opt("key_file", path_buf, p),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.push(Problem {
            path: "nats.tls".into(),
            message: "cert_file and key_file go together".into(),
        });
    }
    for (key, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                p.push(Problem {
                    path: tls_section.path(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let connect_timeout = nats.or("connect_timeout", Duration::from_secs(5), duration, p);
    let request_timeout = nats.or("request_timeout", Duration::from_secs(5), duration, p);
    for (key, d) in [
        ("connect_timeout", connect_timeout),
        ("request_timeout", request_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem {
                path: nats.path(key),
                message: "must be more than 0".into(),
            });
        }
    }
    NatsConfig {
        urls,
        auth,
        tls,
        connect_timeout,
        request_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::paths;
    use crate::config::Config;

    #[test]
    fn credentials_in_nats_urls_are_refused_without_echo() {
        let err = Config::from_yaml(
            "app_id: a\nnats: { url: 'nats://u:hunter2@h:4222' }\n",
            Vec::new(),
        )
        .expect_err("credentials");
        let text = err.to_string();
        assert!(text.contains("nats.url"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(url_has_credentials("tls://tok@h:4222"));
        assert!(!url_has_credentials("nats://h:4222/path@x"));
        assert!(!url_has_credentials("nats://h:4222"));
    }

    #[test]
    fn only_one_nats_auth_method() {
        assert_eq!(
            paths("app_id: a\nnats: { token: t, user: u, password: p }\n"),
            vec!["nats"]
        );
        assert_eq!(
            paths("app_id: a\nnats: { user: u }\n"),
            vec!["nats.password"]
        );
    }
}
