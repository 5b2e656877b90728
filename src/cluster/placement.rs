//! Where a new partition's replicas go (Kafka's replica assignment).
//!
//! The alive brokers are put in one ring, ordered so that neighbours sit in
//! different racks when `broker.rack` is set (racks take turns); partition
//! `p` gets the `replication_factor` brokers that follow position
//! `start + p` on the ring, the first of them its preferred leader. So
//! preferred leaders go round the brokers evenly, and the replicas of one
//! partition land in as many racks as there are.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

/// A broker that can take replicas: its id and rack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: Option<String>,
}

/// Replica lists for partitions `first..first + count` of a topic, from
/// ring position `start` (a random one for a new topic, so that topics do
/// not all put their first leader on the same broker).
pub fn assign(
    brokers: &[Candidate],
    first: i32,
    count: i32,
    replication_factor: i16,
    start: usize,
) -> Result<Vec<Vec<i32>>, (ResponseError, String)> {
    if replication_factor < 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    let rf = replication_factor as usize;
    if rf > brokers.len() {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "Replication factor: {replication_factor} larger than available brokers: {}.",
                brokers.len()
            ),
        ));
    }
    let ring = rack_alternating(brokers);
    Ok((first..first.saturating_add(count.max(0)))
        .map(|partition| {
            let at = start.wrapping_add(partition as usize);
            (0..rf).map(|j| ring[(at + j) % ring.len()]).collect()
        })
        .collect())
}

/// Broker ids ordered so that racks take turns: the first broker of each
/// rack, then the second of each, and so on. Without racks, by id.
fn rack_alternating(brokers: &[Candidate]) -> Vec<i32> {
    let mut by_rack: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for b in brokers {
        by_rack
            .entry(b.rack.as_deref().unwrap_or(""))
            .or_default()
            .push(b.id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut ring = Vec::with_capacity(brokers.len());
    for depth in 0..deepest {
        for ids in by_rack.values() {
            if let Some(&id) = ids.get(depth) {
                ring.push(id);
            }
        }
    }
    ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn brokers(racks: &[(i32, Option<&str>)]) -> Vec<Candidate> {
        racks
            .iter()
            .map(|(id, rack)| Candidate {
                id: *id,
                rack: rack.map(str::to_string),
            })
            .collect()
    }

    #[test]
    fn leaders_and_replicas_spread_evenly() {
        let b = brokers(&[(1, None), (2, None), (3, None)]);
        let replicas = assign(&b, 0, 6, 3, 0).expect("assign");
        let mut leaders: HashMap<i32, usize> = HashMap::new();
        let mut hosted: HashMap<i32, usize> = HashMap::new();
        for list in &replicas {
            assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), 3, "{list:?}");
            *leaders.entry(list[0]).or_default() += 1;
            for id in list {
                *hosted.entry(*id).or_default() += 1;
            }
        }
        assert_eq!(leaders, HashMap::from([(1, 2), (2, 2), (3, 2)]));
        assert_eq!(hosted, HashMap::from([(1, 6), (2, 6), (3, 6)]));
    }

    #[test]
    fn replicas_of_a_partition_go_to_different_racks() {
        // Rack a has three brokers, b and c one each: ids alone would put
        // 1, 2 and 3 (all rack a) together.
        let b = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("a")),
            (4, Some("b")),
            (5, Some("c")),
        ]);
        let rack = |id: i32| b.iter().find(|c| c.id == id).and_then(|c| c.rack.clone());
        let replicas = assign(&b, 0, 5, 2, 0).expect("assign");
        let spread = replicas
            .iter()
            .filter(|list| rack(list[0]) != rack(list[1]))
            .count();
        // The ring is 1(a) 4(b) 5(c) 2(a) 3(a): three of the five pairs of
        // neighbours cross racks (ids alone, 1 2 3 4 5, give two).
        assert_eq!(spread, 3, "{replicas:?}");
        let three = assign(&b, 0, 3, 3, 0).expect("assign");
        assert!(three.iter().all(|list| {
            list.iter()
                .map(|&id| rack(id))
                .collect::<BTreeSet<_>>()
                .len()
                >= 2
        }));
        assert_eq!(
            three[0]
                .iter()
                .map(|&id| rack(id))
                .collect::<BTreeSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn a_replication_factor_above_the_brokers_is_refused() {
        let b = brokers(&[(1, None), (2, None)]);
        assert_eq!(
            assign(&b, 0, 1, 3, 0).map_err(|e| e.0),
            Err(ResponseError::InvalidReplicationFactor)
        );
        assert_eq!(
            assign(&b, 0, 1, 0, 0).map_err(|e| e.0),
            Err(ResponseError::InvalidReplicationFactor)
        );
        assert_eq!(assign(&b, 4, 2, 1, 7).map(|r| r.len()), Ok(2));
    }
}
