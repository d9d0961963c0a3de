//! A PKCS#11 module that breaks on command, for tests of how certd copes
//! with a failing token.
//!
//! [`fault_module`] compiles `tests/pkcs11-fault/fault.c` into a shared
//! library that wraps SoftHSM2: certd loads it as its `hsm.module`, and it
//! forwards every call to SoftHSM until the test switches its mode with a
//! [`FaultControl`]:
//!
//! - [`FaultMode::Pass`]: everything is forwarded.
//! - [`FaultMode::Error`]: `C_GetSlotList`, `C_GetTokenInfo`,
//!   `C_OpenSession`, `C_GetSessionInfo`, `C_Login`, `C_FindObjectsInit`,
//!   `C_SignInit` and `C_Sign` return `CKR_DEVICE_ERROR` (a dead HSM).
//! - [`FaultMode::Corrupt`]: `C_Sign` succeeds but one bit of the signature
//!   is flipped (a token that signs wrongly).
//! - [`FaultMode::Stall`]: `C_Sign` waits until the mode changes, then goes
//!   on in the new mode (a slow token, held as long as the test wants).
//!
//! The module reads the mode file at every such call, so the mode of a
//! running daemon changes as soon as [`FaultControl::set`] returns. Every
//! fault it injects appends a line to a count file ([`injected_faults`]);
//! a stalled `C_Sign` appends `stall C_Sign` when it starts to wait, which
//! tells a test that a signature is now held.
//! The daemon finds the real module, the mode file and the count file
//! through the variables [`env_for`] returns.

use crate::process::run;
use crate::token::SOFTHSM_MODULE;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The real PKCS#11 module the fault module wraps (default: SoftHSM2).
pub const REAL_MODULE_ENV: &str = "CERTD_FAULT_REAL_MODULE";
/// The file whose first word is the fault mode.
pub const CONTROL_ENV: &str = "CERTD_FAULT_CONTROL";
/// The file that gets one line per injected fault (`"<mode> <function>"`).
pub const COUNT_ENV: &str = "CERTD_FAULT_COUNT";

/// File name of the compiled module.
const MODULE_NAME: &str = "libcertd-fault-pkcs11.so";

/// Distinguishes the temporary files of one process.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A name next to `path` that no other thread or process uses, for a file
/// that is then renamed to `path`.
fn scratch_name(path: &Path) -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// The fault module's source, `tests/pkcs11-fault/fault.c`.
pub fn fault_source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pkcs11-fault/fault.c")
}

/// Where the compiled module goes: `tmp/certd-fault` in the cargo target
/// directory of the running test (`<target>/<profile>/deps/<test>` →
/// `<target>/tmp`, where cargo also puts `CARGO_TARGET_TMPDIR`, which it
/// sets for integration tests only, not for this library), or in the
/// workspace's `target` when the test runs from somewhere else.
fn build_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        Some(deps.parent()?.parent()?.join("tmp"))
    });
    from_exe
        .unwrap_or_else(|| crate::repo_root().join("target/tmp"))
        .join("certd-fault")
}

/// The fault-injecting PKCS#11 module, compiled from
/// `tests/pkcs11-fault/fault.c` the first time a process asks for it, and
/// again only when `fault.c` is newer than the library.
///
/// Safe to call from several threads and test processes at once: each
/// compiler run writes a name of its own, which is then renamed into place
/// (a daemon that has the old library loaded keeps it). Panics, with the
/// compiler's output, if the module does not compile.
pub fn fault_module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE.get_or_init(build_fault_module).clone()
}

fn build_fault_module() -> PathBuf {
    let source = fault_source();
    let dir = build_dir();
    let out = dir.join(MODULE_NAME);
    let source_time = std::fs::metadata(&source)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", source.display()));
    let up_to_date = std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= source_time);
    if up_to_date {
        return out;
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let tmp = scratch_name(&out);
    let built = run(Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
        .arg("-I/usr/include/p11-kit-1")
        .arg("-o")
        .arg(&tmp)
        .arg(&source)
        .args(["-ldl", "-lpthread"]));
    if !built.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "the fault PKCS#11 module {} does not compile \
             (the header comes from libp11-kit-dev)\n{built}",
            source.display()
        );
    }
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// What the fault module does to the calls it watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Forward everything.
    Pass,
    /// Fail the watched calls with `CKR_DEVICE_ERROR`.
    Error,
    /// Flip one bit of every signature `C_Sign` returns.
    Corrupt,
    /// Hold every `C_Sign` until the mode is changed again.
    Stall,
}

