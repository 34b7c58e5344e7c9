//! Policy scenarios on recorded series: asks, cooldowns, ranking, agents and returns.

use super::*;
use crate::sample::PoolCapacity;

const GIB: u64 = 1 << 30;
/// The host in these scenarios: 16 cores, 64 GiB.
const HOST_CPUS: f64 = 16.0;
const HOST_MEM: u64 = 64 * GIB;

fn at(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

/// A cloud container using `share` of the host's cpu.
fn cloud(id: &str, owner: &str, share: f64) -> ContainerUsage {
    ContainerUsage {
        id: id.to_owned(),
        owner: owner.to_owned(),
        cpu: share * HOST_CPUS,
        mem_bytes: GIB,
        running_in_cloud: true,
        node: None,
        moving: false,
    }
}

/// An edge container that would use `cpu_share` and `mem_share` of the host once back.
fn edge(id: &str, owner: &str, cpu_share: f64, mem_share: f64) -> ContainerUsage {
    ContainerUsage {
        id: id.to_owned(),
        owner: owner.to_owned(),
        cpu: cpu_share * HOST_CPUS,
        mem_bytes: (mem_share * HOST_MEM as f64) as u64,
        running_in_cloud: false,
        node: None,
        moving: false,
    }
}

fn needs(id: &str, missing_bytes: u64) -> MoveNeeds {
    MoveNeeds {
        id: id.to_owned(),
        cpus: 2.0,
        mem_bytes: 2 * GIB,
        missing_bytes,
    }
}

fn agent(owner: &str) -> AgentReport {
    AgentReport {
        owner: owner.to_owned(),
        cpus: 8.0,
        mem_bytes: 16 * GIB,
        free_disk_bytes: 100 * GIB,
        auto_accept: false,
        auto_return: false,
    }
}

/// Every cloud container movable, every owner connected.
fn world(containers: Vec<ContainerUsage>) -> Observation {
    let needs = containers
        .iter()
        .filter(|c| c.running_in_cloud)
        .map(|c| needs(&c.id, GIB))
        .collect();
    let mut owners: Vec<&str> = containers.iter().map(|c| c.owner.as_str()).collect();
    owners.sort();
    owners.dedup();
    let agents = owners.into_iter().map(agent).collect();
    Observation {
        host: host(0.0, 0.3),
        containers,
        needs,
        agents,
        nodes: Vec::new(),
    }
}

fn host(cpu: f64, mem: f64) -> HostSample {
    HostSample {
        cpu,
        mem,
        cpus: HOST_CPUS,
        mem_total_bytes: HOST_MEM,
    }
}

/// Feeds a cpu series (one value per 2 s tick from `start`) and returns every decision.
fn replay(
    policy: &mut Policy,
    observation: &mut Observation,
    start: f64,
    cpu: impl IntoIterator<Item = f64>,
) -> Vec<(f64, Decision)> {
    cpu.into_iter()
        .enumerate()
        .map(|(i, value)| {
            let t = start + 2.0 * i as f64;
            observation.host.cpu = value;
            (t, policy.evaluate(at(t), observation))
        })
        .collect()
}

fn asked(decisions: &[(f64, Decision)]) -> Vec<(f64, String)> {
    decisions
        .iter()
        .flat_map(|(t, d)| d.ask.iter().map(move |a| (*t, a.container_id.clone())))
        .collect()
}

fn policy() -> Policy {
    Policy::new(PolicyConfig::default()).unwrap()
}

#[test]
fn a_sustained_crossing_asks_exactly_once() {
    let mut policy = policy();
    let mut obs = world(vec![
        cloud("big", "ana", 0.50),
        cloud("mid", "bo", 0.15),
        cloud("small", "cy", 0.05),
    ]);
    // 20 s calm, then 93% for 100 s with nobody answering: the query expires (declined by
    // default) at +60 s, and the ask cooldown (120 s) keeps anyone else from being asked.
    let series = std::iter::repeat_n(0.50, 10).chain(std::iter::repeat_n(0.93, 50));
    let decisions = replay(&mut policy, &mut obs, 0.0, series);

    let asks = asked(&decisions);
    assert_eq!(asks.len(), 1, "{asks:?}");
    let (t, id) = &asks[0];
    assert_eq!(id, "big");
    assert!(*t >= 20.0 && *t <= 30.0, "asked at {t}");
    let started: Vec<_> = decisions
        .iter()
        .flat_map(|(_, d)| d.pressure_started.iter())
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].resource, Resource::Cpu);
    let expired: Vec<_> = decisions
        .iter()
        .flat_map(|(_, d)| d.expired.iter())
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].action, DefaultAction::Decline);
}

