//! The single commands: `issue`, `show`, `list`, `revoke`, `crl`,
//! `profiles`, `health`. Each returns data; [`render`] turns it into the
//! human form (the binary prints JSON itself with `--json`).

use crate::error::Error;
use crate::keys::{KeyType, SubscriberKey};
use crate::output::{self, Format};
use crate::retry::{retry, RetryPolicy};
use certd_api::{
    CertdClient, CertificateInfo, Health, IssueRequest, ProfileInfo, Subject, SubjectAltNames,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Parses `--san` values: `dns:NAME`, `email:ADDR`, `ip:ADDR`, each
/// argument possibly a comma-separated list.
pub fn parse_sans(values: &[String]) -> Result<SubjectAltNames, Error> {
    let mut san = SubjectAltNames::default();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (kind, value) = item.split_once(':').ok_or_else(|| {
            Error::Usage(format!(
                "--san {item:?}: write dns:NAME, email:ADDRESS or ip:ADDRESS"
            ))
        })?;
        let value = value.trim().to_string();
        match kind.trim().to_ascii_lowercase().as_str() {
            "dns" => san.dns.push(value.to_ascii_lowercase()),
            "email" => san.email.push(value),
            "ip" => {
                value
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| Error::Usage(format!("--san ip:{value}: not an IP address")))?;
                san.ip.push(value)
            }
            other => {
                return Err(Error::Usage(format!(
                    "--san {item:?}: unknown kind {other:?} (dns, email or ip)"
                )))
            }
        }
    }
    Ok(san)
}

/// The requested notAfter (RFC 3339) from `--expires YYYY-MM-DD` (the end
/// of that day, UTC) or `--days N` (from `now`).
pub fn not_after(
    expires: Option<&str>,
    days: Option<u32>,
    now: OffsetDateTime,
) -> Result<Option<String>, Error> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    match (expires, days) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "--expires and --days exclude each other".into(),
        )),
        (Some(d), None) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(d, &format)
                .map_err(|e| Error::Usage(format!("--expires {d:?}: expected YYYY-MM-DD ({e})")))?;
            let t = date
                .with_hms(23, 59, 59)
                .map_err(|e| Error::Usage(e.to_string()))?
                .assume_utc();
            if t <= now {
                return Err(Error::Usage(format!("--expires {d}: that day is past")));
            }
            t.format(rfc3339)
                .map(Some)
                .map_err(|e| Error::Usage(e.to_string()))
        }
        (None, Some(0)) => Err(Error::Usage("--days must be at least 1".into())),
        (None, Some(n)) => (now.replace_nanosecond(0).unwrap_or(now)
            + time::Duration::days(n.into()))
        .format(rfc3339)
        .map(Some)
        .map_err(|e| Error::Usage(e.to_string())),
        (None, None) => Ok(None),
    }
}

/// A random request id for a single request: `cli-` and 32 hex digits.
pub fn random_request_id() -> Result<String, Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::Crypto(format!("random: {e}")))?;
    Ok(format!("cli-{}", hex::encode(b)))
}

/// What `ra-cli issue` needs.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Profile.
    pub profile: String,
    /// Certifier (optional when the RA may use only one).
    pub certifier: Option<String>,
    /// The subscriber's CSR; without it a key is generated here.
    pub csr: Option<PathBuf>,
    /// Type of the generated key.
    pub key_type: KeyType,
    /// commonName to certify.
    pub common_name: Option<String>,
    /// organizationalUnitName to certify.
    pub organizational_unit: Option<String>,
    /// SANs to certify (empty: the CSR's).
    pub san: SubjectAltNames,
    /// Requested notAfter, RFC 3339.
    pub not_after: Option<String>,
    /// Output file.
    pub out: PathBuf,
    /// Output format.
    pub format: Format,
    /// PKCS#12 password file; without it a password is generated and
    /// written next to the output (`OUT.password`, mode 0600).
    pub p12_password_file: Option<PathBuf>,
    /// PBKDF2/MAC iterations for PKCS#12.
    pub p12_iterations: u32,
    /// Idempotency key (random when absent).
    pub request_id: Option<String>,
    /// Retries for transient failures.
    pub retry: RetryPolicy,
}

