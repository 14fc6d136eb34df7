use super::*;
use crate::faults::{Fault, WritePoint};
use crate::ingest::MemoryBudget;
use crate::mapping::example_log as log;
use crate::metrics::StorageLabels;
use crate::store::{self, LogQuery, Store, StoreOptions};

/// A writer on a fresh folder with faults on command, and the store to read it back.
struct Harness {
    _dir: tempfile::TempDir,
    writer: Writer,
    store: Store,
    health: watch::Receiver<Health>,
    faults: Faults,
    metrics: Arc<Metrics>,
}

fn harness() -> Harness {
    open_harness(tempfile::tempdir().unwrap(), Faults::injector())
}

/// A writer on `dir` as a start finds it.
fn open_harness(dir: tempfile::TempDir, faults: Faults) -> Harness {
    let options = StoreOptions {
        faults: faults.clone(),
        ..StoreOptions::new(16 << 20)
    };
    let (store, index) = store::open(&dir.path().join("index"), &options).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (health, health_rx) = watch::channel(Health::Starting);
    let options = WriterOptions {
        wal_dir: dir.path().join("wal"),
        commit_interval: Duration::from_secs(1),
        health,
        metrics: metrics.clone(),
        faults: faults.clone(),
        retention: Retention::default(),
        sweep_interval: Duration::from_secs(30),
        dedup_window: Duration::from_secs(600),
        dedup_max_bytes: 64 << 20,
    };
    let writer = recover(index, &options).unwrap();
    Harness {
        _dir: dir,
        writer,
        store,
        health: health_rx,
        faults,
        metrics,
    }
}

impl Harness {
    /// The writer and the store started again on the same folder, as after `kill -9`.
    fn restart(self) -> Harness {
        let Harness {
            _dir,
            writer,
            store,
            faults,
            ..
        } = self;
        drop((writer, store));
        open_harness(_dir, faults)
    }

    /// Writes one batch of `messages` and returns its answer.
    fn write(&mut self, messages: &[&str]) -> Result<(), WriteError> {
        let (done, mut answer) = oneshot::channel();
        let batch = Batch {
            logs: messages.iter().map(|m| EncodedLog::new(log(m))).collect(),
            _reservation: MemoryBudget::new(1 << 20).reservation(),
            done,
        };
        self.writer.metrics.queue_depth.inc();
        self.writer.write_group(vec![batch]);
        answer.try_recv().expect("answered")
    }

    /// The messages of every stored log with their sequence numbers, oldest first.
    fn stored(&self) -> Vec<(u64, String)> {
        let query = LogQuery {
            user_id: "u".into(),
            limit: 100,
            ..Default::default()
        };
        let mut stored: Vec<(u64, String)> = self
            .store
            .search(&query)
            .unwrap()
            .logs
            .into_iter()
            .map(|(key, json)| {
                let log: serde_json::Value = serde_json::from_slice(&json).unwrap();
                (key.seq, log["message"].as_str().unwrap().to_owned())
            })
            .collect();
        stored.reverse();
        stored
    }

    fn failing(&self) -> bool {
        matches!(*self.health.borrow(), Health::Failing(_))
    }
}

fn failures(metrics: &Metrics, stage: &'static str) -> u64 {
    metrics
        .storage_failures
        .get_or_create(&StorageLabels { stage })
        .get()
}

