//! TraceWriter behaviour: never overwrites, flushes on a timer, closes cleanly or not at all.

mod common;

use std::time::{Duration, Instant};

use common::sample_header;
use retrace_recorder::encode::CHUNK_SLACK;
use retrace_recorder::{
    wait_until_written, ChunkEncoder, TraceErrorKind, TraceReader, TraceWriter, WriterOptions,
};

#[test]
fn an_existing_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    std::fs::write(&path, b"precious").unwrap();
    let error = TraceWriter::create(&path, &sample_header(), WriterOptions::default())
        .err()
        .unwrap();
    assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn the_header_is_on_disk_as_soon_as_create_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let mut writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    let reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.header(), &sample_header());
    writer.finish(0).unwrap();
}

#[test]
fn flush_due_turns_on_after_the_interval_and_submit_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let options = WriterOptions {
        flush_interval: Duration::from_millis(30),
        ..WriterOptions::default()
    };
    let mut writer = TraceWriter::create(&path, &sample_header(), options).unwrap();
    let mut encoder = ChunkEncoder::new(1024);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !writer.flush_due() {
        assert!(Instant::now() < deadline, "flush_due never turned on");
        std::thread::sleep(Duration::from_millis(5));
    }
    encoder.end();
    let spare = writer.spare_buffer();
    writer.submit(encoder.take_chunk(spare)).unwrap();
    assert!(!writer.flush_due(), "submit clears flush_due");
    // And it comes back after another quiet interval.
    while !writer.flush_due() {
        assert!(Instant::now() < deadline, "flush_due never turned on again");
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.finish(encoder.events_written()).unwrap();
    let mut reader = TraceReader::open(&path).unwrap();
    reader.events().for_each(drop);
    let trailer = reader.trailer().unwrap();
    assert_eq!(trailer.events, 1);
    assert_eq!(trailer.chunks.len(), 1);
}

#[test]
fn spare_buffers_are_empty_with_room_for_a_chunk_and_get_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let options = WriterOptions {
        chunk_capacity: 1000,
        ..WriterOptions::default()
    };
    let mut writer = TraceWriter::create(&path, &sample_header(), options).unwrap();
    let spare = writer.spare_buffer();
    assert!(spare.is_empty());
    assert!(spare.capacity() >= 1000 + CHUNK_SLACK);

    let mut encoder = ChunkEncoder::new(1000);
    encoder.end();
    let chunk = encoder.take_chunk(spare);
    let submitted_ptr = chunk.as_ptr();
    writer.submit(chunk).unwrap();
    // The chunk was copied into the stream: its buffer is the next spare, cleared.
    let buffer = writer.spare_buffer();
    assert!(buffer.is_empty());
    assert_eq!(buffer.as_ptr(), submitted_ptr);
    writer.finish(1).unwrap();
}

#[test]
fn empty_chunks_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let mut writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    writer.submit(Vec::new()).unwrap();
    writer.finish(0).unwrap();
    let mut reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.events().count(), 0);
    assert!(reader.trailer().unwrap().chunks.is_empty());
}

#[test]
fn dropping_without_finish_writes_the_chunks_but_no_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let mut writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    let mut encoder = ChunkEncoder::new(1024);
    encoder.thread(1);
    encoder.end();
    let spare = writer.spare_buffer();
    writer.submit(encoder.take_chunk(spare)).unwrap();
    drop(writer);

    let mut reader = TraceReader::open(&path).unwrap();
    let items: Vec<_> = reader.events().collect();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[1].as_ref().unwrap().event,
        retrace_recorder::Event::End
    );
    let error = items[2].as_ref().unwrap_err();
    assert_eq!(error.kind, TraceErrorKind::Truncated);
    assert_eq!(error.offset, reader.file_len());
    assert!(reader.trailer().is_none());
}

#[test]
fn abandon_returns_at_once_and_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    let header_len = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    // What a forked child does: its copy of the writer has no thread behind it.
    writer.abandon_in_forked_child();
    assert!(started.elapsed() < Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), header_len);
}

#[test]
fn the_trace_counts_as_written_once_the_writer_has_closed_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let mut writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    assert!(!wait_until_written(&path, Duration::from_millis(30)).unwrap());
    writer.finish(0).unwrap();
    assert!(wait_until_written(&path, Duration::from_millis(30)).unwrap());
    assert!(wait_until_written(&dir.path().join("missing.rtrace"), Duration::ZERO).unwrap());
}

/// The pyhook's path: the encoder's parts go into the stream without being assembled, and
/// the trace reads as if the assembled chunk had been submitted.
#[test]
fn submit_encoded_writes_what_take_chunk_and_submit_write() {
    let dir = tempfile::tempdir().unwrap();
    let events = |path: &std::path::Path, encoded: bool| {
        let mut writer = TraceWriter::create(path, &sample_header(), WriterOptions::default()).unwrap();
        let mut encoder = ChunkEncoder::new(1024);
        encoder.fn_def(0, 0, "os.urandom");
        for i in 0..500u32 {
            encoder.call(0, None);
            encoder.bytes(&i.to_le_bytes().repeat(3));
            if encoder.is_full() || i == 499 {
                if encoded {
                    writer.submit_encoded(&mut encoder).unwrap();
                } else {
                    let spare = writer.spare_buffer();
                    writer.submit(encoder.take_chunk(spare)).unwrap();
                }
            }
        }
        writer.finish(encoder.events_written()).unwrap();
        let mut reader = TraceReader::open(path).unwrap();
        // What the chunks hold; not where they landed or when they were written.
        let read: Vec<_> = reader
            .events()
            .map(|e| e.unwrap())
            .map(|r| (r.index, r.thread, format!("{:?}", r.event)))
            .collect();
        (read, reader.trailer().unwrap().chunks.len())
    };
    let assembled = events(&dir.path().join("a.rtrace"), false);
    let encoded = events(&dir.path().join("b.rtrace"), true);
    assert!(assembled.1 > 3, "several chunks");
    assert_eq!(assembled.0.len(), 501);
    assert!(assembled == encoded, "the two traces differ");
}

/// The recording's source copies go through the writer: written with their directories,
/// and the first one that cannot be written is kept for the recording to report.
#[test]
fn copies_are_written_and_the_first_failure_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let mut writer = TraceWriter::create(&path, &sample_header(), WriterOptions::default()).unwrap();
    let copy = dir.path().join("run/home/me/app/mod.py");
    writer.copy_file(&copy, b"print(1)\n").unwrap();
    // A file where a directory should be: this copy cannot be written.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    writer.copy_file(&blocker.join("x.py"), b"x = 1\n").unwrap();
    writer.copy_file(&blocker.join("y.py"), b"y = 1\n").unwrap();
    writer.finish(0).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), b"print(1)\n");
    let problem = writer.copy_problem().expect("the failed copy is reported");
    let prefix = format!("{}: ", blocker.join("x.py").display());
    assert!(problem.starts_with(&prefix), "{problem}");
}
