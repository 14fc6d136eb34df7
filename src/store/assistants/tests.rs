use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tantivy::indexer::NoMergePolicy;
use tantivy::schema::{FAST, STRING, Schema};
use tantivy::{Index, TantivyDocument};

use super::*;

fn one(failed: bool) -> Tally {
    Tally {
        count: 1,
        errors: u64::from(failed),
    }
}

/// A skewed stream: key `k` about `1 / (k + 1)` as often as key 0, out of `keys`.
fn skewed(rng: &mut StdRng, keys: u64, len: usize) -> Vec<u64> {
    (0..len)
        .map(|_| {
            let x: f64 = rng.random_range(0.0..1.0);
            ((keys as f64).powf(x) as u64)
                .saturating_sub(1)
                .min(keys - 1)
        })
        .collect()
}

fn truth(stream: &[u64]) -> HashMap<u64, Tally> {
    let mut counts: HashMap<u64, Tally> = HashMap::new();
    for &key in stream {
        counts.entry(key).or_default().add(one(key % 3 == 0));
    }
    counts
}

/// Every guarantee of a summary of `capacity` over `truth`, `n` counted.
fn assert_bounds(summary: Summary<u64>, truth: &HashMap<u64, Tally>, capacity: usize) {
    let n: u64 = truth.values().map(|t| t.count).sum();
    let (counters, undercount) = summary.into_parts();
    assert!(
        counters.len() <= 2 * capacity,
        "{} counters",
        counters.len()
    );
    assert!(
        undercount <= n / (capacity as u64 + 1),
        "undercount {undercount} of {n}"
    );
    for (key, tally) in truth {
        let estimate = counters.get(key).map_or(0, |t| t.count);
        assert!(
            estimate <= tally.count,
            "{key}: {estimate} > {}",
            tally.count
        );
        assert!(
            estimate + undercount >= tally.count,
            "{key}: {estimate} + {undercount} < {}",
            tally.count
        );
        if tally.count > undercount {
            assert!(
                counters.contains_key(key),
                "{key} with {} lost",
                tally.count
            );
        }
    }
    assert!(counters.keys().all(|key| truth.contains_key(key)));
}

#[test]
fn a_summary_that_never_reduced_is_exact() {
    let mut rng = StdRng::seed_from_u64(1);
    let stream = skewed(&mut rng, 16, 5_000);
    let mut summary = Summary::new(8);
    for &key in &stream {
        summary.add(key, one(key % 3 == 0));
    }
    assert_eq!(summary.undercount(), 0);
    assert_eq!(summary.into_parts().0, truth(&stream));
}

#[test]
fn a_reduced_summary_undercounts_by_at_most_n_over_capacity_plus_one() {
    let mut rng = StdRng::seed_from_u64(2);
    for capacity in [1, 3, 8, 64] {
        let stream = skewed(&mut rng, 5_000, 50_000);
        let mut summary = Summary::new(capacity);
        for &key in &stream {
            summary.add(key, one(key % 3 == 0));
        }
        assert!(
            summary.undercount() > 0,
            "capacity {capacity} never reduced"
        );
        assert_bounds(summary, &truth(&stream), capacity);
    }
    // one of each: the cut takes everything, and the bound is met exactly
    let mut summary = Summary::new(4);
    for key in 0..9u64 {
        summary.add(key, one(false));
    }
    assert_eq!(summary.into_parts(), (HashMap::new(), 1));
}

/// Merges `summary` into `merged` as a segment's tallies are.
fn merge(merged: &mut Summary<u64>, summary: Summary<u64>) {
    let (counters, undercount) = summary.into_parts();
    for (key, tally) in counters {
        merged.add(key, tally);
    }
    merged.add_undercount(undercount);
}

#[test]
fn merged_summaries_keep_the_bound_of_the_whole() {
    let mut rng = StdRng::seed_from_u64(3);
    let capacity = 16;
    let stream = skewed(&mut rng, 3_000, 60_000);
    let mut merged = Summary::new(capacity);
    // parts of every size, some too small to reduce, merged in turn
    for part in stream.chunks(7_919) {
        let mut summary = Summary::new(capacity);
        for &key in part {
            summary.add(key, one(key % 3 == 0));
        }
        merge(&mut merged, summary);
    }
    assert!(merged.undercount() > 0);
    assert_bounds(merged, &truth(&stream), capacity);

    // merging exact summaries that fit stays exact
    let mut merged = Summary::new(capacity);
    for part in [[1u64, 2, 2], [2, 3, 3]] {
        let mut summary = Summary::new(capacity);
        for key in part {
            summary.add(key, one(key == 3));
        }
        merge(&mut merged, summary);
    }
    let (counters, undercount) = merged.into_parts();
    assert_eq!(undercount, 0);
    assert_eq!(
        counters[&2],
        Tally {
            count: 3,
            errors: 0
        }
    );
    assert_eq!(
        counters[&3],
        Tally {
            count: 2,
            errors: 2
        }
    );
}

