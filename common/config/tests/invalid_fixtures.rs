//! The invalid-document corpus: each file under tests/fixtures/invalid ends with
//! `# expect: ...` lines giving, exactly and in order, the diagnostics it must produce.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;

#[test]
fn every_invalid_fixture_produces_exactly_its_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "the corpus must hold at least 40 documents, found {}",
        files.len()
    );
    let mut mismatches = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!expected.is_empty(), "{name} has no `# expect:` line");
        let report = keel_config::load_str(&name, &text, None);
        let actual: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        if actual != expected {
            mismatches.push(format!(
                "{name}\n  expected:\n    {}\n  actual:\n    {}",
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
        assert!(!report.is_ok(), "{name} must be refused");
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_bad_document_does_not_take_its_neighbours_with_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let text = std::fs::read_to_string(dir.join("third-document-invalid.yaml")).unwrap();
    let report = keel_config::load_str("third-document-invalid.yaml", &text, Some("default"));
    let names: Vec<_> = report
        .resources
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let accepted: Vec<_> = report.outcomes.iter().map(|o| o.accepted).collect();
    assert_eq!(accepted, [true, true, false]);
    assert_eq!(report.errors().count(), 1);
    assert_eq!(report.errors().next().unwrap().document, Some(3));
}
