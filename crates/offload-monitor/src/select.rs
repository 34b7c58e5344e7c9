//! Choosing whom to ask: the smallest set of movable containers whose relief brings the
//! pressured resources below their low watermark, cheapest to move among such sets, and
//! for returns, the edge containers that fit back under the high watermark.

use std::cmp::Ordering;
use std::collections::HashMap;

/// What an edge offers, or what a container needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Room {
    pub(crate) cpus: f64,
    pub(crate) mem_bytes: u64,
    pub(crate) disk_bytes: u64,
}

impl Room {
    fn fits(&self, need: &Room) -> bool {
        need.cpus <= self.cpus
            && need.mem_bytes <= self.mem_bytes
            && need.disk_bytes <= self.disk_bytes
    }

    pub(crate) fn take(&mut self, need: &Room) {
        self.cpus = (self.cpus - need.cpus).max(0.0);
        self.mem_bytes = self.mem_bytes.saturating_sub(need.mem_bytes);
        self.disk_bytes = self.disk_bytes.saturating_sub(need.disk_bytes);
    }
}

/// A running cloud container that could be asked to move.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<'a> {
    pub(crate) id: &'a str,
    pub(crate) owner: &'a str,
    /// Its share of the host, per resource (`[cpu, memory]`).
    pub(crate) relief: [f64; 2],
    /// What its owner's edge must have free for it (disk: the bytes to copy).
    pub(crate) needs: Room,
    /// Bytes the edge lacks (workspace and image) and would have to receive.
    pub(crate) move_bytes: u64,
}

/// Subsets the exact search may try before it settles for the greedy answer; enough for
/// every subset of up to three out of ~50 containers.
const EXACT_SEARCH_BUDGET: u64 = 25_000;

/// Indices into `candidates` of the containers to ask.
///
/// `required[r]` is the relief resource `r` still needs (0 or less: none). The fewest
/// containers win, because every ask interrupts a person; among sets of that size, the
/// one with the fewest bytes to copy. Candidates whose owner's edge has no room left are
/// skipped, and several containers of one owner share that owner's edge. If even every
/// candidate together is not enough, all that help are returned.
///
/// A greedy pass (the candidate covering most of what is still needed, each resource
/// normalised by its need) gives an upper bound and the answer when nothing is enough;
/// smaller and equal sizes are then searched exactly while the number of subsets stays
/// small, and otherwise the greedy set is pruned and made cheaper by swaps.
pub(crate) fn relieving_set(
    candidates: &[Candidate<'_>],
    required: [f64; 2],
    rooms: &HashMap<&str, Room>,
) -> Vec<usize> {
    let mut picked = greedy(candidates, required, rooms);
    if !covers(candidates, &picked, required) {
        return picked;
    }
    let helpful: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            (0..2).any(|r| required[r] > 0.0 && c.relief[r] > 0.0)
                && rooms.get(c.owner).is_some_and(|room| room.fits(&c.needs))
        })
        .collect();
    let mut budget = EXACT_SEARCH_BUDGET;
    for size in 1..=picked.len() {
        match cheapest_of_size(candidates, &helpful, size, required, rooms, &mut budget) {
            Search::Found(set) => return set,
            Search::None => {}
            Search::OverBudget => break,
        }
    }
    prune(candidates, &mut picked, required);
    make_cheaper(candidates, &mut picked, required, rooms);
    picked
}

fn greedy(
    candidates: &[Candidate<'_>],
    required: [f64; 2],
    rooms: &HashMap<&str, Room>,
) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    let mut left = rooms.clone();
    let mut remaining = required;
    while remaining.iter().any(|r| *r > 0.0) {
        let best = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !picked.contains(i) && left.get(c.owner).is_some_and(|room| room.fits(&c.needs))
            })
            .map(|(i, c)| (i, gain(c, remaining, required)))
            .filter(|(_, g)| *g > 0.0)
            .max_by(|(a, ga), (b, gb)| {
                ga.total_cmp(gb)
                    .then_with(|| cheaper_first(&candidates[*a], &candidates[*b]))
            });
        let Some((i, _)) = best else { break };
        let c = &candidates[i];
        if let Some(room) = left.get_mut(c.owner) {
            room.take(&c.needs);
        }
        for (r, rem) in remaining.iter_mut().enumerate() {
            *rem -= c.relief[r];
        }
        picked.push(i);
    }
    picked
}

enum Search {
    Found(Vec<usize>),
    None,
    OverBudget,
}

