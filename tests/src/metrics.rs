//! Scraping a metrics endpoint and reading it through the Prometheus
//! project's own parser (`tests/tools/parse-metrics`, Debian's
//! python3-prometheus-client): a test asserts on parsed samples, never on
//! grepped text, and an exposition the parser refuses fails the test.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    /// Its metric family.
    pub family: String,
    /// The family's type (counter, gauge, histogram, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The sample's own name (`…_total`, `…_bucket`, `…_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The answer's Content-Type.
    pub content_type: String,
    /// Every sample, in the order of the exposition.
    pub samples: Vec<Sample>,
    /// The text as served (for failure messages).
    pub text: String,
}

/// `GET url` with curl (plain HTTP: metrics listeners are local), parsed.
pub fn scrape(url: &str) -> Scrape {
    let out = crate::run(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "-", "-w", "\n%{content_type}"])
            .arg(url),
    );
    out.assert_success();
    let (text, content_type) = out
        .stdout
        .rsplit_once('\n')
        .map(|(t, c)| (t.to_string(), c.to_string()))
        .unwrap_or_default();
    Scrape {
        samples: parse(&text),
        content_type,
        text,
    }
}

/// Parses an exposition with the Prometheus parser; panics with its
/// message when it refuses the text.
pub fn parse(text: &str) -> Vec<Sample> {
    let tool = crate::repo_root().join("tests/tools/parse-metrics");
    let mut child = Command::new(&tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (./test installs python3-prometheus-client)",
                tool.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("parse-metrics");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

impl Scrape {
    /// The value of sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// [`Scrape::value`], panicking with the exposition when it is absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The type the exposition gives family `family`.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.samples
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
    }
}
