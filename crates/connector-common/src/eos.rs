//! Kafka transactions for read-process-write (exactly once, KIP-447), by librdkafka's rules.
//!
//! [`TxnProducer`] wraps a transactional producer and owns the rules of librdkafka's
//! transactional API (`rdkafka.h`, "Transactional producer API"), so that no connector keeps a
//! copy of them:
//!
//! - a call that fails with a *retriable* error is retried, the same call, with backoff: after
//!   a `commit_transaction` timeout librdkafka keeps the commit as the current API call, and
//!   anything else (an abort, the next `begin_transaction`) would fail with
//!   `__CONFLICT` ("Conflicting commit_transaction API call is already in progress") for good;
//! - an error that *requires an abort* aborts the transaction (the abort retried the same way)
//!   and reports [`TxnError::Aborted`]: the caller rewinds to the committed offsets;
//! - a *fatal* error (fenced by a newer instance with the same transactional id, or by the group)
//!   is [`TxnError::Fatal`]: the process must exit and be restarted.
//!
//! The group metadata a commit sends (`send_offsets_to_transaction`) is taken by the caller
//! when it starts the commit, on the thread that polls the consumer, so it carries the
//! generation the offsets belong to. A revoke must not hand partitions over while their commit
//! runs: the consumer's `pre_rebalance` takes [`TxnProducer::lock`] (held by every commit from
//! its first call to its end) before it lets the revoke proceed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use tracing::{info, warn};

