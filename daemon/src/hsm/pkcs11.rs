//! The PKCS#11 signer, over `cryptoki`.
//!
//! Split as in other HSM-backed CAs: a [`Module`] (the loaded library, one
//! per process and path), [`TokenSession`] helpers for the operations a
//! ceremony needs, and a [`Pkcs11Signer`] holding a pool of sessions for one
//! key. Signing sessions that fail are discarded and re-opened; the signer
//! keeps one session open for as long as it lives so the token's login state
//! (which PKCS#11 keeps per application, not per session) survives pool churn.

use super::{HsmError, KeyType, Signer, TokenSigner};
use const_oid::db::{rfc5912, rfc8410};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{BitString, OctetString};
use der::{Any, Decode, Encode};
use secrecy::SecretString;
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// A loaded and initialised PKCS#11 library.
#[derive(Debug)]
pub struct Module {
    /// Replaced by [`Module::reinitialize`]; readers take a clone.
    ctx: std::sync::RwLock<Pkcs11>,
    path: PathBuf,
}

/// Modules are process-wide: PKCS#11 allows one `C_Initialize` per library
/// per process, so every user of a path shares one [`Module`].
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the data
    // it guards here (pools, handles) stays structurally valid, so go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn ck_err(function: &str, e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, f) => HsmError::Pkcs11 {
            function: format!("{f:?}"),
            // The code's name, then cryptoki's words for it.
            rv: format!("{rv:?} ({rv})"),
        },
        other => HsmError::Pkcs11 {
            function: function.to_string(),
            rv: other.to_string(),
        },
    }
}

/// Whether an error means the session (or the whole token) is gone, as
/// opposed to a problem with this one request.
pub fn is_session_fault(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::GeneralError
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

impl Module {
    /// Loads and initialises the library at `path`, or returns the already
    /// loaded one.
    pub fn open(path: &Path) -> Result<Arc<Module>, HsmError> {
        let mut reg = lock(registry());
        if let Some(m) = reg.get(path) {
            return Ok(m.clone());
        }
        let module_err = |reason: String| HsmError::Module {
            module: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            return Err(module_err("no such file".into()));
        }
        let ctx = Pkcs11::new(path).map_err(|e| module_err(e.to_string()))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(module_err(e.to_string())),
        }
        let m = Arc::new(Module {
            ctx: std::sync::RwLock::new(ctx),
            path: path.to_path_buf(),
        });
        reg.insert(path.to_path_buf(), m.clone());
        Ok(m)
    }

    /// The library path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ctx(&self) -> Pkcs11 {
        self.ctx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Finalises and initialises the library again, so it rescans its
    /// slots: SoftHSM, like many modules, does not notice a token that went
    /// away and came back otherwise. Every session of the old generation
    /// must be closed first (the caller drops its signers).
    pub fn reinitialize(&self) -> Result<(), HsmError> {
        let mut ctx = self.ctx.write().unwrap_or_else(|p| p.into_inner());
        let module_err = |reason: String| HsmError::Module {
            module: self.path.display().to_string(),
            reason,
        };
        let _ = ctx.clone().finalize();
        let fresh = Pkcs11::new(&self.path).map_err(|e| module_err(e.to_string()))?;
        match fresh.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(module_err(e.to_string())),
        }
        *ctx = fresh;
        Ok(())
    }

    /// Finds the slot holding the initialised token labelled `label`.
    pub fn find_slot(&self, label: &str) -> Result<Slot, HsmError> {
        let ctx = self.ctx();
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| ck_err("C_GetSlotList", e))?;
        for slot in slots {
            let info = match ctx.get_token_info(slot) {
                Ok(i) => i,
                Err(_) => continue,
            };
            if info.label().trim_end() == label {
                if info.user_pin_locked() {
                    return Err(HsmError::PinLocked(label.to_string()));
                }
                return Ok(slot);
            }
        }
        Err(HsmError::TokenNotFound(label.to_string()))
    }

    /// Opens a read-write session on `slot`.
    pub fn open_session(&self, slot: Slot) -> Result<Session, HsmError> {
        self.ctx()
            .open_rw_session(slot)
            .map_err(|e| ck_err("C_OpenSession", e))
    }
}