#[test]
fn an_ask_says_why() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.41)]);
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.93, 11));
    let ask = decisions
        .iter()
        .flat_map(|(_, d)| d.ask.iter())
        .next()
        .unwrap();
    // A flat load: the forecast equals the level, pressure came from the sustain window.
    assert_eq!(
        ask.reason,
        "cpu 93% for 10 s (high 85%), forecast 93% in 30 s; this container uses 41% of the host cpu"
    );
    assert_eq!(ask.owner, "ana");
    assert_eq!(ask.deadline, at(10.0 + 60.0));
    assert_eq!(ask.move_bytes, GIB);
}

#[test]
fn evaluating_the_same_tick_twice_asks_once() {
    let mut once = policy();
    let mut twice = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5), cloud("mid", "bo", 0.2)]);
    let mut asks_once = Vec::new();
    let mut asks_twice = Vec::new();
    for i in 0..40 {
        let t = at(2.0 * f64::from(i));
        obs.host.cpu = if i < 5 { 0.5 } else { 0.95 };
        asks_once.extend(once.evaluate(t, &obs).ask);
        asks_twice.extend(twice.evaluate(t, &obs).ask);
        asks_twice.extend(twice.evaluate(t, &obs).ask);
    }
    assert_eq!(asks_once.len(), 1);
    assert_eq!(asks_once, asks_twice);
}

#[test]
fn a_missed_tick_does_not_lose_the_ask() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5)]);
    obs.host.cpu = 0.95;
    // Ticks at 0 and 2, then the server stalls until 40: pressure and the ask still come.
    assert!(policy.evaluate(at(0.0), &obs).ask.is_empty());
    assert!(policy.evaluate(at(2.0), &obs).ask.is_empty());
    let late = policy.evaluate(at(40.0), &obs);
    assert_eq!(late.pressure_started.len(), 1);
    assert_eq!(late.ask.len(), 1);
    assert_eq!(late.ask[0].container_id, "big");
}

#[test]
fn a_load_oscillating_around_the_high_watermark_asks_at_most_once_per_cooldown() {
    // Two shapes: hovering around high (6 s at 82%, 12 s at 90%; hysteresis keeps it one
    // episode), and swinging
    // through both watermarks (a new episode every 40 s). Users decline every query at
    // once, which frees the next candidate; only the ask cooldown holds the rate.
    let around_high: Vec<f64> = (0..300)
        .map(|i| if (i / 3) % 3 == 0 { 0.82 } else { 0.90 })
        .collect();
    let swinging: Vec<f64> = (0..300)
        .map(|i| if (i / 10) % 2 == 0 { 0.50 } else { 0.95 })
        .collect();
    for (name, series) in [("around high", around_high), ("swinging", swinging)] {
        let mut policy = policy();
        let mut obs = world(
            (0..20)
                .map(|i| cloud(&format!("c{i:02}"), &format!("u{i:02}"), 0.30))
                .collect(),
        );
        let mut rounds: Vec<f64> = Vec::new();
        let mut episodes = 0;
        for (i, cpu) in series.into_iter().enumerate() {
            let t = 2.0 * i as f64;
            obs.host.cpu = cpu;
            let decision = policy.evaluate(at(t), &obs);
            episodes += decision.pressure_started.len();
            if !decision.ask.is_empty() {
                rounds.push(t);
            }
            for ask in &decision.ask {
                policy.record_decline(&ask.container_id, at(t));
            }
        }
        assert!(episodes >= 1, "{name}: no pressure at all");
        // 600 s with a 120 s cooldown: at most 5 rounds, at least 120 s apart, and the
        // load does keep asking (or the test would prove nothing).
        assert!(rounds.len() >= 2 && rounds.len() <= 5, "{name}: {rounds:?}");
        for pair in rounds.windows(2) {
            assert!(pair[1] - pair[0] >= 120.0, "{name}: {rounds:?}");
        }
    }
}

