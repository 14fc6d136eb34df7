use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::store::{Listed, TimeHistogram};

/// A shard's logs of one user: matches and failed matches by assistant.
type Truth = BTreeMap<String, (u64, u64)>;

/// What a shard holding `truth` answers when asked for `listed`.
fn answer(truth: &Truth, listed: &Listed) -> StatsParts {
    let all = truth
        .iter()
        .filter(|(_, (count, _))| *count > 0)
        .map(|(id, &(count, errors))| AssistantCount {
            assistant_id: id.clone(),
            count,
            errors,
        })
        .collect();
    let none = TimeHistogram {
        interval: 1,
        start: 0,
        buckets: Vec::new(),
    };
    let mut part = StatsParts::empty(none);
    (part.assistants, part.unlisted_at_most) = listed.keep(all);
    part
}

/// The busiest of shards holding `truths` that first list their `top` busiest, and the steps
/// taken to find them.
fn gathered(truths: &[Truth], top: usize) -> (Vec<AssistantCount>, bool, Vec<Step>) {
    let parts: Vec<StatsParts> = truths
        .iter()
        .map(|truth| answer(truth, &Listed::busiest(top)))
        .collect();
    let mut busiest = Busiest::new(&parts);
    let mut steps = Vec::new();
    loop {
        let step = busiest.next();
        match &step {
            Step::Done { busiest, exact } => return (busiest.clone(), *exact, steps),
            Step::AtLeast { shards, at_least } => {
                let listed = Listed::Busiest {
                    top,
                    at_least: *at_least,
                };
                for &shard in shards {
                    busiest.relisted(shard, &answer(&truths[shard], &listed));
                }
            }
            Step::Count(asked) => {
                for (shard, ids) in asked {
                    let part = answer(&truths[*shard], &Listed::Only(ids.clone()));
                    busiest.counted(*shard, ids, &part);
                }
            }
        }
        steps.push(step);
        assert!(steps.len() <= 2, "more than three rounds: {steps:?}");
    }
}

/// The busiest of all `truths` added up, most first then by id.
fn brute_force(truths: &[Truth]) -> Vec<AssistantCount> {
    let mut all: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for truth in truths {
        for (id, (count, errors)) in truth {
            let sum = all.entry(id).or_default();
            sum.0 += count;
            sum.1 += errors;
        }
    }
    let mut all: Vec<AssistantCount> = all
        .into_iter()
        .filter(|(_, (count, _))| *count > 0)
        .map(|(id, (count, errors))| AssistantCount {
            assistant_id: id.to_owned(),
            count,
            errors,
        })
        .collect();
    all.sort_by(AssistantCount::busiest_first);
    all.truncate(TOP_ASSISTANTS);
    all
}

fn names(busiest: &[AssistantCount]) -> Vec<(&str, u64)> {
    busiest
        .iter()
        .map(|a| (a.assistant_id.as_str(), a.count))
        .collect()
}

#[test]
fn shards_that_list_every_assistant_are_added_up_at_once() {
    let truths: Vec<Truth> = vec![
        [("a", (3, 1)), ("b", (2, 0))]
            .map(|(id, t)| (id.to_owned(), t))
            .into(),
        [("b", (1, 1)), ("c", (3, 0))]
            .map(|(id, t)| (id.to_owned(), t))
            .into(),
    ];
    let (busiest, exact, steps) = gathered(&truths, 1_000);
    assert!(steps.is_empty(), "{steps:?}");
    assert!(exact);
    // ties by id
    assert_eq!(names(&busiest), [("a", 3), ("b", 3), ("c", 3)]);
    assert_eq!(busiest[1].errors, 1);
}

#[test]
fn assistants_no_shard_lists_are_found_by_a_threshold() {
    // each of three shards lists 1,000 assistants of its own with 3 matches, and leaves out ten
    // that have 2 on every shard: 6 in all, the busiest
    let truths: Vec<Truth> = (0..3)
        .map(|shard| {
            let mut truth: Truth = (0..1_001)
                .map(|i| (format!("s{shard}-{i:04}"), (3, 0)))
                .collect();
            truth.extend((0..10).map(|i| (format!("everywhere-{i}"), (2, 1))));
            truth
        })
        .collect();
    let (busiest, exact, steps) = gathered(&truths, 1_000);
    assert!(exact);
    assert_eq!(busiest, brute_force(&truths));
    assert_eq!(busiest[0].assistant_id, "everywhere-0");
    assert_eq!((busiest[0].count, busiest[0].errors), (6, 3));
    // a tenth of 3 over three shards: every shard lists those with at least one
    assert_eq!(
        steps[0],
        Step::AtLeast {
            shards: vec![0, 1, 2],
            at_least: 1
        }
    );
}

