//! Staff accounts: argon2id password hashes, sign-in with per-account
//! lockout, and the rules an account name and password must meet.

use crate::model::{Role, Unix, User};
use crate::store::{Store, StoreError};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zeroize::Zeroizing;

/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// The longest (argon2 takes any length; this bounds the work per try).
pub const MAX_PASSWORD: usize = 1024;

/// A hash that [`verify`] spends the same work on when the account does
/// not exist, so timing does not tell which names exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("not the password of anyone").unwrap_or_default());

/// Why an account could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's
/// recommendation), as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Invalid(format!("hashing the password: {e}")))
}

/// Whether `password` matches the PHC string `hash` (constant-time
/// comparison inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks a new password: long enough, not the user name.
pub fn check_password(username: &str, password: &str) -> Result<(), AccountError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(AccountError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(AccountError::Invalid(format!(
            "the password must have at most {MAX_PASSWORD} bytes"
        )));
    }
    if password.to_lowercase().contains(&username.to_lowercase()) {
        return Err(AccountError::Invalid(
            "the password must not contain the user name".into(),
        ));
    }
    Ok(())
}

/// Checks a user name: what certd accepts as a person identifier in
/// approvals (it is sent as requester and approver).
pub fn check_username(username: &str) -> Result<(), AccountError> {
    if username.len() > 64 {
        return Err(AccountError::Invalid(
            "the user name must have at most 64 characters".into(),
        ));
    }
    certd_api::evidence::check_person_id(username).map_err(AccountError::Invalid)
}

/// A new account.
pub fn new_user(
    username: &str,
    display_name: &str,
    email: Option<String>,
    role: Role,
    password: &str,
    now: Unix,
) -> Result<User, AccountError> {
    check_username(username)?;
    check_password(username, password)?;
    if let Some(e) = &email {
        certd_api::names::check_email(e).map_err(AccountError::Invalid)?;
    }
    let display_name = display_name.trim();
    if display_name.is_empty() || display_name.len() > 128 {
        return Err(AccountError::Invalid(
            "the display name must have 1 to 128 characters".into(),
        ));
    }
    Ok(User {
        username: username.to_string(),
        display_name: display_name.to_string(),
        email,
        role,
        enterprises: Vec::new(),
        password_hash: hash_password(password)?,
        totp: None,
        failed_logins: 0,
        locked_until: None,
        disabled: false,
        must_change_password: false,
        created_at: now,
        generation: 0,
    })
}

/// The issuer name authenticator apps show beside the account.
pub const TOTP_ISSUER: &str = "certd RA";

/// A new TOTP secret (160 random bits, RFC 4226's recommendation), base32.
pub fn new_totp_secret() -> String {
    let mut b = [0u8; 20];
    // The OS CSPRNG failing is not something to enrol a factor through.
    getrandom::fill(&mut b).expect("the OS random number generator");
    totp_rs::Secret::from(b).to_base32()
}

/// The `otpauth://` URI of a secret, for authenticator apps.
pub fn otpauth_uri(secret: &str, username: &str) -> String {
    let enc = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(TOTP_ISSUER),
        enc(username),
        enc(TOTP_ISSUER)
    )
}

/// Checks a 6-digit RFC 6238 code (SHA-1, 30 s steps, one step of skew
/// either way) at `now`; the step it matched, if it is later than
/// `last_step` (a code is good once).
pub fn check_totp(secret: &str, code: &str, now: Unix, last_step: u64) -> Option<u64> {
    let secret = totp_rs::Secret::try_from_base32(secret).ok()?;
    let totp = totp_rs::Builder::new().with_secret(secret).build().ok()?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    totp.check(&code, u64::try_from(now).ok()?)
        .filter(|step| *step > last_step)
}

/// How a sign-in attempt ended.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// Name and password are right.
    Ok(Box<User>),
    /// Wrong name or password (which one is not said).
    Wrong,
    /// This failure locked the account until then.
    LockedNow(Unix),
    /// The account is locked until then; the password was not checked.
    Locked(Unix),
    /// The account is disabled.
    Disabled,
}

