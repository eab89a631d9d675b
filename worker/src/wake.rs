//! Wake on push: every push of step jobs publishes on `{namespace}:wake:{queue}`
//! ([`QueueClient::push`]); a worker process subscribes to its namespace's wake channels once and
//! wakes the apalis worker of that queue, which fetches at once instead of at its next poll. The
//! poll (`worker.poll_interval_ms`) stays as the fallback: a wake-up lost with the subscription
//! (Redis restarting) costs at most one poll interval.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, Strategy};
use futures::{Stream, StreamExt, task::AtomicWaker};
use syncfleet_shared::{config::RedisConfig, retry::Backoff};
use syncfleet_store::queue::{self, QueueClient};
use tokio_util::sync::{CancellationToken, DropGuard};

/// A queue's wake-up signal: a stream that yields once per wake-up (several wake-ups before the
/// worker looks count as one; the fetch that follows takes what is there).
#[derive(Debug, Clone, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    waker: AtomicWaker,
    set: AtomicBool,
}

impl Signal {
    fn wake(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Stream for Signal {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let inner = &self.0;
        if inner.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(()));
        }
        inner.waker.register(cx.waker());
        if inner.set.swap(false, Ordering::AcqRel) { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}

/// The process's wake-up subscription and the signals of its queues. The subscription starts with
/// the first [`Hub::signal`] and ends when the hub is dropped.
pub struct Hub {
    redis: RedisConfig,
    signals: Arc<Mutex<HashMap<String, Signal>>>,
    started: OnceLock<DropGuard>,
}

impl Hub {
    pub fn new(redis: &RedisConfig) -> Hub {
        Hub { redis: redis.clone(), signals: Default::default(), started: OnceLock::new() }
    }

    /// The wake-up signal of `queue` (the step queue's short name). Call inside the runtime.
    pub fn signal(&self, queue: &str) -> Signal {
        self.started.get_or_init(|| {
            let stop = CancellationToken::new();
            tokio::spawn(listen(self.redis.clone(), self.signals.clone(), stop.clone()));
            stop.drop_guard()
        });
        self.signals.lock().unwrap_or_else(|e| e.into_inner()).entry(queue.to_owned()).or_default().clone()
    }
}

/// Keeps the subscription to `{namespace}:wake:*`, re-subscribing after a jittered backoff when it
/// drops; wakes every queue after each (re)subscription, for pushes made while it was down.
async fn listen(redis: RedisConfig, signals: Arc<Mutex<HashMap<String, Signal>>>, stop: CancellationToken) {
    let prefix = QueueClient::wake_prefix(&redis.namespace);
    let mut failures: u32 = 0;
    loop {
        let session = async {
            let mut messages = queue::subscribe_wake(&redis).await?;
            failures = 0;
            for s in signals.lock().unwrap_or_else(|e| e.into_inner()).values() {
                s.wake();
            }
            while let Some(channel) = messages.next().await {
                if let Some(q) = channel.strip_prefix(&prefix)
                    && let Some(s) = signals.lock().unwrap_or_else(|e| e.into_inner()).get(q)
                {
                    s.wake();
                }
            }
            Ok::<(), queue::QueueError>(())
        };
        let ended = tokio::select! {
            ended = session => ended,
            _ = stop.cancelled() => return,
        };
        failures += 1;
        match ended {
            Ok(()) => tracing::debug!("Wake-up subscription ended; subscribing again (the poll covers the gap)."),
            Err(error) => {
                tracing::debug!(%error, "Wake-up subscription failed; subscribing again (the poll covers the gap).")
            }
        }
        let pause = Backoff::WORKER_RESTART.delay(failures).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

impl Hub {
    /// The poll strategy of `queue`'s consumer: its wake-up signal, and the poll every `poll` as the
    /// fallback.
    pub fn strategy(&self, queue: &str, poll: Duration) -> Strategy {
        Strategy::new().stream(self.signal(queue)).apply(IntervalStrategy::new(poll))
    }
}
