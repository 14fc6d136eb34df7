use super::*;
use crate::ingest::chunk::EncodedLog;
use crate::mapping::example_log;

const NOW: u64 = 1_800_000_000;

/// The journal's files, oldest first, with when each was started.
fn journal_files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            let started = name["dedup-".len()..name.len() - ".log".len()]
                .parse()
                .unwrap();
            (path, started)
        })
        .collect();
    found.sort_by_key(|(_, started)| *started);
    found
}

fn keys(range: std::ops::Range<usize>) -> Vec<LogKey> {
    range
        .map(|n| {
            let mut log = example_log(&format!("message {n}"));
            // every log at the same nanosecond: only the content tells them apart
            log.timestamp_nanos = 1_700_000_000_000_000_000;
            EncodedLog::new(log).key
        })
        .collect()
}

/// Stores `logs` in batches of `size` as the writer does: what is not a duplicate is stored
/// and remembered; returns how many were duplicates.
fn store(window: &mut Window, logs: &[LogKey], size: usize) -> usize {
    let mut duplicates = 0;
    for batch in logs.chunks(size) {
        let seen = window.duplicates(batch);
        duplicates += seen.iter().filter(|&&s| s).count();
        let kept: Vec<LogKey> = batch
            .iter()
            .zip(&seen)
            .filter(|(_, seen)| !**seen)
            .map(|(k, _)| *k)
            .collect();
        window.register(&kept, NOW);
    }
    duplicates
}

#[test]
fn an_export_sent_again_whole_is_a_duplicate_and_new_logs_are_not() {
    let mut window = Window::new(Duration::from_secs(600));
    let logs = keys(0..3000);
    assert_eq!(store(&mut window, &logs, 512), 0);
    assert_eq!(store(&mut window, &logs, 512), 3000);
    assert_eq!(store(&mut window, &keys(3000..6000), 512), 0);
}

#[test]
fn a_retry_cut_into_other_batches_is_a_duplicate_at_every_edge() {
    let logs = keys(0..5000);
    for (first, again) in [
        (512, 100),
        (512, 8192),
        (100, 512),
        (1000, 16),
        (3, 512),
        (512, 333),
    ] {
        let mut window = Window::new(Duration::from_secs(600));
        assert_eq!(store(&mut window, &logs, first), 0);
        assert_eq!(
            store(&mut window, &logs, again),
            5000,
            "stored in batches of {first}, sent again in batches of {again}"
        );
    }
}

#[test]
fn new_logs_around_or_among_logs_sent_again_are_kept() {
    let mut window = Window::new(Duration::from_secs(600));
    let old = keys(0..1000);
    store(&mut window, &old, 512);
    let new = keys(1000..1300);
    // a collector's batch: the end of a retry, then new logs
    let mut batch = old[700..].to_vec();
    batch.extend_from_slice(&new[..100]);
    assert_eq!(store(&mut window, &batch, batch.len()), 300);
    // new logs, then a retried piece in the middle of a stored chunk, then new logs
    let mut batch = new[100..200].to_vec();
    batch.extend_from_slice(&old[410..420]);
    batch.extend_from_slice(&new[200..]);
    let seen = window.duplicates(&batch);
    assert_eq!(seen[..100], [false; 100]);
    assert_eq!(seen[110..], [false; 100]);
}

#[test]
fn forgotten_chunks_are_new_again() {
    let mut window = Window::new(Duration::from_secs(600));
    let logs = keys(0..1000);
    let mark = window.mark();
    store(&mut window, &logs, 512);
    window.rollback(mark);
    assert_eq!(window.len(), 0);
    assert_eq!(store(&mut window, &logs, 512), 0);
    window.expire(NOW + 600, usize::MAX);
    assert_eq!(store(&mut window, &logs, 512), 1000);
    window.expire(NOW + 601, usize::MAX);
    assert_eq!(window.len(), 0);
    assert_eq!(store(&mut window, &logs, 512), 0);
}