#[test]
fn replay_skips_what_the_index_already_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut index) =
        store::open(&dir.path().join("index"), &StoreOptions::new(16 << 20)).unwrap();
    let wal_dir = dir.path().join("wal");
    let mut wal = Wal::start(&wal_dir, 1, &Faults::none()).unwrap();
    let encoded = |m| EncodedLog::new(log(m));
    wal.push(1, &[encoded("a"), encoded("b")]);
    wal.push(3, &[encoded("c")]);
    wal.sync().unwrap();
    // a crash after the index committed seq 1 and 2, before the log was emptied
    index.add(&log("a"), 1).unwrap();
    index.add(&log("b"), 2).unwrap();
    index.commit(2).unwrap();
    drop(wal);

    let metrics = Arc::new(Metrics::new());
    let (health, health_rx) = watch::channel(Health::Starting);
    let options = WriterOptions {
        wal_dir,
        commit_interval: Duration::from_secs(1),
        health,
        metrics: metrics.clone(),
        faults: Faults::none(),
        retention: Retention::default(),
        sweep_interval: Duration::from_secs(30),
        dedup_window: Duration::from_secs(600),
        dedup_max_bytes: 64 << 20,
    };
    let writer = recover(index, &options).unwrap();
    assert_eq!(writer.next_seq, 4);
    assert_eq!(writer.index.committed_seq(), 3);
    assert_eq!(store.num_logs(), 3);
    assert_eq!(writer.wal.bytes(), 0);
    assert_eq!(metrics.index_logs.get(), 3);
    assert_eq!(*health_rx.borrow(), Health::Ready);
}

#[test]
fn a_refused_batch_is_not_stored_and_its_numbers_are_never_reused() {
    let mut h = harness();
    h.write(&["a"]).unwrap();
    h.faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
    let refused = h.write(&["refused", "refused too"]).unwrap_err();
    assert_eq!(
        refused,
        WriteError::Storage("writing the write-ahead log: Input/output error (os error 5)".into())
    );
    assert!(h.failing());
    // refused while failing, before the retry is due
    assert!(h.write(&["too early"]).is_err());
    h.writer.try_recover();
    assert_eq!(*h.health.borrow(), Health::Ready);
    h.write(&["b"]).unwrap();
    h.writer.commit().unwrap();
    // seq 2 and 3 went to the refused batch, 4 to the one refused while failing
    assert_eq!(h.stored(), vec![(1, "a".into()), (5, "b".into())]);
    assert_eq!(failures(&h.metrics, "wal_write"), 1);
    assert_eq!(h.metrics.storage_recoveries.get(), 1);
    assert_eq!(h.metrics.storage_failing.get(), 0);
    // the log holds nothing of what was refused
    let mut replayed = Vec::new();
    h.writer
        .wal
        .replay(|batch| {
            replayed.push(batch.first_seq);
            Ok(())
        })
        .unwrap();
    assert!(replayed.is_empty(), "{replayed:?}");
}

#[test]
fn logs_sent_again_are_acknowledged_and_stored_once_even_after_a_refusal() {
    let mut h = harness();
    h.write(&["a", "b", "c"]).unwrap();
    h.write(&["a", "b", "c"]).unwrap();
    // a retry of a refused batch is no duplicate: nothing of it was stored
    h.faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
    assert!(h.write(&["d", "e"]).is_err());
    h.writer.try_recover();
    h.write(&["b", "c", "d", "e"]).unwrap();
    h.writer.commit().unwrap();
    let messages: Vec<String> = h.stored().into_iter().map(|(_, m)| m).collect();
    assert_eq!(messages, ["a", "b", "c", "d", "e"]);
    assert_eq!(h.metrics.records_duplicate.get(), 5);
}

#[test]
fn a_batch_refused_while_the_log_cannot_be_cut_back_is_stored_when_sent_again() {
    let mut h = harness();
    h.write(&["a"]).unwrap();
    // the fsync fails, and so does the cut: the refused frame stays in the log's file
    h.faults.fail_times(WritePoint::WalSync, Fault::Io, 2);
    assert!(h.write(&["refused"]).is_err());
    assert!(h.writer.wal.is_poisoned());
    let mut h = h.restart();
    // the replay skips the refused frame for the index and for the dedup window alike
    assert_eq!(h.stored(), vec![(1, "a".into())]);
    h.write(&["refused"]).unwrap();
    h.writer.commit().unwrap();
    assert_eq!(h.stored(), vec![(1, "a".into()), (3, "refused".into())]);
    assert_eq!(h.metrics.records_duplicate.get(), 0);
}