/// Logs the normal user in. Called exactly once per attempt: a wrong PIN is
/// reported, never retried.
///
/// PKCS#11 keeps one login per token for the whole process, so a token
/// already logged in accepts any PIN without checking it. With `fresh`, such
/// a login is dropped and redone so the PIN really is checked; callers pass
/// `fresh = false` only when they have checked the PIN against the one the
/// token is logged in with.
pub fn login(
    session: &Session,
    token_label: &str,
    pin: &SecretString,
    fresh: bool,
) -> Result<(), HsmError> {
    let auth: AuthPin = pin.clone();
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) => Ok(()),
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) if fresh => {
            session.logout().map_err(|e| ck_err("C_Logout", e))?;
            login(session, token_label, pin, false)
        }
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            Err(HsmError::PinIncorrect(token_label.to_string()))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
            Err(HsmError::PinLocked(token_label.to_string()))
        }
        Err(CkError::Pkcs11(RvError::PinLenRange, _)) => {
            Err(HsmError::PinIncorrect(token_label.to_string()))
        }
        Err(e) => Err(ck_err("C_Login", e)),
    }
}

/// Every object in the token carrying `label`, of any class.
pub fn objects_with_label(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(|e| ck_err("C_FindObjects", e))
}

/// Finds the private and public key objects labelled `label`.
pub fn find_key_pair(
    session: &Session,
    token_label: &str,
    label: &str,
) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
    let find = |class| {
        session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| ck_err("C_FindObjects", e))
    };
    let not_found = || HsmError::KeyNotFound {
        token: token_label.to_string(),
        label: label.to_string(),
    };
    let private = find(ObjectClass::PRIVATE_KEY)?;
    let public = find(ObjectClass::PUBLIC_KEY)?;
    match (private.as_slice(), public.as_slice()) {
        ([p], [q]) => Ok((*p, *q)),
        ([], _) | (_, []) => Err(not_found()),
        _ => Err(HsmError::Unsupported(format!(
            "token {token_label:?} holds several keys labelled {label:?}; labels must be unique"
        ))),
    }
}

fn ec_params(key_type: KeyType) -> Result<Vec<u8>, HsmError> {
    let oid = match key_type {
        KeyType::P256 => rfc5912::SECP_256_R_1,
        KeyType::P384 => rfc5912::SECP_384_R_1,
        KeyType::Ed25519 => rfc8410::ID_ED_25519,
        other => return Err(HsmError::Unsupported(format!("{other} is not an EC key"))),
    };
    oid.to_der()
        .map_err(|e| HsmError::Unsupported(format!("encoding curve: {e}")))
}

/// Generates a key pair inside the token. The private key is a token object,
/// sensitive and never extractable; it can only sign.
pub fn generate_key_pair(
    session: &Session,
    key_type: KeyType,
    label: &str,
) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| HsmError::Unavailable(format!("OS RNG: {e}")))?;
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let mut public = common(false);
    public.push(Attribute::Verify(true));
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
    ]);
    let mechanism = match key_type {
        KeyType::P256 | KeyType::P384 => {
            public.push(Attribute::EcParams(ec_params(key_type)?));
            Mechanism::EccKeyPairGen
        }
        KeyType::Ed25519 => {
            public.push(Attribute::EcParams(ec_params(key_type)?));
            Mechanism::EccEdwardsKeyPairGen
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits = key_type.rsa_bits().unwrap_or(2048) as u64;
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            public.push(Attribute::Encrypt(false));
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    let (pub_h, priv_h) = session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::MechanismInvalid, _)
            | CkError::Pkcs11(RvError::CurveNotSupported, _)
            | CkError::Pkcs11(RvError::DomainParamsInvalid, _) => {
                HsmError::Unsupported(format!("the token cannot generate {key_type} keys"))
            }
            e => ck_err("C_GenerateKeyPair", e),
        })?;
    Ok((priv_h, pub_h))
}

