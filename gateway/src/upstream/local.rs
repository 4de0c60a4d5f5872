//! A local directory as upstream: each key is a file; writes go to a temporary file that is
//! renamed into place when finished, so a reader never sees half an object.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{BlobWriter, Upstream};

pub struct LocalUpstream {
    root: PathBuf,
}

impl LocalUpstream {
    pub fn new(root: &Path) -> anyhow::Result<LocalUpstream> {
        std::fs::create_dir_all(root.join("tmp")).with_context(|| format!("creating {}", root.display()))?;
        Ok(LocalUpstream { root: root.to_owned() })
    }

    /// Keys are gateway-made (`packs/<id>`): refuse anything that could leave the root.
    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        let safe = !key.is_empty()
            && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
            && !key.contains('\\');
        anyhow::ensure!(safe, "unsafe upstream key {key:?}");
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl Upstream for LocalUpstream {
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>> {
        let target = self.path(key)?;
        let temporary = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&temporary)
            .await
            .with_context(|| format!("creating {}", temporary.display()))?;
        Ok(Box::new(LocalWriter { file, temporary, target, written: 0 }))
    }

    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(range.start)).await?;
        let wanted = usize::try_from(range.end.saturating_sub(range.start))?;
        let mut buffer = vec![0u8; wanted];
        file.read_exact(&mut buffer)
            .await
            .with_context(|| format!("reading {wanted} bytes at {} of {}", range.start, path.display()))?;
        Ok(Bytes::from(buffer))
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

struct LocalWriter {
    file: tokio::fs::File,
    temporary: PathBuf,
    target: PathBuf,
    written: u64,
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        self.file.write_all(&bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> anyhow::Result<u64> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        if let Some(parent) = self.target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&self.temporary, &self.target)
            .await
            .with_context(|| format!("renaming into {}", self.target.display()))?;
        Ok(self.written)
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.temporary).await;
    }
}
