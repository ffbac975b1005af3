//! The format's reason to exist: a clock read must cost a few bytes on disk.

mod common;

use retrace_recorder::{ChunkEncoder, Event, TraceReader, TraceWriter, Value, WriterOptions};

/// Records `EVENTS` reads of a clock starting at `start` seconds and advancing 0.5 to 1.5 µs
/// per read (deterministic jitter), then returns (bytes on disk per event, bytes per event
/// before compression), after checking the values read back exactly.
fn clock_reads_cost(name: &str, start: f64) -> (f64, f64) {
    const EVENTS: u64 = 10_000;
    const CLOCK: u32 = 0;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.rtrace");
    let options = WriterOptions::default();
    let mut writer = TraceWriter::create(&path, &common::sample_header(), options.clone()).unwrap();
    let mut encoder = ChunkEncoder::new(options.chunk_capacity);
    let mut uncompressed = 0usize;

    encoder.fn_def(CLOCK, 0, name);
    let mut t = start;
    let mut jitter: u32 = 12345;
    for _ in 0..EVENTS {
        jitter = jitter.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        t += 0.5e-6 + f64::from(jitter >> 16 & 0x3FF) / 1024.0 * 1e-6;
        encoder.call(CLOCK, None);
        encoder.float_delta(CLOCK, t);
        if encoder.is_full() {
            let spare = writer.spare_buffer();
            let chunk = encoder.take_chunk(spare);
            uncompressed += chunk.len();
            writer.submit(chunk).unwrap();
        }
    }
    encoder.end();
    let spare = writer.spare_buffer();
            let chunk = encoder.take_chunk(spare);
    uncompressed += chunk.len();
    writer.submit(chunk).unwrap();
    writer.finish(encoder.events_written()).unwrap();

    let mut reader = TraceReader::open(&path).unwrap();
    let mut last = 0.0;
    let mut calls = 0;
    for record in reader.events() {
        if let Event::Call {
            result: Value::Float(v),
            ..
        } = record.unwrap().event
        {
            assert!(v > last);
            last = v;
            calls += 1;
        }
    }
    assert_eq!(calls, EVENTS);
    assert_eq!(last.to_bits(), t.to_bits());

    let file_len = std::fs::metadata(&path).unwrap().len();
    let on_disk = file_len as f64 / EVENTS as f64;
    let before = uncompressed as f64 / EVENTS as f64;
    println!(
        "{EVENTS} {name}() reads near {start:e}: {file_len} bytes on disk (header and trailer included), \
         {on_disk:.2} bytes per event on disk, {before:.2} before compression"
    );
    (on_disk, before)
}

#[test]
fn ten_thousand_time_time_reads_cost_at_most_8_bytes_each_on_disk() {
    let (on_disk, _) = clock_reads_cost("time.time", 1.7e9);
    assert!(on_disk <= 8.0, "{on_disk:.2} bytes per event");
}

#[test]
fn ten_thousand_perf_counter_reads_cost_at_most_8_bytes_each_on_disk() {
    // A small clock value has tiny ulps: 1 µs is ~10^5 ulps, a 3-byte delta.
    let (on_disk, before) = clock_reads_cost("time.perf_counter", 12_345.678);
    assert!(
        before <= 6.1,
        "{before:.2} bytes per event before compression"
    );
    assert!(on_disk <= 8.0, "{on_disk:.2} bytes per event");
}
