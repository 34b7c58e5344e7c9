//! Validated identifiers: container ids, names, user names and image references.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a user-supplied identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid container id {0:?}: expected 12 lowercase hex characters")]
    ContainerId(String),
    #[error(
        "invalid name {0:?}: use 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
    )]
    Name(String),
    #[error(
        "invalid user name {0:?}: use 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter"
    )]
    UserName(String),
    #[error("invalid image reference {0:?}: {1}")]
    Image(String, &'static str),
    #[error("invalid memory size {0:?}: use a number with an optional unit (k, m, g), e.g. 512m")]
    Memory(String),
    #[error("invalid cpus {0:?}: use a positive number of cores, e.g. 0.5 or 2")]
    Cpus(String),
    #[error("invalid environment: {0}")]
    Env(String),
}

macro_rules! string_newtype {
    ($name:ident, $check:path) => {
        impl $name {
            /// Validates `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, ValidationError> {
                $check(value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// offload's own id for a container: 12 lowercase hex characters, stable across moves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);
string_newtype!(ContainerId, check_container_id);

impl ContainerId {
    /// A fresh random id.
    pub fn random() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self(hex[..12].to_owned())
    }
}

fn check_container_id(value: &str) -> Result<(), ValidationError> {
    let ok = value.len() == 12
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::ContainerId(value.to_owned()))
    }
}

/// A user-chosen container name, unique per owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);
string_newtype!(Name, check_name);

fn check_name(value: &str) -> Result<(), ValidationError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Name(value.to_owned()))
    }
}

/// The name of an offload user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);
string_newtype!(UserName, check_user_name);

fn check_user_name(value: &str) -> Result<(), ValidationError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::UserName(value.to_owned()))
    }
}

/// A container image reference as the Docker Engine API accepts it:
/// `[registry[:port]/]path[:tag][@sha256:digest]`, or a bare image id `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef(String);
string_newtype!(ImageRef, check_image);

fn check_image(value: &str) -> Result<(), ValidationError> {
    let fail = |why| Err(ValidationError::Image(value.to_owned(), why));
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > 255 {
        return fail("it is longer than 255 characters");
    }
    if let Some(hex) = value.strip_prefix("sha256:") {
        return if is_hex64(hex) {
            Ok(())
        } else {
            fail("an image id is sha256: and 64 hex digits")
        };
    }
    let (rest, digest) = match value.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (value, None),
    };
    if let Some(digest) = digest {
        match digest.strip_prefix("sha256:") {
            Some(hex) if is_hex64(hex) => {}
            _ => return fail("a digest is sha256: and 64 hex digits"),
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return fail("the tag may hold only letters, digits, '_', '.' and '-'");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && looks_like_registry(components[0]) {
        let host = components.remove(0);
        let ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !ok {
            return fail("the registry host is malformed");
        }
    }
    for component in components {
        if !is_path_component(component) {
            return fail(
                "path components are lowercase letters and digits separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

fn looks_like_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum_lower(bytes[0]) || !is_alnum_lower(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_alnum_lower(b) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or any run of '-'.
        let start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !bytes.get(i).copied().is_some_and(is_alnum_lower) {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for good in [
            "busybox",
            "offload-test/busybox:1",
            "docker.io/library/debian:12",
            "localhost:5000/a/b_c__d-e:v1.2-rc",
            "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a/",
            "-a",
            "a:",
            "a:-x",
            "a b",
            "a;rm -rf /",
            "a@sha256:xyz",
            "a..b",
            "sha256:1234",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_ids() {
        assert!(Name::parse("my-box.1").is_ok());
        assert!(Name::parse(".hidden").is_err());
        assert!(Name::parse(&"a".repeat(64)).is_err());
        assert!(UserName::parse("alice").is_ok());
        assert!(UserName::parse("Alice").is_err());
        assert!(UserName::parse("1x").is_err());
        let id = ContainerId::random();
        assert_eq!(ContainerId::parse(id.as_str()), Ok(id));
        assert!(ContainerId::parse("../../etc").is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<ImageRef>("\"UPPER\"").is_err());
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
    }
}
