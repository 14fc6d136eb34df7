//! Real full disks: size-limited tmpfs mounts (as root) that fill up and grow back.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a folder; unmounted (lazily) when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

fn run(args: &[&str], what: &str) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        output.status.success(),
        "cannot {what}: `{}` failed: {}. These tests need real size-limited file systems: run \
         them as root (CI does)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path`, creating the folder.
    pub fn mount(path: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={bytes}");
        run(
            &[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &size,
                "tmpfs",
                path.to_str().unwrap(),
            ],
            "mount a tmpfs",
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Gives the file system `bytes` in all, keeping its files: space comes back.
    pub fn resize(&self, bytes: u64) {
        let options = format!("remount,size={bytes}");
        run(
            &["mount", "-o", &options, self.path.to_str().unwrap()],
            "resize a tmpfs",
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.path.to_str().unwrap()])
            .status();
    }
}
