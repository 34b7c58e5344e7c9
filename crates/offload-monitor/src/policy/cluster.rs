//! The policy on a cluster: each node's own pressure (offload's containers on it against
//! its capacity), relief of a busy node by moving a container to the node with the most
//! room, and the pressure of the cluster as a whole, which alone asks owners to offload.
//!
//! A node's pressure uses the monitor's watermarks and sustain window but no forecast:
//! a container moved onto a node is a step in its load, which a trend would read as a
//! ramp and answer with a move back. The cloud as a whole is under pressure when no move
//! inside it can help: its usage per resource is that of the least busy schedulable node
//! (above high only when every node is) or, if higher, that of a node under pressure that
//! no other node has room to relieve (a "stuck" node).

use super::*;

/// One node's own pressure, kept between evaluations.
#[derive(Debug, Clone)]
pub(super) struct NodeTrack {
    pub(super) pressure: [Pressure; 2],
}

/// A move between nodes the policy proposed, waiting to start or for its owner's answer.
#[derive(Debug, Clone)]
pub(super) struct ProposedRelocation {
    pub(super) owner: String,
    pub(super) to: String,
    pub(super) asked_at: f64,
    /// Learnt from the store (pending from before a restart): it stands until answered,
    /// expired or moot.
    pub(super) standing: bool,
}

/// One node's load in this evaluation.
#[derive(Debug, Clone)]
pub(super) struct NodeLoad {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) cpus: f64,
    pub(super) mem_bytes: u64,
    pub(super) schedulable: bool,
    pub(super) movable_from: bool,
    /// Fractions in use by the containers running there.
    pub(super) usage: [f64; 2],
    /// `usage` plus the containers on their way there.
    pub(super) planned: [f64; 2],
}

impl NodeLoad {
    fn share(&self, c: &ContainerUsage) -> [f64; 2] {
        share_of(self.cpus, self.mem_bytes, c)
    }
}

/// What one evaluation found on the cluster.
pub(super) struct ClusterRound {
    /// The cloud's usage as a whole, per resource.
    pub(super) signal: [f64; 2],
    /// Moves between nodes decided now.
    pub(super) relocations: Vec<Relocation>,
    /// Proposed moves whose owner did not answer in time: they do not happen.
    pub(super) expired: Vec<Expiry>,
    /// Proposed moves no longer needed.
    pub(super) withdrawn: Vec<String>,
    pub(super) loads: Vec<NodeLoad>,
    /// Nodes under pressure that no move inside the cloud can relieve now.
    pub(super) stuck: Vec<String>,
    pub(super) status: Vec<NodeStatus>,
}

impl ClusterRound {
    fn load(&self, id: &str) -> Option<&NodeLoad> {
        self.loads.iter().find(|l| l.id == id)
    }
}

impl Policy {
    /// Records a move between nodes proposed outside this policy's rounds (a query
    /// pending from before a restart), so its deadline is kept by the same rule.
    pub fn record_relocation_ask(
        &mut self,
        container_id: &str,
        owner: &str,
        to_node: &str,
        now: Duration,
        standing: bool,
    ) {
        let proposal = self
            .relocation_pending
            .entry(container_id.to_owned())
            .or_insert_with(|| ProposedRelocation {
                owner: owner.to_owned(),
                to: to_node.to_owned(),
                asked_at: now.as_secs_f64(),
                standing,
            });
        proposal.standing |= standing;
    }

    /// A proposed move between nodes started (or its owner accepted it, and it starts):
    /// the container counts as on its way until the move ends. A decline (or a move that
    /// could not start) keeps it from being proposed again for `node_move_cooldown_secs`.
    pub fn record_relocation_answer(&mut self, container_id: &str, answer: Answer, now: Duration) {
        let at = now.as_secs_f64();
        let Some(proposal) = self.relocation_pending.remove(container_id) else {
            if answer == Answer::Decline {
                self.relocated.insert(container_id.to_owned(), at);
            }
            return;
        };
        match answer {
            Answer::Accept => {
                self.relocating
                    .insert(container_id.to_owned(), (proposal.to, at));
            }
            Answer::Decline => {
                self.relocated.insert(container_id.to_owned(), at);
            }
        }
    }

    /// Whether a move of `container_id` between nodes is proposed and not yet answered.
    pub fn is_relocation_pending(&self, container_id: &str) -> bool {
        self.relocation_pending.contains_key(container_id)
    }