impl FaultMode {
    /// The word the module reads from the control file.
    pub fn word(self) -> &'static str {
        match self {
            FaultMode::Pass => "pass",
            FaultMode::Error => "error",
            FaultMode::Corrupt => "corrupt",
            FaultMode::Stall => "stall",
        }
    }
}

/// The control file of a fault module: its first word is the mode.
#[derive(Debug, Clone)]
pub struct FaultControl {
    path: PathBuf,
}

impl FaultControl {
    /// A control file `dir/pkcs11-fault.mode`, set to [`FaultMode::Pass`].
    pub fn new(dir: &Path) -> FaultControl {
        let control = FaultControl {
            path: dir.join("pkcs11-fault.mode"),
        };
        control.set(FaultMode::Pass);
        control
    }

    /// Switches the mode. The file is replaced by a rename, so the module
    /// sees the old mode or the new one, never a partly written file.
    pub fn set(&self, mode: FaultMode) {
        let tmp = scratch_name(&self.path);
        std::fs::write(&tmp, format!("{}\n", mode.word()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.path).unwrap_or_else(|e| {
            panic!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                self.path.display()
            )
        });
    }

    /// The control file (the value of `CERTD_FAULT_CONTROL`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lines of the count file, one per injected fault, such as
/// `"corrupt C_Sign"` or `"error C_OpenSession"`; none when the file does
/// not exist (no fault injected yet).
pub fn injected_fault_log(count_path: &Path) -> Vec<String> {
    match std::fs::read_to_string(count_path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", count_path.display()),
    }
}

/// How many faults the module has injected so far: the lines of the count
/// file (0 when it does not exist).
pub fn injected_faults(count_path: &Path) -> usize {
    injected_fault_log(count_path).len()
}

/// The environment a process that loads [`fault_module`] needs: the real
/// module (SoftHSM2), the control file and the count file. For
/// `CertdInstance::start`, borrow it as
/// `env.iter().map(|(k, v)| (k.as_str(), OsStr::new(v)))`.
pub fn env_for(control: &FaultControl, count: &Path) -> Vec<(String, String)> {
    let text = |p: &Path| {
        p.to_str()
            .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
            .to_string()
    };
    vec![
        (REAL_MODULE_ENV.to_string(), SOFTHSM_MODULE.to_string()),
        (CONTROL_ENV.to_string(), text(control.path())),
        (COUNT_ENV.to_string(), text(count)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::CmdOutput;
    use crate::token::Token;

    #[test]
    fn fault_module_compiles_and_exports_only_c_get_function_list() {
        let module = fault_module();
        assert!(module.is_file(), "{} is missing", module.display());
        // A second call in the same process reuses the library.
        assert_eq!(fault_module(), module);
        let out = run(Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&module));
        out.assert_success();
        let exported: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .filter(|name| name.starts_with("C_"))
            .collect();
        // Nothing else: a module that also exported C_GetInterface would be
        // asked for that first and could bypass the function list.
        assert_eq!(exported, ["C_GetFunctionList"], "{out}");
    }

    #[test]
    fn fault_control_and_count_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let control = FaultControl::new(dir.path());
        let word = || std::fs::read_to_string(control.path()).expect("the control file exists");
        assert_eq!(word(), "pass\n");
        control.set(FaultMode::Corrupt);
        assert_eq!(word(), "corrupt\n");
        control.set(FaultMode::Error);
        assert_eq!(word(), "error\n");
        control.set(FaultMode::Stall);
        assert_eq!(word(), "stall\n");
        let count = dir.path().join("faults");
        assert_eq!(injected_faults(&count), 0);
        std::fs::write(&count, "error C_Login\ncorrupt C_Sign\n").expect("the count file");
        assert_eq!(injected_faults(&count), 2);
        assert_eq!(
            injected_fault_log(&count),
            ["error C_Login", "corrupt C_Sign"]
        );
        let env = env_for(&control, &count);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, [REAL_MODULE_ENV, CONTROL_ENV, COUNT_ENV]);
        // Only the control file is left: no temporary files.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("the directory lists")
            .map(|e| e.expect("a directory entry").file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    /// pkcs11-tool through the fault module against a SoftHSM token: an EC
    /// key signs, and openssl checks the signatures in every mode.
    #[test]
    fn fault_module_wraps_softhsm() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let token = Token::create(dir.path(), "fault");
        let module = fault_module();
        let control = FaultControl::new(dir.path());
        let count = dir.path().join("faults");
        let env = env_for(&control, &count);
        let pkcs11_tool = |args: &[&str]| -> CmdOutput {
            let mut cmd = token.command("pkcs11-tool");
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .env("CERTD_FAULT_TEST_PIN", &token.pin)
                .arg("--module")
                .arg(&module)
                .args(["--token-label", &token.label])
                .args(args);
            run(&mut cmd)
        };
        let login = ["--login", "--pin", "env:CERTD_FAULT_TEST_PIN"];
        let path = |name: &str| dir.path().join(name).display().to_string();

        pkcs11_tool(
            &[
                &login[..],
                &[
                    "--keypairgen",
                    "--key-type",
                    "EC:prime256v1",
                    "--label",
                    "k",
                    "--id",
                    "01",
                ],
            ]
            .concat(),
        )
        .assert_success();
        pkcs11_tool(&[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            "01",
            "-o",
            &path("pub.der"),
        ])
        .assert_success();
        // SoftHSM 2.6 has no ECDSA-SHA256: sign the digest with CKM_ECDSA.
        let data = b"certd fault module";
        std::fs::write(path("data"), data).expect("the data file");
        run(Command::new("openssl")
            .args(["dgst", "-sha256", "-binary", "-out", &path("digest")])
            .arg(path("data")))
        .assert_success();

        let sign = |sig: &str| {
            pkcs11_tool(
                &[
                    &login[..],
                    &[
                        "--sign",
                        "--id",
                        "01",
                        "--mechanism",
                        "ECDSA",
                        "--signature-format",
                        "openssl",
                        "-i",
                        &path("digest"),
                        "-o",
                        &path(sig),
                    ],
                ]
                .concat(),
            )
        };
        let verify = |sig: &str| {
            run(Command::new("openssl")
                .args(["dgst", "-sha256", "-keyform", "DER", "-verify"])
                .arg(path("pub.der"))
                .arg("-signature")
                .arg(path(sig))
                .arg(path("data")))
        };

        sign("pass.sig").assert_success();
        verify("pass.sig").assert_success();
        assert_eq!(injected_faults(&count), 0);

        control.set(FaultMode::Corrupt);
        sign("corrupt.sig").assert_success();
        let out = verify("corrupt.sig");
        assert!(!out.status.success(), "a flipped bit verified\n{out}");
        assert_eq!(injected_fault_log(&count), ["corrupt C_Sign"]);

        control.set(FaultMode::Error);
        let out = sign("error.sig");
        assert!(
            !out.status.success() && out.stderr.contains("CKR_DEVICE_ERROR"),
            "pkcs11-tool should fail with CKR_DEVICE_ERROR\n{out}"
        );
        assert_eq!(injected_faults(&count), 2);

        control.set(FaultMode::Pass);
        sign("again.sig").assert_success();
        verify("again.sig").assert_success();
        assert_eq!(injected_faults(&count), 2);

        // The same key through cryptoki, as certd loads its module: in a
        // child process, which gets SOFTHSM2_CONF and the fault variables.
        let exe = std::env::current_exe().expect("the path of the running test executable");
        let mut cmd = token.command(&exe);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .env(CHILD_ENV, &token.pin_file)
            .args([CHILD_TEST, "--exact", "--test-threads", "1", "--nocapture"]);
        let out = run(&mut cmd);
        out.assert_success();
        assert!(
            out.stdout.contains("1 passed"),
            "the cryptoki child did not run\n{out}"
        );
        assert_eq!(injected_faults(&count), 6);
    }

    /// Set to the user PIN file in the child started by
    /// `fault_module_wraps_softhsm`.
    const CHILD_ENV: &str = "CERTD_FAULT_TEST_CHILD";
    /// The test through which the child re-enters this test binary.
    const CHILD_TEST: &str = "fault::tests::cryptoki_child";

    /// In the child: signs with key 01 of token "fault" through cryptoki
    /// and the fault module, in every mode. Elsewhere: does nothing.
    #[test]
    fn cryptoki_child() {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        use cryptoki::error::{Error, RvError};
        use cryptoki::mechanism::Mechanism;
        use cryptoki::object::{Attribute, ObjectClass};
        use cryptoki::session::UserType;
        use cryptoki::types::AuthPin;

        let Some(pin_file) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let control = FaultControl {
            path: PathBuf::from(std::env::var_os(CONTROL_ENV).expect("CERTD_FAULT_CONTROL")),
        };
        let count = PathBuf::from(std::env::var_os(COUNT_ENV).expect("CERTD_FAULT_COUNT"));
        let pin = std::fs::read_to_string(pin_file).expect("the user PIN file");

        let ctx = Pkcs11::new(fault_module()).expect("cryptoki loads the fault module");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = ctx
            .get_slots_with_initialized_token()
            .expect("C_GetSlotList")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == "fault")
            })
            .expect("the token labelled fault");
        let session = ctx.open_ro_session(slot).expect("C_OpenSession");
        session
            .login(UserType::User, Some(&AuthPin::from(pin)))
            .expect("C_Login");
        let key = |class| {
            session
                .find_objects(&[Attribute::Class(class), Attribute::Id(vec![1])])
                .expect("C_FindObjects")
                .into_iter()
                .next()
                .expect("key 01")
        };
        let (private, public) = (key(ObjectClass::PRIVATE_KEY), key(ObjectClass::PUBLIC_KEY));
        let digest = [0x5a; 32];
        let sign = || session.sign(&Mechanism::Ecdsa, private, &digest);
        let verify = |sig: &[u8]| session.verify(&Mechanism::Ecdsa, public, &digest, sig);
        let before = injected_faults(&count);

        verify(&sign().expect("pass: C_Sign")).expect("pass: the signature verifies");
        assert_eq!(injected_faults(&count), before);

        // cryptoki asks for the length first (NULL buffer): only the
        // signature itself is corrupted, and counted once.
        control.set(FaultMode::Corrupt);
        let bad = sign().expect("corrupt: C_Sign succeeds");
        assert_eq!(bad.len(), 64);
        control.set(FaultMode::Pass);
        assert!(
            matches!(
                verify(&bad),
                Err(Error::Pkcs11(RvError::SignatureInvalid, _))
            ),
            "a signature with a flipped bit verified"
        );
        assert_eq!(
            injected_fault_log(&count)[before..],
            ["corrupt C_Sign".to_string()]
        );

        control.set(FaultMode::Error);
        let dead = |r: Result<_, Error>| matches!(r, Err(Error::Pkcs11(RvError::DeviceError, _)));
        assert!(dead(sign().map(drop)), "C_SignInit should fail");
        assert!(
            dead(ctx.open_ro_session(slot).map(drop)),
            "C_OpenSession should fail"
        );
        assert_eq!(
            injected_fault_log(&count)[before + 1..],
            [
                "error C_SignInit".to_string(),
                "error C_OpenSession".to_string()
            ]
        );

        control.set(FaultMode::Pass);
        verify(&sign().expect("pass again: C_Sign")).expect("pass again: the signature verifies");
        assert_eq!(injected_faults(&count), before + 3);

        // Stalled: C_Sign (on a session of its own, in a thread of its
        // own) waits, says so in the count file, and signs once released.
        control.set(FaultMode::Stall);
        std::thread::scope(|s| {
            let held = s.spawn(|| {
                let session = ctx.open_ro_session(slot).expect("C_OpenSession");
                session.sign(&Mechanism::Ecdsa, private, &digest)
            });
            crate::poll_until(
                std::time::Duration::from_secs(30),
                "C_Sign to stall",
                || (injected_faults(&count) == before + 4).then_some(()),
                || format!("{:?}", injected_fault_log(&count)),
            );
            assert!(!held.is_finished(), "C_Sign returned while stalled");
            control.set(FaultMode::Pass);
            let sig = held.join().expect("the signing thread");
            verify(&sig.expect("stalled: C_Sign")).expect("stalled: the signature verifies");
        });
        assert_eq!(
            injected_fault_log(&count)[before + 3..],
            ["stall C_Sign".to_string()]
        );
    }
}
