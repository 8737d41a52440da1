//! Named gate and review profiles from `gantry.toml` (`[gates.profiles.<name>]`,
//! `[review.profiles.<name>]`), and their resolution at submit: a job that names a
//! profile is stored with the profile's gates or review written out, so every factory
//! (remote ones have no `gantry.toml`) runs exactly what the server's file said when
//! the job was accepted.

use gantry_core::gate::{self, Gate, GateChoice};
use gantry_core::review::{self, ReviewChoice, ReviewSpec};
use gantry_core::{ParsedJob, SpecError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[gates]` or `[review]` of `gantry.toml`: profiles by name, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSection {
    /// `profiles.<name>`: each checked when the file is read.
    #[serde(default)]
    pub profiles: BTreeMap<String, toml::Value>,
}

/// The profiles a server resolves, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profiles {
    /// Gate lists by profile name.
    pub gates: BTreeMap<String, Vec<Gate>>,
    /// Reviews by profile name.
    pub reviews: BTreeMap<String, ReviewSpec>,
}

impl Profiles {
    /// Checks every profile of `gates` and `review` by the same rules as a job file's
    /// (errors name the key, e.g. `gates.profiles.strict: gate 2 `run`: ...`).
    pub fn from_sections(
        gates: &ProfilesSection,
        reviews: &ProfilesSection,
    ) -> Result<Profiles, String> {
        let mut out = Profiles::default();
        for (name, value) in &gates.profiles {
            out.gates
                .insert(name.clone(), gate::parse_profile(name, value)?);
        }
        for (name, value) in &reviews.profiles {
            let json =
                serde_json::to_value(value).map_err(|e| format!("review.profiles.{name}: {e}"))?;
            let spec =
                review::parse_review(&json).map_err(|e| format!("review.profiles.{name}: {e}"))?;
            out.reviews.insert(name.clone(), spec);
        }
        Ok(out)
    }

    /// Writes out the profiles `job` names; an unknown profile is refused naming the
    /// file, the line and the profiles there are.
    pub fn resolve(&self, job: &mut ParsedJob) -> Result<(), SpecError> {
        if let GateChoice::Profile(name) = &job.spec.gates {
            let gates = self
                .gates
                .get(name)
                .ok_or_else(|| unknown(job, "gates", name, self.gates.keys()))?;
            job.spec.gates = GateChoice::Inline(gates.clone());
        }
        if let ReviewChoice::Profile(name) = &job.spec.review {
            let spec = self
                .reviews
                .get(name)
                .ok_or_else(|| unknown(job, "review", name, self.reviews.keys()))?;
            job.spec.review = ReviewChoice::Inline(spec.clone());
        }
        Ok(())
    }
}

fn unknown<'a>(
    job: &ParsedJob,
    field: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> SpecError {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let listed = if known.is_empty() {
        format!("gantry.toml defines no {field} profiles")
    } else {
        format!("gantry.toml defines: {}", known.join(", "))
    };
    SpecError {
        file: job.file.clone(),
        line: job.field_lines.get(field).copied(),
        field: Some(field.to_string()),
        message: format!("unknown {field} profile `{name}` ({listed})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use std::path::Path;

    const TOML: &str = r#"
[[gates.profiles.strict.gate]]
name = "test"
run = "make test"
timeout = "5m"

[review.profiles.careful]
engine = "claude-code"
threshold = 0.9
"#;

    fn job(front: &str) -> ParsedJob {
        gantry_core::spec::parse_job_file(
            "jobs/a.md",
            &format!("---\ntitle: t\nrepo: /r\ncommand: [x]\n{front}---\nbody\n"),
        )
        .expect("valid job")
    }

    #[test]
    fn a_named_profile_is_written_into_the_job() {
        let cfg = ConfigFile::parse(Path::new("gantry.toml"), TOML).expect("valid config");
        let mut j = job("gates: strict\n");
        cfg.profiles.resolve(&mut j).expect("known profiles");
        let GateChoice::Inline(gates) = &j.spec.gates else {
            panic!("written out: {:?}", j.spec.gates);
        };
        assert_eq!(
            (gates[0].name.as_str(), gates[0].timeout_ms),
            ("test", 300_000)
        );
        assert_eq!(cfg.profiles.reviews["careful"].threshold, 0.9);
        let mut j = job("review: careful\n");
        cfg.profiles.resolve(&mut j).expect("known review profile");
        let ReviewChoice::Inline(review) = &j.spec.review else {
            panic!("written out: {:?}", j.spec.review);
        };
        assert_eq!(review.threshold, 0.9);
    }

    #[test]
    fn an_unknown_profile_is_refused_naming_file_line_and_the_known_ones() {
        let cfg = ConfigFile::parse(Path::new("gantry.toml"), TOML).expect("valid config");
        let mut j = job("priority: 3\ngates: lax\n");
        let e = cfg.profiles.resolve(&mut j).expect_err("unknown");
        assert_eq!((e.field.as_deref(), e.line), (Some("gates"), Some(6)));
        assert!(
            e.message
                .contains("unknown gates profile `lax` (gantry.toml defines: strict)"),
            "{e}"
        );
        let e = Profiles::default()
            .resolve(&mut job("review: careful\n"))
            .expect_err("none defined");
        assert!(e.message.contains("defines no review profiles"), "{e}");
    }

    #[test]
    fn a_bad_profile_fails_the_config_naming_its_key() {
        let bad = "[[gates.profiles.strict.gate]]\nname = \"t\"\n";
        let e = ConfigFile::parse(Path::new("gantry.toml"), bad).expect_err("no run");
        assert!(
            e.to_string()
                .contains("gates.profiles.strict: gate 1 `run`"),
            "{e}"
        );
        let bad = "[review.profiles.careful]\nengine = \"claude-code\"\nthreshold = 2\n";
        let e = ConfigFile::parse(Path::new("gantry.toml"), bad).expect_err("threshold");
        assert!(
            e.to_string()
                .contains("review.profiles.careful: `threshold`"),
            "{e}"
        );
    }
}
