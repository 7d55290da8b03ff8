//! Circuit breakers, as Envoy's HTTP/1.1 connection pool applies them per cluster: a
//! request needs an upstream connection; past `max_connections` busy ones it waits as
//! pending, and past `max_pending_requests` waiting ones (or `max_requests` in flight) it is
//! refused at once with 503 and `x-envoy-overflow: true`. Retries in flight are bounded by
//! `max_retries`; a retry over the bound is not made.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::Limits;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests` in flight.
    Requests,
    /// `max_pending_requests` already waiting for a connection.
    Pending,
}

/// One cluster's counters for one set of thresholds.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    connections: Arc<Semaphore>,
    pending: AtomicUsize,
    requests: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
}

/// Held while a request uses an upstream connection (until its response body is done).
#[derive(Debug)]
pub struct Admitted {
    _connection: OwnedSemaphorePermit,
    requests: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Held while a retry is in flight.
#[derive(Debug)]
pub struct RetryGuard(Arc<AtomicUsize>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements `pending` however the wait ends (admitted, or the request dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Breaker {
    pub fn new(limits: Limits) -> Breaker {
        Breaker {
            limits,
            connections: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            pending: AtomicUsize::new(0),
            requests: Arc::new(AtomicUsize::new(0)),
            retries: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A connection for one request: at once, after waiting as pending, or refused.
    pub async fn admit(&self) -> Result<Admitted, Overflow> {
        if self.requests.load(Ordering::SeqCst) >= self.limits.max_requests {
            return Err(Overflow::Requests);
        }
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.pending.fetch_add(1, Ordering::SeqCst) >= self.limits.max_pending_requests {
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    return Err(Overflow::Pending);
                }
                let _waiting = Waiting(&self.pending);
                match self.connections.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return Err(Overflow::Pending),
                }
            }
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        Ok(Admitted {
            _connection: permit,
            requests: self.requests.clone(),
        })
    }

    /// A connection now or never (TCP proxying does not queue).
    pub fn try_admit(&self) -> Option<Admitted> {
        if self.requests.load(Ordering::SeqCst) >= self.limits.max_requests {
            return None;
        }
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        self.requests.fetch_add(1, Ordering::SeqCst);
        Some(Admitted {
            _connection: permit,
            requests: self.requests.clone(),
        })
    }

    /// Room for one more retry in flight, or None (the retry is not made).
    pub fn retry(&self) -> Option<RetryGuard> {
        if self.retries.fetch_add(1, Ordering::SeqCst) >= self.limits.max_retries {
            self.retries.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(RetryGuard(self.retries.clone()))
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn one_connection_one_pending_then_overflow() {
        let b = Arc::new(Breaker::new(Limits {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 100,
            max_retries: 1,
        }));
        let first = b.admit().await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.admit().await.map(|_| ()) })
        };
        while b.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.admit().await.unwrap_err(), Overflow::Pending);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(b.pending(), 0);
        // Retries: one in flight at a time.
        let r = b.retry().unwrap();
        assert!(b.retry().is_none());
        drop(r);
        assert!(b.retry().is_some());
    }

    #[tokio::test]
    async fn max_requests_refuses_before_waiting() {
        let b = Breaker::new(Limits {
            max_connections: 10,
            max_pending_requests: 10,
            max_requests: 1,
            max_retries: 3,
        });
        let _a = b.admit().await.unwrap();
        assert_eq!(b.admit().await.unwrap_err(), Overflow::Requests);
    }
}
