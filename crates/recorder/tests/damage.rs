//! Damaged input: cut-short, corrupted, foreign and garbage bytes give a prefix of the events
//! and then exactly one error naming an offset, never a panic.

mod common;

use std::sync::OnceLock;

use common::{record, small_chunk_options};
use proptest::collection::vec;
use proptest::prelude::*;
use retrace_recorder::wire::{
    write_varint, FN_HAS_DIGEST, OP_CALL, OP_CALLBACK_RETURN, OP_FN_DEF, RECORD_KIND_HEADER, RECORD_MAGIC,
    SKIPPABLE_MAGIC,
};
use retrace_recorder::{EventRecord, TraceError, TraceErrorKind, TraceReader, TraceTrailer, FORMAT_VERSION};

struct Fixture {
    bytes: Vec<u8>,
    records: Vec<EventRecord>,
    trailer: TraceTrailer,
    /// Offset of the first chunk = length of the header frame.
    header_len: usize,
}

/// A valid multi-chunk trace and its events, built once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.rtrace");
        let recorded = record(&common::fixed_steps(400), &path, small_chunk_options(256));
        let bytes = std::fs::read(&path).unwrap();
        let mut reader = TraceReader::from_bytes(bytes.clone()).unwrap();
        let records = reader.events().collect::<Result<Vec<_>, _>>().unwrap();
        let header_len = recorded.trailer.chunks[0].offset as usize;
        assert!(recorded.trailer.chunks.len() >= 10);
        Fixture {
            bytes,
            records,
            trailer: recorded.trailer,
            header_len,
        }
    })
}

/// Everything a reader yields for `bytes`: the events before the first error, and the errors
/// (the open error, or the iteration errors; iteration must stop after one).
fn read_all(bytes: Vec<u8>) -> (Vec<EventRecord>, Vec<TraceError>) {
    let mut reader = match TraceReader::from_bytes(bytes) {
        Ok(reader) => reader,
        Err(error) => return (Vec::new(), vec![error]),
    };
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for item in reader.events() {
        match item {
            Ok(record) => {
                assert!(errors.is_empty(), "an event after an error");
                records.push(record);
            }
            Err(error) => errors.push(error),
        }
    }
    (records, errors)
}

fn header_frame(version: u16, kind: u8, json: &[u8]) -> Vec<u8> {
    let mut frame = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
    frame.extend_from_slice(&(7 + json.len() as u32).to_le_bytes());
    frame.extend_from_slice(RECORD_MAGIC);
    frame.extend_from_slice(&version.to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(json);
    frame
}

fn zstd_frame(payload: &[u8]) -> Vec<u8> {
    let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .unwrap();
    compressor.compress(payload).unwrap()
}

/// A chunk frame of `events` with an empty payload section.
fn chunk_frame(events: &[u8]) -> Vec<u8> {
    zstd_frame(&[events, &[0, 0, 0, 0]].concat())
}

#[test]
fn payload_section_lengths_that_do_not_add_up_are_bad_events() {
    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    let header = header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json);
    let bad_event = |chunk: &[u8]| {
        let (records, errors) = read_all([header.clone(), zstd_frame(chunk)].concat());
        match &errors[0].kind {
            TraceErrorKind::BadEvent(message) => (records.len(), message.clone()),
            other => panic!("{other:?}"),
        }
    };
    // A CALLBACK_RETURN of bytes "abc", payload "abc", length 3: fine.
    let events = [0u8, 0, 0, OP_CALLBACK_RETURN, 0x09, 3];
    let (records, errors) = read_all([header.clone(), zstd_frame(&[&events[..], b"abc", &[3, 0, 0, 0]].concat())].concat());
    assert_eq!(errors[0].kind, TraceErrorKind::Truncated, "no trailer");
    assert_eq!(
        records[0].event,
        retrace_recorder::Event::CallbackReturn { result: retrace_recorder::Value::Bytes(b"abc".to_vec()) }
    );
    // No room for the length.
    assert!(bad_event(&[0, 0]).1.contains("too short"));
    // A length longer than the chunk.
    assert!(bad_event(&[0, 0, 0, 0x0C, 9, 0, 0, 0]).1.contains("runs past its start"));
    // A value longer than the payload.
    let (read, message) = bad_event(&[&events[..], b"ab", &[2, 0, 0, 0]].concat());
    assert_eq!(read, 0);
    assert!(message.contains("past the end of the chunk's payload"), "{message}");
    // Payload bytes no event reads.
    let (read, message) = bad_event(&[&events[..], b"abcd", &[4, 0, 0, 0]].concat());
    assert_eq!(read, 1);
    assert!(message.contains("1 payload bytes"), "{message}");
}

