//! A user's devices: each agent connects as a named device with what it offers (cores,
//! memory, free disk, architecture). A move to the edge goes to the device the owner
//! names, or to the one with the most room that can run the container; a device that
//! cannot (another architecture, too little memory or disk) is never asked.

use offload_core::agent::EdgeCapacity;
use offload_core::api::DeviceView;
use offload_core::{ContainerRecord, Location, Name};

use offload_store::Principal;

use crate::controller::Controller;
use crate::error::ActionError;
use crate::hub::AgentLink;

/// What a container needs of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// The image's architecture, when the cloud engine knows it.
    pub architecture: Option<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    /// The workspace's size, for the device's free disk.
    pub disk_bytes: u64,
}

/// What a device has left: what it offers, less the containers it runs already.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub architecture: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub free_disk_bytes: u64,
}

impl Room {
    /// `capacity` less the memory of `running`, the containers the device runs.
    pub fn of(capacity: &EdgeCapacity, running: &[&ContainerRecord]) -> Room {
        let used: u64 = running.iter().map(|r| r.memory_bytes).sum();
        Room {
            architecture: capacity.architecture.clone(),
            cpus: capacity.cpus,
            memory_bytes: capacity.memory_bytes.saturating_sub(used),
            free_disk_bytes: capacity.free_disk_bytes,
        }
    }

    /// Why the device cannot take a container that needs `need`; `None` if it can.
    pub fn unfit(&self, need: &Need) -> Option<String> {
        if let Some(arch) = need.architecture.as_deref()
            && !arch.is_empty()
            && arch != self.architecture
        {
            return Some(format!(
                "its image is for {arch}, the device is {}",
                self.architecture
            ));
        }
        if need.cpus > self.cpus {
            return Some(format!(
                "it may use {} cores, the device offers {}",
                need.cpus, self.cpus
            ));
        }
        if need.memory_bytes > self.memory_bytes {
            return Some(format!(
                "it may use {} MiB of memory, the device has {} MiB left",
                need.memory_bytes >> 20,
                self.memory_bytes >> 20
            ));
        }
        if need.disk_bytes > self.free_disk_bytes {
            return Some(format!(
                "its workspace is {} MiB, the device has {} MiB of disk free",
                need.disk_bytes >> 20,
                self.free_disk_bytes >> 20
            ));
        }
        None
    }
}

