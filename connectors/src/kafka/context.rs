//! The consumer's context. It serves rebalances itself so that a partition's first position is
//! decided before fetching starts: the group's committed offset, unless retention already deleted
//! it (data loss), or, with nothing committed, the configured starting offset. It records every
//! rebalance so the source can drop messages of partitions it no longer owns.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::StartingOffsets;

/// How long broker look-ups inside a rebalance may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One rebalance, as seen by this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now ours.
    Assigned(Vec<(String, i32)>),
    /// These partitions are no longer ours.
    Revoked(Vec<(String, i32)>),
}

/// Decides first positions and records rebalance events for the source to apply.
#[derive(Debug)]
pub struct SourceContext {
    starting_offsets: StartingOffsets,
    fail_on_data_loss: bool,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set when a rebalance found committed offsets deleted by retention and the config says to stop.
    data_loss: Mutex<Option<String>>,
}

impl SourceContext {
    /// A context with the source's first-start and data-loss policies.
    pub fn new(starting_offsets: StartingOffsets, fail_on_data_loss: bool) -> Self {
        Self {
            starting_offsets,
            fail_on_data_loss,
            events: Mutex::default(),
            data_loss: Mutex::default(),
        }
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The data loss that must stop the run, if any.
    pub fn data_loss(&self) -> Option<String> {
        self.data_loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// Sets each partition's first position in `tpl` (left unset: the committed offset).
    fn choose_positions(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let committed = match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read committed offsets during a rebalance; librdkafka will use them itself.");
                return;
            }
        };
        for elem in committed.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            let position = match elem.offset() {
                Offset::Offset(c) => {
                    let Ok((low, _high)) =
                        consumer.fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)
                    else {
                        continue;
                    };
                    if c >= low {
                        continue;
                    }
                    let message = format!(
                        "{topic}/{partition}: committed offset {c} was deleted by retention (earliest kept is {low}); {} messages were never processed",
                        low - c
                    );
                    if self.fail_on_data_loss {
                        tracing::error!(%message, "Data loss: stopping (fail_on_data_loss = true).");
                        *self.data_loss.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                        continue;
                    }
                    tracing::error!(%message, "Data loss: continuing from the earliest kept offset (fail_on_data_loss = false).");
                    Offset::Offset(low)
                }
                _ => match &self.starting_offsets {
                    StartingOffsets::Earliest => Offset::Beginning,
                    StartingOffsets::Latest => Offset::End,
                    StartingOffsets::Specific(o) => match o.get(&topic, partition) {
                        Some(-2) => Offset::Beginning,
                        Some(n) if n >= 0 => Offset::Offset(n),
                        _ => Offset::End,
                    },
                },
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, position) {
                tracing::warn!(error = %e, topic, partition, "Could not set a starting position.");
            }
        }
    }
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect::<Vec<_>>()
        };
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.choose_positions(consumer, tpl);
                let assigned = parts(tpl);
                tracing::info!(partitions = ?assigned, "Partitions assigned to this instance.");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "Could not take the assigned partitions.");
                }
                self.push(RebalanceEvent::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = parts(tpl);
                tracing::info!(partitions = ?revoked, "Partitions revoked from this instance.");
                self.push(RebalanceEvent::Revoked(revoked));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "Could not release the revoked partitions.");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "Rebalance failed.");
                let _ = consumer.unassign();
            }
        }
    }
}