#[test]
fn every_cut_point_gives_a_prefix_then_one_truncation() {
    let fixture = fixture();
    let full_len = fixture.bytes.len();
    for cut in 0..=full_len {
        let (records, errors) = read_all(fixture.bytes[..cut].to_vec());
        assert_eq!(
            records[..],
            fixture.records[..records.len()],
            "cut at {cut}"
        );
        if cut == full_len {
            assert!(errors.is_empty(), "the whole file: {errors:?}");
            assert_eq!(records.len(), fixture.records.len());
            continue;
        }
        assert_eq!(errors.len(), 1, "cut at {cut}: {errors:?}");
        let error = &errors[0];
        assert!(
            matches!(
                error.kind,
                TraceErrorKind::Truncated | TraceErrorKind::CorruptFrame(_)
            ),
            "cut at {cut}: {error}"
        );
        assert!(error.offset <= cut as u64, "cut at {cut}: {error}");
        if cut < fixture.header_len {
            assert_eq!(
                error.kind,
                TraceErrorKind::Truncated,
                "cut at {cut}: {error}"
            );
        }
    }
}

#[test]
fn cut_at_a_chunk_boundary_reads_every_earlier_chunk() {
    let fixture = fixture();
    for chunk in &fixture.trailer.chunks {
        let (records, errors) = read_all(fixture.bytes[..chunk.offset as usize].to_vec());
        assert_eq!(records.len() as u64, chunk.first_event);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, TraceErrorKind::Truncated);
        assert_eq!(errors[0].offset, chunk.offset);
        assert_eq!(
            errors[0].to_string(),
            format!(
                "trace (in memory) is truncated at byte offset {} (the recording was cut short)",
                chunk.offset
            )
        );
    }
}

#[test]
fn a_flipped_byte_inside_a_chunk_is_a_corrupt_frame_at_its_offset() {
    let fixture = fixture();
    for chunk in &fixture.trailer.chunks {
        let rest = &fixture.bytes[chunk.offset as usize..];
        let frame_len = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
        // The middle of the compressed data, and the last byte (the checksum).
        for at in [frame_len / 2, frame_len - 1] {
            let mut bytes = fixture.bytes.clone();
            bytes[chunk.offset as usize + at] ^= 0x20;
            let (records, errors) = read_all(bytes);
            assert_eq!(records[..], fixture.records[..chunk.first_event as usize]);
            assert_eq!(errors.len(), 1);
            let error = &errors[0];
            assert!(
                matches!(error.kind, TraceErrorKind::CorruptFrame(_)),
                "{error}"
            );
            assert_eq!(error.offset, chunk.offset, "{error}");
            assert!(error.to_string().starts_with(&format!(
                "trace (in memory) is corrupt at byte offset {}: ",
                chunk.offset
            )));
        }
    }
}

#[test]
fn a_checksum_mismatch_says_so() {
    let fixture = fixture();
    let chunk = &fixture.trailer.chunks[1];
    let frame_len =
        zstd::zstd_safe::find_frame_compressed_size(&fixture.bytes[chunk.offset as usize..])
            .unwrap();
    let mut bytes = fixture.bytes.clone();
    bytes[chunk.offset as usize + frame_len - 1] ^= 1;
    let (_, errors) = read_all(bytes);
    assert!(errors[0].to_string().contains("checksum"), "{}", errors[0]);
}

