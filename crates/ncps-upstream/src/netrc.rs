//! Credentials for private upstreams from a netrc file, the file Nix and curl already read.
//!
//! Written here rather than taken from a crate: the format is a dozen lines of tokenising, the
//! crates on crates.io are unmaintained or pull in more than they parse, and we need one
//! extension of our own (`login bearer`, below) and a redacting `Debug`.
//!
//! Grammar, as curl reads it: whitespace-separated tokens; `machine NAME` starts an entry,
//! `default` starts the catch-all entry, `login`, `password` and `account` take a value, `macdef`
//! skips its body up to the next blank line; a token starting with `#` comments out the rest of
//! the line; a token may be double-quoted (with `\"` and `\\` escapes) to contain spaces.
//!
//! Matching: an entry `machine host:port` matches only that port, `machine host` any port of
//! that host (case-insensitive), `default` any host; the first matching entry of the most
//! specific kind wins. `login bearer` (literally) makes the password a bearer token
//! (`Authorization: Bearer <password>`, for token-authenticated caches); any other entry is
//! HTTP Basic auth, with an empty user name when there is no `login` (as curl does).

use std::fmt;

/// How requests to one upstream authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP Basic auth.
    Basic {
        /// User name (may be empty).
        login: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl Credentials {
    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        use base64::Engine as _;
        match self {
            Credentials::Basic { login, password } => {
                let pair = format!("{login}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Credentials::Bearer(token) => format!("Bearer {token}"),
        }
    }

    /// The scheme, for logs (never the secret).
    pub fn scheme(&self) -> &'static str {
        match self {
            Credentials::Basic { .. } => "basic",
            Credentials::Bearer(_) => "bearer",
        }
    }
}

/// Never prints a secret: credentials end up in `Debug` output of configuration structs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { login, .. } => f
                .debug_struct("Basic")
                .field("login", login)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A parse error, with the 1-based line it happened on; never quotes the offending token,
/// which may be a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("netrc line {line}: {reason}")]
pub struct NetrcError {
    /// Line of the token at fault.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// `None` for `default`.
    machine: Option<String>,
    login: Option<String>,
    password: Option<String>,
}

/// A parsed netrc file.
#[derive(Clone, Default)]
pub struct Netrc {
    entries: Vec<Entry>,
}

/// Lists the machines only.
impl fmt::Debug for Netrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machines: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.machine.as_deref().unwrap_or("default"))
            .collect();
        f.debug_struct("Netrc")
            .field("machines", &machines)
            .finish()
    }
}

impl Netrc {
    /// Parses the text of a netrc file.
    pub fn parse(text: &str) -> Result<Self, NetrcError> {
        let tokens = tokenize(text)?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let (line, token) = (tokens[i].line, tokens[i].text.as_str());
            let mut value = || {
                i += 1;
                tokens.get(i).map(|t| t.text.clone()).ok_or(NetrcError {
                    line,
                    reason: "a keyword at the end of the file lacks its value",
                })
            };
            match token {
                "machine" => {
                    let machine = value()?.to_ascii_lowercase();
                    entries.push(Entry {
                        machine: Some(machine),
                        login: None,
                        password: None,
                    });
                }
                "default" => entries.push(Entry {
                    machine: None,
                    login: None,
                    password: None,
                }),
                "login" | "password" | "account" => {
                    let v = value()?;
                    let entry = entries.last_mut().ok_or(NetrcError {
                        line,
                        reason: "login/password before any machine or default",
                    })?;
                    match token {
                        "login" => entry.login = Some(v),
                        "password" => entry.password = Some(v),
                        _ => {}
                    }
                }
                "macdef" => {
                    // The tokenizer already dropped the body; only the name follows.
                    value()?;
                }
                _ => {
                    return Err(NetrcError {
                        line,
                        reason: "unknown keyword (expected machine, default, login, password, account or macdef)",
                    });
                }
            }
            i += 1;
        }
        Ok(Self { entries })
    }

    /// True when the file has no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials for `host` (and `port`, when the URL has one), if an entry gives a
    /// password or a login.
    pub fn credentials(&self, host: &str, port: Option<u16>) -> Option<Credentials> {
        let host = host.to_ascii_lowercase();
        let with_port = port.map(|p| format!("{host}:{p}"));
        let exact = with_port
            .as_ref()
            .and_then(|hp| self.find(|m| m == Some(hp.as_str())));
        let entry = exact
            .or_else(|| self.find(|m| m == Some(host.as_str())))
            .or_else(|| self.find(|m| m.is_none()))?;
        match (&entry.login, &entry.password) {
            (None, None) => None,
            (Some(login), Some(token)) if login == "bearer" => {
                Some(Credentials::Bearer(token.clone()))
            }
            (login, password) => Some(Credentials::Basic {
                login: login.clone().unwrap_or_default(),
                password: password.clone().unwrap_or_default(),
            }),
        }
    }

    fn find(&self, matches: impl Fn(Option<&str>) -> bool) -> Option<&Entry> {
        self.entries.iter().find(|e| matches(e.machine.as_deref()))
    }
}

