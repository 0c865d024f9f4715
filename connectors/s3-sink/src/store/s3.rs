//! S3 and S3-compatible servers, through aws-sdk-s3.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use md5::{Digest, Md5};

use super::{ErrorKind, Head, Multipart, ObjectStore, Part, StoreError, Write, Written};

/// A bucket on S3 or an S3-compatible server.
#[derive(Debug, Clone)]
pub(crate) struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    pub(crate) fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self { client, bucket }
    }
}

/// Error codes that retrying cannot fix.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
    "AccountProblem",
    "InvalidPart",
    "InvalidPartOrder",
    "EntityTooSmall",
    "EntityTooLarge",
    "InvalidRequest",
    "InvalidArgument",
    "MethodNotAllowed",
    "NotImplemented",
];

fn classify<E>(op: &'static str, key: &str, e: &SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            if code == "NoSuchUpload" {
                ErrorKind::NoSuchUpload
            } else if PERMANENT_CODES.contains(&code) {
                ErrorKind::Permanent
            } else {
                // 5xx, SlowDown, RequestTimeout, InternalError, unknown codes: the server's state.
                ErrorKind::Transient
            }
        }
        SdkError::ConstructionFailure(_) => ErrorKind::Permanent,
        // Timeouts, refused or reset connections, unreadable answers.
        _ => ErrorKind::Transient,
    };
    StoreError {
        op,
        key: key.to_owned(),
        kind,
        message: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
    }
}

/// `412 Precondition Failed` (an `If-None-Match: *` write found an object).
fn precondition_failed<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            s.err().code() == Some("PreconditionFailed") || s.raw().status().as_u16() == 412
        }
        _ => false,
    }
}

impl ObjectStore for S3Store {
    fn ensure_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            if self
                .client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            self.client
                .create_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| classify("CreateBucket", &self.bucket, &e))?;
            Ok(())
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        metadata: &'a [(String, String)],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        async move {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body));
            for (k, v) in metadata {
                req = req.metadata(k, v);
            }
            if write == Write::IfAbsent {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => Ok(Written::Created),
                Err(e) if write == Write::IfAbsent && precondition_failed(&e) => {
                    Ok(Written::Exists)
                }
                Err(e) => Err(classify("PutObject", key, &e)),
            }
        }
        .boxed()
    }

    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        metadata: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Multipart, StoreError>> {
        async move {
            let mut req = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key);
            for (k, v) in metadata {
                req = req.metadata(k, v);
            }
            let out = req
                .send()
                .await
                .map_err(|e| classify("CreateMultipartUpload", key, &e))?;
            let id = out.upload_id().ok_or_else(|| StoreError {
                op: "CreateMultipartUpload",
                key: key.to_owned(),
                kind: ErrorKind::Transient,
                message: "the answer has no upload id".into(),
            })?;
            Ok(Multipart(id.to_owned()))
        }
        .boxed()
    }

    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Part, StoreError>> {
        async move {
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload.0)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify("UploadPart", key, &e))?;
            Ok(Part {
                number,
                etag: out.e_tag().map(str::to_owned),
            })
        }
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
        parts: &'a [Part],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        async move {
            let mut sorted: Vec<&Part> = parts.iter().collect();
            sorted.sort_by_key(|p| p.number);
            let done = CompletedMultipartUpload::builder()
                .set_parts(Some(
                    sorted
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
            let mut req = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload.0)
                .multipart_upload(done);
            if write == Write::IfAbsent {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => Ok(Written::Created),
                Err(e) if write == Write::IfAbsent && precondition_failed(&e) => Ok(Written::Exists),
                Err(e) => {
                    let mut err = classify("CompleteMultipartUpload", key, &e);
                    // s3s-fs answers AccessDenied for an upload id it no longer has.
                    if matches!(&e, SdkError::ServiceError(s) if s.err().code() == Some("AccessDenied")) {
                        err.kind = ErrorKind::NoSuchUpload;
                    }
                    Err(err)
                }
            }
        }
        .boxed()
    }

    fn abort<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload.0)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("AbortMultipartUpload", key, &e))
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        async move {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => {
                    let body = out.body.collect().await.map_err(|e| StoreError {
                        op: "GetObject",
                        key: key.to_owned(),
                        kind: ErrorKind::Transient,
                        message: e.to_string(),
                    })?;
                    Ok(Some(body.into_bytes()))
                }
                Err(SdkError::ServiceError(s))
                    if s.raw().status().as_u16() == 404 || s.err().code() == Some("NoSuchKey") =>
                {
                    Ok(None)
                }
                Err(e) => Err(classify("GetObject", key, &e)),
            }
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Head>, StoreError>> {
        async move {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => Ok(Some(Head {
                    etag: out.e_tag().map(str::to_owned),
                    metadata: out.metadata().cloned().unwrap_or_default(),
                })),
                Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
                Err(e) => Err(classify("HeadObject", key, &e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("DeleteObject", key, &e))
        }
        .boxed()
    }

    /// S3's: the MD5 of the parts' binary MD5s, a dash, the number of parts.
    fn multipart_etag(&self, parts: &[Part]) -> Option<String> {
        let mut sorted: Vec<&Part> = parts.iter().collect();
        sorted.sort_by_key(|p| p.number);
        let mut md5 = Md5::new();
        for p in &sorted {
            let hex_md5 = p.etag.as_deref()?.trim_matches('"');
            md5.update(hex::decode(hex_md5).ok()?);
        }
        Some(format!("{}-{}", hex::encode(md5.finalize()), sorted.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_s3s() {
        let store = S3Store::new(
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::new()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .region(aws_sdk_s3::config::Region::new("us-east-1"))
                    .build(),
            ),
            "b".into(),
        );
        // md5("a") and md5("b"), as UploadPart answers them (quoted hex).
        let parts = [
            Part {
                number: 2,
                etag: Some("\"92eb5ffee6ae2fec3ad71c777531578f\"".into()),
            },
            Part {
                number: 1,
                etag: Some("\"0cc175b9c0f1b6a831c399e269772661\"".into()),
            },
        ];
        let mut md5 = Md5::new();
        md5.update(hex::decode("0cc175b9c0f1b6a831c399e269772661").unwrap());
        md5.update(hex::decode("92eb5ffee6ae2fec3ad71c777531578f").unwrap());
        assert_eq!(
            store.multipart_etag(&parts),
            Some(format!("{}-2", hex::encode(md5.finalize())))
        );
        assert_eq!(
            store.multipart_etag(&[Part {
                number: 1,
                etag: None
            }]),
            None
        );
    }
}
