//! Approval and validation evidence as certd judges it: the validation
//! methods it knows, which names each can cover, and the syntax of the
//! identifiers that name requesters and approving officers. Registration
//! authorities use the same definitions, so what they gather is what certd
//! accepts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a name (a DNS name or a mailbox) was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMethod {
    /// A random token sent to the mailbox and returned by its holder
    /// (S/MIME BR 3.2.2.2). Covers exactly that mailbox.
    EmailToken,
    /// A random value published in a DNS TXT record at the domain (TLS BR
    /// 3.2.2.4.7). Covers the domain and every name under it.
    DnsTxt,
    /// A random value served over HTTP from the host (TLS BR 3.2.2.4.18).
    /// Covers exactly that host name, never a wildcard.
    HttpFile,
    /// A domain the enterprise owns, validated once when the RA's
    /// enterprise was set up. Covers the domain, the names under it, and
    /// the mailboxes at them.
    EnterpriseDomain,
    /// An RA officer attests, under their own name, to having validated
    /// the name out of band. Covers exactly the name attested.
    OfficerAttestation,
}

/// What a validation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A dNSName.
    Dns,
    /// An rfc822Name (mailbox).
    Email,
}

impl NameKind {
    /// Words for messages: "DNS names", "email addresses".
    pub fn plural(self) -> &'static str {
        match self {
            NameKind::Dns => "DNS names",
            NameKind::Email => "email addresses",
        }
    }
}

impl ValidationMethod {
    /// Every method, in documentation order.
    pub const ALL: [ValidationMethod; 5] = [
        ValidationMethod::EmailToken,
        ValidationMethod::DnsTxt,
        ValidationMethod::HttpFile,
        ValidationMethod::EnterpriseDomain,
        ValidationMethod::OfficerAttestation,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMethod::EmailToken => "email_token",
            ValidationMethod::DnsTxt => "dns_txt",
            ValidationMethod::HttpFile => "http_file",
            ValidationMethod::EnterpriseDomain => "enterprise_domain",
            ValidationMethod::OfficerAttestation => "officer_attestation",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ValidationMethod> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether the method can validate names of `kind` at all.
    pub fn applies_to(self, kind: NameKind) -> bool {
        match self {
            ValidationMethod::EmailToken => kind == NameKind::Email,
            ValidationMethod::DnsTxt | ValidationMethod::HttpFile => kind == NameKind::Dns,
            ValidationMethod::EnterpriseDomain | ValidationMethod::OfficerAttestation => true,
        }
    }

    /// Whether a validation of `validated` by this method covers the
    /// certificate name `name` of `kind`. Both are syntax-checked already;
    /// domains are lower-case.
    pub fn covers(self, validated: &str, name: &str, kind: NameKind) -> bool {
        match (self, kind) {
            (ValidationMethod::DnsTxt, NameKind::Dns) => {
                in_subtree(name.strip_prefix("*.").unwrap_or(name), validated)
            }
            (ValidationMethod::HttpFile, NameKind::Dns) => {
                !name.starts_with("*.") && name == validated
            }
            (ValidationMethod::EnterpriseDomain, NameKind::Dns) => {
                in_subtree(name.strip_prefix("*.").unwrap_or(name), validated)
            }
            (ValidationMethod::EnterpriseDomain, NameKind::Email) => name
                .rsplit_once('@')
                .is_some_and(|(_, domain)| in_subtree(domain, validated)),
            (ValidationMethod::OfficerAttestation, NameKind::Dns) => name == validated,
            (
                ValidationMethod::OfficerAttestation | ValidationMethod::EmailToken,
                NameKind::Email,
            ) => same_mailbox(name, validated),
            _ => false,
        }
    }
}

impl fmt::Display for ValidationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` is `tree` or a name under it.
pub fn in_subtree(name: &str, tree: &str) -> bool {
    name == tree
        || (name.len() > tree.len()
            && name.ends_with(tree)
            && name.as_bytes()[name.len() - tree.len() - 1] == b'.')
}

/// Mailboxes compare with the local part as written and the domain
/// without regard to case (RFC 5321 2.4).
fn same_mailbox(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

/// Checks an identifier that names a person in approval evidence (the
/// requester, an approving officer): 1 to 128 characters of letters,
/// digits and `. _ @ + -`, starting with a letter or digit. It is compared
/// without regard to case, so `Alice` and `alice` are one person.
pub fn check_person_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid person identifier: use 1 to 128 letters, digits, '.', '_', '@', '+' or '-', starting with a letter or digit"
        ))
    }
}

/// The form under which two person identifiers are the same person.
pub fn person_key(id: &str) -> String {
    id.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_follows_the_method() {
        use NameKind::*;
        use ValidationMethod::*;
        assert!(DnsTxt.covers("example.com", "www.example.com", Dns));
        assert!(DnsTxt.covers("example.com", "*.example.com", Dns));
        assert!(DnsTxt.covers("example.com", "example.com", Dns));
        assert!(!DnsTxt.covers("example.com", "badexample.com", Dns));
        assert!(!DnsTxt.covers("www.example.com", "example.com", Dns));
        assert!(HttpFile.covers("www.example.com", "www.example.com", Dns));
        assert!(!HttpFile.covers("example.com", "www.example.com", Dns));
        assert!(!HttpFile.covers("*.example.com", "*.example.com", Dns));
        assert!(EnterpriseDomain.covers("example.com", "a.b.example.com", Dns));
        assert!(EnterpriseDomain.covers("example.com", "alice@dept.example.com", Email));
        assert!(!EnterpriseDomain.covers("example.com", "alice@example.org", Email));
        assert!(EmailToken.covers("alice@example.com", "alice@example.com", Email));
        assert!(!EmailToken.covers("alice@example.com", "Alice@example.com", Email));
        assert!(!EmailToken.covers("example.com", "alice@example.com", Email));
        assert!(!EmailToken.covers("example.com", "example.com", Dns));
        assert!(OfficerAttestation.covers("www.example.com", "www.example.com", Dns));
        assert!(!OfficerAttestation.covers("example.com", "www.example.com", Dns));
        assert!(!DnsTxt.covers("example.com", "alice@example.com", Email));
    }

    #[test]
    fn wire_names_round_trip() {
        for m in ValidationMethod::ALL {
            assert_eq!(ValidationMethod::parse(m.as_str()), Some(m));
            let json = serde_json::to_string(&m).expect("json");
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        assert_eq!(ValidationMethod::parse("dns"), None);
    }

    #[test]
    fn person_ids() {
        for ok in ["alice", "o1", "alice.smith@example.com", "A_b-c+d"] {
            assert!(check_person_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            " ",
            "alice smith",
            "-x",
            ".x",
            "é",
            "a\n",
            long.as_str(),
        ] {
            assert!(check_person_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(person_key("Alice"), person_key("alice"));
    }
}
