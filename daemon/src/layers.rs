//! Keeps the layers documented in `lib.rs`: every module uses only modules
//! above it in the list. The test reads the sources themselves, so a path
//! that reaches down the list fails here, naming the file and the module.
//!
//! What counts is production code: comments, string and character literals
//! and everything under `#[cfg(test)]` are left out. A use is a path that
//! starts at the crate root: `crate::name…`, each entry of `crate::{…}`,
//! and a `super::` path that climbs out of its module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules in the order `lib.rs` documents: its lines
/// ``//! N. `name` — …``.
fn documented_order(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let item = line.strip_prefix("//! ")?;
            let (number, rest) = item.split_once(". `")?;
            number.parse::<u32>().ok()?;
            Some(rest.split_once('`')?.0.to_string())
        })
        .collect()
}

/// `text` with every comment, string literal and character literal
/// blanked out (line breaks kept), so braces and paths in them count for
/// nothing.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if !after_ident && (c == 'r' || c == 'b') && raw_string_start(&chars, i).is_some() {
            // r"…", r#"…"#, br"…": no escapes; ends at the quote and as
            // many hashes as it began with.
            let (hashes, body) = raw_string_start(&chars, i).unwrap_or((0, i));
            for _ in i..body {
                out.push(' ');
            }
            i = body;
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let skip = if chars[i] == '\\' { 2 } else { 1 };
                for k in 0..skip {
                    if let Some(&c) = chars.get(i + k) {
                        out.push(blank(c));
                    }
                }
                i += skip;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character: '\n', '\'', '\u{…}'.
            out.push_str("  ");
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            // Lifetimes and labels ('a) stay as they are.
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Where a raw string starting at `i` has its body: the number of hashes
/// and the index after the opening quote.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes + 1))
}