#[test]
fn assistants_some_shards_leave_out_are_counted_there_all_at_once() {
    // shard 0 lists 150 stars with 50 matches; shard 1 lists 1,000 others with 2 and leaves
    // out the stars, the last ten of which have one match there: they are the busiest
    let mut first: Truth = (0..150)
        .map(|i| (format!("star-{i:03}"), (50, 0)))
        .collect();
    first.extend((0..900).map(|i| (format!("filler-{i:03}"), (1, 0))));
    let mut second: Truth = (0..1_000)
        .map(|i| (format!("other-{i:04}"), (2, 0)))
        .collect();
    second.extend((140..150).map(|i| (format!("star-{i:03}"), (1, 1))));
    let truths = [first, second];
    let (busiest, exact, steps) = gathered(&truths, 1_000);
    assert!(exact);
    assert_eq!(busiest, brute_force(&truths));
    assert_eq!(busiest[0].assistant_id, "star-140");
    assert_eq!(busiest[0].count, 51);
    // the 150 stars, asked of shard 1 in one go
    let [Step::Count(asked)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].0, asked[0].1.len()), (1, 150));
}

#[test]
fn the_busiest_of_any_shards_are_exact() {
    let mut rng = StdRng::seed_from_u64(19);
    for case in 0..500 {
        let shards = rng.random_range(1..=5);
        let assistants = rng.random_range(1..80);
        let top = rng.random_range(1..15);
        // skewed or flat, each shard its own way
        let truths: Vec<Truth> = (0..shards)
            .map(|_| {
                let skew = rng.random_range(0.0..3.0);
                let mut truth = Truth::new();
                for a in 0..assistants {
                    if rng.random_bool(0.7) {
                        let weight = 1.0 / (f64::from(a) + 1.0).powf(skew);
                        let count = (weight * rng.random_range(0.0..40.0)).round() as u64;
                        let errors = rng.random_range(0..=count);
                        truth.insert(format!("a{a:02}"), (count, errors));
                    }
                }
                truth
            })
            .collect();
        let (busiest, exact, _) = gathered(&truths, top);
        assert!(exact, "case {case}");
        assert_eq!(busiest, brute_force(&truths), "case {case}: {truths:?}");
    }
}

#[test]
fn a_shard_that_cannot_rule_out_the_unlisted_leaves_the_busiest_inexact() {
    // a shard of more assistants than it counts exactly: its bound stays past the threshold
    let loose = |assistants: &[(&str, u64)], unlisted_at_most| {
        let mut part = answer(&Truth::new(), &Listed::busiest(2));
        part.assistants = assistants
            .iter()
            .map(|&(id, count)| AssistantCount {
                assistant_id: id.to_owned(),
                count,
                errors: 0,
            })
            .collect();
        part.unlisted_at_most = unlisted_at_most;
        part
    };
    let parts = [
        loose(&[("a", 9), ("b", 8)], 7),
        answer(
            &[("c", (3, 0))].map(|(id, t)| (id.to_owned(), t)).into(),
            &Listed::busiest(2),
        ),
    ];
    let mut busiest = Busiest::new(&parts);
    // fewer than ten listed: shards that may hold others list every one with at least 1
    assert_eq!(
        busiest.next(),
        Step::AtLeast {
            shards: vec![0],
            at_least: 1
        }
    );
    busiest.relisted(0, &loose(&[("a", 9), ("b", 8), ("d", 7)], 5));
    assert_eq!(busiest.next(), Step::Count(vec![(0, vec!["c".to_owned()])]));
    assert_eq!(
        names(&busiest.as_far_as_known()),
        [("a", 9), ("b", 8), ("d", 7), ("c", 3)]
    );
    busiest.counted(0, &["c".to_owned()], &loose(&[("c", 1)], 0));
    // one no shard listed may still have up to 5
    let Step::Done {
        busiest: top,
        exact,
    } = busiest.next()
    else {
        panic!("more rounds");
    };
    assert!(!exact);
    assert_eq!(names(&top), [("a", 9), ("b", 8), ("d", 7), ("c", 4)]);
}