/// The cheapest covering, fitting subset of `pool` with `size` members.
fn cheapest_of_size(
    candidates: &[Candidate<'_>],
    pool: &[usize],
    size: usize,
    required: [f64; 2],
    rooms: &HashMap<&str, Room>,
    budget: &mut u64,
) -> Search {
    if size == 0 || size > pool.len() {
        return Search::None;
    }
    let subsets = binomial(pool.len() as u64, size as u64);
    if subsets > *budget {
        return Search::OverBudget;
    }
    *budget -= subsets;
    let mut best: Option<(u64, Vec<usize>)> = None;
    let mut positions: Vec<usize> = (0..size).collect();
    loop {
        let set: Vec<usize> = positions.iter().map(|&p| pool[p]).collect();
        if covers(candidates, &set, required) && fits(candidates, &set, rooms) {
            let bytes = set.iter().fold(0_u64, |sum, &i| {
                sum.saturating_add(candidates[i].move_bytes)
            });
            if best.as_ref().is_none_or(|(b, _)| bytes < *b) {
                best = Some((bytes, set));
            }
        }
        // Next combination in lexicographic order.
        let Some(slot) = (0..size)
            .rev()
            .find(|&s| positions[s] < pool.len() - size + s)
        else {
            break;
        };
        positions[slot] += 1;
        for s in slot + 1..size {
            positions[s] = positions[s - 1] + 1;
        }
    }
    match best {
        Some((_, set)) => Search::Found(set),
        None => Search::None,
    }
}

fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    (0..k).fold(1_u64, |acc, i| acc.saturating_mul(n - i) / (i + 1))
}

