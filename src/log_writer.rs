//! The writer every log line goes through on its way to stderr.
//!
//! Owns: [`LogWriter`], a bounded queue of whole lines and the thread that writes them out in
//! batches. A request's thread only appends its line under a short lock; the writer thread
//! takes everything queued at once and writes it with one system call, at the latest
//! [`FLUSH_EVERY`] after the first line arrived (or as soon as [`BATCH_BYTES`] are queued). A
//! sink that stops reading (a stalled log collector) blocks only the writer thread: past
//! `max_lines` queued lines, new lines are dropped and counted, never waited for. Must not:
//! format lines (that is `tracing-subscriber`) or decide what is logged.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The longest a line waits in the queue while the sink keeps up.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Queued bytes that start a write at once.
pub const BATCH_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    lines: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the first line of a batch arrives, when a batch is full, and on close.
    ready: Condvar,
    max_lines: usize,
    dropped: AtomicU64,
}

/// See the module doc. Cheap to clone: every clone appends to the same queue.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes out what is still queued and stops the writer thread when dropped. Keep it for the
/// life of the process.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Start the writer thread (named `name`) writing to `sink`; at most `max_lines` lines wait
    /// for it.
    pub fn start(sink: impl Write + Send + 'static, max_lines: usize, name: &str) -> io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            max_lines,
            dropped: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || write_out(&worker, sink))?;
        Ok((Self { shared: shared.clone() }, FlushGuard { shared, thread: Some(thread) }))
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queue one line, ending in `\n` (or drop and count it when the queue is full).
    pub fn push(&self, line: &[u8]) {
        let mut queue = self.shared.queue.lock();
        if queue.closed || queue.lines >= self.shared.max_lines {
            drop(queue);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = queue.bytes.is_empty();
        queue.bytes.extend_from_slice(line);
        queue.lines += 1;
        let full = queue.bytes.len() >= BATCH_BYTES;
        drop(queue);
        if first || full {
            self.shared.ready.notify_one();
        }
    }
}

/// The writer thread: waits for a first line, gives the batch [`FLUSH_EVERY`] to fill (less if
/// it fills up), then writes everything queued in one go.
fn write_out(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = shared.queue.lock();
            while queue.bytes.is_empty() && !queue.closed {
                shared.ready.wait(&mut queue);
            }
            if !queue.closed && queue.bytes.len() < BATCH_BYTES {
                shared.ready.wait_for(&mut queue, FLUSH_EVERY);
            }
            if queue.bytes.is_empty() && queue.closed {
                let _ = sink.flush();
                return;
            }
            std::mem::swap(&mut batch, &mut queue.bytes);
            queue.lines = 0;
        }
        // A failing sink loses this batch; lines keep being taken so the queue never jams.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        if batch.capacity() > 4 * BATCH_BYTES {
            batch = Vec::new();
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for LogWriter {
    /// `tracing-subscriber` hands over each formatted event in one call: one line.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A sink that reports each write, and can be held still.
    struct Probe {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Probe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _held = self.gate.lock();
            let _ = self.writes.send(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn probe() -> (Probe, mpsc::Receiver<Vec<u8>>, Arc<Mutex<()>>) {
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        (Probe { writes: tx, gate: gate.clone() }, rx, gate)
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// Blocks until the writer thread has taken everything queued (and is writing it out).
    fn until_taken(writer: &LogWriter) {
        while writer.shared.queue.lock().lines != 0 {
            std::thread::yield_now();
        }
    }

    #[test]
    fn lines_queued_while_a_write_is_under_way_leave_together_in_order() {
        let (sink, writes, gate) = probe();
        let held = gate.lock();
        let (mut writer, _guard) = LogWriter::start(sink, 100, "log-test").expect("thread");
        writer.write_all(b"first\n").expect("queued");
        until_taken(&writer);
        for i in 0..5 {
            writer.write_all(format!("line {i}\n").as_bytes()).expect("queued");
        }
        drop(held);
        let first = writes.recv_timeout(WAIT).expect("the first write");
        let second = writes.recv_timeout(WAIT).expect("the second write");
        assert_eq!(String::from_utf8(first).expect("text"), "first\n");
        assert_eq!(String::from_utf8(second).expect("text"), "line 0\nline 1\nline 2\nline 3\nline 4\n");
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_past_the_limit_without_blocking() {
        let (sink, writes, gate) = probe();
        let held = gate.lock();
        let (mut writer, guard) = LogWriter::start(sink, 10, "log-test").expect("thread");
        writer.write_all(b"taken\n").expect("queued");
        until_taken(&writer);
        for i in 0..25 {
            writer.write_all(format!("{i}\n").as_bytes()).expect("never blocks");
        }
        assert_eq!(writer.dropped(), 15, "10 lines wait, 15 are dropped");
        drop(held);
        drop(guard);
        let written: Vec<u8> = writes.try_iter().flatten().collect();
        let text = String::from_utf8(written).expect("text");
        let expected: String = std::iter::once("taken\n".to_owned()).chain((0..10).map(|i| format!("{i}\n"))).collect();
        assert_eq!(text, expected, "the guard writes out what waited");
    }
}
