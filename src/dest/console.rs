//! `-console-out`: lines go to standard output instead of the network.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Chunk, DestShared};
use crate::shutdown::Shutdown;

/// Writes every chunk to stdout until shutdown, then drains what is queued.
pub async fn run(
    dest: Arc<DestShared>,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    mut shutdown: Shutdown,
) {
    let mut out = tokio::io::stdout();
    dest.stats
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = shutdown.recv() => {
                while let Ok(chunk) = rx.try_recv() {
                    if out.write_all(&chunk.data).await.is_err() {
                        break;
                    }
                    dest.written(chunk.points);
                }
                let _ = out.flush().await;
                return;
            }
        };
        let Some(chunk) = chunk else { return };
        if let Err(e) = out.write_all(&chunk.data).await {
            tracing::error!("console output failed: {e}");
        }
        let _ = out.flush().await;
        dest.written(chunk.points);
    }
}
