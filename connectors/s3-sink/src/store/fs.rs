//! A local directory (`file://` endpoints): the same layout as S3 (`root/key`). Every object is
//! written to a temporary file in its directory, synced, then moved in place (a reader sees the
//! old file or the new one, never a part); [`Write::IfAbsent`] links the temporary file to the
//! key, which fails if the key exists. Multipart parts are files in a directory of their own.
//! User metadata is not kept (the files carry their offset range in their own header), so a
//! HEAD answers none and the caller overwrites an existing object.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Head, Multipart, ObjectStore, Part, StoreError, Write, Written};

/// A directory standing for a bucket.
#[derive(Debug, Clone)]
pub(crate) struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn parts_dir(&self, upload: &Multipart) -> PathBuf {
        self.root.join(".parts").join(&upload.0)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Writes `root/key` from `bodies` (see the module docs).
fn write_atomically(
    root: &Path,
    key: &str,
    bodies: &[&[u8]],
    write: Write,
) -> Result<Written, StoreError> {
    let op = "write";
    let path = root.join(key);
    let dir = path.parent().unwrap_or(root).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(op, &dir, &e))?;
    let tmp = dir.join(format!(".{:032x}.tmp", rand::random::<u128>()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(op, &tmp, &e))?;
        for b in bodies {
            f.write_all(b).map_err(|e| StoreError::io(op, &tmp, &e))?;
        }
        f.sync_all().map_err(|e| StoreError::io(op, &tmp, &e))?;
        drop(f);
        let written = match write {
            Write::Overwrite => {
                std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(op, &path, &e))?;
                Written::Created
            }
            Write::IfAbsent => match std::fs::hard_link(&tmp, &path) {
                Ok(()) => Written::Created,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Written::Exists,
                Err(e) => return Err(StoreError::io(op, &path, &e)),
            },
        };
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(op, &dir, &e))?;
        Ok(written)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

impl ObjectStore for FsStore {
    fn ensure_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| StoreError::io("mkdir", &root, &e))
        })
        .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        _metadata: &'a [(String, String)],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        let (root, key) = (self.root.clone(), key.to_owned());
        blocking(move || write_atomically(&root, &key, &[&body], write)).boxed()
    }

    fn create_multipart<'a>(
        &'a self,
        _key: &'a str,
        _metadata: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Multipart, StoreError>> {
        let upload = Multipart(format!("{:032x}", rand::random::<u128>()));
        let dir = self.parts_dir(&upload);
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("mkdir", &dir, &e))?;
            Ok(upload)
        })
        .boxed()
    }

    fn upload_part<'a>(
        &'a self,
        _key: &'a str,
        upload: &'a Multipart,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Part, StoreError>> {
        let path = self.parts_dir(upload).join(format!("{number:06}"));
        blocking(move || {
            std::fs::write(&path, &body).map_err(|e| StoreError::io("write part", &path, &e))?;
            Ok(Part { number, etag: None })
        })
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
        parts: &'a [Part],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        let (root, key, dir) = (self.root.clone(), key.to_owned(), self.parts_dir(upload));
        let mut numbers: Vec<i32> = parts.iter().map(|p| p.number).collect();
        numbers.sort_unstable();
        blocking(move || {
            let mut bodies = Vec::new();
            for n in numbers {
                let path = dir.join(format!("{n:06}"));
                bodies.push(
                    std::fs::read(&path).map_err(|e| StoreError::io("read part", &path, &e))?,
                );
            }
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let written = write_atomically(&root, &key, &refs, write)?;
            if written == Written::Created {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(written)
        })
        .boxed()
    }

    fn abort<'a>(
        &'a self,
        _key: &'a str,
        upload: &'a Multipart,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let dir = self.parts_dir(upload);
        async move {
            let _ = tokio::fs::remove_dir_all(dir).await;
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        let path = self.root.join(key);
        async move {
            match tokio::fs::read(&path).await {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io("read", &path, &e)),
            }
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Head>, StoreError>> {
        let path = self.root.join(key);
        async move {
            match tokio::fs::metadata(&path).await {
                Ok(_) => Ok(Some(Head::default())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io("stat", &path, &e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let path = self.root.join(key);
        async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io("delete", &path, &e)),
            }
        }
        .boxed()
    }

    fn multipart_etag(&self, _parts: &[Part]) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_multipart_and_conditional_create() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().join("bucket"));
        store.ensure_bucket().await.unwrap();
        let put = |key: &'static str, body: &'static [u8], w| {
            let store = store.clone();
            async move {
                store
                    .put(key, Bytes::from_static(body), &[], w)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            put("a/b/c.avro", b"hello", Write::IfAbsent).await,
            Written::Created
        );
        assert_eq!(
            put("a/b/c.avro", b"other", Write::IfAbsent).await,
            Written::Exists
        );
        assert_eq!(
            std::fs::read(dir.path().join("bucket/a/b/c.avro")).unwrap(),
            b"hello"
        );
        assert_eq!(
            put("a/b/c.avro", b"other", Write::Overwrite).await,
            Written::Created
        );
        assert_eq!(
            std::fs::read(dir.path().join("bucket/a/b/c.avro")).unwrap(),
            b"other"
        );

        let mp = store.create_multipart("x/y.avro", &[]).await.unwrap();
        let p2 = store
            .upload_part("x/y.avro", &mp, 2, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let p1 = store
            .upload_part("x/y.avro", &mp, 1, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        let w = store
            .complete("x/y.avro", &mp, &[p2, p1], Write::IfAbsent)
            .await
            .unwrap();
        assert_eq!(w, Written::Created);
        assert_eq!(
            std::fs::read(dir.path().join("bucket/x/y.avro")).unwrap(),
            b"hello world"
        );
        // No temporary file is left next to the objects.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("bucket/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("y.avro")]);
        assert!(store.head("x/y.avro").await.unwrap().is_some());
        store.delete("x/y.avro").await.unwrap();
        assert!(store.head("x/y.avro").await.unwrap().is_none());
        store.delete("x/y.avro").await.unwrap();
    }
}
