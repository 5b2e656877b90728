//! A producer that sends continuously in the background while a test stops,
//! kills or restarts the broker, recording which messages were acknowledged.
//!
//! Design decision: the number of messages awaiting a delivery report is
//! capped by a semaphore, so the stream neither floods librdkafka's queue
//! while the broker is down nor runs far ahead of what has been acknowledged;
//! a test waits on the acknowledged count (an event), never on time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::{message_key, message_value, Ack};

/// One acknowledged message and when its delivery report arrived.
#[derive(Clone, Copy, Debug)]
pub struct TimedAck {
    pub ack: Ack,
    pub at: Instant,
}

/// Everything the stream sent, once every delivery report is in.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// Messages `0..sent` were handed to the producer.
    pub sent: u64,
    /// Acknowledged messages, sorted by id.
    pub acks: Vec<TimedAck>,
    /// Messages whose delivery failed, with the error.
    pub failed: Vec<(u64, String)>,
}

impl StreamOutcome {
    pub fn plain_acks(&self) -> Vec<Ack> {
        self.acks.iter().map(|a| a.ack).collect()
    }
}

#[derive(Default)]
struct Shared {
    acks: Vec<TimedAck>,
    failed: Vec<(u64, String)>,
}

/// See the module documentation.
pub struct ProduceStream {
    acked: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    sender: tokio::task::JoinHandle<Result<(u64, JoinSet<()>)>>,
    shared: Arc<Mutex<Shared>>,
    /// Kept until every delivery report is in: dropping a librdkafka producer
    /// purges the messages it still holds.
    producer: Arc<FutureProducer>,
}

impl ProduceStream {
    /// Starts sending messages `0, 1, 2, ...` (up to `id_end` if given) to
    /// `topic`, keeping at most `in_flight_max` unacknowledged.
    pub fn start(
        producer: FutureProducer,
        topic: &str,
        keys: u64,
        in_flight_max: usize,
        id_end: Option<u64>,
    ) -> ProduceStream {
        let (acked_tx, acked) = watch::channel(0usize);
        let (stop, mut stop_rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let acked_tx = Arc::new(acked_tx);
        let producer = Arc::new(producer);
        let topic = topic.to_string();
        let sender = tokio::spawn({
            let shared = Arc::clone(&shared);
            let producer = Arc::clone(&producer);
            async move {
                let permits = Arc::new(Semaphore::new(in_flight_max));
                let mut deliveries = JoinSet::new();
                let mut id = 0u64;
                while id_end.is_none_or(|end| id < end) {
                    let permit = tokio::select! {
                        permit = Arc::clone(&permits).acquire_owned() => permit?,
                        _ = stop_rx.wait_for(|stop| *stop) => break,
                    };
                    let (key, value) = (message_key(id, keys), message_value(id));
                    let delivery = producer
                        .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                        .map_err(|(e, _)| anyhow!("enqueueing message {id}: {e}"))?;
                    let (shared, acked_tx) = (Arc::clone(&shared), Arc::clone(&acked_tx));
                    deliveries.spawn(async move {
                        let result = delivery.await;
                        let at = Instant::now();
                        let mut shared = shared.lock().expect("stream state poisoned");
                        match result {
                            Ok(Ok(d)) => {
                                shared.acks.push(TimedAck {
                                    ack: Ack {
                                        id,
                                        partition: d.partition,
                                        offset: d.offset,
                                    },
                                    at,
                                });
                                acked_tx.send_replace(shared.acks.len());
                            }
                            Ok(Err((e, _))) => shared.failed.push((id, e.to_string())),
                            Err(_) => shared.failed.push((id, "producer dropped".into())),
                        }
                        drop(permit);
                    });
                    id += 1;
                }
                Ok((id, deliveries))
            }
        });
        ProduceStream {
            acked,
            stop,
            sender,
            shared,
            producer,
        }
    }

    /// Number of messages acknowledged so far.
    pub fn acked(&self) -> usize {
        *self.acked.borrow()
    }

    /// Waits until at least `count` messages have been acknowledged.
    pub async fn wait_acked(&mut self, count: usize, wait_max: Duration) -> Result<()> {
        let waited = tokio::time::timeout(wait_max, self.acked.wait_for(|n| *n >= count))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow!(
                "stream ended with {} of {count} messages acknowledged",
                self.acked()
            )),
            Err(_) => Err(anyhow!(
                "{} of {count} messages acknowledged after {wait_max:?}",
                self.acked()
            )),
        }
    }

    /// Stops sending new messages (unless the stream already reached its
    /// end) and waits for the delivery report of everything sent.
    pub async fn finish(self, wait_max: Duration) -> Result<StreamOutcome> {
        self.stop.send_replace(true);
        let (sent, mut deliveries) = tokio::time::timeout(wait_max, self.sender)
            .await
            .map_err(|_| anyhow!("producer stream did not stop within {wait_max:?}"))???;
        tokio::time::timeout(wait_max, async {
            while let Some(joined) = deliveries.join_next().await {
                joined?;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow!("delivery reports still missing after {wait_max:?}"))??;
        drop(self.producer);
        let mut shared = std::mem::take(&mut *self.shared.lock().expect("stream state poisoned"));
        shared.acks.sort_by_key(|a| a.ack.id);
        shared.failed.sort();
        Ok(StreamOutcome {
            sent,
            acks: shared.acks,
            failed: shared.failed,
        })
    }
}