#[test]
fn a_rising_ramp_is_asked_about_before_it_crosses_high() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5), cloud("mid", "bo", 0.2)]);
    // +1 point per second from 30%: crosses 85% at t = 55.
    let series = (0..40).map(|i| 0.30 + 0.02 * f64::from(i));
    let decisions = replay(&mut policy, &mut obs, 0.0, series);
    let (t, started) = decisions
        .iter()
        .find_map(|(t, d)| d.pressure_started.first().map(|e| (*t, e.clone())))
        .unwrap();
    assert!(t < 55.0, "pressure flagged at {t}");
    assert_eq!(started.trigger, Trigger::Forecast);
    assert!(started.reason.contains("forecast"), "{}", started.reason);
    let asks = asked(&decisions);
    assert!(asks.first().is_some_and(|(t, _)| *t < 55.0), "{asks:?}");
}

#[test]
fn the_ranking_asks_the_smallest_relieving_set() {
    let mut policy = policy();
    // Flat 90%: 0.30 must go. One 35% container does it; three small ones would too.
    let mut obs = world(vec![
        cloud("small-1", "a", 0.10),
        cloud("small-2", "b", 0.10),
        cloud("small-3", "c", 0.12),
        cloud("big", "d", 0.35),
    ]);
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.90, 10));
    let ids: Vec<String> = asked(&decisions).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["big"]);
}

#[test]
fn the_ranking_prefers_the_cheaper_move_among_equal_sets() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("far", "a", 0.40), cloud("near", "b", 0.35)]);
    obs.needs = vec![needs("far", 40 * GIB), needs("near", 10 << 20)];
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.90, 10));
    let ids: Vec<String> = asked(&decisions).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["near"]);
}

#[test]
fn when_no_set_is_enough_every_candidate_is_asked() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("a", "a", 0.10), cloud("b", "b", 0.05)]);
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.99, 10));
    let mut ids: Vec<String> = asked(&decisions).into_iter().map(|(_, id)| id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn a_declined_container_is_not_asked_again_within_the_cooldown() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("solo", "ana", 0.5)]);
    obs.host.cpu = 0.95;
    let mut asks = Vec::new();
    let mut declined_at = None;
    let mut t = 0.0;
    while t <= 700.0 {
        for ask in policy.evaluate(at(t), &obs).ask {
            asks.push(t);
            if declined_at.is_none() {
                policy.record_decline(&ask.container_id, at(t + 2.0));
                declined_at = Some(t + 2.0);
            }
        }
        t += 2.0;
    }
    let declined_at = declined_at.unwrap();
    assert_eq!(asks.len(), 2, "{asks:?}");
    // Asked again only once the 600 s cooldown is over, and then promptly.
    assert!(asks[1] >= declined_at + 600.0, "{asks:?}");
    assert!(asks[1] <= declined_at + 604.0, "{asks:?}");
}

