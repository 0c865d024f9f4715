//! A lean HTTP/1.1 client for a plain-`http://` forms API: a fixed pool of keep-alive
//! connections driven by hyper's connection API, one request per connection at a time.
//!
//! Why not reqwest here: with many requests in flight, hyper-util's pool (under reqwest) races
//! a new connection against every checkout that finds no idle one, then closes what exceeds the
//! idle limit: on the cold-cache bench (1,024 in flight) it opened thousands of connections per
//! 100k requests (thousands of sockets in TIME-WAIT), and reqwest's per-request layers (URL
//! re-parsing, redirect policy, header merging, boxed tower futures, a task per request to
//! return its connection) cost more than the request itself. Here a request takes a slot (at
//! most `max_connections` in flight), an idle connection (else opens one, at most
//! [`MAX_CONNECTING`] at once), sends, reads the body, and puts the connection back: the number
//! of connections never exceeds the number of slots and none is closed while the server keeps it.
//!
//! `https://` APIs go through reqwest (see `enrich.rs`).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections being opened at once (the rest of the requests wait for one, or for a pooled
/// connection to come free). Far below a listen backlog (Linux's default `somaxconn` 4096,
/// tokio's 1024) yet enough to open hundreds of local connections in milliseconds: a window
/// of misses opening them all at once overflowed the API's accept queue (1 s SYN retransmits).
pub(crate) const MAX_CONNECTING: usize = 32;

/// What the server answered.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) status: u16,
    /// The `Date` header, if any (unparsed).
    pub(crate) date: Option<HeaderValue>,
    /// The `Content-Type` header, if any.
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) body: Body,
}

/// An answer's body, read up to a cap.
#[derive(Debug)]
pub(crate) enum Body {
    /// All of it.
    Whole(Bytes),
    /// Longer than the cap: abandoned (its connection dropped) at the cap, or before reading
    /// anything when its `Content-Length` says so.
    TooLarge(TooLarge),
}

/// How much of a body over the cap was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// Its `Content-Length`, if it had one.
    pub(crate) declared: Option<u64>,
    /// Bytes read when it was abandoned (at most the cap plus one chunk).
    pub(crate) read: u64,
}

/// A body read chunk by chunk, refused as soon as it passes `cap` bytes: never more than the cap
/// plus one chunk in memory.
#[derive(Debug)]
pub(crate) struct Capped {
    cap: u64,
    declared: Option<u64>,
    parts: Vec<Bytes>,
    len: u64,
}

impl Capped {
    /// A reader for a body of `declared` bytes (`Content-Length`, if any): refused at once if
    /// that is over `cap`.
    pub(crate) fn new(cap: u64, declared: Option<u64>) -> Result<Self, TooLarge> {
        if declared.is_some_and(|d| d > cap) {
            return Err(TooLarge { declared, read: 0 });
        }
        Ok(Self {
            cap,
            declared,
            parts: Vec::new(),
            len: 0,
        })
    }

    /// Takes the next chunk; `Err` once the body is over the cap (the chunk is dropped).
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<(), TooLarge> {
        self.len += chunk.len() as u64;
        if self.len > self.cap {
            self.parts.clear();
            return Err(TooLarge {
                declared: self.declared,
                read: self.len,
            });
        }
        if !chunk.is_empty() {
            self.parts.push(chunk);
        }
        Ok(())
    }

    /// The whole body (a single chunk as it is, without a copy).
    pub(crate) fn finish(mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().expect("one part"),
            _ => {
                let mut all = Vec::with_capacity(self.len as usize);
                for p in &self.parts {
                    all.extend_from_slice(p);
                }
                Bytes::from(all)
            }
        }
    }
}

/// Why a request got no answer (all are retried by the caller).
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be opened.
    Connect(String),
    /// The connection failed during the exchange.
    Other(String),
}

impl HttpError {
    /// Label of `forms_api_responses_total{status}`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            HttpError::Timeout => "timeout",
            HttpError::Connect(_) => "connect_error",
            HttpError::Other(_) => "error",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => f.write_str("timeout: no answer in time"),
            HttpError::Connect(d) => write!(f, "connect_error: {d}"),
            HttpError::Other(d) => write!(f, "error: {d}"),
        }
    }
}

