//! The programs the browser, API-fuzzing and cluster tests drive: `tests/tools/install` installs what is
//! missing, once per test process, and the tests fail saying why when it cannot.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the tools are.
pub struct Tools {
    pub schemathesis: PathBuf,
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

/// The tools, installed first when missing.
pub fn installed() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let output = Command::new(format!("{ROOT}/tests/tools/install"))
            .output()
            .expect("tests/tools/install runs");
        assert!(
            output.status.success(),
            "tests/tools/install could not install what this test needs:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let on_path = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
                .unwrap_or_else(|| panic!("{name} is not on PATH after tests/tools/install"))
        };
        Tools {
            schemathesis: schemathesis_venv().join("bin/schemathesis"),
            chromium: on_path("chromium"),
            chromedriver: on_path("chromedriver"),
        }
    })
}

/// Where `tests/tools/install` puts Schemathesis's virtualenv: the user's cache folder, named by
/// the version the script installs.
fn schemathesis_venv() -> PathBuf {
    let install = std::fs::read_to_string(format!("{ROOT}/tests/tools/install"))
        .expect("tests/tools/install is readable");
    let version = install
        .lines()
        .find_map(|line| line.strip_prefix("SCHEMATHESIS_VERSION="))
        .expect("tests/tools/install names the Schemathesis version");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join(format!("logbridge/schemathesis-{version}"))
}
