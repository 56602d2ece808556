//! Secrets from the environment or from a file named by `<VAR>_FILE`, as Caracal's
//! services read them (container secrets are mounted as files).

use std::io::Read;

use crate::error::ConfigError;

/// The most bytes read from a secret file. Caracal's keys are 64 hex digits; a file
/// far larger than that is a wrong path, not a key.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// The value of `var`, or else the content of the file named by `file_var`, with
/// trailing whitespace (the newline editors add) trimmed, with the name of the
/// variable it came from (for errors about the value). `Ok(None)` when neither is
/// set (empty counts as unset).
///
/// As in Caracal's services, a set `var` wins over `file_var`. An unreadable, empty
/// or oversized file is an error naming `file_var`; the error never carries the
/// file's content.
pub(crate) fn secret(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<(String, &'static str)>, ConfigError> {
    if let Some(value) = get(var).filter(|v| !v.trim().is_empty()) {
        return Ok(Some((value, var)));
    }
    let Some(path) = get(file_var).filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    let env = |reason: String| ConfigError::Env {
        var: file_var,
        reason,
    };
    let file = std::fs::File::open(path.trim())
        .map_err(|e| env(format!("cannot read the file: {}", e.kind())))?;
    let mut raw = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| env(format!("cannot read the file: {}", e.kind())))?;
    if raw.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(env(format!(
            "the file is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(raw).map_err(|_| env("the file is not UTF-8".into()))?;
    let value = text.trim_end_matches([' ', '\t', '\r', '\n']);
    if value.is_empty() {
        return Err(env("the file is empty".into()));
    }
    Ok(Some((value.to_owned(), file_var)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("caracal-secret-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, content).unwrap();
        path
    }

    fn env_var(e: ConfigError) -> (&'static str, String) {
        match e {
            ConfigError::Env { var, reason } => (var, reason),
            other => panic!("expected an env error, got {other:?}"),
        }
    }

    #[test]
    fn a_file_is_read_and_its_trailing_newline_trimmed() {
        let path = temp_file("trim", b"abcd1234\r\n");
        let p = path.to_str().unwrap().to_owned();
        let get = move |k: &str| (k == "K_FILE").then(|| p.clone());
        assert_eq!(
            secret(&get, "K", "K_FILE").unwrap(),
            Some(("abcd1234".to_owned(), "K_FILE"))
        );
    }

    #[test]
    fn the_variable_wins_over_the_file_and_unset_is_none() {
        let get = |k: &str| match k {
            "K" => Some("direct".to_owned()),
            "K_FILE" => Some("/nonexistent".to_owned()),
            _ => None,
        };
        assert_eq!(
            secret(&get, "K", "K_FILE").unwrap(),
            Some(("direct".to_owned(), "K"))
        );
        assert_eq!(secret(&|_: &str| None, "K", "K_FILE").unwrap(), None);
        let empty = |k: &str| (k == "K").then(|| " ".to_owned());
        assert_eq!(secret(&empty, "K", "K_FILE").unwrap(), None);
    }

    #[test]
    fn bad_files_name_the_variable_never_the_content() {
        let missing = |k: &str| (k == "K_FILE").then(|| "/nonexistent/caracal-key".to_owned());
        let (var, reason) = env_var(secret(&missing, "K", "K_FILE").unwrap_err());
        assert_eq!(var, "K_FILE");
        assert!(reason.contains("cannot read"), "{reason}");

        let blank = temp_file("blank", b"\n\n");
        let p = blank.to_str().unwrap().to_owned();
        let get = move |k: &str| (k == "K_FILE").then(|| p.clone());
        let (var, reason) = env_var(secret(&get, "K", "K_FILE").unwrap_err());
        assert_eq!((var, reason.as_str()), ("K_FILE", "the file is empty"));

        let big = temp_file("big", "s3cr3t".repeat(1000).as_bytes());
        let p = big.to_str().unwrap().to_owned();
        let get = move |k: &str| (k == "K_FILE").then(|| p.clone());
        let err = secret(&get, "K", "K_FILE").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