/// What `ra-cli issue` did.
#[derive(Debug, Clone, Serialize)]
pub struct IssueOutcome {
    /// The idempotency key used (repeat it to get the same certificate).
    pub request_id: String,
    /// Serial, hex.
    pub serial: String,
    /// notBefore.
    pub not_before: String,
    /// notAfter.
    pub not_after: String,
    /// Whether certd shortened the requested validity.
    pub not_after_clamped: bool,
    /// Whether certd answered an earlier request with this id.
    pub replayed: bool,
    /// Output file.
    pub out: PathBuf,
    /// Output format.
    pub format: String,
    /// Where a generated PKCS#12 password was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// `ra-cli issue`.
pub async fn issue(client: &CertdClient, opts: &IssueOptions) -> Result<IssueOutcome, Error> {
    let generated = opts.csr.is_none();
    match (generated, opts.format) {
        (true, f) if f != Format::P12 => {
            return Err(Error::Usage(
                "a key generated by ra-cli is delivered only inside a PKCS#12: use --format p12, \
                 or bring the subscriber's own --csr"
                    .into(),
            ))
        }
        (false, Format::P12) => {
            return Err(Error::Usage(
                "--format p12 needs the private key, which ra-cli has only when it generates it: \
                 leave out --csr"
                    .into(),
            ))
        }
        _ => {}
    }
    // Everything that can be checked is checked before the request: a
    // failure after it leaves a certificate without its files.
    crate::p12::check_iterations(opts.p12_iterations)?;
    output::check_writable(&opts.out, "--out")?;
    let password_path = PathBuf::from(format!("{}.password", opts.out.display()));
    if generated && opts.p12_password_file.is_none() {
        output::check_writable(&password_path, "the password file")?;
    }
    let password = match (&opts.p12_password_file, generated) {
        (Some(p), _) => Some(output::read_secret_file(p)?),
        (None, true) => Some(crate::keys::random_password()?),
        (None, false) => None,
    };
    let (key, csr_pem) = match &opts.csr {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::Usage(format!("CSR file {}: {e}", path.display())))?;
            let info = crate::csr::CsrInfo::from_bytes(&bytes)
                .map_err(|e| Error::Usage(format!("CSR file {}: {e}", path.display())))?;
            (None, info.pem)
        }
        None => {
            let kt = opts.key_type;
            let cn = opts.common_name.clone();
            let (key, csr) = tokio::task::spawn_blocking(move || {
                let key = SubscriberKey::generate(kt)?;
                let csr = key.csr_pem(cn.as_deref())?;
                Ok::<_, Error>((key, csr))
            })
            .await
            .map_err(|e| Error::Crypto(e.to_string()))??;
            (Some(key), csr)
        }
    };
    let names_given = opts.common_name.is_some()
        || opts.organizational_unit.is_some()
        || opts.san != SubjectAltNames::default();
    let request_id = match &opts.request_id {
        Some(r) => r.clone(),
        None => random_request_id()?,
    };
    let req = IssueRequest {
        request_id: request_id.clone(),
        certifier: opts.certifier.clone(),
        profile: opts.profile.clone(),
        csr: csr_pem,
        subject: (opts.common_name.is_some() || opts.organizational_unit.is_some()).then(|| {
            Subject {
                common_name: opts.common_name.clone(),
                organizational_unit: opts.organizational_unit.clone(),
                ..Subject::default()
            }
        }),
        san: names_given.then(|| opts.san.clone()),
        not_after: opts.not_after.clone(),
        approval: None,
    };
    let (result, _) = retry(opts.retry, || client.issue(&req), |_, _, _| {}).await;
    let resp = result.map_err(Error::certd)?;
    if let Some(e) = Error::revoked(&req.request_id, &resp) {
        return Err(e);
    }
    let leaf = output::pem_to_der(&resp.certificate)?;
    let chain: Vec<Vec<u8>> = resp
        .chain
        .iter()
        .map(|c| output::pem_to_der(c))
        .collect::<Result<_, _>>()?;
    let (bytes, mode) = match opts.format {
        Format::Pem => (
            output::pem_bundle(&resp.certificate, &resp.chain).into_bytes(),
            output::MODE_PUBLIC,
        ),
        Format::Der => (leaf, output::MODE_PUBLIC),
        Format::P7b => {
            let mut all = vec![leaf];
            all.extend(chain);
            (output::p7b(&all)?, output::MODE_PUBLIC)
        }
        Format::P12 => {
            let key = key.ok_or_else(|| Error::Usage("no key for PKCS#12".into()))?;
            let pw = password
                .as_ref()
                .ok_or_else(|| Error::Usage("no PKCS#12 password".into()))?;
            let friendly = opts
                .common_name
                .clone()
                .or_else(|| opts.san.email.first().cloned())
                .or_else(|| opts.san.dns.first().cloned())
                .unwrap_or_else(|| format!("certd {}", resp.serial));
            let der = key.pkcs8_der()?;
            let p12 = crate::p12::build(&der, &leaf, &chain, &friendly, pw, opts.p12_iterations)?;
            (p12, output::MODE_SECRET)
        }
    };
    let mut password_file = None;
    if generated && opts.p12_password_file.is_none() {
        let pw_path = password_path;
        let pw = password
            .as_ref()
            .ok_or_else(|| Error::Usage("no PKCS#12 password".into()))?;
        output::write_atomic(
            &pw_path,
            format!("{}\n", pw.as_str()).as_bytes(),
            output::MODE_SECRET,
            true,
        )?;
        password_file = Some(pw_path);
    }
    output::write_atomic(&opts.out, &bytes, mode, true)?;
    Ok(IssueOutcome {
        request_id,
        serial: resp.serial,
        not_before: resp.not_before,
        not_after: resp.not_after,
        not_after_clamped: resp.not_after_clamped,
        replayed: resp.replayed,
        out: opts.out.clone(),
        format: format!("{:?}", opts.format).to_ascii_lowercase(),
        password_file,
    })
}