use crate::retry::{ErrorClass, RetryPolicy, classify_kafka};

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction was aborted: its records are discarded and its offsets not committed.
    /// Resume from the committed offsets.
    #[error("the transaction was aborted: {0}")]
    Aborted(#[source] KafkaError),
    /// The producer cannot continue (fenced by a newer instance, or a fatal client error): exit,
    /// and let the process be restarted.
    #[error("fatal transaction error: {0}")]
    Fatal(#[source] KafkaError),
}

impl TxnError {
    /// The underlying client error.
    pub fn kafka(&self) -> &KafkaError {
        match self {
            TxnError::Aborted(e) | TxnError::Fatal(e) => e,
        }
    }
}

/// Why one record could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Larger than the producer's `message.max.bytes`: it can never be sent as it is.
    #[error("the record is larger than the producer's `message.max.bytes` ({0})")]
    TooLarge(#[source] KafkaError),
    /// Any other refusal (the transaction is then in doubt: abort it).
    #[error("producing: {0}")]
    Other(#[source] KafkaError),
}

/// How often a retriable failure is logged: the first, then every power of two.
fn worth_logging(attempt: u32) -> bool {
    attempt == 1 || attempt.is_power_of_two()
}

/// A transactional producer (see the module docs).
pub struct TxnProducer<C: ProducerContext + 'static> {
    producer: ThreadedProducer<C>,
    /// Timeout of each blocking call.
    call_timeout: Duration,
    /// Backoff between retries of a retriable call.
    backoff: RetryPolicy,
    /// Held by a commit from its first call to its end, and by a revoke while it aborts.
    lock: Mutex<()>,
    /// A transaction is open (begun, neither committed nor aborted).
    open: AtomicBool,
}

impl<C: ProducerContext + 'static> std::fmt::Debug for TxnProducer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProducer")
            .field("call_timeout", &self.call_timeout)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl<C: ProducerContext + 'static> TxnProducer<C> {
    /// Wraps `producer` (configured with a `transactional.id`); `call_timeout` bounds each
    /// blocking call (retriable failures are retried past it).
    pub fn new(producer: ThreadedProducer<C>, call_timeout: Duration) -> Self {
        Self {
            producer,
            call_timeout,
            backoff: RetryPolicy {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                ..RetryPolicy::default()
            },
            lock: Mutex::new(()),
            open: AtomicBool::new(false),
        }
    }

    /// The producer (to read its statistics, flush it, …).
    pub fn producer(&self) -> &ThreadedProducer<C> {
        &self.producer
    }

    /// The commit lock: a revoke takes it to wait for a running commit.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a transaction is open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// `init_transactions`: fences an earlier instance with the same transactional id and
    /// aborts its open transaction. Retriable failures (the coordinator is loading, the broker
    /// is away) are retried.
    pub fn init(&self) -> Result<(), TxnError> {
        let _guard = self.lock();
        self.call("init_transactions", || {
            self.producer.init_transactions(self.call_timeout)
        })
    }

    /// Begins a transaction if none is open.
    pub fn begin(&self) -> Result<(), TxnError> {
        if self.is_open() {
            return Ok(());
        }
        self.call("begin_transaction", || self.producer.begin_transaction())?;
        self.open.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Sends one record into the open transaction; a full queue is waited out (backpressure).
    /// Its delivery is checked by the commit.
    pub fn send(
        &self,
        mut rec: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
    ) -> Result<(), SendError>
    where
        C::DeliveryOpaque: Send,
    {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((
                    e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    _,
                )) => {
                    return Err(SendError::TooLarge(e));
                }
                Err((e, _)) => return Err(SendError::Other(e)),
            }
        }
    }

    /// Commits the open transaction with `offsets` (consumed offsets, with their metadata) for
    /// the group `group` (taken when the commit was started). Holds [`TxnProducer::lock`]
    /// throughout. Retriable failures are retried (the same call); one that requires an abort
    /// aborts and answers [`TxnError::Aborted`].
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        let _guard = self.lock();
        self.commit_locked(offsets, group)
    }

    /// [`TxnProducer::commit`] for a caller that already holds the lock.
    pub fn commit_locked(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        self.begin()?;
        let result = (|| {
            if offsets.count() > 0 {
                self.call("send_offsets_to_transaction", || {
                    self.producer
                        .send_offsets_to_transaction(offsets, group, self.call_timeout)
                })?;
            }
            self.call("commit_transaction", || {
                self.producer.commit_transaction(self.call_timeout)
            })
        })();
        match result {
            Ok(()) => {
                self.open.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Aborts the open transaction, if any (its records are discarded). Flushes first:
    /// librdkafka can send the abort's EndTxn before the partitions of records produced just
    /// before are registered with the coordinator, which then answers INVALID_TXN_STATE, a
    /// fatal error (confluentinc/librdkafka#4849). Holds no lock: see [`TxnProducer::lock`].
    pub fn abort(&self, why: &str) -> Result<(), TxnError> {
        if !self.open.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = self.producer.flush(self.call_timeout) {
            warn!(error = %e, why, "Flushing before the abort failed; aborting anyway.");
        }
        self.call_no_abort("abort_transaction", || {
            self.producer.abort_transaction(self.call_timeout)
        })
        .inspect(|()| info!(why, "Transaction aborted."))
    }

    /// Runs one transactional call by the rules above.
    fn call(&self, what: &str, f: impl FnMut() -> Result<(), KafkaError>) -> Result<(), TxnError> {
        match self.call_no_abort(what, f) {
            Err(TxnError::Aborted(e)) => {
                // The error requires an abort (or is not retriable): abort the open
                // transaction, if any, then report it.
                self.abort(what)?;
                Err(TxnError::Aborted(e))
            }
            other => other,
        }
    }

    /// Retries a call while it fails with a retriable error; classifies the final error as
    /// fatal or abort-requiring (the caller aborts).
    fn call_no_abort(
        &self,
        what: &str,
        mut f: impl FnMut() -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match f() {
                Ok(()) => {
                    if attempt > 1 {
                        info!(
                            what,
                            attempts = attempt,
                            "Transactional call succeeded after retries."
                        );
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            match classify_txn(&err) {
                TxnClass::Fatal => return Err(TxnError::Fatal(err)),
                TxnClass::Abort => return Err(TxnError::Aborted(err)),
                TxnClass::Retry => {
                    metrics::counter!("component_errors_total", "error_type" => "transaction_retried", "stage" => "sending")
                        .increment(1);
                    if worth_logging(attempt) {
                        warn!(what, attempt, error = %err, "Transactional call failed; retrying the same call (as librdkafka requires).");
                    }
                    std::thread::sleep(self.backoff.backoff(attempt.saturating_sub(1)));
                }
            }
        }
    }
}

/// What to do with a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnClass {
    /// Call the same function again.
    Retry,
    /// Abort the transaction (and rewind).
    Abort,
    /// Exit.
    Fatal,
}

fn classify_txn(err: &KafkaError) -> TxnClass {
    match err {
        KafkaError::Transaction(e) if e.is_fatal() => TxnClass::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnClass::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => TxnClass::Retry,
        other => match classify_kafka(other) {
            ErrorClass::Fatal => TxnClass::Fatal,
            _ => TxnClass::Abort,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_transaction_errors_abort_unless_fatal() {
        let fenced = KafkaError::Global(RDKafkaErrorCode::ProducerFenced);
        assert_eq!(classify_txn(&fenced), TxnClass::Fatal);
        let timeout = KafkaError::Global(RDKafkaErrorCode::OperationTimedOut);
        assert_eq!(classify_txn(&timeout), TxnClass::Abort);
        assert!(worth_logging(1) && worth_logging(8) && !worth_logging(5));
    }
}
