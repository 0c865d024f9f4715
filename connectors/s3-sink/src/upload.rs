//! Where finished files go: S3 (aws-sdk-s3, multipart for big files) or a local directory
//! (`file://`, same layout, written to a temporary name and renamed). Every operation is retried
//! with backoff until it succeeds: an upload is never dropped, the sink stalls instead.

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use connector_common::retry::RetryPolicy;
use tracing::warn;

/// Errors of one attempt; the caller retries them all (an S3 outage stalls the sink).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    #[error("S3 {op} `{key}`: {source}")]
    S3 {
        op: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("S3 {op} `{key}`: the answer has no {what}")]
    S3Answer {
        op: &'static str,
        key: String,
        what: &'static str,
    },
    #[error("writing `{path}`: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The destination of the files.
#[derive(Debug, Clone)]
pub(crate) enum Uploader {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
    File {
        root: PathBuf,
    },
}

/// A multipart upload in progress (S3 upload id, or the local directory holding the parts).
#[derive(Debug, Clone)]
pub(crate) enum Multipart {
    S3 { upload_id: String },
    File { dir: PathBuf },
}

/// A part that was uploaded.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) number: i32,
    pub(crate) etag: Option<String>,
}

impl Uploader {
    /// Creates the bucket if it does not exist (local runs and tests).
    pub(crate) async fn ensure_bucket(&self) -> Result<(), UploadError> {
        match self {
            Uploader::S3 { client, bucket } => {
                if client.head_bucket().bucket(bucket).send().await.is_ok() {
                    return Ok(());
                }
                client
                    .create_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map_err(|e| s3_err("CreateBucket", bucket, e))?;
                Ok(())
            }
            Uploader::File { root } => {
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|source| UploadError::File {
                        path: root.clone(),
                        source,
                    })
            }
        }
    }

    /// One object in one request.
    pub(crate) async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), UploadError> {
        match self {
            Uploader::S3 { client, bucket } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| s3_err("PutObject", key, e))?;
                Ok(())
            }
            Uploader::File { root } => {
                let root = root.clone();
                let key = key.to_owned();
                blocking(move || write_atomically(&root, &key, &[&body])).await
            }
        }
    }

    pub(crate) async fn create_multipart(&self, key: &str) -> Result<Multipart, UploadError> {
        match self {
            Uploader::S3 { client, bucket } => {
                let out = client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_err("CreateMultipartUpload", key, e))?;
                let upload_id = out.upload_id().ok_or_else(|| UploadError::S3Answer {
                    op: "CreateMultipartUpload",
                    key: key.to_owned(),
                    what: "upload id",
                })?;
                Ok(Multipart::S3 {
                    upload_id: upload_id.to_owned(),
                })
            }
            Uploader::File { root } => {
                let dir = root
                    .join(".parts")
                    .join(format!("{:032x}", rand::random::<u128>()));
                let d = dir.clone();
                blocking(move || {
                    std::fs::create_dir_all(&d).map_err(|source| UploadError::File {
                        path: d.clone(),
                        source,
                    })
                })
                .await?;
                Ok(Multipart::File { dir })
            }
        }
    }

    pub(crate) async fn upload_part(
        &self,
        key: &str,
        mp: &Multipart,
        number: i32,
        body: bytes::Bytes,
    ) -> Result<Part, UploadError> {
        match (self, mp) {
            (Uploader::S3 { client, bucket }, Multipart::S3 { upload_id }) => {
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| s3_err("UploadPart", key, e))?;
                Ok(Part {
                    number,
                    etag: out.e_tag().map(str::to_owned),
                })
            }
            (_, Multipart::File { dir }) => {
                let path = dir.join(format!("{number:06}"));
                blocking(move || {
                    std::fs::write(&path, &body).map_err(|source| UploadError::File {
                        path: path.clone(),
                        source,
                    })
                })
                .await?;
                Ok(Part { number, etag: None })
            }
            (Uploader::File { .. }, Multipart::S3 { .. }) => {
                unreachable!("an S3 upload id with a file output")
            }
        }
    }

    pub(crate) async fn complete(
        &self,
        key: &str,
        mp: &Multipart,
        mut parts: Vec<Part>,
    ) -> Result<(), UploadError> {
        parts.sort_by_key(|p| p.number);
        match (self, mp) {
            (Uploader::S3 { client, bucket }, Multipart::S3 { upload_id }) => {
                let done = CompletedMultipartUpload::builder()
                    .set_parts(Some(
                        parts
                            .iter()
                            .map(|p| {
                                CompletedPart::builder()
                                    .part_number(p.number)
                                    .set_e_tag(p.etag.clone())
                                    .build()
                            })
                            .collect(),
                    ))
                    .build();
                client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(done)
                    .send()
                    .await
                    .map_err(|e| s3_err("CompleteMultipartUpload", key, e))?;
                Ok(())
            }
            (Uploader::File { root }, Multipart::File { dir }) => {
                let root = root.clone();
                let key = key.to_owned();
                let dir = dir.clone();
                blocking(move || {
                    let mut bodies = Vec::new();
                    for p in &parts {
                        let path = dir.join(format!("{:06}", p.number));
                        bodies.push(
                            std::fs::read(&path)
                                .map_err(|source| UploadError::File { path, source })?,
                        );
                    }
                    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
                    write_atomically(&root, &key, &refs)?;
                    let _ = std::fs::remove_dir_all(&dir);
                    Ok(())
                })
                .await
            }
            _ => unreachable!("multipart kind matches the uploader"),
        }
    }

    /// Best effort: an abandoned upload is invisible anyway (a bucket lifecycle rule cleans up).
    pub(crate) async fn abort(&self, key: &str, mp: &Multipart) {
        let res = match (self, mp) {
            (Uploader::S3 { client, bucket }, Multipart::S3 { upload_id }) => client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| s3_err("AbortMultipartUpload", key, e)),
            (_, Multipart::File { dir }) => {
                let _ = tokio::fs::remove_dir_all(dir).await;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(error) = res {
            warn!(%error, key, "Could not abort a multipart upload (left for the bucket's lifecycle rule).");
        }
    }
}

