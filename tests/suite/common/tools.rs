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
    pub alertmanager: PathBuf,
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
            alertmanager: on_path("prometheus-alertmanager"),
        }
    })
}

/// Where `tests/tools/install` puts Schemathesis's virtualenv.
fn schemathesis_venv() -> PathBuf {
    super::harness::tool_venv("SCHEMATHESIS_VERSION", "schemathesis")
}
