//! One shutdown signal for SIGINT and SIGTERM. The first asks for a graceful drain (finish
//! in-flight work, final commit); a second one exits the process at once (status 130).

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

/// A cloneable handle: [`Shutdown::wait`] completes once shutdown is requested.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::manual()
    }
}

impl Shutdown {
    /// A handle that only [`Shutdown::trigger`] fires (tests, `--max-records`).
    pub fn manual() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Requests shutdown.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown is requested (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // The sender lives in `self`, so `wait_for` only ends when the value is true.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Installs the SIGINT/SIGTERM handler (needs a tokio runtime) and returns the handle.
pub fn shutdown_signal() -> Shutdown {
    let s = Shutdown::manual();
    let handle = s.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("Shutdown requested: finishing in-flight work (signal again to exit at once).");
        handle.trigger();
        wait_for_signal().await;
        warn!("Second signal: exiting now without draining.");
        std::process::exit(130);
    });
    s
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_trigger_wakes_waiters() {
        let s = Shutdown::manual();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait().await });
        assert!(!s.is_triggered());
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_triggered());
        s.wait().await;
    }
}
