//! Writes the API request log (see `domain::request_log`) off the request path: handlers
//! hand records to a bounded queue and one task writes them in batches. A full queue drops
//! the record and counts it rather than slow the API down; a crash loses at most the
//! batch in flight (these are technical logs, not records a 2xx acknowledges).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::domain::request_log::RequestRecord;
use crate::domain::store::Store;

/// Records waiting to be written, at most (a quarter second of a busy gateway's requests).
const QUEUE: usize = 16_384;
/// Records written in one store call, at most.
const BATCH: usize = 4096;
/// How long the writer lets records gather before it writes a batch that is not full:
/// one store write per this interval rather than one per wake-up.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

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
                if batch.len() < BATCH {
                    tokio::time::sleep(GATHER).await;
                    while batch.len() < BATCH
                        && let Ok(record) = rx.try_recv()
                    {
                        batch.push(record);
                    }
                }
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