#[test]
fn candidates_are_the_ids_that_may_reach_the_top() {
    let counters: HashMap<String, Tally> = [("a", 50), ("b", 40), ("c", 31), ("d", 29), ("e", 5)]
        .into_iter()
        .map(|(id, count)| (id.to_owned(), Tally { count, errors: 0 }))
        .collect();
    let (mut got, others) = candidates(counters.clone(), 10, 2, u64::MAX);
    got.sort();
    // the second highest is 40: 31 + 10 may reach it, 29 + 10 may not, nor 5 + 10
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(others, 39);
    let (got, others) = candidates(counters.clone(), 10, 9, u64::MAX);
    assert_eq!((got.len(), others), (5, 0));
    // or those that may have at least 35: 29 + 10 may
    let (mut got, others) = candidates(counters.clone(), 10, 1, 35);
    got.sort();
    assert_eq!(
        (got, others),
        (["a", "b", "c", "d"].map(str::to_owned).to_vec(), 15)
    );
    let (got, others) = candidates(counters, 10, 0, u64::MAX);
    assert_eq!((got.len(), others), (0, 60));
}

/// The index of one segment per list of assistant ids, one document each.
fn segments(segments: &[Vec<String>]) -> Index {
    let mut schema = Schema::builder();
    let field = schema.add_text_field("assistant", STRING | FAST);
    let index = Index::create_in_ram(schema.build());
    let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
    writer.set_merge_policy(Box::new(NoMergePolicy));
    for ids in segments {
        for id in ids {
            let mut doc = TantivyDocument::new();
            doc.add_text(field, id);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
    }
    index
}

/// Every match's tally by id, and the ids sorted most first, then by id.
fn brute_force(matches: &[(String, bool)]) -> (HashMap<&str, Tally>, Vec<&str>) {
    let mut by_id: HashMap<&str, Tally> = HashMap::new();
    for (id, failed) in matches {
        by_id.entry(id).or_default().add(one(*failed));
    }
    let mut order: Vec<&str> = by_id.keys().copied().collect();
    order.sort_by(|a, b| (by_id[b].count, a).cmp(&(by_id[a].count, b)));
    (by_id, order)
}

#[test]
fn the_busiest_are_exact_through_reductions_dense_and_sparse_segments_alike() {
    let mut rng = StdRng::seed_from_u64(4);
    // busy ids reach the top by far (two tie), and thousands of others pass once or a few times;
    // segment `i` has about `1,000 * (i + 1)` others
    let lists: Vec<Vec<String>> = (1..=4)
        .map(|i| {
            let mut ids: Vec<String> = (0..1_000 * i)
                .map(|_| format!("other-{}", rng.random_range(0..20_000)))
                .collect();
            for busy in 0..12u32 {
                ids.extend((0..(60 - 4 * busy.min(10))).map(|_| format!("busy-{busy:02}")));
            }
            let len = ids.len();
            for i in 0..len {
                ids.swap(i, rng.random_range(i..len));
            }
            ids
        })
        .collect();
    let index = segments(&lists);
    let searcher = index.reader().unwrap().searcher();
    let readers = searcher.segment_readers();
    assert_eq!(readers.len(), 4);
    let failed = |doc: DocId| doc % 5 == 0;

    // (capacity, dense_terms, whether the guarantee makes the list the true top 10)
    for (capacity, dense_terms, guaranteed) in [
        (4, 0, false),
        (4, 2_500, false),
        (256, 0, true),
        (256, 2_500, true),
        (256, usize::MAX, true),
        (100_000, 0, true),
        (100_000, usize::MAX, true),
    ] {
        let case = format!("capacity {capacity}, dense up to {dense_terms} terms");
        // about two in three documents match
        let chosen: Vec<Vec<DocId>> = readers
            .iter()
            .map(|reader| {
                (0..reader.max_doc())
                    .filter(|_| rng.random_range(0..3) > 0)
                    .collect()
            })
            .collect();
        let count = || {
            let mut assistants = Assistants::new(capacity, dense_terms);
            for (reader, chosen) in readers.iter().zip(&chosen) {
                let column = reader.fast_fields().str("assistant").unwrap();
                assistants.enter(column, reader.max_doc(), Box::new(failed));
                for &doc in chosen {
                    assistants.count(doc, failed(doc));
                }
                assistants.leave();
            }
            assistants
        };
        let mut matches: Vec<(String, bool)> = Vec::new();
        for (reader, chosen) in readers.iter().zip(&chosen) {
            let column = reader.fast_fields().str("assistant").unwrap().unwrap();
            for &doc in chosen {
                let ord = column.term_ords(doc).next().unwrap();
                let mut id = String::new();
                assert!(column.ord_to_str(ord, &mut id).unwrap());
                matches.push((id, failed(doc)));
            }
        }
        let assistants = count();
        let undercount = assistants.summary.undercount();
        assert_eq!(undercount > 0, capacity < 100_000, "{case}");
        let n = matches.len() as u64;
        assert!(undercount <= n / (capacity as u64 + 1), "{case}");
        let not_cancelled = AtomicBool::new(false);
        let (top, unlisted_at_most) = assistants
            .list(&Listed::busiest(10), &not_cancelled)
            .unwrap();
        let (truth, order) = brute_force(&matches);
        let exact = |listed: &[AssistantCount]| {
            for listed in listed {
                let tally = truth[listed.assistant_id.as_str()];
                assert_eq!(
                    (listed.count, listed.errors),
                    (tally.count, tally.errors),
                    "{case}"
                );
            }
        };
        // no id left out has more than the bound
        let bounded = |listed: &[AssistantCount], bound: u64| {
            let listed: HashSet<&str> = listed.iter().map(|a| a.assistant_id.as_str()).collect();
            for id in &order {
                if !listed.contains(id) {
                    assert!(truth[id].count <= bound, "{case}: {id} past {bound}");
                }
            }
        };

        // the counts listed are exact, in order, and no id left out has more than `undercount`
        // above one listed
        assert_eq!(top.len(), 10.min(order.len()), "{case}");
        exact(&top);
        assert!(top.is_sorted_by(|a, b| AssistantCount::busiest_first(a, b).is_le()));
        let lowest = top.last().unwrap().count;
        bounded(&top, lowest + undercount);
        bounded(&top, unlisted_at_most);
        // past the bound, the list is the true top 10
        let tenth = truth[order[9]].count;
        assert_eq!(tenth > undercount, guaranteed, "{case}");
        if guaranteed {
            let listed: Vec<&str> = top.iter().map(|a| a.assistant_id.as_str()).collect();
            assert_eq!(listed, order[..10], "{case}");
        }

        // the top 3 and every one with at least the 20th's matches, exact; no other has more
        // than the bound, which is below that unless some count is off by as much
        let at_least = truth[order[19]].count;
        let listed = Listed::Busiest { top: 3, at_least };
        let (many, bound) = count().list(&listed, &not_cancelled).unwrap();
        exact(&many);
        bounded(&many, bound);
        assert!(many[3..].iter().all(|a| a.count >= at_least), "{case}");
        assert_eq!(bound < at_least, at_least > undercount, "{case}");
        if at_least > undercount {
            assert!(many.len() >= 20, "{case}");
        }

        // given ids: exactly those with matches, by id
        let asked: Vec<String> = [order[0], order[order.len() / 2], "nobody"]
            .map(str::to_owned)
            .into();
        let (only, _) = count()
            .list(&Listed::Only(asked.clone()), &not_cancelled)
            .unwrap();
        exact(&only);
        let mut expected = asked[..2].to_vec();
        expected.sort();
        let ids: Vec<&String> = only.iter().map(|a| &a.assistant_id).collect();
        assert_eq!(ids, expected.iter().collect::<Vec<_>>(), "{case}");
    }

    // a second count that is cancelled says so
    let mut assistants = Assistants::new(4, 0);
    let reader = &readers[0];
    let column = reader.fast_fields().str("assistant").unwrap();
    assistants.enter(column, reader.max_doc(), Box::new(failed));
    for doc in 0..reader.max_doc() {
        assistants.count(doc, false);
    }
    assert!(matches!(
        assistants.list(&Listed::busiest(10), &AtomicBool::new(true)),
        Err(Unfinished::Cancelled)
    ));
}

#[test]
fn segments_without_assistants_count_nothing() {
    let mut assistants = Assistants::new(4, 16);
    assistants.enter(None, 10, Box::new(|_| false));
    assistants.count(3, true);
    assistants.leave();
    let listed = assistants.list(&Listed::busiest(10), &AtomicBool::new(false));
    assert_eq!(listed.unwrap(), (vec![], 0));
}
