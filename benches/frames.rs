//! Throughput of `tunnel::frames::FrameTracker::advance`, the per-buffer cost every tunnelled
//! byte pays. Streams are built once and fed in 16 KiB reads, the relay's buffer size.
//!
//! Run: `cargo bench --bench frames`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tether::tunnel::frames::FrameTracker;

const READ_BUF: usize = 16 * 1024;

/// Append one frame header (minimal length form) and `len` filler payload bytes.
fn push_frame(out: &mut Vec<u8>, first: u8, mask: Option<[u8; 4]>, len: usize) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    // Header-like filler, so a tracker that peeked into payloads would be misled.
    out.resize(out.len() + len, 0x81);
}

/// Client -> backend STOMP traffic: masked SEND frames of 16-200 bytes and 1-byte heartbeats.
fn many_small_frames() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..40_000usize {
        let len = if i % 10 == 0 { 1 } else { 16 + (i * 37) % 185 };
        push_frame(&mut out, 0x81, Some([1, 2, 3, 4]), len);
    }
    out
}

/// Backend -> client bulk data: 64 KiB to 1 MiB binary frames, some fragmented, with pings.
fn large_frames() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..24usize {
        let len = 64 * 1024 + (i * 40_503) % (960 * 1024);
        if i % 3 == 0 {
            push_frame(&mut out, 0x02, None, len / 2);
            push_frame(&mut out, 0x89, None, 4);
            push_frame(&mut out, 0x80, None, len - len / 2);
        } else {
            push_frame(&mut out, 0x82, None, len);
        }
    }
    out
}

fn bench_advance(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_tracker_advance");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (name, stream) in [("many_small_frames", many_small_frames()), ("large_frames", large_frames())] {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tracker = FrameTracker::new();
                let mut headers = 0u32;
                for chunk in black_box(&stream).chunks(READ_BUF) {
                    tracker.advance(chunk, |_| headers += 1);
                }
                assert!(tracker.is_at_boundary(), "the stream ends on a boundary");
                black_box(headers)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_advance);
criterion_main!(benches);