fn s3_err<E>(op: &'static str, key: &str, e: aws_sdk_s3::error::SdkError<E>) -> UploadError
where
    E: std::error::Error + Send + Sync + 'static,
{
    UploadError::S3 {
        op,
        key: key.to_owned(),
        source: aws_sdk_s3::error::DisplayErrorContext(e).to_string().into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Writes `root/key` from `bodies`: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A reader sees the old file or the new one, never a part.
fn write_atomically(root: &Path, key: &str, bodies: &[&[u8]]) -> Result<(), UploadError> {
    use std::io::Write;
    let path = root.join(key);
    let dir = path.parent().unwrap_or(root).to_path_buf();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UploadError::File { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".{:032x}.tmp", rand::random::<u128>()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    for b in bodies {
        f.write_all(b).map_err(io(&tmp))?;
    }
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(())
}

/// Runs `op` until it succeeds, backing off as `policy` says (its `max-attempts` is ignored: an
/// upload is never given up); counts and logs failures.
pub(crate) async fn retry_forever<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    key: &str,
    mut op: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, UploadError>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!(
                        what,
                        key,
                        attempts = attempt + 1,
                        "Upload operation succeeded after retries."
                    );
                }
                return v;
            }
            Err(error) => {
                metrics::counter!("component_errors_total", "error_type" => "upload_failed", "stage" => "sending")
                    .increment(1);
                if attempt == 0 || (attempt + 1).is_power_of_two() {
                    warn!(%error, what, key, attempt = attempt + 1, "Upload operation failed, retrying with backoff (the sink stalls until it succeeds).");
                }
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_output_put_and_multipart() {
        let dir = std::env::temp_dir().join(format!("s3-sink-test-{:x}", rand::random::<u64>()));
        let up = Uploader::File { root: dir.clone() };
        up.ensure_bucket().await.unwrap();
        up.put("a/b/c.avro", bytes::Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("a/b/c.avro")).unwrap(), b"hello");
        let mp = up.create_multipart("x/y.avro").await.unwrap();
        let p2 = up
            .upload_part("x/y.avro", &mp, 2, bytes::Bytes::from_static(b"world"))
            .await
            .unwrap();
        let p1 = up
            .upload_part("x/y.avro", &mp, 1, bytes::Bytes::from_static(b"hello "))
            .await
            .unwrap();
        up.complete("x/y.avro", &mp, vec![p2, p1]).await.unwrap();
        assert_eq!(std::fs::read(dir.join("x/y.avro")).unwrap(), b"hello world");
        // No temporary file is left next to the objects.
        let names: Vec<_> = std::fs::read_dir(dir.join("x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("y.avro")]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
