//! The keys file (`config/keys.toml`): reading, first-start creation, `keys add` and
//! `keys revoke`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::{Scope, Secret};

/// One key of the keys file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    pub user_id: Option<String>,
    /// From then on the key is refused.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key to add to the keys file.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub user_id: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
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
    InvalidNewKey(String),
    #[error("no key named {name:?} in {path}")]
    NoSuchKey { path: PathBuf, name: String },
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
    expires_at: Option<String>,
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
                None => {
                    return fail(format!(
                        "unknown scope {name:?} (expected ingest, read, delete or alerts)"
                    ));
                }
            }
        }
        if scopes.is_empty() {
            return fail(
                "scopes must name at least one of ingest, read, delete and alerts".to_owned(),
            );
        }
        if self.user_id.as_deref() == Some("") {
            return fail("user_id must not be empty".to_owned());
        }
        if let Some(scope) = scopes.iter().find(|s| **s != Scope::Ingest)
            && self.user_id.is_none()
        {
            return fail(format!(
                "a key with the {} scope needs a user_id",
                scope.as_str()
            ));
        }
        let expires_at = match &self.expires_at {
            None => None,
            Some(text) => match DateTime::parse_from_rfc3339(text) {
                Ok(time) => Some(time.to_utc()),
                Err(_) => {
                    return fail(format!(
                        "expires_at {text:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"
                    ));
                }
            },
        };
        Ok(KeyRecord {
            name: self.name,
            sha256,
            scopes,
            user_id: self.user_id,
            expires_at,
        })
    }
}

/// Reads and validates the keys file.
pub fn load_keys(path: &Path) -> Result<Vec<KeyRecord>, KeyFileError> {
    parse_keys(&read(path)?, path)
}