#[test]
fn a_container_without_a_connected_agent_is_never_asked() {
    let mut policy = policy();
    let mut obs = world(vec![
        cloud("orphan", "gone", 0.5),
        cloud("no-needs", "ana", 0.5),
        cloud("too-big", "bo", 0.5),
    ]);
    // gone has no agent; ana's container has no needs reported; bo's edge is too small.
    obs.agents.retain(|a| a.owner != "gone");
    obs.needs.retain(|n| n.id == "too-big");
    obs.needs[0].mem_bytes = 32 * GIB;
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.95, 400));
    assert_eq!(asked(&decisions), vec![]);
    let (_, last) = decisions.last().unwrap();
    assert!(last.status.under_pressure);
    assert!(
        last.status.reason.contains("no container can be asked"),
        "{}",
        last.status.reason
    );

    // The control: once bo's edge has room, bo is asked.
    obs.agents.iter_mut().for_each(|a| a.mem_bytes = 64 * GIB);
    let again = policy.evaluate(at(1000.0), &obs);
    let ids: Vec<&str> = again.ask.iter().map(|a| a.container_id.as_str()).collect();
    assert_eq!(ids, ["too-big"]);
}

#[test]
fn an_owner_s_edge_is_shared_by_their_containers() {
    let mut policy = policy();
    // Ana's laptop takes one 2-core container; both hers would be the smallest set.
    let mut obs = world(vec![
        cloud("ana-1", "ana", 0.20),
        cloud("ana-2", "ana", 0.20),
        cloud("bo-1", "bo", 0.15),
    ]);
    obs.agents.iter_mut().for_each(|a| {
        if a.owner == "ana" {
            a.cpus = 3.0;
        }
    });
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.95, 10));
    let mut ids: Vec<String> = asked(&decisions).into_iter().map(|(_, id)| id).collect();
    ids.sort();
    assert_eq!(ids, ["ana-1", "bo-1"]);
}

#[test]
fn pending_queries_are_withdrawn_when_pressure_ends() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5)]);
    let series = std::iter::repeat_n(0.95, 8).chain(std::iter::repeat_n(0.40, 3));
    let decisions = replay(&mut policy, &mut obs, 0.0, series);
    assert_eq!(asked(&decisions).len(), 1);
    let withdrawn: Vec<&String> = decisions
        .iter()
        .flat_map(|(_, d)| d.withdrawn.iter())
        .collect();
    assert_eq!(withdrawn, ["big"]);
    assert!(!policy.is_pending("big"));
    assert!(
        decisions
            .iter()
            .any(|(_, d)| d.pressure_ended == [Resource::Cpu])
    );
}

#[test]
fn an_unanswered_query_of_an_auto_accepting_owner_counts_as_accepted() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5), cloud("mid", "bo", 0.4)]);
    obs.agents
        .iter_mut()
        .for_each(|a| a.auto_accept = a.owner == "ana");
    // 200 s of pressure; big is asked, expires as accepted and keeps running in the cloud
    // while it moves, so it counts as relief and nobody else is asked.
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.95, 100));
    let expired: Vec<&Expiry> = decisions
        .iter()
        .flat_map(|(_, d)| d.expired.iter())
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].action, DefaultAction::Accept);
    let ids: Vec<String> = asked(&decisions).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["big"]);
    assert_eq!(decisions.last().unwrap().1.status.moves_in_flight, 1);
}

#[test]
fn an_accepted_container_that_reached_the_edge_stops_counting_as_relief() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.3), cloud("mid", "bo", 0.3)]);
    obs.host.cpu = 0.95;
    let first = policy.evaluate(at(20.0), &obs);
    assert!(first.ask.is_empty()); // sustain window not over yet
    let first = policy.evaluate(at(30.0), &obs);
    // 0.35 needed: both asked (one 30% container is not enough).
    assert_eq!(first.ask.len(), 2);
    policy.record_accept("big", at(32.0));
    policy.record_decline("mid", at(32.0));
    // big arrives at the edge, but the host is still loaded by someone else: a new
    // round may ask again after the cooldown, and mid (declined) is not among them.
    obs.containers[0].running_in_cloud = false;
    obs.containers.push(cloud("new", "cy", 0.4));
    obs.needs.push(needs("new", GIB));
    obs.agents.push(agent("cy"));
    let early = policy.evaluate(at(100.0), &obs);
    assert!(early.ask.is_empty(), "{:?}", early.ask);
    let later = policy.evaluate(at(150.0), &obs);
    let ids: Vec<&str> = later.ask.iter().map(|a| a.container_id.as_str()).collect();
    assert_eq!(ids, ["new"]);
}