#[test]
fn the_journal_brings_the_window_back_and_stops_at_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(600);
    let logs = keys(0..2000);
    let mut dedup = Dedup::open(dir.path(), window, usize::MAX, NOW).unwrap();
    store(&mut dedup.window, &logs[..1000], 512);
    dedup.persist(NOW).unwrap();
    store(&mut dedup.window, &logs[1000..], 512);
    dedup.persist(NOW + 1).unwrap();
    drop(dedup);

    let mut dedup = Dedup::open(dir.path(), window, usize::MAX, NOW + 10).unwrap();
    assert_eq!(store(&mut dedup.window, &logs, 700), 2000);

    // a crash in the middle of the second append: its chunks are gone, the first's are not
    let (path, _) = journal_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let first_frame = {
        let bytes = std::fs::read(&path).unwrap();
        8 + u64::from(u32::from_le_bytes(bytes[..4].try_into().unwrap()))
    };
    assert!(first_frame < len);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let mut dedup = Dedup::open(dir.path(), window, usize::MAX, NOW + 10).unwrap();
    assert_eq!(store(&mut dedup.window, &logs[..1000], 512), 1000);
    assert_eq!(store(&mut dedup.window, &logs[1000..], 512), 0);

    // past the window, a restart remembers nothing
    let dedup = Dedup::open(dir.path(), window, usize::MAX, NOW + 700).unwrap();
    assert_eq!(dedup.window.len(), 0);
}

#[test]
fn the_journal_deletes_files_the_window_is_past() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(600);
    let mut dedup = Dedup::open(dir.path(), window, usize::MAX, NOW).unwrap();
    for minute in 0..15 {
        let at = NOW + minute * 60;
        let logs = keys(minute as usize * 10..minute as usize * 10 + 10);
        dedup.window.register(&logs, at);
        dedup.persist(at).unwrap();
    }
    // the files of the last ten minutes and the one before them, whose end may be within it
    let kept: Vec<u64> = journal_files(dir.path()).iter().map(|(_, s)| *s).collect();
    assert_eq!(kept.first(), Some(&(NOW + 4 * 60)));
    assert_eq!(kept.len(), 11);
}

#[test]
fn memory_is_a_few_bytes_a_log() {
    let mut window = Window::new(Duration::from_secs(600));
    let logs = keys(0..100_000);
    store(&mut window, &logs, 512);
    // its tag, and its share of its chunk and of the anchors
    let live = window.live_bytes() as f64 / 100_000.0;
    assert!((5.0..9.0).contains(&live), "{live} bytes a log");
    // with the room the tables keep for more, at most twice that
    let held = window.memory_bytes() as f64 / 100_000.0;
    assert!(held < 2.0 * live, "{held} bytes a log held, {live} used");
}

#[test]
fn past_its_bytes_the_window_forgets_its_oldest_chunks_first() {
    let mut window = Window::new(Duration::from_secs(600));
    let old = keys(0..2000);
    let new = keys(2000..4000);
    store(&mut window, &old, 512);
    store(&mut window, &new, 512);
    let both = window.live_bytes();
    window.expire(NOW, both * 6 / 10);
    assert!(window.live_bytes() <= both * 6 / 10);
    assert_eq!(window.duplicates(&new), vec![true; 2000]);
    assert!(window.duplicates(&old).iter().any(|seen| !seen));
}

#[test]
fn the_anchors_of_a_chunk_are_counted_without_walking_it() {
    for len in 0..=600 {
        let walked = (0..len).filter(|&p| is_anchor(p, len)).count();
        assert_eq!(anchors_of(len), walked, "{len}");
    }
}