fn read(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The contents of the keys file as text.
fn text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, KeyFileError> {
    std::str::from_utf8(bytes).map_err(|_| KeyFileError::Parse {
        path: path.to_owned(),
        message: "the file is not UTF-8".to_owned(),
    })
}

/// Validates the contents of the keys file read from `path`.
pub fn parse_keys(bytes: &[u8], path: &Path) -> Result<Vec<KeyRecord>, KeyFileError> {
    let raw: RawKeysFile = toml::from_str(text(bytes, path)?).map_err(|e| KeyFileError::Parse {
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
            expires_at: None,
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
    let invalid = |message: &str| Err(KeyFileError::InvalidNewKey(message.to_owned()));
    if key.user_id.is_empty() {
        return invalid("the user must not be empty");
    }
    if key.scopes.is_empty() {
        return invalid("name at least one scope");
    }
    if path.exists() {
        // refuse to append to a file that is already broken, or a second key of the name that
        // `keys revoke` takes
        if load_keys(path)?.iter().any(|k| k.name == key.name) {
            return invalid(&format!("a key named {:?} exists already", key.name));
        }
    } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let secret = Secret::generate();
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let scopes: Vec<String> = key.scopes.iter().map(|s| quote(s.as_str())).collect();
    let mut entry = format!(
        "\n[[keys]]\nname = {}\nsha256 = \"{}\"\nscopes = [{}]\nuser_id = {}\n",
        quote(&key.name),
        hex::encode(secret.sha256()),
        scopes.join(", "),
        quote(&key.user_id),
    );
    if let Some(expires_at) = key.expires_at {
        let time = expires_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        entry.push_str(&format!("expires_at = {}\n", quote(&time)));
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(entry.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(secret)
}

/// Removes the key named `name` from the keys file, keeping everything else as written. The
/// new file replaces the old one whole (a rename), so a server reloading it never sees half.
pub fn revoke_key(path: &Path, name: &str) -> Result<(), KeyFileError> {
    let bytes = read(path)?;
    // refuse to rewrite a file the server cannot use
    parse_keys(&bytes, path)?;
    let parse_error = |message: String| KeyFileError::Parse {
        path: path.to_owned(),
        message,
    };
    let mut document: toml_edit::DocumentMut = text(&bytes, path)?
        .parse()
        .map_err(|e: toml_edit::TomlError| parse_error(e.to_string()))?;
    let named = |table: &toml_edit::Table| table.get("name").and_then(|v| v.as_str()) == Some(name);
    let no_such_key = || KeyFileError::NoSuchKey {
        path: path.to_owned(),
        name: name.to_owned(),
    };
    let keys = match document.get_mut("keys") {
        None => return Err(no_such_key()),
        Some(item) => item.as_array_of_tables_mut().ok_or_else(|| {
            parse_error("keys is not written as [[keys]] tables, which keys revoke edits".into())
        })?,
    };
    if !keys.iter().any(named) {
        return Err(no_such_key());
    }
    // the comment right above a key goes with it; one set apart by a blank line (a file header)
    // stays, on the key that follows or at the end
    let mut carried = String::new();
    for table in keys.iter_mut() {
        let prefix = table
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("");
        if named(table) {
            if let Some(end) = prefix.rfind("\n\n") {
                carried.push_str(&prefix[..end + 2]);
            }
        } else if !carried.is_empty() {
            let prefix = std::mem::take(&mut carried) + prefix;
            table.decor_mut().set_prefix(prefix);
        }
    }
    keys.retain(|table| !named(table));
    if !carried.is_empty() {
        let trailing = document.trailing().as_str().unwrap_or("").to_owned();
        document.set_trailing(carried + &trailing);
    }
    let write_error = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    // a keys file behind a symbolic link (a mounted secret) is replaced where it really is
    let target = std::fs::canonicalize(path).map_err(write_error)?;
    let original = std::fs::metadata(&target).map_err(write_error)?;
    crate::durable::replace(&target, document.to_string().as_bytes(), |file| {
        // the same owner and mode as before, so the server still reads it
        file.set_permissions(original.permissions())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            std::os::unix::fs::fchown(file, Some(original.uid()), Some(original.gid()))?;
        }
        Ok(())
    })
    .map_err(write_error)?;
    Ok(())
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
                expires_at: None,
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
                expires_at: None,
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
            expires_at: None,
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
    fn revoke_removes_one_key_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "# operators' notes\n").unwrap();
        let expires_at = DateTime::parse_from_rfc3339("2030-05-06T07:08:09Z")
            .unwrap()
            .to_utc();
        let key = |name: &str, expires_at| NewKey {
            name: name.into(),
            user_id: "u".into(),
            scopes: vec![Scope::Read, Scope::Delete],
            expires_at,
        };
        add_key(&path, &key("a", None)).unwrap();
        let b = add_key(&path, &key("b", Some(expires_at))).unwrap();
        let err = add_key(&path, &key("b", None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot add the key: a key named \"b\" exists already"
        );

        // through a symbolic link (a mounted secret), keeping the file's mode
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        revoke_key(&link, "a").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let keys = load_keys(&path).unwrap();
        assert_eq!(
            keys,
            vec![KeyRecord {
                name: "b".into(),
                sha256: b.sha256(),
                scopes: vec![Scope::Read, Scope::Delete],
                user_id: Some("u".into()),
                expires_at: Some(expires_at),
            }]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# operators' notes\n"), "{text}");
        let err = revoke_key(&path, "a").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no key named \"a\" in {}", path.display())
        );
        // a layout it cannot edit is said so, not taken for a missing key
        let inline = dir.path().join("inline.toml");
        let entry = format!(
            "keys = [{{ name = \"c\", sha256 = \"{}\", scopes = [\"ingest\"] }}]\n",
            "ab".repeat(32)
        );
        std::fs::write(&inline, entry).unwrap();
        let err = revoke_key(&inline, "c").unwrap_err().to_string();
        assert!(
            err.ends_with("keys is not written as [[keys]] tables, which keys revoke edits"),
            "{err}"
        );
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
                "key \"w\": unknown scope \"write\" (expected ingest, read, delete or alerts)",
            ),
            (
                &format!(
                    "[[keys]]\nname = \"e\"\nsha256 = \"{}\"\nscopes = [\"delete\"]\n",
                    "ab".repeat(32)
                ),
                "key \"e\": a key with the delete scope needs a user_id",
            ),
            (
                &format!(
                    "[[keys]]\nname = \"t\"\nsha256 = \"{}\"\nscopes = [\"ingest\"]\nexpires_at = \"soon\"\n",
                    "ab".repeat(32)
                ),
                "key \"t\": expires_at \"soon\" is not an RFC 3339 time such as 2027-01-31T00:00:00Z",
            ),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let err = load_keys(&path).unwrap_err().to_string();
            assert!(err.ends_with(expected), "{err}");
        }
    }
}
