//! Operator endpoints: the runtime API and runstats, both "one request line, one
//! response, then close" over TCP as in the Go original.

pub mod api;
pub mod http;
pub mod prometheus;
pub mod runstats;
pub mod tenants;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// A request line longer than this is refused (it is a command, not data).
const MAX_REQUEST: u64 = 4096;
/// A client must send its request line within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one command line.
pub type Handler = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Serves `handler` on `listener` until shutdown.
pub async fn serve_lines(listener: TcpListener, handler: Handler, mut shutdown: Shutdown) {
    loop {
        let Some((stream, _)) = crate::net::accept(&listener, &mut shutdown).await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            if tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let answer = handler(line.trim());
            let _ = write.write_all(answer.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

/// `Not a command: <word>\n`, the answer to anything unknown.
pub fn not_a_command(request: &str) -> String {
    format!(
        "Not a command: {}\n",
        request.split_whitespace().next().unwrap_or("")
    )
}