#[test]
fn returns_wait_for_calm_and_never_push_usage_over_high() {
    let mut policy = policy();
    let mut obs = world(vec![
        edge("e-30", "a", 0.30, 0.02),
        edge("e-20", "b", 0.20, 0.02),
        edge("e-10", "c", 0.10, 0.02),
        edge("e-05", "d", 0.05, 0.02),
    ]);
    obs.agents
        .iter_mut()
        .for_each(|a| a.auto_return = a.owner == "c");
    obs.host = host(0.40, 0.30);
    let before = policy.evaluate(at(0.0), &obs);
    assert!(before.return_moves.is_empty() && before.return_notices.is_empty());
    let early = policy.evaluate(at(28.0), &obs);
    assert!(early.return_moves.is_empty() && early.return_notices.is_empty());
    let ready = policy.evaluate(at(30.0), &obs);
    let moves: Vec<&str> = ready
        .return_moves
        .iter()
        .map(|r| r.container_id.as_str())
        .collect();
    let notices: Vec<&str> = ready
        .return_notices
        .iter()
        .map(|r| r.container_id.as_str())
        .collect();
    // 0.45 of room under 85%: auto-return first (0.10), then the smallest that fit
    // (0.05, 0.20); 0.30 would push cpu to 105%.
    assert_eq!(moves, ["e-10"]);
    assert_eq!(notices, ["e-05", "e-20"]);
    assert!(
        ready.return_notices[0]
            .reason
            .starts_with("the cloud has room")
    );
    // The same tick again proposes nothing new, and nor does the next one.
    let again = policy.evaluate(at(30.0), &obs);
    assert!(again.return_moves.is_empty() && again.return_notices.is_empty());
    let next = policy.evaluate(at(32.0), &obs);
    assert!(next.return_moves.is_empty() && next.return_notices.is_empty());
}

#[test]
fn returns_never_push_usage_over_high_on_any_load() {
    // A small deterministic generator instead of a property-testing crate.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let config = PolicyConfig::default();
    for case in 0..300 {
        let mut policy = Policy::new(config.clone()).unwrap();
        let containers: Vec<ContainerUsage> = (0..(1 + case % 12))
            .map(|i| {
                edge(
                    &format!("e{i}"),
                    &format!("u{i}"),
                    next() * 0.4,
                    next() * 0.4,
                )
            })
            .collect();
        let mut obs = world(containers);
        obs.agents
            .iter_mut()
            .for_each(|a| a.auto_return = next() < 0.5);
        let load = [next() * config.cpu_low, next() * config.mem_low];
        obs.host = host(load[0], load[1]);
        let mut proposed = Vec::new();
        for t in [0.0, 30.0] {
            let d = policy.evaluate(at(t), &obs);
            proposed.extend(d.return_moves);
            proposed.extend(d.return_notices);
        }
        let mut after = load;
        for r in &proposed {
            let c = obs
                .containers
                .iter()
                .find(|c| c.id == r.container_id)
                .unwrap();
            after[0] += c.cpu / HOST_CPUS;
            after[1] += c.mem_bytes as f64 / HOST_MEM as f64;
        }
        assert!(
            after[0] <= config.cpu_high + 1e-9,
            "case {case}: cpu {after:?}"
        );
        assert!(
            after[1] <= config.mem_high + 1e-9,
            "case {case}: mem {after:?}"
        );
        // It is not simply refusing: anything that alone fits under high, with nothing
        // chosen, would have been chosen.
        if proposed.is_empty() {
            assert!(
                obs.containers.iter().all(|c| {
                    load[0] + c.cpu / HOST_CPUS > config.cpu_high
                        || load[1] + c.mem_bytes as f64 / HOST_MEM as f64 > config.mem_high
                }),
                "case {case}: nothing returned"
            );
        }
    }
}