/// Checks a sign-in. A failure counts against the account; `max_failures`
/// in a row lock it for `lockout_secs`. A success resets the count.
pub fn sign_in(
    store: &Store,
    username: &str,
    password: &Zeroizing<String>,
    now: Unix,
    max_failures: u32,
    lockout_secs: i64,
) -> Result<SignIn, StoreError> {
    let Some(user) = store.user(username)? else {
        // The same work as for a real account.
        let _ = verify_password(password, &DUMMY_HASH);
        return Ok(SignIn::Wrong);
    };
    if user.disabled {
        let _ = verify_password(password, &DUMMY_HASH);
        return Ok(SignIn::Disabled);
    }
    if let Some(until) = user.locked_until {
        if until > now {
            return Ok(SignIn::Locked(until));
        }
    }
    let ok = verify_password(password, &user.password_hash);
    let (user, outcome) = store.update_user(username, |u| {
        if ok {
            u.failed_logins = 0;
            u.locked_until = None;
            None
        } else {
            if u.locked_until.is_some_and(|t| t <= now) {
                // A lockout that ran out starts a fresh count.
                u.failed_logins = 0;
                u.locked_until = None;
            }
            u.failed_logins += 1;
            if u.failed_logins >= max_failures {
                let until = now + lockout_secs;
                u.locked_until = Some(until);
                Some(SignIn::LockedNow(until))
            } else {
                Some(SignIn::Wrong)
            }
        }
    })?;
    Ok(outcome.unwrap_or_else(|| SignIn::Ok(Box::new(user))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Zeroizing<String> {
        Zeroizing::new(s.to_string())
    }

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse battery").expect("hash");
        let b = hash_password("correct horse battery").expect("hash");
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse batterx", &a));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn totp_codes_are_checked_once_and_within_the_skew() {
        let secret = new_totp_secret();
        assert_eq!(secret.len(), 32);
        let t = totp_rs::Builder::new()
            .with_secret(totp_rs::Secret::try_from_base32(&secret).expect("base32"))
            .build()
            .expect("totp");
        let now = 1_800_000_000i64;
        let code = t.generate(now as u64).to_string();
        let step = check_totp(&secret, &code, now, 0).expect("the current code");
        assert_eq!(
            check_totp(&secret, &code, now, step),
            None,
            "a code is good once"
        );
        assert!(
            check_totp(&secret, &code, now + 30, 0).is_some(),
            "one step of skew"
        );
        assert_eq!(check_totp(&secret, &code, now + 90, 0), None, "too late");
        assert_eq!(check_totp(&secret, "000000x", now, 0), None);
        assert!(
            otpauth_uri(&secret, "alice").starts_with("otpauth://totp/certd%20RA:alice?secret=")
        );
    }

    #[test]
    fn rules_for_names_and_passwords() {
        assert!(check_username("alice.smith").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("a b").is_err());
        assert!(check_password("alice", "short").is_err());
        assert!(check_password("alice", "xxalicexxxxxxxx").is_err());
        assert!(check_password("alice", "a long enough passphrase").is_ok());
    }

    #[test]
    fn failures_lock_the_account_and_success_resets() {
        let store = Store::in_memory().expect("store");
        let u = new_user(
            "alice",
            "Alice",
            None,
            Role::Officer,
            "a long enough passphrase",
            0,
        )
        .expect("user");
        store.create_user(&u).expect("create");
        let good = pw("a long enough passphrase");
        let bad = pw("wrong wrong wrong");
        assert!(matches!(
            sign_in(&store, "alice", &bad, 10, 3, 60).expect("try"),
            SignIn::Wrong
        ));
        assert!(matches!(
            sign_in(&store, "ALICE", &good, 11, 3, 60).expect("try"),
            SignIn::Ok(_)
        ));
        assert_eq!(
            store
                .user("alice")
                .expect("read")
                .expect("found")
                .failed_logins,
            0
        );
        assert!(matches!(
            sign_in(&store, "alice", &bad, 12, 3, 60).expect("try"),
            SignIn::Wrong
        ));
        assert!(matches!(
            sign_in(&store, "alice", &bad, 13, 3, 60).expect("try"),
            SignIn::Wrong
        ));
        assert!(matches!(
            sign_in(&store, "alice", &bad, 14, 3, 60).expect("try"),
            SignIn::LockedNow(74)
        ));
        // Locked: even the right password is not checked.
        assert!(matches!(
            sign_in(&store, "alice", &good, 73, 3, 60).expect("try"),
            SignIn::Locked(74)
        ));
        // The lockout runs out.
        assert!(matches!(
            sign_in(&store, "alice", &good, 74, 3, 60).expect("try"),
            SignIn::Ok(_)
        ));
        assert!(matches!(
            sign_in(&store, "nobody", &good, 75, 3, 60).expect("try"),
            SignIn::Wrong
        ));
    }
}
