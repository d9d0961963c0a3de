//! Reading a token back through PKCS#11 (`cryptoki`), to check what the
//! binaries under test left in it.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the module is initialised, and a test
//! process must not change its own environment, so the inspection runs in a
//! child: the running test binary itself, re-entered through the test named
//! [`INSPECTOR_TEST`]. Every test binary that calls [`inspect`] defines it:
//!
//! ```text
//! #[test]
//! fn pkcs11_inspector() {
//!     if certd_e2e::pkcs11::serve_if_child() {
//!         return;
//!     }
//!     // ...otherwise an honest test of the inspector itself.
//! }
//! ```

use crate::process::{clean_env, run};
use crate::token::Token;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the test through which [`inspect`] re-enters the test binary.
pub const INSPECTOR_TEST: &str = "pkcs11_inspector";

const REQUEST_ENV: &str = "CERTD_E2E_PKCS11_REQUEST";
const RESPONSE_ENV: &str = "CERTD_E2E_PKCS11_RESPONSE";

/// What the inspector is asked to read.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    module: PathBuf,
    token_label: String,
    pin_file: PathBuf,
}

/// How an attribute that must never leave the token answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretAttribute {
    /// The attribute, e.g. `CKA_VALUE`.
    pub attribute: String,
    /// What `C_GetAttributeValue` said about it: `sensitive`,
    /// `unavailable`, `type_invalid`, `available(N)` or an error.
    pub info: String,
    /// How many bytes of its value reading it actually returned.
    pub bytes_returned: usize,
}

impl SecretAttribute {
    /// Whether the attribute exists on the object but its value is withheld.
    pub fn withheld(&self) -> bool {
        self.bytes_returned == 0 && (self.info == "sensitive" || self.info == "unavailable")
    }
}

