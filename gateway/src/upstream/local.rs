//! A local directory as upstream: each key is a file; writes go to a temporary file that is
//! renamed into place when finished, so a reader never sees half an object.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{BlobWriter, Condition, Listed, Missing, Tagged, Upstream};
use crate::buffers::Buffers;

pub struct LocalUpstream {
    root: PathBuf,
    /// What reads are read into, handed back once their bytes are dropped.
    buffers: Arc<Buffers>,
}

impl LocalUpstream {
    pub fn new(root: &Path) -> anyhow::Result<LocalUpstream> {
        std::fs::create_dir_all(root.join("tmp")).with_context(|| format!("creating {}", root.display()))?;
        // A read is mostly a frame, which one decode per core at a time takes.
        Ok(LocalUpstream { root: root.to_owned(), buffers: Buffers::one_idle_per_core() })
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

    /// Read on a blocking thread straight into a buffer that is not zeroed first (tokio's file
    /// reads go through a buffer of their own, a copy and a thread hop per 2 MiB), an idle one
    /// when one fits. The buffer is taken here, on the calling thread: made on the blocking
    /// thread, it would belong to that thread's allocator heap, which keeps what other threads
    /// free until it runs again (with eight clients at once the gateway grew to 736 MiB so).
    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let wanted = usize::try_from(range.end.saturating_sub(range.start))?;
        let mut buffer = self.buffers.take(wanted);
        buffer.clear();
        let buffers = self.buffers.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Bytes> {
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(Missing(key).into()),
                Err(error) => return Err(anyhow::Error::new(error).context(format!("opening {}", path.display()))),
            };
            file.seek(SeekFrom::Start(range.start))?;
            file.take(wanted as u64)
                .read_to_end(&mut buffer)
                .with_context(|| format!("reading {wanted} bytes at {} of {}", range.start, path.display()))?;
            anyhow::ensure!(buffer.len() == wanted, "{} holds {} bytes at {}, not {wanted}", path.display(), buffer.len(), range.start);
            Ok(buffers.hold(buffer))
        })
        .await?
    }

    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Tagged { tag: tensorgate_codec::ContentHash::of(&bytes).to_hex(), bytes: Bytes::from(bytes) })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context(format!("reading {}", path.display()))),
        }
    }

    /// Checks and writes under an exclusive lock on a file in the root, so that gateway
    /// processes sharing the directory see one conditional write at a time.
    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>> {
        let target = self.path(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<String>> {
            let _lock = conditional_lock(&root)?;
            let current = current_tag(&target)?;
            let holds = match &condition {
                Condition::Absent => current.is_none(),
                Condition::Matches(tag) => current.as_ref() == Some(tag),
            };
            if !holds {
                return Ok(None);
            }
            // Durable before it is visible, as every write here is.
            let temporary = root.join("tmp").join(uuid::Uuid::new_v4().to_string());
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&temporary, &target)?;
            Ok(Some(tensorgate_codec::ContentHash::of(&bytes).to_hex()))
        })
        .await?
    }

    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool> {
        let target = self.path(key)?;
        let (root, tag) = (self.root.clone(), tag.to_owned());
        tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let _lock = conditional_lock(&root)?;
            if current_tag(&target)?.as_deref() != Some(tag.as_str()) {
                return Ok(false);
            }
            std::fs::remove_file(&target)?;
            Ok(true)
        })
        .await?
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        let folder = prefix.rfind('/').map_or("", |end| &prefix[..end]);
        let start = if folder.is_empty() { self.root.clone() } else { self.path(folder)? };
        let (root, prefix) = (self.root.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Listed>> {
            let mut listed = Vec::new();
            let mut folders = vec![start];
            while let Some(folder) = folders.pop() {
                let entries = match std::fs::read_dir(&folder) {
                    Ok(entries) => entries,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    let key = path.strip_prefix(&root)?.to_string_lossy().replace('\\', "/");
                    let metadata = entry.metadata()?;
                    if metadata.is_dir() {
                        if key != "tmp" {
                            folders.push(path);
                        }
                    } else if key.starts_with(&prefix) {
                        let modified = metadata.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        let tag = format!("{}-{}", modified.as_nanos(), metadata.len());
                        listed.push(Listed { key, size: metadata.len(), modified_ms: modified.as_millis() as i64, tag });
                    }
                }
            }
            listed.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(listed)
        })
        .await?
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

/// The exclusive lock under which conditional writes and deletes check and change, so that
/// gateway processes sharing the directory see one at a time.
fn conditional_lock(root: &Path) -> anyhow::Result<std::fs::File> {
    let lock = std::fs::File::create(root.join("tmp").join("conditional-writes.lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// The tag of the object at `path` (a hash of its bytes), or `None` if there is none.
fn current_tag(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(tensorgate_codec::ContentHash::of(&bytes).to_hex())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's buffer comes back for the next read once its bytes are dropped, and the next
    /// read's bytes are the file's, not what the buffer held.
    #[tokio::test]
    async fn reads_reuse_the_buffers_of_dropped_reads() {
        let root = tempfile::tempdir().unwrap();
        let upstream = LocalUpstream::new(root.path()).unwrap();
        let first: Vec<u8> = (0..1u32 << 20).map(|i| i as u8).collect();
        let second = vec![9u8; (1 << 20) - 100];
        std::fs::create_dir_all(root.path().join("packs")).unwrap();
        std::fs::write(root.path().join("packs/first"), &first).unwrap();
        std::fs::write(root.path().join("packs/second"), &second).unwrap();

        let read = upstream.read("packs/first", 0..first.len() as u64).await.unwrap();
        assert_eq!(read, first);
        let at = read.as_ptr();
        drop(read);
        let again = upstream.read("packs/second", 0..second.len() as u64).await.unwrap();
        assert_eq!(again, second);
        assert_eq!(again.as_ptr(), at, "the first read's buffer was taken again");
        let part = upstream.read("packs/first", 10..20).await.unwrap();
        assert_eq!(part, first[10..20]);
    }
}