/// Filters of `ra-cli list` (each maps to certd's query parameter).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `valid` or `revoked`.
    pub status: Option<String>,
    /// Profile name.
    pub profile: Option<String>,
    /// Certifier name.
    pub certifier: Option<String>,
    /// Substring of the subject.
    pub subject: Option<String>,
    /// Email SAN.
    pub email: Option<String>,
    /// DNS SAN.
    pub dns: Option<String>,
    /// Requesting RA.
    pub ra: Option<String>,
    /// notAfter before (RFC 3339).
    pub expires_before: Option<String>,
    /// notAfter after (RFC 3339).
    pub expires_after: Option<String>,
    /// Stop after this many (all when `None`).
    pub limit: Option<usize>,
}

impl ListFilter {
    fn query(&self, after: Option<&str>, page: usize) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("profile", &self.profile),
            ("certifier", &self.certifier),
            ("subject", &self.subject),
            ("email", &self.email),
            ("dns", &self.dns),
            ("ra", &self.ra),
            ("expires_before", &self.expires_before),
            ("expires_after", &self.expires_after),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(a) = after {
            q.append_pair("after", a);
        }
        q.append_pair("limit", &page.to_string());
        q.finish()
    }
}

/// `ra-cli list`: follows certd's pages until the end or `limit`.
pub async fn list(
    client: &CertdClient,
    filter: &ListFilter,
) -> Result<Vec<CertificateInfo>, Error> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let want = filter.limit.map_or(1000, |l| (l - out.len()).min(1000));
        if want == 0 {
            break;
        }
        let page = client
            .list(&filter.query(after.as_deref(), want))
            .await
            .map_err(Error::certd)?;
        out.extend(page.items);
        match page.next {
            Some(n) if filter.limit.is_none_or(|l| out.len() < l) => after = Some(n),
            _ => break,
        }
    }
    Ok(out)
}

