//! The container's users and groups, from its own `/etc/passwd` and `/etc/group`: who owns
//! what the SFTP server creates, and the names listings show.

use std::collections::BTreeMap;
use std::io::{self, Read};

use rustix::fs::{Mode, OFlags};

use super::root::Root;

/// The largest `/etc/passwd` or `/etc/group` read; the rest is ignored.
const MAX_DB: u64 = 4 << 20;

/// A numeric owner: what `chown` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// Why the container's user cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the container's user {0:?} is not in its /etc/passwd")]
    UnknownUser(String),
    #[error("the container's group {0:?} is not in its /etc/group")]
    UnknownGroup(String),
}

/// Names by number, and numbers by name, of one container.
#[derive(Debug, Default, Clone)]
pub struct Users {
    /// name -> (uid, primary gid)
    users: BTreeMap<String, (u32, u32)>,
    user_names: BTreeMap<u32, String>,
    primary_gid: BTreeMap<u32, u32>,
    groups: BTreeMap<String, u32>,
    group_names: BTreeMap<u32, String>,
}

impl Users {
    /// Reads the container's databases through `root`. A missing or unreadable file is an
    /// empty one, as for the engine (numeric users still work).
    pub fn load(root: &Root) -> Users {
        let passwd = read_db(root, "/etc/passwd");
        let group = read_db(root, "/etc/group");
        Users::parse(&passwd, &group)
    }

    pub fn parse(passwd: &str, group: &str) -> Users {
        let mut users = Users::default();
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(uid), Some(gid)) = (
                fields.first(),
                fields.get(2).and_then(|u| u.parse::<u32>().ok()),
                fields.get(3).and_then(|g| g.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if name.is_empty() || name.starts_with('#') {
                continue;
            }
            users.users.entry((*name).to_owned()).or_insert((uid, gid));
            users
                .user_names
                .entry(uid)
                .or_insert_with(|| (*name).to_owned());
            users.primary_gid.entry(uid).or_insert(gid);
        }
        for line in group.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(gid)) = (
                fields.first(),
                fields.get(2).and_then(|g| g.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if name.is_empty() || name.starts_with('#') {
                continue;
            }
            users.groups.entry((*name).to_owned()).or_insert(gid);
            users
                .group_names
                .entry(gid)
                .or_insert_with(|| (*name).to_owned());
        }
        users
    }

    /// The owner for the engine's `User` setting (`""`, `name`, `uid`, `name:group`,
    /// `uid:gid`), resolved as the engine resolves it: a name must exist, a number need
    /// not; without a group, the user's primary group, else 0.
    pub fn owner(&self, spec: &str) -> Result<Owner, UserError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(Owner {
                uid: 0,
                gid: self.primary_gid.get(&0).copied().unwrap_or(0),
            });
        }
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary) = match user.parse::<u32>() {
            Ok(uid) => (uid, self.primary_gid.get(&uid).copied().unwrap_or(0)),
            Err(_) => *self
                .users
                .get(user)
                .ok_or_else(|| UserError::UnknownUser(user.to_owned()))?,
        };
        let gid = match group {
            None | Some("") => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => *self
                    .groups
                    .get(g)
                    .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
            },
        };
        Ok(Owner { uid, gid })
    }

    pub fn user_name(&self, uid: u32) -> Option<&str> {
        self.user_names.get(&uid).map(String::as_str)
    }

    pub fn group_name(&self, gid: u32) -> Option<&str> {
        self.group_names.get(&gid).map(String::as_str)
    }
}

fn read_db(root: &Root, path: &str) -> String {
    let read = || -> io::Result<String> {
        let fd = root.open(path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        root.check_regular(&fd)?;
        let mut text = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_DB)
            .read_to_end(&mut text)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        dev:x:1000:1000::/home/dev:/bin/bash\n\
        broken line\n\
        svc:x:998:50::/:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\ndev:x:1000:\n";

    #[test]
    fn resolves_the_engine_user_forms() {
        let users = Users::parse(PASSWD, GROUP);
        assert_eq!(users.owner("").unwrap(), Owner::ROOT);
        assert_eq!(
            users.owner("dev").unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(users.owner("svc").unwrap(), Owner { uid: 998, gid: 50 });
        assert_eq!(
            users.owner("1000").unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(users.owner("4242").unwrap(), Owner { uid: 4242, gid: 0 });
        assert_eq!(
            users.owner("dev:staff").unwrap(),
            Owner { uid: 1000, gid: 50 }
        );
        assert_eq!(
            users.owner("4242:77").unwrap(),
            Owner { uid: 4242, gid: 77 }
        );
        assert_eq!(users.owner("svc:").unwrap(), Owner { uid: 998, gid: 50 });
        assert!(matches!(
            users.owner("nobody"),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            users.owner("dev:wheel"),
            Err(UserError::UnknownGroup(_))
        ));
        assert_eq!(users.user_name(1000), Some("dev"));
        assert_eq!(users.group_name(50), Some("staff"));
        assert_eq!(users.user_name(7), None);
    }
}