#[test]
fn logs_stored_before_a_restart_are_duplicates_after_it() {
    let mut h = harness();
    h.write(&["a", "b"]).unwrap();
    h.writer.commit().unwrap();
    h.write(&["c"]).unwrap();
    // "c" is in the write-ahead log only; "a" and "b" in the journal only
    let mut h = h.restart();
    h.write(&["a", "b", "c", "d"]).unwrap();
    h.writer.commit().unwrap();
    let messages: Vec<String> = h.stored().into_iter().map(|(_, m)| m).collect();
    assert_eq!(messages, ["a", "b", "c", "d"]);
    assert_eq!(h.metrics.records_duplicate.get(), 3);
}

#[test]
fn a_failed_commit_is_rolled_back_and_rebuilt_from_the_log_exactly_once() {
    let mut h = harness();
    h.write(&["a"]).unwrap();
    h.writer.commit().unwrap();
    h.write(&["b", "c"]).unwrap();
    // the commit cannot write its segment files: b and c are acknowledged, not yet indexed
    h.faults.fail(WritePoint::IndexWrite, Fault::NoSpace);
    let failed = h.writer.commit().unwrap_err();
    assert!(
        matches!(&failed, WriteError::Storage(reason) if reason.contains("No space left on device")),
        "{failed:?}"
    );
    assert!(h.failing());
    assert!(h.write(&["refused"]).is_err());
    // still failing: recovery cannot commit either
    h.writer.try_recover();
    assert!(h.failing());
    assert_eq!(h.stored(), vec![(1, "a".into())]);

    h.faults.clear(WritePoint::IndexWrite);
    h.writer.try_recover();
    assert_eq!(*h.health.borrow(), Health::Ready);
    assert_eq!(
        h.stored(),
        vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
    h.write(&["d"]).unwrap();
    h.writer.commit().unwrap();
    assert_eq!(h.stored().len(), 4);
    assert_eq!(h.stored()[3], (5, "d".into()));
    assert!(failures(&h.metrics, "index_commit") >= 1);
    assert_eq!(h.writer.wal.bytes(), 0);
}

#[test]
fn a_failed_meta_json_is_rolled_back_and_rebuilt_exactly_once() {
    let mut h = harness();
    h.write(&["a", "b"]).unwrap();
    h.faults.fail_times(WritePoint::IndexMeta, Fault::Io, 1);
    assert!(h.writer.commit().is_err());
    assert!(h.failing());
    h.writer.try_recover();
    assert_eq!(*h.health.borrow(), Health::Ready);
    assert_eq!(h.stored(), vec![(1, "a".into()), (2, "b".into())]);
    assert_eq!(h.store.num_logs(), 2);
}

#[test]
fn a_failed_rotation_keeps_the_log_and_replay_skips_what_is_committed() {
    let mut h = harness();
    h.faults.fail(WritePoint::WalRotate, Fault::NoSpace);
    h.write(&["a"]).unwrap();
    h.writer.commit().unwrap();
    h.write(&["b"]).unwrap();
    h.writer.commit().unwrap();
    assert!(h.writer.wal.bytes() > 0);
    assert_eq!(failures(&h.metrics, "wal_rotate"), 2);
    assert_eq!(*h.health.borrow(), Health::Ready);
    h.faults.clear(WritePoint::WalRotate);
    h.write(&["c"]).unwrap();
    h.writer.commit().unwrap();
    assert_eq!(h.writer.wal.bytes(), 0);
    assert_eq!(
        h.stored(),
        vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
}

#[test]
fn a_writer_thread_that_dies_says_why() {
    let (died, mut reason) = oneshot::channel();
    let (health, health_rx) = watch::channel(Health::Ready);
    let thread = std::thread::spawn(move || {
        let _notice = DeathNotice::new(died, health);
        panic!("a bug");
    });
    assert!(thread.join().is_err());
    assert_eq!(
        reason.try_recv().unwrap(),
        "the index writer thread panicked"
    );
    assert_eq!(*health_rx.borrow(), Health::Stopped);

    let (died, mut reason) = oneshot::channel();
    let (health, _) = watch::channel(Health::Ready);
    DeathNotice::new(died, health).disarm();
    assert!(reason.try_recv().is_err());
}
