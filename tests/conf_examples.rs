//! Every example configuration shipped in `conf/` must pass `stickgate check`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_passes_check() {
    let files = example_configs();
    assert!(!files.is_empty(), "no conf/*.toml found");
    let mut failures = Vec::new();
    for f in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_stickgate"))
            .arg("check")
            .arg("--config")
            .arg(f)
            .output()
            .expect("run stickgate check");
        if !out.status.success() {
            failures.push(format!(
                "{}: {}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_documented_examples_exist() {
    let names: Vec<String> = example_configs()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in ["minimal.toml", "tomcat-cluster.toml", "raspberry-pi.toml"] {
        assert!(names.iter().any(|n| n == want), "conf/{want} is missing");
    }
}
