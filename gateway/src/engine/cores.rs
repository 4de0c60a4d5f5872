//! Codec work on the cores, off the async runtime.

/// Runs CPU-bound work (encoding, decoding) on the rayon pool, one thread per core, and waits
/// for it without blocking the async runtime. Keeping codec work off tokio's blocking pool
/// bounds the number of threads that hold chunk-sized buffers, and so the memory.
pub async fn on_cores<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.await.map_err(|_| anyhow::anyhow!("codec work was dropped"))
}