/// Of `devices` (name and room), the one to move to: `wanted` if it fits, else the one
/// that fits with the most memory left (then disk). The error says why none would do.
pub fn choose(
    devices: &[(String, Room)],
    need: &Need,
    wanted: Option<&str>,
) -> Result<String, String> {
    if let Some(wanted) = wanted {
        let Some((name, room)) = devices.iter().find(|(name, _)| name == wanted) else {
            let names: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "no device {wanted} is connected; the connected ones are {}",
                names.join(", ")
            ));
        };
        return match room.unfit(need) {
            None => Ok(name.clone()),
            Some(why) => Err(format!("device {name} cannot run it: {why}")),
        };
    }
    let mut fitting: Vec<&(String, Room)> = devices
        .iter()
        .filter(|(_, room)| room.unfit(need).is_none())
        .collect();
    fitting.sort_by(|(a_name, a), (b_name, b)| {
        (b.memory_bytes, b.free_disk_bytes)
            .cmp(&(a.memory_bytes, a.free_disk_bytes))
            .then_with(|| a_name.cmp(b_name))
    });
    match fitting.first() {
        Some((name, _)) => Ok(name.clone()),
        None => Err(format!(
            "none of the connected devices can run it: {}",
            devices
                .iter()
                .filter_map(|(name, room)| Some(format!("{name}: {}", room.unfit(need)?)))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

impl Controller {
    /// What `record` needs of a device: its image's architecture (as the cloud engine
    /// has it), its limits, and its workspace's last measured size.
    pub(crate) async fn need_of(&self, record: &ContainerRecord) -> Need {
        let architecture = match self.runtime().image(record.image.as_str()).await {
            Ok(Some(info)) => info.architecture,
            _ => None,
        };
        Need {
            architecture,
            cpus: record.cpus,
            memory_bytes: record.memory_bytes,
            disk_bytes: self.sizes.last(&record.id).unwrap_or(0),
        }
    }

    /// The owner's connected devices with the room each has left.
    pub(crate) async fn rooms(
        &self,
        owner: &offload_core::UserName,
    ) -> Result<Vec<(std::sync::Arc<AgentLink>, Room)>, ActionError> {
        let user = owner.clone();
        let records = self.db(move |s| s.containers(Some(&user))).await?;
        Ok(self
            .hub
            .devices(owner)
            .into_iter()
            .map(|link| {
                let room = Room::of(&link.capacity, &on_device(&records, &link.device));
                (link, room)
            })
            .collect())
    }

    /// The device a move of `record` to the edge goes to: `wanted`, if it is connected
    /// and can run it, else the connected device that can with the most room.
    pub(crate) async fn choose_device(
        &self,
        record: &ContainerRecord,
        wanted: Option<&str>,
    ) -> Result<String, ActionError> {
        if let Some(wanted) = wanted {
            Name::parse(wanted).map_err(|_| {
                ActionError::BadRequest(format!(
                    "{wanted:?} is not a device name (letters, digits, '.', '_' and '-', at most 63)"
                ))
            })?;
        }
        let rooms = self.rooms(&record.owner).await?;
        if rooms.is_empty() {
            return Err(ActionError::Conflict(format!(
                "{}'s agent is not connected; start `offload agent` on the edge machine first",
                record.owner
            )));
        }
        let need = self.need_of(record).await;
        let devices: Vec<(String, Room)> = rooms
            .into_iter()
            .map(|(link, room)| (link.device.clone(), room))
            .collect();
        choose(&devices, &need, wanted).map_err(|why| {
            ActionError::Conflict(format!(
                "container {} cannot move to the edge: {why}",
                record.id
            ))
        })
    }

    /// `offload devices`: the caller's connected devices.
    pub async fn devices_of(&self, who: &Principal) -> Result<Vec<DeviceView>, ActionError> {
        let user = who.user.clone();
        let records = self.db(move |s| s.containers(Some(&user))).await?;
        Ok(self
            .hub
            .devices(&who.user)
            .into_iter()
            .map(|link| DeviceView {
                name: link.device.clone(),
                hostname: link.capacity.hostname.clone(),
                architecture: link.capacity.architecture.clone(),
                cpus: link.capacity.cpus,
                memory_bytes: link.capacity.memory_bytes,
                free_disk_bytes: link.capacity.free_disk_bytes,
                containers: on_device(&records, &link.device)
                    .iter()
                    .map(|r| r.id.to_string())
                    .collect(),
                auto_accept: link.auto_accept,
                auto_return: link.auto_return,
            })
            .collect())
    }
}

/// Of `records`, those at the edge on `device`.
fn on_device<'a>(records: &'a [ContainerRecord], device: &str) -> Vec<&'a ContainerRecord> {
    records
        .iter()
        .filter(|r| r.location == Location::Edge && r.device.as_deref() == Some(device))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn room(arch: &str, cpus: f64, memory: u64, disk: u64) -> Room {
        Room {
            architecture: arch.to_owned(),
            cpus,
            memory_bytes: memory,
            free_disk_bytes: disk,
        }
    }

    fn need(arch: Option<&str>, memory: u64, disk: u64) -> Need {
        Need {
            architecture: arch.map(str::to_owned),
            cpus: 1.0,
            memory_bytes: memory,
            disk_bytes: disk,
        }
    }

    fn devices() -> Vec<(String, Room)> {
        vec![
            ("laptop".to_owned(), room("amd64", 4.0, 2 * GIB, 10 * GIB)),
            (
                "desktop".to_owned(),
                room("amd64", 8.0, 16 * GIB, 100 * GIB),
            ),
            ("pi".to_owned(), room("arm64", 4.0, 32 * GIB, 100 * GIB)),
        ]
    }

    #[test]
    fn the_device_with_the_most_room_that_can_run_it_is_chosen() {
        // The Pi has the most memory but the wrong architecture.
        assert_eq!(
            choose(&devices(), &need(Some("amd64"), GIB, GIB), None).unwrap(),
            "desktop"
        );
        assert_eq!(
            choose(&devices(), &need(Some("arm64"), GIB, GIB), None).unwrap(),
            "pi"
        );
        // An image of unknown architecture goes by room alone.
        assert_eq!(
            choose(&devices(), &need(None, GIB, GIB), None).unwrap(),
            "pi"
        );
        // Too big for every amd64 device's disk.
        let err = choose(&devices(), &need(Some("amd64"), GIB, 500 * GIB), None).unwrap_err();
        assert!(err.contains("laptop: its workspace is"), "{err}");
        assert!(
            err.contains("pi: its image is for amd64, the device is arm64"),
            "{err}"
        );
    }

    #[test]
    fn a_named_device_is_used_only_if_it_fits() {
        let small = need(Some("amd64"), GIB, GIB);
        assert_eq!(
            choose(&devices(), &small, Some("laptop")).unwrap(),
            "laptop"
        );
        let err = choose(
            &devices(),
            &need(Some("amd64"), 4 * GIB, GIB),
            Some("laptop"),
        )
        .unwrap_err();
        assert!(
            err.contains("device laptop cannot run it: it may use 4096 MiB"),
            "{err}"
        );
        let err = choose(&devices(), &small, Some("pi")).unwrap_err();
        assert!(err.contains("the device is arm64"), "{err}");
        let err = choose(&devices(), &small, Some("phone")).unwrap_err();
        assert!(
            err.contains(
                "no device phone is connected; the connected ones are laptop, desktop, pi"
            ),
            "{err}"
        );
    }

    #[test]
    fn containers_a_device_runs_take_its_memory() {
        let capacity = EdgeCapacity {
            cpus: 4.0,
            memory_bytes: 4 * GIB,
            free_disk_bytes: GIB,
            architecture: "amd64".to_owned(),
            hostname: "laptop".to_owned(),
        };
        let running = ContainerRecord {
            id: offload_core::ContainerId::random(),
            name: Name::parse("work").unwrap(),
            owner: offload_core::UserName::parse("alice").unwrap(),
            image: offload_core::ImageRef::parse("busybox").unwrap(),
            command: Vec::new(),
            env: Vec::new(),
            cpus: 1.0,
            memory_bytes: 3 * GIB,
            location: Location::Edge,
            state: offload_core::State::Running,
            generation: offload_core::Generation::FIRST,
            runtime_id: None,
            reason: None,
            created_at: 0,
            updated_at: 0,
            last_move: None,
            node: None,
            device: Some("laptop".to_owned()),
        };
        let left = Room::of(&capacity, &[&running]);
        assert_eq!(left.memory_bytes, GIB);
        assert!(left.unfit(&need(None, 2 * GIB, 0)).is_some());
        assert!(left.unfit(&need(None, GIB, 0)).is_none());
        let cores = Need {
            cpus: 6.0,
            ..need(None, 0, 0)
        };
        assert!(left.unfit(&cores).unwrap().contains("6 cores"));
    }
}
