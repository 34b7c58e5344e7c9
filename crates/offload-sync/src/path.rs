//! `RelPath`, a validated workspace-relative path, and the symlink-target rule.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SyncError;

/// Longest accepted component (one file name), in bytes; the common `NAME_MAX`.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest accepted relative path, in bytes; the common `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;
/// Name of the directory at the top of a workspace that holds conflict sets; never synced.
pub const CONFLICTS_DIR: &str = ".offload-conflicts";
/// Prefix of the temporary names apply creates; such names are never synced.
pub const TEMP_PREFIX: &str = ".offload-tmp-";

/// A validated path relative to a workspace root.
///
/// UTF-8, `/`-separated, at least one component, each component non-empty, not `.` or
/// `..`, without NUL or backslash and at most [`MAX_COMPONENT_LEN`] bytes; the whole at
/// most [`MAX_PATH_LEN`] bytes. It cannot name anything outside the root. Serialised as a
/// plain string; deserialising validates. Ordering is byte order, so a directory sorts
/// before everything inside it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` as a workspace-relative path.
    pub fn new(s: impl Into<String>) -> Result<Self, SyncError> {
        let s = s.into();
        check_path(&s).map_err(|reason| SyncError::InvalidPath {
            path: s.clone(),
            reason,
        })?;
        Ok(RelPath(s))
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| RelPath(parent.to_owned()))
    }

    /// Every proper ancestor, nearest to the root first (`a/b/c` gives `a`, `a/b`).
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| RelPath(self.0[..i].to_owned()))
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.bytes().filter(|b| *b == b'/').count() + 1
    }

    /// `self/other`, validated against the length limit.
    pub fn join(&self, other: &RelPath) -> Result<RelPath, SyncError> {
        RelPath::new(format!("{}/{}", self.0, other.0))
    }

    /// True when `self` is `other` or inside it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// True for names offload itself creates (`.offload-conflicts` at the top,
    /// `.offload-tmp-*` anywhere), which a manifest or delta must not carry.
    pub fn is_internal(&self) -> bool {
        let mut components = self.components();
        components.clone().next() == Some(CONFLICTS_DIR)
            || components.any(|c| c.starts_with(TEMP_PREFIX))
    }
}

fn check_path(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty path");
    }
    if s.len() > MAX_PATH_LEN {
        return Err("path longer than 4096 bytes");
    }
    if s.starts_with('/') {
        return Err("absolute path");
    }
    if s.contains('\0') {
        return Err("path contains NUL");
    }
    if s.contains('\\') {
        return Err("path contains a backslash");
    }
    for component in s.split('/') {
        match component {
            "" => return Err("empty component"),
            "." | ".." => return Err("`.` or `..` component"),
            c if c.len() > MAX_COMPONENT_LEN => return Err("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a symlink target stored at `link`.
///
/// The target must be relative, without NUL, at most [`MAX_PATH_LEN`] bytes, made of
/// non-empty components with no `.`, and with `..` only as a leading run; resolved
/// lexically from the link's directory it must stay inside the root. Allowing `..` only at
/// the start makes the lexical answer the real one: the leading `..` climb through real
/// directories (a manifest never has a symlink as a parent), and every later component
/// that is itself a symlink was held to the same rule.
pub fn check_symlink_target(link: &RelPath, target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty symlink target");
    }
    if target.len() > MAX_PATH_LEN {
        return Err("symlink target longer than 4096 bytes");
    }
    if target.starts_with('/') {
        return Err("absolute symlink target");
    }
    if target.contains('\0') {
        return Err("symlink target contains NUL");
    }
    let mut ups = 0usize;
    let mut seen_normal = false;
    for component in target.split('/') {
        match component {
            "" => return Err("symlink target has an empty component"),
            "." => return Err("symlink target has a `.` component"),
            ".." if seen_normal => return Err("symlink target has `..` after a name"),
            ".." => ups += 1,
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err("symlink target component longer than 255 bytes");
            }
            _ => seen_normal = true,
        }
    }
    if ups > link.depth() - 1 {
        return Err("symlink target escapes the root");
    }
    Ok(())
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for RelPath {
    type Error = SyncError;
    fn try_from(s: &str) -> Result<Self, SyncError> {
        RelPath::new(s)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b", ".hidden/x", "a b/c..d", "...", "é/ü"] {
            assert!(RelPath::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_paths() {
        let long_component = "x".repeat(256);
        let long_path = ["y"; 2049].join("/");
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "a/../b",
            "./a",
            "a/.",
            "a//b",
            "a/",
            "a\0b",
            "a\\..\\b",
            long_component.as_str(),
            long_path.as_str(),
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} accepted");
            let json = serde_json::to_string(bad).expect("json string");
            assert!(
                serde_json::from_str::<RelPath>(&json).is_err(),
                "{bad:?} deserialised"
            );
        }
        assert!(RelPath::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn ancestors_parent_and_prefix() {
        let p = RelPath::new("a/b/c").expect("valid");
        let ancestors: Vec<_> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(ancestors, ["a", "a/b"]);
        assert_eq!(p.parent().map(|p| p.to_string()).as_deref(), Some("a/b"));
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.depth(), 3);
        assert!(p.starts_with(&RelPath::new("a/b").expect("valid")));
        assert!(!p.starts_with(&RelPath::new("a/b/c/d").expect("valid")));
        assert!(
            !RelPath::new("ab")
                .expect("valid")
                .starts_with(&RelPath::new("a").expect("valid"))
        );
        assert!(
            RelPath::new(".offload-conflicts/x")
                .expect("valid")
                .is_internal()
        );
        assert!(
            RelPath::new("a/.offload-tmp-1")
                .expect("valid")
                .is_internal()
        );
        assert!(
            !RelPath::new("a/.offload-conflicts")
                .expect("valid")
                .is_internal()
        );
    }

    #[test]
    fn symlink_targets() {
        let top = RelPath::new("link").expect("valid");
        let deep = RelPath::new("a/b/link").expect("valid");
        assert!(check_symlink_target(&top, "file").is_ok());
        assert!(check_symlink_target(&top, "dir/file").is_ok());
        assert!(check_symlink_target(&deep, "../../x").is_ok());
        assert!(check_symlink_target(&deep, "../c/d").is_ok());
        for bad in [
            "",
            "/etc",
            "..",
            "../x",
            "a/../..",
            "x/../../y",
            "./x",
            "a//b",
            "a\0",
        ] {
            assert!(check_symlink_target(&top, bad).is_err(), "{bad:?}");
        }
        assert!(check_symlink_target(&deep, "../../../x").is_err());
        assert!(check_symlink_target(&deep, "sub/../../..").is_err());
    }
}