/// Drops picks the rest still covers without, the most expensive first.
fn prune(candidates: &[Candidate<'_>], picked: &mut Vec<usize>, required: [f64; 2]) {
    let mut order = picked.clone();
    order.sort_by(|&a, &b| candidates[b].move_bytes.cmp(&candidates[a].move_bytes));
    for i in order {
        let without: Vec<usize> = picked.iter().copied().filter(|&p| p != i).collect();
        if covers(candidates, &without, required) {
            *picked = without;
        }
    }
}

/// How much of what is still needed `c` covers, each resource as a fraction of its need.
fn gain(c: &Candidate<'_>, remaining: [f64; 2], required: [f64; 2]) -> f64 {
    (0..2)
        .filter(|&r| remaining[r] > 0.0 && required[r] > 0.0)
        .map(|r| c.relief[r].min(remaining[r]) / required[r])
        .sum()
}

/// Ordering for `max_by`: the cheaper move (then the smaller id) compares greater.
fn cheaper_first(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    b.move_bytes.cmp(&a.move_bytes).then_with(|| b.id.cmp(a.id))
}

fn covers(candidates: &[Candidate<'_>], set: &[usize], required: [f64; 2]) -> bool {
    (0..2).all(|r| {
        required[r] <= 0.0
            || set.iter().map(|&i| candidates[i].relief[r]).sum::<f64>() >= required[r]
    })
}

fn fits(candidates: &[Candidate<'_>], set: &[usize], rooms: &HashMap<&str, Room>) -> bool {
    let mut left = rooms.clone();
    set.iter().all(|&i| {
        let c = &candidates[i];
        match left.get_mut(c.owner) {
            Some(room) if room.fits(&c.needs) => {
                room.take(&c.needs);
                true
            }
            _ => false,
        }
    })
}

/// Swaps picks for cheaper unpicked candidates while the set still covers and fits. Each
/// swap lowers the total bytes, so this ends.
fn make_cheaper(
    candidates: &[Candidate<'_>],
    picked: &mut [usize],
    required: [f64; 2],
    rooms: &HashMap<&str, Room>,
) {
    loop {
        let mut order: Vec<usize> = (0..picked.len()).collect();
        order.sort_by(|&a, &b| {
            candidates[picked[b]]
                .move_bytes
                .cmp(&candidates[picked[a]].move_bytes)
        });
        let mut swapped = false;
        'slots: for slot in order {
            let current = picked[slot];
            let mut cheaper: Vec<usize> = (0..candidates.len())
                .filter(|j| {
                    !picked.contains(j)
                        && candidates[*j].move_bytes < candidates[current].move_bytes
                })
                .collect();
            cheaper.sort_by(|&a, &b| cheaper_first(&candidates[b], &candidates[a]));
            for j in cheaper {
                let mut trial = picked.to_vec();
                trial[slot] = j;
                if covers(candidates, &trial, required) && fits(candidates, &trial, rooms) {
                    picked[slot] = j;
                    swapped = true;
                    break 'slots;
                }
            }
        }
        if !swapped {
            return;
        }
    }
}

/// An edge container that could come back.
#[derive(Debug, Clone)]
pub(crate) struct Homecoming<'a> {
    pub(crate) id: &'a str,
    /// Its share of the cloud host once back, per resource (`[cpu, memory]`).
    pub(crate) share: [f64; 2],
    pub(crate) auto_return: bool,
}

/// Indices into `edge` of the containers that fit back without taking any resource from
/// `projected` over `high`. Owners who opted in to auto-return go first, then the
/// smallest containers, so as many fit as possible.
pub(crate) fn fitting_returns(
    edge: &[Homecoming<'_>],
    projected: [f64; 2],
    high: [f64; 2],
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..edge.len()).collect();
    let largest = |h: &Homecoming<'_>| h.share[0].max(h.share[1]);
    order.sort_by(|&a, &b| {
        let (a, b) = (&edge[a], &edge[b]);
        b.auto_return
            .cmp(&a.auto_return)
            .then_with(|| largest(a).total_cmp(&largest(b)))
            .then_with(|| a.id.cmp(b.id))
    });
    let mut load = projected;
    let mut chosen = Vec::new();
    for i in order {
        let h = &edge[i];
        if (0..2).all(|r| load[r] + h.share[r] <= high[r]) {
            for (r, l) in load.iter_mut().enumerate() {
                *l += h.share[r];
            }
            chosen.push(i);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand<'a>(id: &'a str, owner: &'a str, cpu: f64, mem: f64, move_bytes: u64) -> Candidate<'a> {
        Candidate {
            id,
            owner,
            relief: [cpu, mem],
            needs: Room {
                cpus: 1.0,
                mem_bytes: 1,
                disk_bytes: move_bytes,
            },
            move_bytes,
        }
    }

    fn roomy<'a>(owners: &[&'a str]) -> HashMap<&'a str, Room> {
        owners
            .iter()
            .map(|o| {
                (
                    *o,
                    Room {
                        cpus: 64.0,
                        mem_bytes: u64::MAX,
                        disk_bytes: u64::MAX,
                    },
                )
            })
            .collect()
    }

    fn ids(candidates: &[Candidate<'_>], set: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(|&i| candidates[i].id.to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn picks_the_smallest_relieving_set() {
        // Need 0.30 of cpu. Three small containers would do it too, but one big one is enough.
        let c = [
            cand("small-1", "a", 0.10, 0.0, 0),
            cand("small-2", "b", 0.10, 0.0, 0),
            cand("small-3", "c", 0.12, 0.0, 0),
            cand("big", "d", 0.35, 0.0, 10),
        ];
        let set = relieving_set(&c, [0.30, 0.0], &roomy(&["a", "b", "c", "d"]));
        assert_eq!(ids(&c, &set), ["big"]);
    }

    #[test]
    fn picks_two_when_no_single_container_is_enough() {
        let c = [
            cand("a", "a", 0.20, 0.0, 0),
            cand("b", "b", 0.15, 0.0, 0),
            cand("c", "c", 0.05, 0.0, 0),
            cand("d", "d", 0.12, 0.0, 0),
        ];
        let set = relieving_set(&c, [0.30, 0.0], &roomy(&["a", "b", "c", "d"]));
        assert_eq!(ids(&c, &set), ["a", "b"]);
    }

    #[test]
    fn among_equally_small_sets_the_cheapest_move_wins() {
        // Both big ones relieve enough alone; the one whose workspace the edge already
        // has is asked.
        let c = [
            cand("heavy", "a", 0.40, 0.0, 50 << 30),
            cand("light", "b", 0.32, 0.0, 1 << 20),
        ];
        let set = relieving_set(&c, [0.30, 0.0], &roomy(&["a", "b"]));
        assert_eq!(ids(&c, &set), ["light"]);
        // Needing 0.62, only pairs with "huge" cover; needing 0.55, the cheaper pair of
        // mid-sized ones does too.
        let c = [
            cand("huge", "a", 0.40, 0.0, 90),
            cand("mid-1", "b", 0.25, 0.0, 50),
            cand("mid-2", "c", 0.36, 0.0, 10),
        ];
        let set = relieving_set(&c, [0.62, 0.0], &roomy(&["a", "b", "c"]));
        assert_eq!(ids(&c, &set), ["huge", "mid-2"]);
        let set = relieving_set(&c, [0.55, 0.0], &roomy(&["a", "b", "c"]));
        assert_eq!(ids(&c, &set), ["mid-1", "mid-2"]);
    }

    #[test]
    fn asks_every_helpful_candidate_when_all_are_not_enough() {
        let c = [
            cand("a", "a", 0.10, 0.0, 0),
            cand("b", "b", 0.10, 0.0, 0),
            cand("idle", "c", 0.0, 0.0, 0),
        ];
        let set = relieving_set(&c, [0.50, 0.0], &roomy(&["a", "b", "c"]));
        assert_eq!(ids(&c, &set), ["a", "b"]);
    }

    #[test]
    fn covers_both_resources_when_both_are_pressured() {
        let c = [
            cand("cpu-hog", "a", 0.40, 0.01, 0),
            cand("mem-hog", "b", 0.01, 0.40, 0),
            cand("both", "c", 0.20, 0.20, 0),
        ];
        let set = relieving_set(&c, [0.30, 0.30], &roomy(&["a", "b", "c"]));
        assert_eq!(ids(&c, &set), ["cpu-hog", "mem-hog"]);
    }

    #[test]
    fn an_edge_without_room_is_skipped_and_shared_by_its_owner() {
        let mut c = vec![
            cand("a1", "ana", 0.30, 0.0, 0),
            cand("a2", "ana", 0.30, 0.0, 0),
            cand("b1", "bo", 0.20, 0.0, 0),
        ];
        for x in &mut c {
            x.needs.cpus = 2.0;
        }
        let mut rooms = roomy(&["ana", "bo"]);
        // Ana's laptop has room for one of her two containers only.
        if let Some(room) = rooms.get_mut("ana") {
            room.cpus = 3.0;
        }
        let set = relieving_set(&c, [0.55, 0.0], &rooms);
        assert_eq!(ids(&c, &set), ["a1", "b1"]);
    }

    #[test]
    fn finds_a_smaller_set_than_greedy_would() {
        // Greedy takes the all-rounder first and then needs two cheap top-ups, each
        // necessary; two specialists cover both resources on their own.
        let c = [
            cand("all-round", "a", 0.25, 0.25, 10),
            cand("top-up-cpu", "b", 0.05, 0.0, 0),
            cand("top-up-mem", "c", 0.0, 0.05, 0),
            cand("cpu-hog", "d", 0.30, 0.0, 100),
            cand("mem-hog", "e", 0.0, 0.30, 100),
        ];
        let set = relieving_set(&c, [0.30, 0.30], &roomy(&["a", "b", "c", "d", "e"]));
        assert_eq!(ids(&c, &set), ["cpu-hog", "mem-hog"]);
    }

    #[test]
    fn falls_back_to_a_pruned_greedy_set_when_there_are_too_many_subsets() {
        // 200 candidates: pairs can be searched exactly, triples cannot.
        let names: Vec<String> = (0..200).map(|i| format!("c{i:03}")).collect();
        let c: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| cand(n, n, 0.01 + 0.0001 * i as f64, 0.0, 1000 - i as u64))
            .collect();
        let owners: Vec<&str> = names.iter().map(String::as_str).collect();
        let set = relieving_set(&c, [0.065, 0.0], &roomy(&owners));
        let relief: f64 = set.iter().map(|&i| c[i].relief[0]).sum();
        assert!(relief >= 0.065, "{set:?} relieves only {relief}");
        // Three of the largest (~0.03 each) suffice, and greedy finds three.
        assert_eq!(set.len(), 3, "{set:?}");
    }

    #[test]
    fn returns_fit_under_the_high_watermark() {
        let edge = [
            Homecoming {
                id: "big",
                share: [0.30, 0.05],
                auto_return: false,
            },
            Homecoming {
                id: "auto",
                share: [0.10, 0.05],
                auto_return: true,
            },
            Homecoming {
                id: "small",
                share: [0.05, 0.05],
                auto_return: false,
            },
        ];
        // cpu at 0.50, high 0.85: room for 0.35.
        let set = fitting_returns(&edge, [0.50, 0.30], [0.85, 0.90]);
        let chosen: Vec<&str> = set.iter().map(|&i| edge[i].id).collect();
        assert_eq!(chosen, ["auto", "small"]);
    }
}