#[test]
fn not_a_trace_wrong_version_and_empty_file() {
    let kind = |bytes: Vec<u8>| TraceReader::from_bytes(bytes).err().map(|e| e.kind);
    // Empty, or a prefix of the header: the recording was cut short before the header.
    assert_eq!(kind(Vec::new()), Some(TraceErrorKind::Truncated));
    assert_eq!(
        kind(SKIPPABLE_MAGIC.to_le_bytes()[..3].to_vec()),
        Some(TraceErrorKind::Truncated)
    );
    assert_eq!(
        kind(b"#!/usr/bin/env python3\nprint(1)\n".to_vec()),
        Some(TraceErrorKind::NotATrace)
    );
    assert_eq!(kind(vec![0]), Some(TraceErrorKind::NotATrace));
    assert_eq!(kind(zstd_frame(b"hello")), Some(TraceErrorKind::NotATrace));
    // A skippable frame that is not ours.
    let mut foreign = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
    foreign.extend_from_slice(&8u32.to_le_bytes());
    foreign.extend_from_slice(b"OTHERxyz");
    assert_eq!(kind(foreign), Some(TraceErrorKind::NotATrace));

    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    assert_eq!(
        kind(header_frame(1, RECORD_KIND_HEADER, &json)),
        Some(TraceErrorKind::UnsupportedVersion(1))
    );
    assert!(matches!(
        kind(header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, b"{not json")),
        Some(TraceErrorKind::CorruptFrame(_))
    ));
    assert!(TraceReader::from_bytes(header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json)).is_ok());

    let error = TraceReader::from_bytes(header_frame(7, RECORD_KIND_HEADER, &json))
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "trace (in memory) has format version 7, but this retrace reads format version 2"
    );
}

#[test]
fn open_reports_io_errors_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.rtrace");
    let error = TraceReader::open(&missing).err().unwrap();
    assert!(matches!(error.kind, TraceErrorKind::Io(_)));
    assert!(error.to_string().contains("missing.rtrace"), "{error}");

    let empty = dir.path().join("empty.rtrace");
    std::fs::write(&empty, b"").unwrap();
    let error = TraceReader::open(&empty).err().unwrap();
    assert_eq!(error.kind, TraceErrorKind::Truncated);
    assert_eq!(error.path.as_deref(), Some(empty.as_path()));

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"just some notes").unwrap();
    let error = TraceReader::open(&text).err().unwrap();
    assert_eq!(error.kind, TraceErrorKind::NotATrace);
    assert!(
        error
            .to_string()
            .contains("notes.txt is not a retrace trace"),
        "{error}"
    );
}

#[test]
fn undefined_fn_and_chunk_index_gaps_are_bad_events() {
    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    let header = header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json);

    // A CALL of fn 5, never defined.
    let mut chunk = vec![0, 0, 0, OP_CALL];
    write_varint(&mut chunk, 5);
    chunk.push(0);
    let mut bytes = header.clone();
    bytes.extend_from_slice(&chunk_frame(&chunk));
    let (records, errors) = read_all(bytes);
    assert!(records.is_empty());
    assert!(
        matches!(&errors[0].kind, TraceErrorKind::BadEvent(m) if m.contains("undefined fn 5")),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].offset, header.len() as u64);

    // A chunk claiming to start at event 10 when none precede it.
    let mut bytes = header.clone();
    bytes.extend_from_slice(&chunk_frame(&[10, 0, 0, 0x0C]));
    let (_, errors) = read_all(bytes);
    assert!(
        matches!(&errors[0].kind, TraceErrorKind::BadEvent(m) if m.contains("starts at event 10"))
    );

    // A delta value nested inside a tuple.
    let mut chunk = vec![
        0,
        0,
        0,
        OP_FN_DEF,
        1,
        FN_HAS_DIGEST,
        1,
        b'f',
        OP_CALL,
        1,
        9,
        9,
        9,
        9,
        0x0A,
        1,
        0x06,
        2,
    ];
    let (_, errors) = read_all([header.clone(), chunk_frame(&chunk)].concat());
    assert!(
        matches!(&errors[0].kind, TraceErrorKind::BadEvent(m) if m.contains("delta")),
        "{}",
        errors[0]
    );
    // ... while at top level it is fine (and the digest is read since the fn has one).
    chunk.splice(14..16, []);
    let (records, errors) = read_all([header, chunk_frame(&chunk)].concat());
    assert_eq!(errors[0].kind, TraceErrorKind::Truncated, "no trailer");
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[1].event,
        retrace_recorder::Event::Call {
            fn_id: 1,
            digest: Some(0x0909_0909),
            result: retrace_recorder::Value::Float(f64::from_bits(1))
        }
    );
}

