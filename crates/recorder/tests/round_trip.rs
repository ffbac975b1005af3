//! Events written through `ChunkEncoder` + `TraceWriter` come back identical from
//! `TraceReader`: kinds, values, deltas, digests, indices and threads, across many chunks.

mod common;

use common::{record, sample_header, small_chunk_options, step, Expected, Recorded};
use proptest::collection::vec;
use proptest::prelude::*;
use retrace_recorder::{EventRecord, TraceReader};

/// Reads every event, failing on any error, and checks them against the recording.
fn check_read_back(path: &std::path::Path, recorded: &Recorded) -> Vec<EventRecord> {
    let mut reader = TraceReader::open(path).expect("open");
    assert_eq!(reader.header(), &sample_header());
    let records: Vec<EventRecord> = reader
        .events()
        .collect::<Result<_, _>>()
        .expect("read events");
    let got: Vec<Expected> = records
        .iter()
        .map(|r| Expected {
            index: r.index,
            thread: r.thread,
            event: r.event.clone(),
        })
        .collect();
    assert_eq!(got, recorded.expected);

    let trailer = reader
        .trailer()
        .expect("a cleanly closed trace has a trailer");
    assert_eq!(trailer, &recorded.trailer);
    assert_eq!(trailer.events, recorded.expected.len() as u64);
    assert_eq!(trailer.chunks.len(), recorded.chunks_submitted);
    // Each record names the chunk the trailer says holds it.
    for chunk in &trailer.chunks {
        for index in chunk.first_event..chunk.first_event + chunk.events {
            assert_eq!(records[index as usize].chunk_offset, chunk.offset);
        }
    }
    for def in &recorded.fns {
        assert_eq!(reader.fn_def(def.id), Some(def));
    }
    assert_eq!(reader.file_len(), std::fs::metadata(path).unwrap().len());
    records
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_events_round_trip(steps in vec(step(), 0..120), chunk_capacity in 8usize..300) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.rtrace");
        let recorded = record(&steps, &path, small_chunk_options(chunk_capacity));
        check_read_back(&path, &recorded);
    }
}

#[test]
fn fixed_recording_round_trips_in_many_chunks_and_rereads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let recorded = record(&common::fixed_steps(3000), &path, small_chunk_options(512));
    assert!(
        recorded.trailer.chunks.len() > 20,
        "{} chunks",
        recorded.trailer.chunks.len()
    );
    let first = check_read_back(&path, &recorded);
    // Threads are carried across chunk boundaries by the chunk header: some chunk must
    // start on a thread other than 0 for this test to mean anything.
    assert!(recorded
        .trailer
        .chunks
        .iter()
        .any(|c| first[c.first_event as usize].thread != 0));

    // A second pass over the same reader yields the same events.
    let mut reader = TraceReader::open(&path).unwrap();
    let pass1: Vec<_> = reader.events().collect();
    let pass2: Vec<_> = reader.events().collect();
    assert_eq!(pass1, pass2);

    // In-memory reading matches mapped reading.
    let mut from_bytes = TraceReader::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    let in_memory: Vec<_> = from_bytes.events().map(Result::unwrap).collect();
    assert_eq!(in_memory, first);
}

#[test]
fn fn_defs_are_visible_during_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    record(&common::fixed_steps(10), &path, small_chunk_options(64));
    let mut reader = TraceReader::open(&path).unwrap();
    let mut events = reader.events();
    assert!(events.fn_def(3).is_none());
    let first = events.next().unwrap().unwrap();
    assert_eq!(first.event.kind_name(), "fn_def");
    assert_eq!(events.fn_def(3).map(|d| d.name.as_str()), Some("time.time"));
    assert!(events.trailer().is_none());
    events.by_ref().for_each(|r| {
        r.unwrap();
    });
    assert!(events.trailer().is_some());
}

#[test]
fn empty_recording_has_no_events_and_a_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let recorded = record(&[], &path, small_chunk_options(64));
    assert_eq!(recorded.trailer.events, 0);
    assert!(recorded.trailer.chunks.is_empty());
    let mut reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.events().count(), 0);
    assert_eq!(reader.trailer().map(|t| t.events), Some(0));
}