/// `ra-cli revoke`: checks the reason name before asking certd.
pub async fn revoke(
    client: &CertdClient,
    serial: &str,
    reason: &str,
) -> Result<CertificateInfo, Error> {
    if certd_api::reason_code(reason).is_none() {
        let names: Vec<&str> = certd_api::REVOCATION_REASONS.iter().map(|r| r.0).collect();
        return Err(Error::Usage(format!(
            "unknown revocation reason {reason:?}: use one of {}",
            names.join(", ")
        )));
    }
    client.revoke(serial, reason).await.map_err(Error::certd)
}

/// What `ra-cli crl` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CrlOutcome {
    /// Certifier.
    pub certifier: String,
    /// File written.
    pub out: PathBuf,
    /// Size in bytes (DER).
    pub bytes: usize,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339.
    pub next_update: Option<String>,
    /// Number of revoked certificates listed.
    pub revoked: usize,
}

/// `ra-cli crl`: downloads the CRL, checks that it parses, writes it (DER,
/// or PEM with `pem`).
pub async fn crl(
    client: &CertdClient,
    certifier: &str,
    out: &Path,
    pem: bool,
) -> Result<CrlOutcome, Error> {
    use der::Decode;
    let der_bytes = client.crl(certifier).await.map_err(Error::certd)?;
    let parsed =
        x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der_bytes)
            .map_err(|e| Error::Crypto(format!("the CRL from certd does not parse: {e}")))?;
    let tbs = &parsed.tbs_cert_list;
    let time_str = |t: &x509_cert::time::Time| {
        OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    let bytes = if pem {
        der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &der_bytes)
            .map_err(|e| Error::Crypto(e.to_string()))?
            .into_bytes()
    } else {
        der_bytes.clone()
    };
    output::write_atomic(out, &bytes, output::MODE_PUBLIC, true)?;
    Ok(CrlOutcome {
        certifier: certifier.to_string(),
        out: out.to_path_buf(),
        bytes: der_bytes.len(),
        this_update: time_str(&tbs.this_update),
        next_update: tbs.next_update.as_ref().map(time_str),
        revoked: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
    })
}

/// Human-readable forms.
pub mod render {
    use super::*;

    /// One certificate.
    pub fn certificate(c: &CertificateInfo) -> String {
        let mut s = format!(
            "serial       {}\nstatus       {}\nsubject      {}\ncertifier    {}\nprofile      {}\nra           {}\nnot before   {}\nnot after    {}\n",
            c.serial,
            match c.status {
                certd_api::CertStatus::Valid => "valid",
                certd_api::CertStatus::Revoked => "revoked",
            },
            c.subject,
            c.certifier,
            c.profile,
            c.ra,
            c.not_before,
            c.not_after
        );
        if !c.emails.is_empty() {
            s.push_str(&format!("emails       {}\n", c.emails.join(", ")));
        }
        if !c.dns.is_empty() {
            s.push_str(&format!("dns          {}\n", c.dns.join(", ")));
        }
        if let Some(t) = &c.revoked_at {
            s.push_str(&format!(
                "revoked at   {t} ({})\n",
                c.revocation_reason.as_deref().unwrap_or("unspecified")
            ));
        }
        s
    }

    /// A table of certificates.
    pub fn list(items: &[CertificateInfo]) -> String {
        let mut s = format!(
            "{:<34} {:<8} {:<21} {:<16} SUBJECT\n",
            "SERIAL", "STATUS", "NOT AFTER", "PROFILE"
        );
        for c in items {
            s.push_str(&format!(
                "{:<34} {:<8} {:<21} {:<16} {}\n",
                c.serial,
                match c.status {
                    certd_api::CertStatus::Valid => "valid",
                    certd_api::CertStatus::Revoked => "revoked",
                },
                c.not_after,
                c.profile,
                c.subject
            ));
        }
        s.push_str(&format!("{} certificate(s)\n", items.len()));
        s
    }

