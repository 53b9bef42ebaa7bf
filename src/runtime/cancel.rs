//! A cancellation token every blocking operation of the runtime selects on, so the first error
//! anywhere wakes every actor thread (no hang, ever).

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    /// Never receives a message: it disconnects when the token is cancelled, which wakes selects.
    rx: Receiver<()>,
    tx: Arc<Mutex<Option<Sender<()>>>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl Cancel {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            rx,
            tx: Arc::new(Mutex::new(Some(tx))),
        }
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The receiver to put in a `select!`: it becomes ready (disconnected) on cancel.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// Why a blocking runtime operation returned without data.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("cancelled because another actor failed or the run was stopped")]
    Cancelled,
    #[error("upstream finished")]
    Closed,
    #[error("the versions wanted are no longer kept (oldest kept: v{oldest})")]
    Gone { oldest: u64 },
}
