//! Everything the running server writes to stderr (request lines, store
//! failures, refused webhooks), written by a thread of its own through a
//! bounded queue.
//!
//! Writing to stderr blocks while whoever reads it is slow (a pipe holds
//! 64 KiB). On a worker thread that would stall every request it serves,
//! and during a store outage, when every failure logs a line, all of them.
//! So handlers only queue their line; when the queue is full the line is
//! dropped, and the next line written says how many were. At exit
//! [`flush`] waits, boundedly, for what is queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Lines waiting at most (a few MiB of text).
const QUEUE: usize = 16 * 1024;

enum Entry {
    Line(String),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

struct Log {
    /// `None` if the writer thread could not start: lines are then
    /// written directly, blocking, rather than lost.
    queue: Option<SyncSender<Entry>>,
    dropped: Arc<AtomicU64>,
}

fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let (queue, entries) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        let started = std::thread::Builder::new()
            .name("stderr-log".to_owned())
            .spawn(move || write_all(&entries, &counted));
        Log {
            queue: started.is_ok().then_some(queue),
            dropped,
        }
    })
}

fn write_all(entries: &Receiver<Entry>, dropped: &AtomicU64) {
    use std::io::Write;
    for entry in entries {
        match entry {
            Entry::Line(line) => {
                let mut stderr = std::io::stderr().lock();
                let missed = dropped.swap(0, Ordering::Relaxed);
                if missed > 0 {
                    let _ = writeln!(
                        stderr,
                        "widget_server: {missed} log lines dropped (stderr is slow)"
                    );
                }
                let _ = writeln!(stderr, "{line}");
            }
            Entry::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Queues `text` as one line for stderr; never waits.
pub(crate) fn line(text: String) {
    let log = log();
    let Some(queue) = &log.queue else {
        eprintln!("{text}");
        return;
    };
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue.try_send(Entry::Line(text))
    {
        log.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until the lines queued so far are written, or `within` passed.
pub(crate) fn flush(within: Duration) {
    let Some(queue) = &log().queue else {
        return;
    };
    let deadline = Instant::now() + within;
    let (done, written) = mpsc::sync_channel(1);
    let mut entry = Entry::Flush(done);
    loop {
        match queue.try_send(entry) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                entry = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}