#[test]
fn a_chunk_frame_without_checksum_is_corrupt() {
    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    let unchecked = zstd::bulk::compress(&[0, 0, 0, 0x0C], 1).unwrap();
    let bytes = [header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json), unchecked].concat();
    let (records, errors) = read_all(bytes);
    assert!(records.is_empty());
    assert!(
        matches!(&errors[0].kind, TraceErrorKind::CorruptFrame(m) if m.contains("without a checksum")),
        "{}",
        errors[0]
    );
}

#[test]
fn deeply_nested_values_are_refused_not_overflowing_the_stack() {
    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    let mut chunk = vec![0, 0, 0, 0x09 /* CALLBACK_RETURN */];
    for _ in 0..100_000 {
        chunk.extend_from_slice(&[0x0B, 1]); // a list of one list of one list ...
    }
    chunk.push(0);
    let (_, errors) = read_all(
        [
            header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json),
            chunk_frame(&chunk),
        ]
        .concat(),
    );
    assert!(
        matches!(&errors[0].kind, TraceErrorKind::BadEvent(m) if m.contains("nested")),
        "{}",
        errors[0]
    );
}

fn garbage_chunk_trace(events: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(&common::sample_header()).unwrap();
    // Define a few fns first so garbage CALLs get past the fn lookup sometimes.
    let mut chunk = vec![0, 0, 0];
    for (id, flags) in [(0u8, 0u8), (1, FN_HAS_DIGEST), (2, 0)] {
        chunk.extend_from_slice(&[OP_FN_DEF, id, flags, 1, b'f' + id]);
    }
    chunk.extend_from_slice(events);
    [
        header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json),
        chunk_frame(&chunk),
    ]
    .concat()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn flipped_bytes_never_panic(flips in vec((any::<prop::sample::Index>(), 1..=255u8), 1..6)) {
        let fixture = fixture();
        let mut bytes = fixture.bytes.clone();
        for (at, mask) in &flips {
            let position = at.index(bytes.len());
            bytes[position] ^= mask;
        }
        let (records, errors) = read_all(bytes);
        prop_assert!(errors.len() <= 1);
        prop_assert!(records.len() <= fixture.records.len() + 1000);
    }

    #[test]
    fn flips_in_chunks_only_give_a_prefix_then_a_frame_error(at in any::<prop::sample::Index>(), mask in 1..=255u8) {
        let fixture = fixture();
        let body = fixture.header_len..fixture.bytes.len();
        let position = body.start + at.index(body.len());
        let mut bytes = fixture.bytes.clone();
        bytes[position] ^= mask;
        let (records, errors) = read_all(bytes);
        prop_assert_eq!(&records[..], &fixture.records[..records.len()]);
        prop_assert!(errors.len() <= 1);
        if let Some(error) = errors.first() {
            // The error is at or before the damage, except when the damage hides the
            // trailer (its magic's free nibble, or our record prefix): then it is someone
            // else's skippable frame, skipped, and the trace just ends without a trailer.
            let trailer_hidden = error.kind == TraceErrorKind::Truncated
                && error.offset == fixture.bytes.len() as u64
                && records.len() == fixture.records.len();
            prop_assert!(
                error.offset <= position as u64 || trailer_hidden,
                "{} for a flip at {}", error, position
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let _ = read_all(bytes);
    }

    #[test]
    fn arbitrary_frames_after_a_header_never_panic(body in vec(any::<u8>(), 0..300)) {
        let json = serde_json::to_vec(&common::sample_header()).unwrap();
        let bytes = [header_frame(FORMAT_VERSION, RECORD_KIND_HEADER, &json), body].concat();
        let (_, errors) = read_all(bytes);
        prop_assert_eq!(errors.len(), 1);
    }

    #[test]
    fn arbitrary_chunk_contents_never_panic(events in vec(any::<u8>(), 0..400)) {
        let (_, errors) = read_all(garbage_chunk_trace(&events));
        // Garbage ends in a bad event, or runs to the end of the chunk: then, no trailer.
        prop_assert_eq!(errors.len(), 1);
    }

    #[test]
    fn plausible_chunk_contents_never_panic(
        events in vec(prop_oneof![0u8..0x10, Just(0x80), Just(0xFF), any::<u8>()], 0..400)
    ) {
        let (_, errors) = read_all(garbage_chunk_trace(&events));
        prop_assert_eq!(errors.len(), 1);
    }
}
