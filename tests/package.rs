//! Debian package drill: `scripts/package.sh` wraps the binary under test
//! in a .deb; its contents, conffile, maintainer scripts and systemd unit
//! are checked, and the packaged binary validates the packaged config.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Run `cmd args`, fail with its output unless it succeeds; stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_debian_package_holds_binary_unit_conffile_and_scripts() {
    let dir = tempdir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("scripts/package.sh"))
        .args(["--binary"])
        .arg(stickgate_bin())
        .env("CARGO_TARGET_DIR", &dir)
        .env("DEB_COMPRESSION", "gzip")
        .output()
        .expect("scripts/package.sh");
    assert!(
        out.status.success(),
        "package.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");

    let listing = run("dpkg-deb", &["-c", &deb]);
    for path in [
        "./usr/bin/stickgate",
        "./etc/stickgate/stickgate.toml",
        "./lib/systemd/system/stickgate.service",
        "./usr/share/doc/stickgate/README.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    assert!(
        listing.lines().next().unwrap().starts_with("drwxr-xr-x"),
        "package root must be 0755: {listing}"
    );
    let fields = run("dpkg-deb", &["-f", &deb, "Package", "Version"]);
    assert!(fields.contains("Package: stickgate"), "{fields}");
    let conffiles = run("dpkg-deb", &["-I", &deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/stickgate/stickgate.toml");

    // Unpacked: the packaged binary accepts the packaged config.
    let root = dir.join("root");
    run("dpkg-deb", &["-x", &deb, root.to_str().unwrap()]);
    run(
        root.join("usr/bin/stickgate").to_str().unwrap(),
        &[
            "check",
            "--config",
            root.join("etc/stickgate/stickgate.toml").to_str().unwrap(),
        ],
    );
    // Maintainer scripts parse, and create the service's user.
    let control = dir.join("control");
    run("dpkg-deb", &["-e", &deb, control.to_str().unwrap()]);
    for s in ["postinst", "prerm", "postrm"] {
        run("sh", &["-n", control.join(s).to_str().unwrap()]);
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");

    // The unit as systemd reads it (paths pointed at the unpacked binary).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/stickgate.service")).unwrap();
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let local = dir.join("stickgate.service");
        let bin = root.join("usr/bin/stickgate");
        std::fs::write(
            &local,
            unit.replace("/usr/bin/stickgate", bin.to_str().unwrap()),
        )
        .unwrap();
        run("systemd-analyze", &["verify", local.to_str().unwrap()]);
    } else {
        eprintln!("systemd-analyze not installed: unit not verified");
    }
}