#[test]
fn a_journal_frame_naming_absurd_counts_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut payload = Vec::new();
    payload.extend_from_slice(&NOW.to_le_bytes());
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    std::fs::write(dir.path().join(format!("dedup-{NOW:020}.log")), frame).unwrap();
    let dedup = Dedup::open(dir.path(), Duration::from_secs(600), usize::MAX, NOW).unwrap();
    assert_eq!(dedup.window.len(), 0);
}

#[test]
fn retries_cut_anyhow_into_batches_of_eight_or_more_are_duplicates() {
    let logs = keys(0..1000);
    let mut seed = 7u64;
    let mut next = move |below: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % below
    };
    for round in 0..200 {
        let mut window = Window::new(Duration::from_secs(600));
        // the first send, cut anyhow (batches of 1 to 600 logs)
        let mut at = 0;
        while at < logs.len() {
            let end = (at + 1 + next(600)).min(logs.len());
            store(&mut window, &logs[at..end], end - at);
            at = end;
        }
        // the retry, cut anyhow into batches of 8 or more
        let mut at = 0;
        while at < logs.len() {
            let end = (at + 8 + next(400)).min(logs.len());
            let batch = &logs[at..end];
            let seen = window.duplicates(batch);
            let missed: Vec<usize> = (at..end).filter(|i| !seen[i - at]).collect();
            assert!(
                missed.is_empty(),
                "round {round}: batch {at}..{end} missed {missed:?}"
            );
            at = end;
        }
    }
}

#[test]
fn a_retry_in_batches_too_short_for_an_anchor_goes_on_from_its_last_batch() {
    let mut window = Window::new(Duration::from_secs(600));
    let logs = keys(0..1000);
    store(&mut window, &logs, 512);
    // an SDK's batch processor cuts what it has: here batches of 3, and one of 2
    assert_eq!(store(&mut window, &logs[..600], 3), 600);
    assert_eq!(store(&mut window, &logs[600..602], 2), 2);
    // new logs after a retry are new, in a short batch too
    let new = keys(1000..1002);
    assert_eq!(store(&mut window, &new, 2), 0);
    assert_eq!(store(&mut window, &logs[602..], 100), 398);
}

#[test]
fn a_retry_batch_of_one_log_goes_on_from_the_batch_just_before() {
    let mut window = Window::new(Duration::from_secs(600));
    let logs = keys(0..1000);
    store(&mut window, &logs, 512);
    // positions no anchor finds, nor the next, 20 apart at least: a batch of one of them is
    // recognized only by going on from where the batch before it stopped
    let mut lone: Vec<usize> = Vec::new();
    for p in 100..990 {
        let unanchored = |p: usize| window.anchor(&logs[p]).is_none();
        if unanchored(p) && unanchored(p + 1) && lone.last().is_none_or(|&l| p >= l + 20) {
            lone.push(p);
        }
    }
    let [a, b, c, d, e] = lone[..5] else {
        panic!("too few positions without an anchor: {lone:?}")
    };
    // a retry cut into batches, among them two of one log in a row
    assert_eq!(store(&mut window, &logs[..a], 100), a);
    assert_eq!(store(&mut window, &logs[a..a + 1], 1), 1);
    assert_eq!(store(&mut window, &logs[a + 1..a + 2], 1), 1);
    assert_eq!(store(&mut window, &logs[a + 2..b], 100), b - a - 2);
    // a new log after a retry is new, and so is a retried log alone after it (it does not go on
    // from the batch just before it): stored again
    assert_eq!(store(&mut window, &keys(1000..1001), 1), 0);
    assert_eq!(store(&mut window, &logs[b..b + 1], 1), 0);
    // three runs stop at c, e and d, the newest last
    for p in [c, e, d] {
        assert_eq!(store(&mut window, &logs[p - 10..p], 10), 10);
    }
    // one log where an older run stopped is new; two logs where another stopped go on from it
    assert_eq!(store(&mut window, &logs[c..c + 1], 1), 0);
    assert_eq!(store(&mut window, &logs[e..e + 2], 2), 2);
}