struct Token {
    line: usize,
    text: String,
}

fn tokenize(text: &str) -> Result<Vec<Token>, NetrcError> {
    let mut tokens = Vec::new();
    let mut in_macdef = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if in_macdef {
            // A macro body runs up to the first empty line.
            if raw.trim().is_empty() {
                in_macdef = false;
            }
            continue;
        }
        let mut chars = raw.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let Some(&first) = chars.peek() else { break };
            if first == '#' {
                break;
            }
            let mut token = String::new();
            if first == '"' {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => token.extend(chars.next()),
                        c => token.push(c),
                    }
                }
                if !closed {
                    return Err(NetrcError {
                        line,
                        reason: "unterminated quoted string",
                    });
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    token.push(c);
                    chars.next();
                }
            }
            let starts_macro = tokens.last().is_some_and(|t: &Token| t.text == "macdef");
            tokens.push(Token { line, text: token });
            if starts_macro {
                in_macdef = true;
                break;
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(login: &str, password: &str) -> Credentials {
        Credentials::Basic {
            login: login.into(),
            password: password.into(),
        }
    }

    #[test]
    fn matches_by_host_then_port_then_default() {
        let netrc = Netrc::parse(
            "# private caches\n\
             machine cache.example.com login alice password s3cret\n\
             machine cache.example.com:8443 login bob password other # on its own port\n\
             machine attic.example.com\n  login bearer\n  password eyJtoken\n\
             machine Token-Only.example.com password tok\n\
             default login anon password anon\n",
        )
        .unwrap();
        assert_eq!(
            netrc.credentials("cache.example.com", None),
            Some(basic("alice", "s3cret"))
        );
        assert_eq!(
            netrc.credentials("CACHE.example.com", Some(443)),
            Some(basic("alice", "s3cret"))
        );
        assert_eq!(
            netrc.credentials("cache.example.com", Some(8443)),
            Some(basic("bob", "other"))
        );
        assert_eq!(
            netrc.credentials("attic.example.com", None),
            Some(Credentials::Bearer("eyJtoken".into()))
        );
        assert_eq!(
            netrc.credentials("token-only.example.com", None),
            Some(basic("", "tok"))
        );
        assert_eq!(
            netrc.credentials("elsewhere", Some(80)),
            Some(basic("anon", "anon"))
        );
    }

    #[test]
    fn quoting_macros_and_empty_entries() {
        let netrc = Netrc::parse(
            "macdef init\ncd /pub\nbinary\n\nmachine a login \"user name\" password \"p\\\"w d\"\nmachine b\n",
        )
        .unwrap();
        assert_eq!(
            netrc.credentials("a", None),
            Some(basic("user name", "p\"w d"))
        );
        assert_eq!(netrc.credentials("b", None), None);
        assert_eq!(netrc.credentials("c", None), None);
        assert!(Netrc::parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line_not_the_secret() {
        let err = Netrc::parse("machine a\nlogin x password").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Netrc::parse("password hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Netrc::parse("machine a\nfrobnicate hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(Netrc::parse("machine a password \"open").is_err());
    }

    #[test]
    fn debug_output_redacts() {
        let netrc = Netrc::parse("machine a login u password hunter2").unwrap();
        let shown = format!("{netrc:?} {:?}", netrc.credentials("a", None));
        assert!(!shown.contains("hunter2"), "{shown}");
        let bearer = format!("{:?}", Credentials::Bearer("hunter2".into()));
        assert!(!bearer.contains("hunter2"));
        assert_eq!(
            basic("Aladdin", "open sesame").header_value(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