    /// The profiles table.
    pub fn profiles(items: &[ProfileInfo]) -> String {
        let mut s = format!(
            "{:<20} {:<14} {:>9} {:<9} {:<20} KEY TYPES\n",
            "PROFILE", "KIND", "MAX DAYS", "APPROVAL", "CERTIFIERS"
        );
        for p in items {
            s.push_str(&format!(
                "{:<20} {:<14} {:>9} {:<9} {:<20} {}\n",
                p.name,
                p.kind,
                p.max_validity_days,
                if p.requires_approval { "required" } else { "-" },
                p.certifiers.join(","),
                p.key_types.join(",")
            ));
        }
        s
    }

    /// Health, with the fingerprint ra-cli presents.
    pub fn health(h: &Health, url: &str, fingerprint: Option<&str>) -> String {
        let mut s = format!("certd {url}: {}\n", h.status);
        for c in &h.certifiers {
            s.push_str(&format!("  {:<20} {}", c.name, c.state));
            if let Some(r) = &c.reason {
                s.push_str(&format!(" ({r})"));
            }
            if c.state == "locked" {
                s.push_str(" (run certd activate)");
            }
            s.push('\n');
        }
        if let Some(f) = fingerprint {
            s.push_str(&format!("client certificate SHA-256 {f}\n"));
        }
        s
    }

    /// The result of `issue`.
    pub fn issued(o: &IssueOutcome) -> String {
        let mut s = format!(
            "issued serial {} (request {}{})\n  not after {}{}\n  written to {} ({})\n",
            o.serial,
            o.request_id,
            if o.replayed { ", replayed" } else { "" },
            o.not_after,
            if o.not_after_clamped {
                " (clamped by policy)"
            } else {
                ""
            },
            o.out.display(),
            o.format
        );
        if let Some(p) = &o.password_file {
            s.push_str(&format!(
                "  PKCS#12 password in {} (mode 0600)\n",
                p.display()
            ));
        }
        s
    }

    /// The result of `crl`.
    pub fn crl(o: &CrlOutcome) -> String {
        format!(
            "CRL of {} written to {} ({} bytes): this update {}, next update {}, {} revoked\n",
            o.certifier,
            o.out.display(),
            o.bytes,
            o.this_update,
            o.next_update.as_deref().unwrap_or("-"),
            o.revoked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_parse() {
        let san = parse_sans(&[
            "dns:WWW.example.com,email:a@example.com".into(),
            "ip:192.0.2.1".into(),
        ])
        .expect("parse");
        assert_eq!(san.dns, vec!["www.example.com"]);
        assert_eq!(san.email, vec!["a@example.com"]);
        assert_eq!(san.ip, vec!["192.0.2.1"]);
        assert!(parse_sans(&["uri:x".into()]).is_err());
        assert!(parse_sans(&["ip:300.1.1.1".into()]).is_err());
        assert!(parse_sans(&["www.example.com".into()]).is_err());
    }

    #[test]
    fn expiry_is_end_of_day_or_days_from_now() {
        let now = time::macros::datetime!(2026-05-01 10:00:00 UTC);
        assert_eq!(
            not_after(Some("2026-06-30"), None, now)
                .expect("ok")
                .as_deref(),
            Some("2026-06-30T23:59:59Z")
        );
        assert_eq!(
            not_after(None, Some(30), now).expect("ok").as_deref(),
            Some("2026-05-31T10:00:00Z")
        );
        assert!(not_after(Some("2026-04-01"), None, now).is_err());
        assert!(not_after(Some("30.06.2026"), None, now).is_err());
        assert!(not_after(Some("2026-06-30"), Some(3), now).is_err());
        assert_eq!(not_after(None, None, now).expect("ok"), None);
    }

    #[test]
    fn list_query_is_encoded() {
        let f = ListFilter {
            subject: Some("CN=a b&c".into()),
            ..ListFilter::default()
        };
        assert_eq!(
            f.query(Some("ab"), 10),
            "subject=CN%3Da+b%26c&after=ab&limit=10"
        );
    }
}
