//! The keys file (`config/keys.toml`): reading, first-start creation and `keys add`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Scope, Secret};

/// One key of the keys file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    pub user_id: Option<String>,
}

/// A key to add to the keys file.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub user_id: String,
    pub scopes: Vec<Scope>,
}

/// Why the keys file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write keys file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid keys file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid keys file {path}: key {name:?}: {message}")]
    InvalidKey {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("cannot add the key: {0}")]
    InvalidNewKey(&'static str),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeysFile {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    user_id: Option<String>,
}

impl RawKey {
    fn validate(self) -> Result<KeyRecord, (String, String)> {
        let fail = |message: String| Err((self.name.clone(), message));
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(&self.sha256, &mut sha256).is_err() {
            return fail("sha256 must be 64 hexadecimal characters".to_owned());
        }
        let mut scopes = Vec::new();
        for name in &self.scopes {
            match Scope::parse(name) {
                Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
                Some(_) => {}
                None => return fail(format!("unknown scope {name:?} (expected ingest or read)")),
            }
        }
        if scopes.is_empty() {
            return fail("scopes must name ingest, read or both".to_owned());
        }
        if self.user_id.as_deref() == Some("") {
            return fail("user_id must not be empty".to_owned());
        }
        if scopes.contains(&Scope::Read) && self.user_id.is_none() {
            return fail("a key with the read scope needs a user_id".to_owned());
        }
        Ok(KeyRecord {
            name: self.name,
            sha256,
            scopes,
            user_id: self.user_id,
        })
    }
}

/// Reads and validates the keys file.
pub fn load_keys(path: &Path) -> Result<Vec<KeyRecord>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let raw: RawKeysFile = toml::from_str(&text).map_err(|e| KeyFileError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    raw.keys
        .into_iter()
        .map(|key| {
            key.validate()
                .map_err(|(name, message)| KeyFileError::InvalidKey {
                    path: path.to_owned(),
                    name,
                    message,
                })
        })
        .collect()
}

/// On first start, creates the keys file with one key for user `default` (scopes read and ingest)
/// and returns its secret; returns `None` when the file exists.
pub fn ensure_keys_file(path: &Path) -> Result<Option<Secret>, KeyFileError> {
    if path.exists() {
        return Ok(None);
    }
    let secret = add_key(
        path,
        &NewKey {
            name: "default".to_owned(),
            user_id: "default".to_owned(),
            scopes: vec![Scope::Read, Scope::Ingest],
        },
    )?;
    Ok(Some(secret))
}

/// Generates a secret, appends its hash to the keys file (creating the file and its folder if
/// needed, readable by its owner only) and returns the secret.
pub fn add_key(path: &Path, key: &NewKey) -> Result<Secret, KeyFileError> {
    let write_error = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    // what the server would refuse to start with is refused here
    if key.user_id.is_empty() {
        return Err(KeyFileError::InvalidNewKey("the user must not be empty"));
    }
    if key.scopes.is_empty() {
        return Err(KeyFileError::InvalidNewKey("name at least one scope"));
    }
    if path.exists() {
        // refuse to append to a file that is already broken
        load_keys(path)?;
    } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let secret = Secret::generate();
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let scopes: Vec<String> = key.scopes.iter().map(|s| quote(s.as_str())).collect();
    let entry = format!(
        "\n[[keys]]\nname = {}\nsha256 = \"{}\"\nscopes = [{}]\nuser_id = {}\n",
        quote(&key.name),
        hex::encode(secret.sha256()),
        scopes.join(", "),
        quote(&key.user_id),
    );
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(entry.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_a_default_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/keys.toml");
        let secret = ensure_keys_file(&path).unwrap().expect("a new key");
        assert_eq!(ensure_keys_file(&path).unwrap(), None);
        let keys = load_keys(&path).unwrap();
        assert_eq!(
            keys,
            vec![KeyRecord {
                name: "default".into(),
                sha256: secret.sha256(),
                scopes: vec![Scope::Read, Scope::Ingest],
                user_id: Some("default".into()),
            }]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(secret.expose()));
    }

    #[test]
    fn add_appends_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "# operators' notes\n").unwrap();
        let secret = add_key(
            &path,
            &NewKey {
                name: "acme \"dash\"".into(),
                user_id: "user-acme".into(),
                scopes: vec![Scope::Read],
            },
        )
        .unwrap();
        let keys = load_keys(&path).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "acme \"dash\"");
        assert_eq!(keys[0].sha256, secret.sha256());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("# operators' notes\n")
        );
    }

    #[test]
    fn add_refuses_what_the_server_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let key = |user: &str, scopes: Vec<Scope>| NewKey {
            name: "k".into(),
            user_id: user.into(),
            scopes,
        };
        let err = add_key(&path, &key("", vec![Scope::Read])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot add the key: the user must not be empty"
        );
        let err = add_key(&path, &key("u", vec![])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot add the key: name at least one scope"
        );
        assert!(!path.exists());
    }

    #[test]
    fn invalid_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let cases = [
            (
                "[[keys]]\nname = \"dash\"\nsha256 = \"00\"\nscopes = [\"read\"]\nuser_id = \"u\"\n",
                "key \"dash\": sha256 must be 64 hexadecimal characters",
            ),
            (
                &format!(
                    "[[keys]]\nname = \"dash\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
                    "ab".repeat(32)
                ),
                "key \"dash\": a key with the read scope needs a user_id",
            ),
            (
                &format!(
                    "[[keys]]\nname = \"w\"\nsha256 = \"{}\"\nscopes = [\"write\"]\n",
                    "ab".repeat(32)
                ),
                "key \"w\": unknown scope \"write\" (expected ingest or read)",
            ),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let err = load_keys(&path).unwrap_err().to_string();
            assert!(err.ends_with(expected), "{err}");
        }
    }
}
