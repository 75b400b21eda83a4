//! The per-thread line buffers and the thread that writes them to stdout.

use super::*;

/// A buffer reaching this size is written out at once.
pub(super) const FLUSH_SIZE: usize = 64 * 1024;
/// How often the flusher writes every buffer out (Envoy's default
/// `file_flush_interval`).
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Full buffers waiting for the flusher before a request's thread
/// writes its own (1 MiB).
const QUEUE: usize = 16;

/// One thread's lines not yet written. Locked by its thread for each
/// line and by the flusher once a second: never contended on the
/// request path.
type Buffer = Arc<Mutex<Vec<u8>>>;

/// What the flusher thread is sent.
enum Message {
    /// A full buffer to write.
    Chunk(Vec<u8>),
    /// Write everything now, then answer.
    Flush(SyncSender<()>),
}

/// The buffers of every thread that logged, and the flusher's queue.
struct Sink {
    buffers: Mutex<Vec<Buffer>>,
    /// `None` if the flusher thread could not start: lines are then
    /// written as they come.
    queue: Option<SyncSender<Message>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    static PENDING: Buffer = register();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let (queue, chunks) = mpsc::sync_channel(QUEUE);
        let started =
            std::thread::Builder::new().name("meshd-access-log".into()).spawn(move || flusher(chunks)).is_ok();
        Sink { buffers: Mutex::new(Vec::new()), queue: started.then_some(queue) }
    })
}

fn register() -> Buffer {
    let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_SIZE)));
    lock(&sink().buffers).push(buffer.clone());
    buffer
}

/// Appends a line, formatted by `format`, to this thread's buffer.
pub(super) fn append(format: impl FnOnce(&mut Vec<u8>)) {
    let mut format = Some(format);
    let buffered = PENDING.try_with(|pending| {
        let mut buffer = lock(pending);
        if let Some(format) = format.take() {
            format(&mut buffer);
        }
        if buffer.len() >= FLUSH_SIZE {
            let full = std::mem::replace(&mut *buffer, Vec::with_capacity(FLUSH_SIZE));
            // Handed off under the lock, so that the flusher, which
            // drains the queue before it takes a buffer, keeps this
            // thread's lines in order.
            hand_off(full);
        }
    });
    // The thread is exiting (its buffer is gone): write the line alone.
    if buffered.is_err() {
        if let Some(format) = format.take() {
            let mut line = Vec::new();
            format(&mut line);
            write_out(&line);
        }
    }
}

fn hand_off(chunk: Vec<u8>) {
    match &sink().queue {
        Some(queue) => match queue.try_send(Message::Chunk(chunk)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Chunk(chunk)) | TrySendError::Disconnected(Message::Chunk(chunk))) => {
                write_out(&chunk)
            }
            Err(_) => {}
        },
        None => write_out(&chunk),
    }
}

/// Writes every buffered line to stdout and returns once done (at
/// most about a second): for shutdown.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    match &sink.queue {
        Some(queue) => {
            let (done, answer) = mpsc::sync_channel(1);
            if queue.send(Message::Flush(done)).is_ok() {
                let _ = answer.recv_timeout(FLUSH_INTERVAL);
            }
        }
        None => {
            for buffer in lock(&sink.buffers).iter() {
                let taken = std::mem::take(&mut *lock(buffer));
                write_out(&taken);
            }
        }
    }
}

/// The flusher thread: writes full buffers as they come, and every
/// buffer each [`FLUSH_INTERVAL`] or when asked.
fn flusher(queue: Receiver<Message>) {
    let mut next = Instant::now() + FLUSH_INTERVAL;
    let mut spare = Vec::with_capacity(FLUSH_SIZE);
    let mut asked = Vec::new();
    loop {
        match queue.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Message::Chunk(chunk)) => write_out(&chunk),
            Ok(Message::Flush(done)) => asked.push(done),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !asked.is_empty() || Instant::now() >= next {
            flush_buffers(&queue, &mut spare, &mut asked);
            next = Instant::now() + FLUSH_INTERVAL;
        }
        for done in asked.drain(..) {
            let _ = done.try_send(());
        }
    }
}

/// Writes out every thread's buffer, each after the full ones its
/// thread queued before it (so a thread's lines stay in order).
fn flush_buffers(queue: &Receiver<Message>, spare: &mut Vec<u8>, asked: &mut Vec<SyncSender<()>>) {
    let Some(sink) = SINK.get() else { return };
    let buffers = lock(&sink.buffers).clone();
    for buffer in &buffers {
        let mut queued = Vec::new();
        {
            let mut pending = lock(buffer);
            while let Ok(message) = queue.try_recv() {
                match message {
                    Message::Chunk(chunk) => queued.push(chunk),
                    Message::Flush(done) => asked.push(done),
                }
            }
            std::mem::swap(&mut *pending, spare);
        }
        for chunk in &queued {
            write_out(chunk);
        }
        write_out(spare);
        spare.clear();
    }
    drop(buffers);
    // Buffers of threads that have exited (only the list holds them),
    // now empty.
    lock(&sink.buffers).retain(|buffer| Arc::strong_count(buffer) > 1 || !lock(buffer).is_empty());
}

/// One write to stdout; errors (a closed pipe) are ignored, as a
/// proxy must not stop for its log.
fn write_out(bytes: &[u8]) {
    if !bytes.is_empty() {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    }
}
