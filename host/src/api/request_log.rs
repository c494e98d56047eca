//! Writes the API request log (see `domain::request_log`) off the request path: handlers
//! hand records to a bounded queue and one task writes them in batches. A full queue drops
//! the record and counts it rather than slow the API down; a crash loses at most the
//! batch in flight (these are technical logs, not records a 2xx acknowledges).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::domain::request_log::RequestRecord;
use crate::domain::store::Store;

/// Records waiting to be written, at most.
const QUEUE: usize = 8192;
/// Records written in one store call, at most.
const BATCH: usize = 512;

/// The request log's writer.
pub struct RequestLog {
    tx: mpsc::Sender<RequestRecord>,
    dropped: AtomicU64,
}

impl RequestLog {
    /// Start the writer task over `store`.
    pub fn start(store: Arc<dyn Store>) -> Arc<RequestLog> {
        let (tx, mut rx) = mpsc::channel::<RequestRecord>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = store.append_requests(&batch).await {
                    tracing::warn!(error = %e, lost = batch.len(), "request log write failed");
                }
                batch.clear();
            }
        });
        Arc::new(RequestLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue one record; a full queue drops it (counted).
    pub fn record(&self, record: RequestRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