/// Reads a public key object back as a SubjectPublicKeyInfo and key type.
pub fn public_key_info(
    session: &Session,
    public: ObjectHandle,
) -> Result<(KeyType, SubjectPublicKeyInfoOwned), HsmError> {
    let attrs = session
        .get_attributes(public, &[AttributeType::KeyType])
        .map_err(|e| ck_err("C_GetAttributeValue", e))?;
    let ck_type = attrs.iter().find_map(|a| match a {
        Attribute::KeyType(k) => Some(*k),
        _ => None,
    });
    let bad = |m: &str| HsmError::Unsupported(m.to_string());
    match ck_type {
        Some(k) if k == CkKeyType::EC || k == CkKeyType::EC_EDWARDS => {
            let attrs = session
                .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
                .map_err(|e| ck_err("C_GetAttributeValue", e))?;
            let mut params = None;
            let mut point = None;
            for a in attrs {
                match a {
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::EcPoint(p) => point = Some(p),
                    _ => {}
                }
            }
            let params = params.ok_or_else(|| bad("EC key without CKA_EC_PARAMS"))?;
            let point = point.ok_or_else(|| bad("EC key without CKA_EC_POINT"))?;
            // CKA_EC_POINT is a DER OCTET STRING around the point; some
            // tokens return the bare point, so accept both.
            let raw = match OctetString::from_der(&point) {
                Ok(os) => os.as_bytes().to_vec(),
                Err(_) => point,
            };
            let curve = const_oid::ObjectIdentifier::from_der(&params)
                .map_err(|_| bad("EC key with curve parameters that are not a named curve OID"))?;
            let key_type = match curve {
                c if c == rfc5912::SECP_256_R_1 => KeyType::P256,
                c if c == rfc5912::SECP_384_R_1 => KeyType::P384,
                c if c == rfc8410::ID_ED_25519 => KeyType::Ed25519,
                c => return Err(bad(&format!("curve {c} is not supported"))),
            };
            let algorithm = if key_type == KeyType::Ed25519 {
                AlgorithmIdentifierOwned {
                    oid: rfc8410::ID_ED_25519,
                    parameters: None,
                }
            } else {
                AlgorithmIdentifierOwned {
                    oid: rfc5912::ID_EC_PUBLIC_KEY,
                    parameters: Some(
                        Any::encode_from(&curve).map_err(|e| bad(&format!("curve: {e}")))?,
                    ),
                }
            };
            let spki = SubjectPublicKeyInfoOwned {
                algorithm,
                subject_public_key: BitString::from_bytes(&raw)
                    .map_err(|e| bad(&format!("public key: {e}")))?,
            };
            Ok((key_type, spki))
        }
        Some(k) if k == CkKeyType::RSA => {
            let attrs = session
                .get_attributes(
                    public,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(|e| ck_err("C_GetAttributeValue", e))?;
            let mut n = None;
            let mut e = None;
            for a in attrs {
                match a {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            let n = n.ok_or_else(|| bad("RSA key without modulus"))?;
            let e = e.ok_or_else(|| bad("RSA key without exponent"))?;
            let pk = pkcs1::RsaPublicKey {
                modulus: der::asn1::UintRef::new(&n).map_err(|e| bad(&e.to_string()))?,
                public_exponent: der::asn1::UintRef::new(&e).map_err(|e| bad(&e.to_string()))?,
            };
            let der = pk.to_der().map_err(|e| bad(&e.to_string()))?;
            let spki = SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: rfc5912::RSA_ENCRYPTION,
                    parameters: Some(Any::from(der::asn1::Null)),
                },
                subject_public_key: BitString::from_bytes(&der).map_err(|e| bad(&e.to_string()))?,
            };
            let key_type = KeyType::of_spki(&spki).map_err(|m| bad(&m))?;
            Ok((key_type, spki))
        }
        _ => Err(bad(
            "key type not supported (use EC P-256/P-384, RSA or Ed25519)",
        )),
    }
}

/// One signing operation with the token key: hashing where the mechanism
/// expects a digest, and ECDSA's raw r‖s converted to DER for X.509.
pub fn sign_raw(
    session: &Session,
    key_type: KeyType,
    key: ObjectHandle,
    message: &[u8],
) -> Result<Vec<u8>, CkError> {
    match key_type {
        KeyType::P256 => {
            let digest = sha2::Sha256::digest(message);
            let raw = session.sign(&Mechanism::Ecdsa, key, &digest)?;
            p256::ecdsa::Signature::from_slice(&raw)
                .map(|s| s.to_der().as_bytes().to_vec())
                .map_err(|_| device_fault())
        }
        KeyType::P384 => {
            let digest = sha2::Sha384::digest(message);
            let raw = session.sign(&Mechanism::Ecdsa, key, &digest)?;
            p384::ecdsa::Signature::from_slice(&raw)
                .map(|s| s.to_der().as_bytes().to_vec())
                .map_err(|_| device_fault())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            session.sign(&Mechanism::Sha256RsaPkcs, key, message)
        }
        KeyType::Ed25519 => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            key,
            message,
        ),
    }
}