/// The protection attributes of a private key (`None`: not readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateKeyFacts {
    /// `CKA_TOKEN`.
    pub token: Option<bool>,
    /// `CKA_PRIVATE`.
    pub private: Option<bool>,
    /// `CKA_SENSITIVE`.
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`.
    pub extractable: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: Option<bool>,
    /// `CKA_SIGN`.
    pub sign: Option<bool>,
}

/// One object in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenObject {
    /// `CKA_CLASS`, e.g. `CKO_PRIVATE_KEY`.
    pub class: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex.
    pub id: String,
    /// `CKA_KEY_TYPE`, e.g. `CKK_EC`, for keys.
    pub key_type: Option<String>,
    /// Protection attributes, for private keys.
    pub private_key: Option<PrivateKeyFacts>,
    /// What reading `CKA_VALUE`, `CKA_PRIVATE_EXPONENT`, `CKA_PRIME_1` and
    /// `CKA_PRIME_2` gave (asked of every object, so that a readable value
    /// shows up as such).
    pub secrets: Vec<SecretAttribute>,
}

impl TokenObject {
    /// The answer for one secret attribute (`"CKA_VALUE"`, ...).
    pub fn secret(&self, attribute: &str) -> &SecretAttribute {
        self.secrets
            .iter()
            .find(|s| s.attribute == attribute)
            .unwrap_or_else(|| panic!("{attribute} was not read: {self:?}"))
    }
}

/// Every object a logged-in user sees in a token, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// The objects, sorted by class, label and id.
    pub objects: Vec<TokenObject>,
}

impl Contents {
    /// The objects carrying `label`.
    pub fn labelled(&self, label: &str) -> Vec<&TokenObject> {
        self.objects.iter().filter(|o| o.label == label).collect()
    }

    /// The one private key labelled `label`; panics if there is not
    /// exactly one.
    pub fn private_key(&self, label: &str) -> (&TokenObject, &PrivateKeyFacts) {
        let keys: Vec<_> = self
            .objects
            .iter()
            .filter(|o| o.label == label && o.class == "CKO_PRIVATE_KEY")
            .collect();
        match keys.as_slice() {
            [k] => (
                k,
                k.private_key
                    .as_ref()
                    .expect("private keys carry their facts"),
            ),
            _ => panic!(
                "expected one private key labelled {label:?}, found {}: {self:#?}",
                keys.len()
            ),
        }
    }
}

/// Logs in to `token` with its own PIN file and lists its objects.
pub fn inspect(token: &Token) -> Contents {
    inspect_with_pin_file(token, &token.pin_file)
        .unwrap_or_else(|e| panic!("cannot inspect token {:?}: {e}", token.label))
}

/// Logs in to `token` with the PIN in `pin_file` and lists its objects;
/// `Err` carries the PKCS#11 failure (e.g. a refused PIN).
pub fn inspect_with_pin_file(token: &Token, pin_file: &Path) -> Result<Contents, String> {
    let request = Request {
        module: token.module.clone(),
        token_label: token.label.clone(),
        pin_file: pin_file.to_path_buf(),
    };
    let dir = tempfile::tempdir().expect("a temporary directory for the inspector's answer");
    let response = dir.path().join("response.json");
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let out = run(clean_env(&mut Command::new(&exe))
        .args([INSPECTOR_TEST, "--exact", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env(
            REQUEST_ENV,
            serde_json::to_string(&request).expect("the request encodes"),
        )
        .env(RESPONSE_ENV, &response));
    out.assert_success();
    let text = std::fs::read_to_string(&response).unwrap_or_else(|e| {
        panic!(
            "the inspector wrote no answer to {} ({e}): does this test binary define \
             #[test] fn {INSPECTOR_TEST}() that calls certd_e2e::pkcs11::serve_if_child()?\n{out}",
            response.display()
        )
    });
    let answer: Result<Vec<TokenObject>, String> =
        serde_json::from_str(&text).expect("the inspector's answer decodes");
    answer.map(|objects| Contents { objects })
}

/// In the child started by [`inspect`]: reads the token as asked, writes
/// the answer and returns `true`. Anywhere else: does nothing and returns
/// `false`.
pub fn serve_if_child() -> bool {
    let (Some(request), Some(response)) = (
        std::env::var_os(REQUEST_ENV),
        std::env::var_os(RESPONSE_ENV),
    ) else {
        return false;
    };
    let request: Request =
        serde_json::from_str(&request.to_string_lossy()).expect("the inspector request decodes");
    let answer = read_token(&request);
    let text = serde_json::to_string(&answer).expect("the answer encodes");
    std::fs::write(&response, text).expect("the inspector can write its answer");
    true
}

fn ck(what: &str) -> impl FnOnce(cryptoki::error::Error) -> String + '_ {
    move |e| format!("{what}: {e:?} ({e})")
}

fn read_token(req: &Request) -> Result<Vec<TokenObject>, String> {
    let pin = std::fs::read_to_string(&req.pin_file)
        .map_err(|e| format!("cannot read {}: {e}", req.pin_file.display()))?;
    let pin = pin.strip_suffix('\n').unwrap_or(&pin).to_string();
    let ctx = Pkcs11::new(&req.module).map_err(ck("loading the module"))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(ck("C_Initialize"))?;
    let slot = ctx
        .get_slots_with_initialized_token()
        .map_err(ck("C_GetSlotList"))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == req.token_label)
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("no token labelled {:?}", req.token_label))?;
    let session = ctx.open_ro_session(slot).map_err(ck("C_OpenSession"))?;
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .map_err(ck("C_Login"))?;
    let handles = session.find_objects(&[]).map_err(ck("C_FindObjects"))?;
    let mut objects = Vec::new();
    for h in handles {
        objects.push(describe(&session, h)?);
    }
    objects.sort_by(|a, b| (&a.class, &a.label, &a.id).cmp(&(&b.class, &b.label, &b.id)));
    Ok(objects)
}

fn describe(session: &Session, h: ObjectHandle) -> Result<TokenObject, String> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
            ],
        )
        .map_err(ck("C_GetAttributeValue"))?;
    let mut obj = TokenObject {
        class: String::new(),
        label: String::new(),
        id: String::new(),
        key_type: None,
        private_key: None,
        secrets: Vec::new(),
    };
    let mut is_private_key = false;
    for a in attrs {
        match a {
            Attribute::Class(c) => {
                is_private_key = c == ObjectClass::PRIVATE_KEY;
                obj.class = c.to_string();
            }
            Attribute::Label(l) => obj.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(id) => obj.id = hex::encode(id),
            Attribute::KeyType(k) => obj.key_type = Some(k.to_string()),
            _ => {}
        }
    }
    if is_private_key {
        obj.private_key = Some(private_key_facts(session, h)?);
    }
    for (name, t) in [
        ("CKA_VALUE", AttributeType::Value),
        ("CKA_PRIVATE_EXPONENT", AttributeType::PrivateExponent),
        ("CKA_PRIME_1", AttributeType::Prime1),
        ("CKA_PRIME_2", AttributeType::Prime2),
    ] {
        obj.secrets.push(read_secret(session, h, name, t));
    }
    Ok(obj)
}

fn private_key_facts(session: &Session, h: ObjectHandle) -> Result<PrivateKeyFacts, String> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
            ],
        )
        .map_err(ck("C_GetAttributeValue"))?;
    let mut f = PrivateKeyFacts {
        token: None,
        private: None,
        sensitive: None,
        extractable: None,
        always_sensitive: None,
        never_extractable: None,
        sign: None,
    };
    for a in attrs {
        match a {
            Attribute::Token(v) => f.token = Some(v),
            Attribute::Private(v) => f.private = Some(v),
            Attribute::Sensitive(v) => f.sensitive = Some(v),
            Attribute::Extractable(v) => f.extractable = Some(v),
            Attribute::AlwaysSensitive(v) => f.always_sensitive = Some(v),
            Attribute::NeverExtractable(v) => f.never_extractable = Some(v),
            Attribute::Sign(v) => f.sign = Some(v),
            _ => {}
        }
    }
    Ok(f)
}

/// Tries both ways of reading a secret attribute: asking for its size and
/// asking for its value.
fn read_secret(
    session: &Session,
    h: ObjectHandle,
    name: &str,
    t: AttributeType,
) -> SecretAttribute {
    let info = match session.get_attribute_info(h, &[t]) {
        Ok(infos) => match infos.first() {
            Some(AttributeInfo::Sensitive) => "sensitive".to_string(),
            Some(AttributeInfo::Unavailable) => "unavailable".to_string(),
            Some(AttributeInfo::TypeInvalid) => "type_invalid".to_string(),
            Some(AttributeInfo::Available(n)) => format!("available({n})"),
            None => "no answer".to_string(),
        },
        Err(e) => format!("error: {e:?}"),
    };
    let bytes_returned = match session.get_attributes(h, &[t]) {
        Ok(attrs) => attrs
            .iter()
            .map(|a| match a {
                Attribute::Value(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v) => v.len(),
                _ => 0,
            })
            .sum(),
        Err(_) => 0,
    };
    SecretAttribute {
        attribute: name.to_string(),
        info,
        bytes_returned,
    }
}