#[test]
fn an_edge_container_without_a_connected_agent_is_not_offered_a_return() {
    let mut policy = policy();
    let mut obs = world(vec![edge("e", "gone", 0.05, 0.01)]);
    obs.agents.clear();
    obs.host = host(0.10, 0.10);
    policy.evaluate(at(0.0), &obs);
    let d = policy.evaluate(at(60.0), &obs);
    assert!(d.return_moves.is_empty() && d.return_notices.is_empty());
}

#[test]
fn pool_mode_drives_the_policy_with_managed_containers_only() {
    // The machine is busy with other work (a host sampler would see it), but the pool of
    // 4 cores only holds "a" (1 core) and an edge container: no pressure.
    let pool = PoolCapacity::new(4.0, 8 * GIB).unwrap();
    let containers = vec![
        ContainerUsage {
            cpu: 1.0,
            ..cloud("a", "ana", 0.0)
        },
        ContainerUsage {
            cpu: 8.0,
            ..edge("e", "bo", 0.0, 0.0)
        },
    ];
    let mut policy = policy();
    let mut obs = world(containers);
    obs.host = pool.sample(&obs.containers);
    let d = policy.evaluate(at(0.0), &obs);
    assert!((d.status.resources[0].usage - 0.25).abs() < 1e-12);
    // Managed use grows to 3.8 of 4 cores: now the pool is under pressure.
    obs.containers[0].cpu = 3.8;
    obs.host = pool.sample(&obs.containers);
    let d = policy.evaluate(at(20.0), &obs);
    let d2 = policy.evaluate(at(32.0), &obs);
    assert!(d.status.under_pressure || d2.status.under_pressure);
}

#[test]
fn the_status_explains_the_state() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5)]);
    obs.host = host(0.40, 0.50);
    let calm = policy.evaluate(at(0.0), &obs);
    assert_eq!(calm.status.reason, "cpu 40%, memory 50%; no pressure");
    assert!(!calm.status.under_pressure);
    obs.host.cpu = 0.95;
    let mut t = 2.0;
    let mut last = calm;
    while t <= 14.0 {
        last = policy.evaluate(at(t), &obs);
        t += 2.0;
    }
    assert!(last.status.under_pressure);
    assert_eq!(last.status.pending_queries, 1);
    assert!(
        last.status.reason.contains("waiting on 1 container(s)"),
        "{}",
        last.status.reason
    );
    let cpu = &last.status.resources[0];
    assert_eq!(cpu.resource, Resource::Cpu);
    assert!(cpu.pressure);
}

#[test]
fn an_operators_query_stands_when_pressure_ends_even_if_the_policy_asked_too() {
    let mut policy = policy();
    let mut obs = world(vec![cloud("big", "ana", 0.5), cloud("other", "bo", 0.1)]);
    // Pressure until the policy asks `big`.
    let decisions = replay(&mut policy, &mut obs, 0.0, std::iter::repeat_n(0.95, 15));
    let asks = asked(&decisions);
    assert_eq!(asks.len(), 1, "{asks:?}");
    let t = decisions.last().unwrap().0;
    // The operator asks `big` and `other` in the same round: theirs are the stored queries.
    policy.record_ask("big", "ana", at(t), true);
    policy.record_ask("other", "bo", at(t), true);
    // Calm: nothing standing is withdrawn; both still expire by their deadline.
    let calm = replay(&mut policy, &mut obs, t + 2.0, std::iter::repeat_n(0.10, 5));
    let withdrawn: Vec<&String> = calm.iter().flat_map(|(_, d)| d.withdrawn.iter()).collect();
    assert!(withdrawn.is_empty(), "{withdrawn:?}");
    assert!(policy.is_pending("big") && policy.is_pending("other"));
    let later = replay(
        &mut policy,
        &mut obs,
        t + 12.0,
        std::iter::repeat_n(0.10, 40),
    );
    let expired: Vec<&str> = later
        .iter()
        .flat_map(|(_, d)| d.expired.iter().map(|e| e.container_id.as_str()))
        .collect();
    assert_eq!(expired.len(), 2, "{expired:?}");
}