/// A token returning a malformed r‖s is a device fault.
fn device_fault() -> CkError {
    CkError::Pkcs11(RvError::DeviceError, cryptoki::context::Function::Sign)
}

/// A pool of sessions on one slot; sessions that fail are dropped (closed)
/// and replaced on demand.
struct SessionPool {
    module: Arc<Module>,
    slot: Slot,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
}

impl SessionPool {
    fn checkout(&self) -> Result<Session, HsmError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(s);
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return self.module.open_session(self.slot).inspect_err(|_| {
                    lock(&self.state).open -= 1;
                    self.freed.notify_one();
                });
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, s: Session) {
        lock(&self.state).idle.push(s);
        self.freed.notify_one();
    }

    fn discard(&self, s: Session) {
        drop(s);
        lock(&self.state).open -= 1;
        self.freed.notify_one();
    }
}

/// A certifier key in a PKCS#11 token, logged in and ready to sign.
pub struct Pkcs11Signer {
    token_label: String,
    key_label: String,
    key_type: KeyType,
    spki: SubjectPublicKeyInfoOwned,
    key: ObjectHandle,
    pool: SessionPool,
    /// Holds the login: PKCS#11 logs out when an application's last session
    /// on a token closes.
    anchor: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// Finds the token and key, logs in with `pin` (see [`login`] for
    /// `fresh_login`), and prepares `sessions` signing sessions.
    pub fn open(
        module: Arc<Module>,
        token_label: &str,
        key_label: &str,
        pin: &SecretString,
        sessions: usize,
        fresh_login: bool,
    ) -> Result<Pkcs11Signer, HsmError> {
        let slot = module.find_slot(token_label)?;
        let anchor = module.open_session(slot)?;
        login(&anchor, token_label, pin, fresh_login)?;
        let (key, public) = find_key_pair(&anchor, token_label, key_label)?;
        let (key_type, spki) = public_key_info(&anchor, public)?;
        Ok(Pkcs11Signer {
            token_label: token_label.to_string(),
            key_label: key_label.to_string(),
            key_type,
            spki,
            key,
            pool: SessionPool {
                module,
                slot,
                max: sessions.max(1),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            anchor: Mutex::new(anchor),
        })
    }

    /// The token label.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// The key label.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }
}

impl TokenSigner for Pkcs11Signer {
    /// Logs the token out. Other signers on the same token lose their login too,
    /// which is PKCS#11's model; the daemon deactivates per token accordingly.
    fn logout(&self) -> Result<(), HsmError> {
        match lock(&self.anchor).logout() {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
            Err(e) => Err(ck_err("C_Logout", e)),
        }
    }

    /// Checks that the token still answers on the signer's own session.
    fn probe(&self) -> Result<(), HsmError> {
        lock(&self.anchor)
            .get_session_info()
            .map(|_| ())
            .map_err(|e| ck_err("C_GetSessionInfo", e))
    }
}

impl Signer for Pkcs11Signer {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let session = self.pool.checkout().map_err(|e| {
            HsmError::Unavailable(format!(
                "signing with {:?} in token {:?}: no session: {e}",
                self.key_label, self.token_label
            ))
        })?;
        match sign_raw(&session, self.key_type, self.key, message) {
            Ok(sig) => {
                self.pool.give_back(session);
                Ok(sig)
            }
            Err(e) if is_session_fault(&e) => {
                self.pool.discard(session);
                Err(HsmError::Unavailable(format!(
                    "signing with {:?} in token {:?} failed: {e}",
                    self.key_label, self.token_label
                )))
            }
            Err(e) => {
                self.pool.give_back(session);
                Err(ck_err("C_Sign", e))
            }
        }
    }
}