    /// Whether `container_id` is on its way to another node.
    pub fn is_relocating(&self, container_id: &str) -> bool {
        self.relocating.contains_key(container_id)
    }

    /// Measures every node, updates its pressure, ends finished moves between nodes,
    /// expires and withdraws proposals, and plans new moves for nodes under pressure.
    pub(super) fn cluster_round(
        &mut self,
        at: f64,
        new_sample: bool,
        nodes: &[NodeReport],
        world: &World<'_>,
    ) -> ClusterRound {
        let mut loads: Vec<NodeLoad> = nodes
            .iter()
            .filter(|n| n.cpus.is_finite() && n.cpus > 0.0 && n.mem_bytes > 0)
            .map(|n| NodeLoad {
                id: n.id.clone(),
                name: n.name.clone(),
                cpus: n.cpus,
                mem_bytes: n.mem_bytes,
                schedulable: n.schedulable,
                movable_from: n.movable_from,
                usage: [0.0; 2],
                planned: [0.0; 2],
            })
            .collect();
        for c in world.containers.values().filter(|c| c.running_in_cloud) {
            if let Some(load) = loads.iter_mut().find(|l| Some(&l.id) == c.node.as_ref()) {
                let share = load.share(c);
                add(&mut load.usage, share);
            }
        }
        for load in &mut loads {
            load.planned = load.usage;
        }

        // Each node's own pressure.
        self.nodes.retain(|id, _| loads.iter().any(|l| l.id == *id));
        let node_config = PolicyConfig {
            horizon_secs: 0.0,
            ..self.config.clone()
        };
        for load in &loads {
            let track = self
                .nodes
                .entry(load.id.clone())
                .or_insert_with(|| NodeTrack {
                    pressure: Resource::ALL.map(|r| Pressure::new(r, &node_config)),
                });
            for p in &mut track.pressure {
                p.update(at, load.usage[p.resource().index()], new_sample);
            }
        }

        // Moves between nodes end when the container runs again (on the target, or back
        // where it was after a rollback); either way it stays put for a while.
        let move_timeout = self.config.move_timeout_secs;
        let mut ended = Vec::new();
        self.relocating.retain(|id, (_, since)| {
            let keep = world
                .containers
                .get(id.as_str())
                .is_some_and(|c| c.moving && at - *since < move_timeout);
            if !keep {
                ended.push(id.clone());
            }
            keep
        });
        for id in ended {
            self.relocated.insert(id, at);
        }
        let cooldown = self.config.node_move_cooldown_secs;
        self.relocated.retain(|_, since| at - *since < cooldown);
        // Containers on their way take room on their target.
        for (id, (to, _)) in &self.relocating {
            if let (Some(c), Some(load)) = (
                world.containers.get(id.as_str()),
                loads.iter_mut().find(|l| l.id == *to),
            ) && !c.running_in_cloud
            {
                let share = load.share(c);
                add(&mut load.planned, share);
            }
        }

        // Proposals: expired at their deadline (nothing moves), withdrawn when moot.
        let deadline = self.config.query_deadline_secs;
        let mut expired = Vec::new();
        let mut withdrawn = Vec::new();
        let proposals = std::mem::take(&mut self.relocation_pending);
        for (id, proposal) in proposals {
            if at >= proposal.asked_at + deadline {
                self.relocated
                    .insert(id.clone(), proposal.asked_at + deadline);
                expired.push(Expiry {
                    container_id: id,
                    owner: proposal.owner,
                    action: DefaultAction::Decline,
                });
                continue;
            }
            let source_pressed = |c: &ContainerUsage| {
                c.node
                    .as_ref()
                    .and_then(|n| self.nodes.get(n))
                    .is_some_and(|t| t.pressure.iter().any(Pressure::is_active))
            };
            let keep = match world.containers.get(id.as_str()) {
                Some(c) => c.running_in_cloud && source_pressed(c),
                // Learnt while the observation was taken: not moot yet.
                None => proposal.standing,
            };
            if keep {
                self.relocation_pending.insert(id, proposal);
            } else {
                withdrawn.push(id);
            }
        }
        for (id, proposal) in &self.relocation_pending {
            if let (Some(c), Some(load)) = (
                world.containers.get(id.as_str()),
                loads.iter_mut().find(|l| l.id == proposal.to),
            ) {
                let share = load.share(c);
                add(&mut load.planned, share);
            }
        }

        let relocations = self.plan_relocations(at, world, &mut loads);
        let stuck: Vec<String> = relocations
            .iter()
            .filter_map(|plan| match plan {
                Plan::Stuck(node) => Some(node.clone()),
                _ => None,
            })
            .collect();
        let relocations: Vec<Relocation> = relocations
            .into_iter()
            .filter_map(|plan| match plan {
                Plan::Move(relocation) => Some(relocation),
                Plan::Stuck(_) => None,
            })
            .collect();

        // The cloud's usage as a whole.
        let mut signal = [0.0; 2];
        let mut notes: [Option<String>; 2] = [None, None];
        for (r, resource) in Resource::ALL.iter().enumerate() {
            let least = loads
                .iter()
                .filter(|l| l.schedulable)
                .min_by(|a, b| a.usage[r].total_cmp(&b.usage[r]));
            if let Some(least) = least {
                signal[r] = least.usage[r];
                notes[r] = Some(format!("on the least busy node ({})", least.name));
            }
            let busiest_stuck = loads
                .iter()
                .filter(|l| stuck.contains(&l.id))
                .filter(|l| {
                    self.nodes
                        .get(&l.id)
                        .is_some_and(|t| t.pressure[resource.index()].is_active())
                })
                .max_by(|a, b| a.usage[r].total_cmp(&b.usage[r]));
            if let Some(node) = busiest_stuck
                && node.usage[r] >= signal[r]
            {
                signal[r] = node.usage[r];
                notes[r] = Some(format!(
                    "on node {}, which no other node has room to relieve",
                    node.name
                ));
            }
        }
        self.cluster_note = notes;

        let status = loads
            .iter()
            .map(|l| {
                let track = self.nodes.get(&l.id);
                let resources: Vec<ResourceStatus> = track
                    .map(|t| {
                        t.pressure
                            .iter()
                            .map(|p| ResourceStatus {
                                resource: p.resource(),
                                usage: p.usage(),
                                forecast: p.forecast(),
                                watermark: p.watermark(),
                                pressure: p.is_active(),
                                trigger: p.trigger(),
                                above_high_for: p.above_high_for(at).map(secs),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                NodeStatus {
                    id: l.id.clone(),
                    name: l.name.clone(),
                    schedulable: l.schedulable,
                    cpus: l.cpus,
                    mem_bytes: l.mem_bytes,
                    under_pressure: resources.iter().any(|r| r.pressure),
                    resources,
                    stuck: stuck.contains(&l.id),
                }
            })
            .collect();

        ClusterRound {
            signal,
            relocations,
            expired,
            withdrawn,
            loads,
            stuck,
            status,
        }
    }

    /// For each node under pressure, busiest first: one container to move to the node
    /// with the most room, or the finding that none can go anywhere.
    fn plan_relocations(
        &mut self,
        at: f64,
        world: &World<'_>,
        loads: &mut [NodeLoad],
    ) -> Vec<Plan> {
        let mut order: Vec<usize> = (0..loads.len())
            .filter(|&i| {
                self.nodes
                    .get(&loads[i].id)
                    .is_some_and(|t| t.pressure.iter().any(Pressure::is_active))
            })
            .collect();
        let busiest = |l: &NodeLoad| l.usage[0].max(l.usage[1]);
        order.sort_by(|&a, &b| busiest(&loads[b]).total_cmp(&busiest(&loads[a])));
        let high = self.pressure.each(|p| p.watermark().high);
        let mut plans = Vec::new();
        for i in order {
            let source = loads[i].clone();
            if !source.movable_from {
                continue;
            }
            let Some(track) = self.nodes.get(&source.id) else {
                continue;
            };
            let mut required = [0.0; 2];
            for p in track.pressure.iter().filter(|p| p.is_active()) {
                required[p.resource().index()] = p.projected() - p.watermark().low + RELIEF_EPSILON;
            }
            let pressure_text = track
                .pressure
                .iter()
                .filter(|p| p.is_active())
                .map(|p| p.describe(at))
                .collect::<Vec<_>>()
                .join("; ");
            let active: Vec<Resource> = track
                .pressure
                .iter()
                .filter(|p| p.is_active())
                .map(Pressure::resource)
                .collect();
            // Containers already leaving: proposed to another node, or asked to offload
            // (a node waiting on owners' answers stays stuck, so the cloud stays under
            // pressure until they answer).
            let mut after_edge = required;
            for (id, to_edge) in self
                .relocation_pending
                .keys()
                .map(|id| (id, false))
                .chain(self.pending.keys().map(|id| (id, true)))
                .chain(self.accepted.keys().map(|id| (id, true)))
            {
                if let Some(c) = world.containers.get(id.as_str())
                    && c.running_in_cloud
                    && c.node.as_ref() == Some(&source.id)
                {
                    let share = source.share(c);
                    sub(&mut after_edge, share);
                    if !to_edge {
                        sub(&mut required, share);
                    }
                }
            }
            if required.iter().all(|r| *r <= RELIEF_EPSILON) {
                continue;
            }
            if after_edge.iter().all(|r| *r <= RELIEF_EPSILON) {
                plans.push(Plan::Stuck(source.id.clone()));
                continue;
            }
            let mut best: Option<(Pick, usize, &ContainerUsage)> = None;
            for c in world.containers.values().filter(|c| {
                c.running_in_cloud
                    && !c.moving
                    && c.node.as_ref() == Some(&source.id)
                    && !self.pending.contains_key(&c.id)
                    && !self.accepted.contains_key(&c.id)
                    && !self.relocation_pending.contains_key(&c.id)
                    && !self.relocating.contains_key(&c.id)
                    && !self.relocated.contains_key(&c.id)
            }) {
                let relief = source.share(c);
                let covers = (0..2).all(|r| required[r] <= 0.0 || relief[r] >= required[r]);
                // The target with the most room left once the container is there.
                let target = (0..loads.len())
                    .filter(|&t| t != i && loads[t].schedulable)
                    .filter(|&t| {
                        self.nodes
                            .get(&loads[t].id)
                            .is_none_or(|tr| !tr.pressure.iter().any(Pressure::is_active))
                    })
                    .filter_map(|t| {
                        let share = loads[t].share(c);
                        let room = (0..2)
                            .map(|r| high[r] - loads[t].planned[r] - share[r])
                            .fold(f64::INFINITY, f64::min);
                        (room >= 0.0).then_some((t, room))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
                let Some((t, _)) = target else { continue };
                let pick = Pick {
                    covers,
                    // Covering: the smallest such container; else the one that helps most.
                    size: (0..2)
                        .filter(|&r| required[r] > 0.0)
                        .map(|r| relief[r].min(required[r].max(0.0)) / required[r])
                        .sum(),
                    relief_total: (0..2)
                        .filter(|&r| required[r] > 0.0)
                        .map(|r| relief[r])
                        .sum(),
                };
                let better = match &best {
                    None => true,
                    Some((b, _, bc)) => pick.better_than(b, &c.id, &bc.id),
                };
                if better {
                    best = Some((pick, t, c));
                }
            }
            match best {
                Some((_, t, c)) => {
                    let share = loads[t].share(c);
                    add(&mut loads[t].planned, share);
                    let relief = source.share(c);
                    let shares: Vec<String> = active
                        .iter()
                        .map(|r| {
                            format!(
                                "{} of node {}'s {r}",
                                percent(relief[r.index()]),
                                source.name
                            )
                        })
                        .collect();
                    let reason = format!(
                        "node {} is under pressure ({pressure_text}) and node {} has room; \
                         this container uses {}",
                        source.name,
                        loads[t].name,
                        shares.join(" and ")
                    );
                    self.relocation_pending.insert(
                        c.id.clone(),
                        ProposedRelocation {
                            owner: c.owner.clone(),
                            to: loads[t].id.clone(),
                            asked_at: at,
                            standing: false,
                        },
                    );
                    plans.push(Plan::Move(Relocation {
                        container_id: c.id.clone(),
                        owner: c.owner.clone(),
                        from_node: source.id.clone(),
                        to_node: loads[t].id.clone(),
                        to_node_name: loads[t].name.clone(),
                        reason,
                    }));
                }
                None => plans.push(Plan::Stuck(source.id.clone())),
            }
        }
        plans
    }

    /// The groups a cluster under pressure asks in: each stuck node against its own
    /// capacity, so the ranking counts the node a container would relieve; when no node
    /// is stuck (every node is busy, or forecast to be), the least busy node, whose
    /// relief is what brings the cloud's usage down.
    pub(super) fn cluster_groups(&self, at: f64, round: &ClusterRound) -> Vec<Group> {
        let mut groups = Vec::new();
        for id in &round.stuck {
            let (Some(load), Some(track)) = (round.load(id), self.nodes.get(id)) else {
                continue;
            };
            let mut required = [0.0; 2];
            let mut resources = Vec::new();
            for p in track.pressure.iter().filter(|p| p.is_active()) {
                required[p.resource().index()] = p.projected() - p.watermark().low + RELIEF_EPSILON;
                resources.push(p.resource());
            }
            let text = track
                .pressure
                .iter()
                .filter(|p| p.is_active())
                .map(|p| p.describe(at))
                .collect::<Vec<_>>()
                .join("; ");
            groups.push(Group {
                node: Some(id.clone()),
                cpus: load.cpus,
                mem_bytes: load.mem_bytes,
                required,
                text: format!(
                    "node {} is under pressure ({text}) and no other node has room",
                    load.name
                ),
                of: format!("of node {}'s", load.name),
                resources,
            });
        }
        if groups.is_empty() {
            let mut required = [0.0; 2];
            let mut resources = Vec::new();
            for p in self.pressure.iter().filter(|p| p.is_active()) {
                required[p.resource().index()] = p.projected() - p.watermark().low + RELIEF_EPSILON;
                resources.push(p.resource());
            }
            let least = round.loads.iter().filter(|l| l.schedulable).min_by(|a, b| {
                let busy = |l: &NodeLoad| l.usage[0].max(l.usage[1]);
                busy(a).total_cmp(&busy(b))
            });
            if let Some(load) = least {
                groups.push(Group {
                    node: Some(load.id.clone()),
                    cpus: load.cpus,
                    mem_bytes: load.mem_bytes,
                    required,
                    text: format!("the cluster is under pressure: {}", self.pressure_text(at)),
                    of: format!("of node {}'s", load.name),
                    resources,
                });
            }
        }
        groups
    }

    /// Edge containers that fit back on the cluster: each on the schedulable node with
    /// the most room, none taking a node over its high watermarks. Owners who opted in to
    /// auto-return go first, then the smallest.
    pub(super) fn cluster_returns(
        &self,
        edge: &[(&ContainerUsage, &AgentReport)],
        round: &ClusterRound,
    ) -> Vec<(usize, String)> {
        let high = self.pressure.each(|p| p.watermark().high);
        let mut planned: Vec<(usize, [f64; 2])> = round
            .loads
            .iter()
            .enumerate()
            .filter(|(_, l)| l.schedulable)
            .map(|(i, l)| (i, l.planned))
            .collect();
        let mut order: Vec<usize> = (0..edge.len()).collect();
        let largest = |c: &ContainerUsage| {
            round
                .loads
                .iter()
                .filter(|l| l.schedulable)
                .map(|l| {
                    let s = l.share(c);
                    s[0].max(s[1])
                })
                .fold(0.0, f64::max)
        };
        order.sort_by(|&a, &b| {
            let (a, b) = (&edge[a], &edge[b]);
            b.1.auto_return
                .cmp(&a.1.auto_return)
                .then_with(|| largest(a.0).total_cmp(&largest(b.0)))
                .then_with(|| a.0.id.cmp(&b.0.id))
        });
        let mut chosen = Vec::new();
        for i in order {
            let c = edge[i].0;
            let best = planned
                .iter_mut()
                .filter_map(|(l, load)| {
                    let share = round.loads[*l].share(c);
                    let room = (0..2)
                        .map(|r| high[r] - load[r] - share[r])
                        .fold(f64::INFINITY, f64::min);
                    (room >= 0.0).then_some((*l, load, share, room))
                })
                .max_by(|a, b| a.3.total_cmp(&b.3));
            if let Some((l, load, share, _)) = best {
                add(load, share);
                let name = &round.loads[l].name;
                chosen.push((
                    i,
                    format!(
                        "this container would use {} of node {name}'s cpu and {} of its memory",
                        percent(share[0]),
                        percent(share[1]),
                    ),
                ));
            }
        }
        chosen
    }
}

fn add(into: &mut [f64; 2], share: [f64; 2]) {
    for (value, part) in into.iter_mut().zip(share) {
        *value += part;
    }
}

fn sub(from: &mut [f64; 2], share: [f64; 2]) {
    for (value, part) in from.iter_mut().zip(share) {
        *value -= part;
    }
}

/// What planning found for one node under pressure.
enum Plan {
    Move(Relocation),
    Stuck(String),
}

/// How good a container is to move off a node.
struct Pick {
    /// It alone brings the node below its low watermark.
    covers: bool,
    /// Its relief as a fraction of what is needed, capped at the need.
    size: f64,
    /// Its relief on the pressured resources, uncapped.
    relief_total: f64,
}

impl Pick {
    /// One move is enough: the smallest container that covers the need (the least work
    /// interrupted, the most room left on the target); else the one that helps most.
    fn better_than(&self, other: &Pick, id: &str, other_id: &str) -> bool {
        match (self.covers, other.covers) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => self
                .relief_total
                .total_cmp(&other.relief_total)
                .then_with(|| id.cmp(other_id))
                .is_lt(),
            (false, false) => other
                .size
                .total_cmp(&self.size)
                .then_with(|| id.cmp(other_id))
                .is_lt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    /// A node of 2 cores and 4 GiB.
    fn node(id: &str) -> NodeReport {
        NodeReport {
            id: id.to_owned(),
            name: format!("node-{id}"),
            cpus: 2.0,
            mem_bytes: 4 * GIB,
            schedulable: true,
            movable_from: true,
        }
    }

    /// A cloud container on `node` using `cores` and a quarter GiB.
    fn on(node: &str, id: &str, owner: &str, cores: f64) -> ContainerUsage {
        ContainerUsage {
            id: id.to_owned(),
            owner: owner.to_owned(),
            cpu: cores,
            mem_bytes: GIB / 4,
            running_in_cloud: true,
            node: Some(node.to_owned()),
            moving: false,
        }
    }

    /// Every container movable to the edge, every owner connected.
    fn cluster(containers: Vec<ContainerUsage>, nodes: &[&str]) -> Observation {
        let needs = containers
            .iter()
            .map(|c| MoveNeeds {
                id: c.id.clone(),
                cpus: 1.0,
                mem_bytes: GIB,
                missing_bytes: GIB,
            })
            .collect();
        let mut owners: Vec<&str> = containers.iter().map(|c| c.owner.as_str()).collect();
        owners.sort();
        owners.dedup();
        let agents = owners
            .into_iter()
            .map(|owner| AgentReport {
                owner: owner.to_owned(),
                cpus: 8.0,
                mem_bytes: 16 * GIB,
                free_disk_bytes: 100 * GIB,
                auto_accept: false,
                auto_return: false,
            })
            .collect();
        Observation {
            host: HostSample::default(),
            containers,
            needs,
            agents,
            nodes: nodes.iter().map(|n| node(n)).collect(),
        }
    }

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default()).unwrap()
    }

    /// Evaluates every 2 s from `from` to `to` (inclusive), collecting the decisions.
    fn run(policy: &mut Policy, obs: &Observation, from: f64, to: f64) -> Vec<(f64, Decision)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.push((t, policy.evaluate(at(t), obs)));
            t += 2.0;
        }
        out
    }

    fn relocations(decisions: &[(f64, Decision)]) -> Vec<(f64, Relocation)> {
        decisions
            .iter()
            .flat_map(|(t, d)| d.relocations.iter().map(|r| (*t, r.clone())))
            .collect()
    }

    fn asks(decisions: &[(f64, Decision)]) -> Vec<Ask> {
        decisions.iter().flat_map(|(_, d)| d.ask.clone()).collect()
    }

    /// Node a at 100% cpu, b at 30%, c idle: once the pressure is sustained the smallest
    /// container that alone brings a below its low watermark moves to c, the node with
    /// the most room; nobody is asked to offload and the cloud is not under pressure.
    #[test]
    fn a_busy_node_is_relieved_inside_the_cloud_before_anyone_is_asked() {
        let mut policy = policy();
        let mut obs = cluster(
            vec![
                on("a", "big", "ana", 1.2),
                on("a", "mid", "bo", 0.5),
                on("a", "small", "cy", 0.3),
                on("b", "other", "dee", 0.6),
            ],
            &["a", "b", "c"],
        );
        let decisions = run(&mut policy, &obs, 0.0, 20.0);
        let moves = relocations(&decisions);
        assert_eq!(moves.len(), 1, "{moves:?}");
        let (t, relocation) = &moves[0];
        assert!(*t >= 10.0, "only after the sustain window: {t}");
        // Needs 100% - 60% = 40% of a: "mid" (25%) is not enough, "big" (60%) is.
        assert_eq!(relocation.container_id, "big");
        assert_eq!(
            (relocation.from_node.as_str(), relocation.to_node.as_str()),
            ("a", "c")
        );
        assert!(
            relocation.reason.contains("node node-a is under pressure")
                && relocation.reason.contains("node node-c has room")
                && relocation.reason.contains("60% of node node-a's cpu"),
            "{}",
            relocation.reason
        );
        assert!(asks(&decisions).is_empty());
        assert!(
            decisions.iter().all(|(_, d)| d.pressure_started.is_empty()),
            "the cloud as a whole has room"
        );
        let last = &decisions.last().unwrap().1.status;
        assert!(!last.under_pressure);
        let a = last.nodes.iter().find(|n| n.id == "a").unwrap();
        assert!(a.under_pressure && !a.stuck);
        assert!(policy.is_relocation_pending("big"));

        // The move starts; the same observation proposes nothing more, since the
        // container on its way counts as relief.
        policy.record_relocation_answer("big", Answer::Accept, at(20.0));
        obs.containers[0].moving = true;
        obs.containers[0].running_in_cloud = false;
        let during = run(&mut policy, &obs, 22.0, 30.0);
        assert!(relocations(&during).is_empty());
        assert!(policy.is_relocating("big"));
        // It runs on c: a is calm again, and "big" stays put for the cooldown.
        obs.containers[0] = on("c", "big", "ana", 1.2);
        let after = run(&mut policy, &obs, 32.0, 60.0);
        assert!(relocations(&after).is_empty());
        assert!(!policy.is_relocating("big"));
        let a = after.last().unwrap().1.status.nodes.clone();
        assert!(a.iter().all(|n| !n.under_pressure), "{a:?}");
    }

    /// Node a is under pressure and neither b nor c has room for any of its containers:
    /// after the sustain window the cloud is under pressure, and only containers on a are
    /// asked to offload, ranked by their share of a, though b's and c's are busier.
    #[test]
    fn a_node_nobody_can_relieve_puts_the_cloud_under_pressure_and_asks_its_containers() {
        let mut policy = policy();
        let obs = cluster(
            vec![
                on("a", "a1", "ana", 1.0),
                on("a", "a2", "bo", 0.9),
                on("b", "b1", "cy", 1.5),
                on("c", "c1", "dee", 1.5),
            ],
            &["a", "b", "c"],
        );
        let decisions = run(&mut policy, &obs, 0.0, 40.0);
        assert!(relocations(&decisions).is_empty());
        let started: Vec<&PressureEvent> = decisions
            .iter()
            .flat_map(|(_, d)| d.pressure_started.iter())
            .collect();
        assert_eq!(started.len(), 1, "{started:?}");
        assert!(
            started[0].reason.contains("cpu 95%")
                && started[0]
                    .reason
                    .contains("on node node-a, which no other node"),
            "{}",
            started[0].reason
        );
        let asked = asks(&decisions);
        assert_eq!(asked.len(), 1, "{asked:?}");
        // 95% - 60% = 35% of a: "a1" (50%) alone is enough.
        assert_eq!(asked[0].container_id, "a1");
        assert!(
            asked[0].reason.contains("no other node has room")
                && asked[0].reason.contains("50% of node node-a's cpu"),
            "{}",
            asked[0].reason
        );
        let status = &decisions.last().unwrap().1.status;
        assert!(status.under_pressure);
        assert!(status.nodes.iter().any(|n| n.id == "a" && n.stuck));
    }

    /// Every node above its high watermark: containers are asked on the nodes, and no
    /// move between nodes is proposed (there is no room anywhere).
    #[test]
    fn every_node_busy_asks_owners_to_offload() {
        let mut policy = policy();
        let obs = cluster(
            vec![
                on("a", "a1", "ana", 1.9),
                on("b", "b1", "bo", 1.9),
                on("c", "c1", "cy", 1.9),
            ],
            &["a", "b", "c"],
        );
        let decisions = run(&mut policy, &obs, 0.0, 40.0);
        assert!(relocations(&decisions).is_empty());
        let mut asked: Vec<String> = asks(&decisions)
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        asked.sort();
        assert_eq!(asked, ["a1", "b1", "c1"]);
    }

    /// In "ask" mode the owner may decline: the next container is proposed, and once
    /// nobody on the node can move, the cloud asks owners to offload. Unanswered
    /// proposals expire without a move.
    #[test]
    fn a_declined_move_is_not_proposed_again_and_then_the_node_is_stuck() {
        let mut policy = policy();
        let obs = cluster(
            vec![
                on("a", "x", "ana", 0.9),
                on("a", "y", "bo", 0.95),
                on("b", "b1", "cy", 0.2),
            ],
            &["a", "b"],
        );
        let first = run(&mut policy, &obs, 0.0, 10.0);
        let moves = relocations(&first);
        assert_eq!(moves.len(), 1);
        // 92.5% - 60%: both cover; the smaller goes.
        assert_eq!(moves[0].1.container_id, "x");
        policy.record_relocation_answer("x", Answer::Decline, at(12.0));
        let second = run(&mut policy, &obs, 12.0, 12.0);
        let moves = relocations(&second);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].1.container_id, "y");
        // No answer: it expires at its deadline, as a decline.
        let waiting = run(&mut policy, &obs, 14.0, 72.0);
        assert!(relocations(&waiting).is_empty());
        let expired: Vec<&Expiry> = waiting.iter().flat_map(|(_, d)| d.expired.iter()).collect();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].container_id, "y");
        assert_eq!(expired[0].action, DefaultAction::Decline);
        assert!(!policy.is_relocation_pending("y"));
        // Both stay for the cooldown; node a is stuck, and the cloud asks.
        let later = run(&mut policy, &obs, 74.0, 100.0);
        assert!(relocations(&later).is_empty());
        assert!(!asks(&later).is_empty());
    }

    /// Two nodes under pressure and room on c for one container: within a round and
    /// while the move is under way, c is not filled past its high watermark.
    #[test]
    fn a_target_takes_no_more_than_fits_under_its_high_watermark() {
        let mut policy = policy();
        let mut obs = cluster(
            vec![
                on("a", "a1", "ana", 1.0),
                on("a", "a2", "ana", 0.9),
                on("b", "b1", "bo", 1.0),
                on("b", "b2", "bo", 0.9),
                on("c", "c1", "cy", 0.6),
            ],
            &["a", "b", "c"],
        );
        let decisions = run(&mut policy, &obs, 0.0, 10.0);
        let moves = relocations(&decisions);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].1.to_node, "c");
        let moved = moves[0].1.container_id.clone();
        policy.record_relocation_answer(&moved, Answer::Accept, at(10.0));
        let index = obs.containers.iter().position(|c| c.id == moved).unwrap();
        obs.containers[index].moving = true;
        obs.containers[index].running_in_cloud = false;
        let during = run(&mut policy, &obs, 12.0, 20.0);
        assert!(relocations(&during).is_empty(), "c is full");
        let status = &during.last().unwrap().1.status;
        let stuck: Vec<&str> = status
            .nodes
            .iter()
            .filter(|n| n.stuck)
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(stuck.len(), 1, "{stuck:?}");
    }

    /// A node being drained (or cut off) is relieved by other means: the monitor does
    /// not move its containers nor place any there.
    #[test]
    fn nodes_that_cannot_take_or_give_are_left_alone() {
        let mut policy = policy();
        let mut obs = cluster(
            vec![on("a", "a1", "ana", 1.0), on("a", "a2", "bo", 0.9)],
            &["a", "b", "c"],
        );
        obs.nodes[0].movable_from = false;
        let decisions = run(&mut policy, &obs, 0.0, 20.0);
        assert!(relocations(&decisions).is_empty());
        let mut policy = self::policy();
        obs.nodes[0].movable_from = true;
        obs.nodes[1].schedulable = false;
        obs.nodes[2].schedulable = false;
        let decisions = run(&mut policy, &obs, 0.0, 20.0);
        assert!(relocations(&decisions).is_empty());
        assert!(
            decisions.last().unwrap().1.status.nodes[0].stuck,
            "no node has room"
        );
    }

    /// When the cloud has room, an edge container comes back on a node it fits on.
    #[test]
    fn returns_are_offered_when_a_node_has_room() {
        let mut policy = policy();
        let mut edge = on("a", "home", "ana", 0.5);
        edge.running_in_cloud = false;
        edge.node = None;
        let obs = cluster(
            vec![edge, on("a", "a1", "bo", 1.5), on("b", "b1", "cy", 1.5)],
            &["a", "b", "c"],
        );
        let decisions = run(&mut policy, &obs, 0.0, 40.0);
        let notices: Vec<&Return> = decisions
            .iter()
            .flat_map(|(_, d)| d.return_notices.iter())
            .collect();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].reason.contains("25% of node node-c's cpu"),
            "{}",
            notices[0].reason
        );
    }
}
