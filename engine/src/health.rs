//! Whether every shard serves: a watch channel the shards write and the
//! gateway's health service reads, so a shard that is poisoned, exits or
//! panics turns health NOT_SERVING at once, with nothing polling.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::ShardId;

/// Why a shard no longer serves writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardDown {
    /// A WAL fsync failed: writes are refused until a restart.
    Poisoned,
    /// Its thread returned (a clean shutdown, or its request loop ended).
    Exited,
    /// Its thread panicked; the panic message is in the log.
    Panicked,
}

impl std::fmt::Display for ShardDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardDown::Poisoned => "poisoned after a failed fsync",
            ShardDown::Exited => "stopped",
            ShardDown::Panicked => "panicked",
        })
    }
}

/// The shards that do not serve, by id; empty while all do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub down: BTreeMap<ShardId, ShardDown>,
}

impl Health {
    pub fn serving(&self) -> bool {
        self.down.is_empty()
    }
}

/// The shards' side of the channel.
#[derive(Clone)]
pub(crate) struct HealthTx(Arc<watch::Sender<Health>>);

impl HealthTx {
    pub fn new() -> (Self, watch::Receiver<Health>) {
        let (tx, rx) = watch::channel(Health::default());
        (Self(Arc::new(tx)), rx)
    }

    /// Records that `shard` is down; the first reason stays.
    pub fn down(&self, shard: ShardId, why: ShardDown) {
        self.0.send_if_modified(|h| {
            if h.down.contains_key(&shard) {
                return false;
            }
            h.down.insert(shard, why);
            true
        });
    }

    /// A guard for a shard's thread: when it is dropped, by a return or
    /// while unwinding from a panic, the shard is down.
    pub fn guard(&self, shard: ShardId) -> ExitGuard {
        ExitGuard { tx: self.clone(), shard }
    }
}

pub(crate) struct ExitGuard {
    tx: HealthTx,
    shard: ShardId,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let why = if std::thread::panicking() { ShardDown::Panicked } else { ShardDown::Exited };
        if why == ShardDown::Panicked {
            tracing::error!(shard = %self.shard, "shard thread panicked: its datasets are unavailable until a restart");
        }
        self.tx.down(self.shard, why);
    }
}