/// Stripped code without the items under `#[cfg(test)]`.
fn without_test_items(code: &str) -> String {
    const TEST_ONLY: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(TEST_ONLY) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = item_end(item);
        // Keep the line breaks, so what remains is easy to relate to the file.
        out.extend(item[..end].chars().filter(|c| *c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The length of the item that starts at the beginning of `code` (its
/// attributes included): up to its first `;` or through its `{…}` body.
fn item_end(code: &str) -> usize {
    // Brackets and parentheses (attributes, signatures) may hold `;`.
    let mut nesting = 0i32;
    let mut braces = 0i32;
    for (i, c) in code.char_indices() {
        match c {
            '(' | '[' => nesting += 1,
            ')' | ']' => nesting -= 1,
            ';' if braces == 0 && nesting == 0 => return i + 1,
            '{' => braces += 1,
            '}' => {
                braces -= 1;
                if braces == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Ident(s)) => Some(s),
        _ => None,
    }
}

/// The crate-level names that `code` (of a file `depth` modules below the
/// crate root) uses.
fn crate_uses(code: &str, depth: usize) -> BTreeSet<String> {
    let t = tokens(code);
    let mut uses = BTreeSet::new();
    // Brace depths at which inline `mod name { … }` blocks opened.
    let mut inline_modules: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Token::Punct('{') => braces += 1,
            Token::Punct('}') => {
                braces = braces.saturating_sub(1);
                if inline_modules.last() == Some(&braces) {
                    inline_modules.pop();
                }
            }
            Token::Ident(m)
                if m == "mod"
                    && ident(t.get(i + 1)).is_some()
                    && t.get(i + 2) == Some(&Token::Punct('{')) =>
            {
                inline_modules.push(braces);
            }
            Token::Ident(root) if root == "crate" || root == "super" => {
                if i > 0 && t[i - 1] == Token::Punct('$') {
                    i += 1;
                    continue;
                }
                let mut j = i;
                let mut supers = 0;
                if root == "super" {
                    while ident(t.get(j)) == Some("super") && t.get(j + 1) == Some(&Token::PathSep)
                    {
                        supers += 1;
                        j += 2;
                    }
                    if supers < depth + inline_modules.len() {
                        i = j.max(i + 1);
                        continue;
                    }
                } else if t.get(j + 1) == Some(&Token::PathSep) {
                    j += 2;
                } else {
                    // `pub(crate)` and the like.
                    i += 1;
                    continue;
                }
                match t.get(j) {
                    Some(Token::Ident(name)) => {
                        uses.insert(name.clone());
                    }
                    Some(Token::Punct('{')) => {
                        // Each entry's first segment, at the group's own level.
                        let mut level = 0;
                        let mut entry_start = true;
                        for tok in &t[j..] {
                            match tok {
                                Token::Punct('{') => {
                                    level += 1;
                                    entry_start = level == 1;
                                }
                                Token::Punct('}') => {
                                    level -= 1;
                                    if level == 0 {
                                        break;
                                    }
                                }
                                Token::Punct(',') if level == 1 => entry_start = true,
                                Token::Ident(name) if level == 1 && entry_start => {
                                    uses.insert(name.clone());
                                    entry_start = false;
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    uses
}

/// The production code of a file: no comments, literals or test items.
fn production_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    without_test_items(&strip_comments_and_literals(&text))
}

/// The `mod name;` declarations of production code.
fn declared_modules(code: &str) -> Vec<String> {
    let t = tokens(code);
    (0..t.len())
        .filter(|&i| ident(t.get(i)) == Some("mod") && t.get(i + 2) == Some(&Token::Punct(';')))
        .filter_map(|i| ident(t.get(i + 1)).map(str::to_string))
        .collect()
}

/// Every production file of module `name` (declared in the crate root),
/// with its depth below the root: its own file and those of the
/// submodules it declares outside test code.
fn module_files(src: &Path, name: &str) -> Vec<(PathBuf, usize)> {
    let flat = src.join(format!("{name}.rs"));
    let root = if flat.exists() {
        flat
    } else {
        src.join(name).join("mod.rs")
    };
    let mut files = Vec::new();
    let mut pending = vec![(root, src.join(name), 1)];
    while let Some((file, children_dir, depth)) = pending.pop() {
        for child in declared_modules(&production_code(&file)) {
            let flat = children_dir.join(format!("{child}.rs"));
            let path = if flat.exists() {
                flat
            } else {
                children_dir.join(&child).join("mod.rs")
            };
            pending.push((path, children_dir.join(&child), depth + 1));
        }
        files.push((file, depth));
    }
    files
}

#[test]
fn every_module_uses_only_modules_above_it_in_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs reads");
    let order = documented_order(&lib);
    let declared: BTreeSet<String> = declared_modules(&production_code(&src.join("lib.rs")))
        .into_iter()
        .collect();
    let documented: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        declared, documented,
        "lib.rs must list every module it declares (outside test code) in its doc comment, once"
    );
    assert_eq!(order.len(), documented.len(), "a module listed twice");

    let mut wrong = Vec::new();
    for (place, module) in order.iter().enumerate() {
        for (file, depth) in module_files(&src, module) {
            for used in crate_uses(&production_code(&file), depth) {
                let shown = file.strip_prefix(&src).unwrap_or(&file).display();
                match order.iter().position(|m| *m == used) {
                    Some(p) if p <= place => {}
                    Some(_) => wrong.push(format!(
                        "{shown}: `{module}` uses `{used}`, which comes after it in lib.rs"
                    )),
                    None => wrong.push(format!(
                        "{shown}: `{module}` uses `crate::{used}`, which is no module of lib.rs's list"
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules use modules listed after them in lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_production_paths_count() {
    let text = r###"
use crate::audit::{self, AuditEvent};
use crate::{clock::Clock, ledger::{Ledger, Serial}};
pub(crate) fn f() -> &'static str {
    let _ = crate::x509::cert_pem(&[]);
    let _ = '{';
    let _ = "crate::daemon::Services {";
    let _ = r#"crate::server "# ;
    // crate::control
    /* crate::status /* nested */ */
    super::policy::Grant::name
}
mod inline {
    use super::f;
}
#[cfg(test)]
mod tests {
    use crate::testing::TestCa;
    fn g() { let _ = "}"; }
}
#[cfg(test)]
use crate::revoke;
fn after() { let _ = crate::issue::Issuer::new; }
"###;
    let code = without_test_items(&strip_comments_and_literals(text));
    let names: Vec<String> = crate_uses(&code, 1).into_iter().collect();
    assert_eq!(
        names,
        ["audit", "clock", "issue", "ledger", "policy", "x509"],
        "{code}"
    );
    assert_eq!(
        declared_modules("pub mod a;\nmod b { }\nmod c;"),
        ["a", "c"]
    );
    assert_eq!(
        documented_order(
            "//! # Layers\n//! 1. `clock` — time.\n//! 2. `hsm` — keys.\n//! see `x`\n"
        ),
        ["clock", "hsm"]
    );
}