/// The pool of one `http://host:port`.
pub(crate) struct Http1Pool {
    /// `host:port` to connect to.
    address: String,
    /// `Host` header.
    host: HeaderValue,
    /// `Authorization: Bearer …`, if any.
    authorization: Option<HeaderValue>,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    /// Requests in flight (each holds a connection): bounds the connections too.
    slots: Semaphore,
    connecting: Semaphore,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The answer, and whether its connection may serve another request.
type Exchange = Result<(Answered, bool), hyper::Error>;

impl Http1Pool {
    /// A pool for the `http://` URL `base` (only its host and port are used), at most
    /// `max_connections` connections, sending `token` as a bearer token.
    pub(crate) fn new(
        base: &url::Url,
        max_connections: usize,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(base.scheme() == "http", "not an http:// URL: {base}");
        let host = base
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("no host in {base}"))?;
        let port = base.port_or_known_default().unwrap_or(80);
        let host_header = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::try_from(format!("Bearer {t}"))?;
                v.set_sensitive(true);
                Ok::<_, anyhow::Error>(v)
            })
            .transpose()?;
        Ok(Self {
            address: format!("{host}:{port}"),
            host: HeaderValue::try_from(host_header)?,
            authorization,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(max_connections.max(1)),
            connecting: Semaphore::new(MAX_CONNECTING),
        })
    }

    /// `GET path` (origin form, already percent-encoded), `timeout` from the moment a slot is
    /// free to the last body byte; a body over `max_body` bytes is abandoned there (and its
    /// connection closed).
    pub(crate) async fn get(
        &self,
        path: &str,
        timeout: Duration,
        max_body: u64,
    ) -> Result<Answered, HttpError> {
        let uri =
            Uri::try_from(path).map_err(|e| HttpError::Other(format!("bad path {path:?}: {e}")))?;
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        match tokio::time::timeout(timeout, self.get_in_slot(uri, max_body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn get_in_slot(&self, uri: Uri, max_body: u64) -> Result<Answered, HttpError> {
        let (mut sender, mut reused) = match self.take_idle() {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        loop {
            match exchange(&mut sender, self.request(uri.clone()), max_body).await {
                Ok((a, reusable)) => {
                    // A body abandoned half-read leaves the connection unusable: dropping the
                    // sender (and the body) closes it.
                    if reusable {
                        self.idle.lock().expect("pool lock").push(sender);
                    }
                    return Ok(a);
                }
                // The server closed this kept-alive connection before answering (its idle
                // timeout, a restart): once more on a new connection.
                Err(e)
                    if reused
                        && (e.is_closed() || e.is_canceled() || e.is_incomplete_message()) =>
                {
                    sender = self.connect().await?;
                    reused = false;
                }
                Err(e) => return Err(HttpError::Other(e.to_string())),
            }
        }
    }

    fn request(&self, uri: Uri) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(a) = &self.authorization {
            h.insert(AUTHORIZATION, a.clone());
        }
        req
    }

    fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, HttpError> {
        let _connecting = self
            .connecting
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| HttpError::Connect(format!("{}: {e}", self.address)))?;
        // Requests are one small write each: never wait for an ACK before sending.
        stream
            .set_nodelay(true)
            .map_err(|e| HttpError::Connect(format!("{}: TCP_NODELAY: {e}", self.address)))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(format!("{}: {e}", self.address)))?;
        // Drives the connection until the server closes it or every sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    max_body: u64,
) -> Exchange {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers();
    let date = headers.get(DATE).cloned();
    let content_type = headers.get(CONTENT_TYPE).cloned();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let answered = |body| Answered {
        status,
        date: date.clone(),
        content_type: content_type.clone(),
        body,
    };
    let mut capped = match Capped::new(max_body, declared) {
        Ok(c) => c,
        Err(too_large) => return Ok((answered(Body::TooLarge(too_large)), false)),
    };
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if let Err(too_large) = capped.push(data) {
            return Ok((answered(Body::TooLarge(too_large)), false));
        }
    }
    Ok((answered(Body::Whole(capped.finish())), true))
}
