//! How a range becomes committed: the consumer-group offsets of the files output, with the
//! recorded segments (`seal.rs`) as offset metadata and the dead letters of the range, in one
//! Kafka transaction (connector-common's `eos`).

use std::sync::Arc;
use std::time::Duration;

use connector_common::dlq::DlqInfo;
use connector_common::eos::{SendError, TxnError, TxnProducer};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::pipeline::DeadLetter;
use crate::tracker::Wanted;
use crate::uploads::Fence;

/// Header added to a dead letter whose original value was too large to be sent with it.
pub(crate) const HEADER_VALUE_OMITTED: &str = "dlq.value.omitted";

/// One partition of a commit.
#[derive(Debug, Clone)]
pub(crate) struct PlannedPartition {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) wanted: Wanted,
}

/// A commit, planned on the loop thread (with the group metadata of that moment) and run on a
/// blocking thread.
pub(crate) struct CommitPlan {
    pub(crate) group: ConsumerGroupMetadata,
    pub(crate) partitions: Vec<PlannedPartition>,
    pub(crate) letters: Vec<(i32, u64, DeadLetter)>,
}

impl std::fmt::Debug for CommitPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitPlan")
            .field("partitions", &self.partitions)
            .field("letters", &self.letters.len())
            .finish_non_exhaustive()
    }
}

/// A commit that did not happen. Only `fatal` ones stop the sink.
#[derive(Debug, thiserror::Error)]
#[error("committing {what}: {source}")]
pub(crate) struct CommitError {
    /// What was being committed (``offsets of `form.enriched` ``, ``Iceberg table `form_etl.form` ``).
    pub(crate) what: String,
    pub(crate) fatal: bool,
    #[source]
    pub(crate) source: Box<dyn std::error::Error + Send + Sync>,
}

/// Commits offsets, metadata and dead letters in one Kafka transaction.
pub(crate) struct KafkaCommitter {
    pub(crate) txn: TxnProducer<DefaultProducerContext>,
    pub(crate) topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) connector: String,
    pub(crate) fence: Arc<Fence>,
}

impl std::fmt::Debug for KafkaCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCommitter")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaCommitter {
    /// Runs `plan`, holding the transaction's lock throughout (a revoke waits for it). Returns
    /// the partitions committed: those revoked since the plan was made are left out.
    pub(crate) fn commit(&self, plan: &CommitPlan) -> Result<Vec<i32>, CommitError> {
        let _lock = self.txn.lock();
        self.commit_held(plan)
    }

    /// [`KafkaCommitter::commit`] for a caller that holds the transaction's lock (see
    /// [`KafkaCommitter::lock`]).
    pub(crate) fn commit_held(&self, plan: &CommitPlan) -> Result<Vec<i32>, CommitError> {
        let owned: Vec<&PlannedPartition> = plan
            .partitions
            .iter()
            .filter(|p| self.fence.owns(p.partition, p.epoch))
            .collect();
        if owned.is_empty() {
            return Ok(Vec::new());
        }
        let err = |source: TxnError| CommitError {
            what: format!("offsets of `{}`", self.topic),
            fatal: matches!(source, TxnError::Fatal(_)),
            source: Box::new(source),
        };
        self.txn.begin().map_err(err)?;
        for (partition, epoch, l) in &plan.letters {
            if !self.fence.owns(*partition, *epoch) {
                continue;
            }
            if let Err(e) = self.send_letter(*partition, l) {
                let abort = self.txn.abort("a dead letter could not be produced");
                return Err(err(abort.err().unwrap_or(TxnError::Aborted(e))));
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in &owned {
            let meta = p.wanted.metadata();
            tpl.add_partition_offset(&self.topic, p.partition, Offset::Offset(p.wanted.offset))
                .map_err(|e| err(TxnError::Aborted(e)))?;
            if !meta.is_empty()
                && let Some(mut e) = tpl.find_partition(&self.topic, p.partition)
            {
                e.set_metadata(meta.as_str());
            }
        }
        self.txn.commit_locked(&tpl, &plan.group).map_err(err)?;
        Ok(owned.iter().map(|p| p.partition).collect())
    }

    /// The transaction's lock: a revoke waits for whoever holds it (so a partition is not
    /// handed over in the middle of a commit).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.txn.lock()
    }

    /// Sends one dead letter; one too large for the producer goes without its value, with a
    /// header saying so (the record is still on its topic at the offset the headers name).
    fn send_letter(
        &self,
        partition: i32,
        l: &DeadLetter,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let info = DlqInfo {
            reason: l.reason,
            detail: l.detail.clone(),
            connector: self.connector.clone(),
            topic: self.topic.clone(),
            partition,
            offset: l.offset,
        };
        let record = |omit: bool| {
            let mut headers = info.headers(None::<&OwnedHeaders>);
            let note;
            if omit {
                note = format!(
                    "{} bytes: larger than the producer's message.max.bytes",
                    l.value.as_ref().map_or(0, Vec::len)
                );
                headers = headers.insert(Header {
                    key: HEADER_VALUE_OMITTED,
                    value: Some(note.as_str()),
                });
            }
            let mut rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.dlq_topic).headers(headers);
            if let Some(k) = &l.key {
                rec = rec.key(k.as_slice());
            }
            if !omit && let Some(v) = &l.value {
                rec = rec.payload(v.as_slice());
            }
            rec
        };
        match self.txn.send(record(false)) {
            Ok(()) => Ok(()),
            Err(SendError::TooLarge(e)) => {
                warn!(partition, offset = l.offset, error = %e, "A dead letter is too large for the DLQ topic: sent without its value.");
                match self.txn.send(record(true)) {
                    Ok(()) => Ok(()),
                    Err(SendError::TooLarge(e) | SendError::Other(e)) => Err(e),
                }
            }
            Err(SendError::Other(e)) => Err(e),
        }
    }
}

/// librdkafka's `transaction.timeout.ms` for the sink (its default is 60 s): a transaction left
/// open by a killed instance blocks `read_committed` readers of the DLQ until the broker aborts
/// it; a restart with the same transactional id aborts it at once.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
