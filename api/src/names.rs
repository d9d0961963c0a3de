//! Name syntax exactly as certd checks it, so that registration authorities
//! can refuse a bad name before sending it (and say which line it was on).

/// Checks DNS name syntax: lower-case A-labels, LDH, no trailing dot, an
/// optional leading `*.` only when wildcards are allowed.
pub fn check_dns_name(name: &str, allow_wildcard: bool) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("DNS name {name:?} must be 1 to 253 characters"));
    }
    if !name.is_ascii() {
        return Err(format!(
            "DNS name {name:?} is not ASCII: send internationalised names in A-label form (xn--...)"
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("DNS name {name:?} must be lower-case"));
    }
    if name.ends_with('.') {
        return Err(format!("DNS name {name:?} must not end with a dot"));
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => {
            return Err(format!(
                "wildcard name {name:?} is not allowed by this profile"
            ))
        }
        None => name,
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "DNS name {name:?} must be fully qualified (at least two labels)"
        ));
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err(format!("DNS name {name:?} has an empty or over-long label"));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err(format!(
                "DNS name {name:?}: labels must not start or end with '-'"
            ));
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "DNS name {name:?} may hold only a-z, 0-9 and '-' (and a leading '*.' wildcard where allowed)"
            ));
        }
        if l.len() >= 4 && &l[2..4] == "--" && !l.starts_with("xn--") {
            return Err(format!(
                "DNS name {name:?}: label {l:?} has '--' in positions 3-4 but is not an A-label"
            ));
        }
        if let Some(puny) = l.strip_prefix("xn--") {
            let (_, result) = idna::domain_to_unicode(l);
            if puny.is_empty() || result.is_err() {
                return Err(format!("DNS name {name:?}: {l:?} is not a valid A-label"));
            }
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} looks like an IP address: send it as an ip SAN"
        ));
    }
    Ok(())
}

/// Checks a mailbox address (RFC 5321 dot-atom local part, DNS domain) and
/// returns its domain.
pub fn check_email(addr: &str) -> Result<&str, String> {
    let (local, domain) = addr
        .rsplit_once('@')
        .ok_or_else(|| format!("email address {addr:?} has no '@'"))?;
    if local.is_empty() || local.len() > 64 {
        return Err(format!(
            "email address {addr:?}: the local part must be 1 to 64 characters"
        ));
    }
    const SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~.";
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(&b))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(format!(
            "email address {addr:?}: the local part must be a plain dot-atom (no quotes, spaces or non-ASCII)"
        ));
    }
    check_dns_name(domain, false).map_err(|e| format!("email address {addr:?}: {e}"))?;
    Ok(domain)
}
