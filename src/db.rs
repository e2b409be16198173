//! The database: one binary for SQLite and PostgreSQL, chosen at runtime by the URL, and
//! every round trip to it bounded in time.
//!
//! diesel's `MultiConnection` derive gives one connection type over both backends; our
//! own r2d2 [`Manager`] picks the backend from the URL scheme, reports real connection
//! errors, and sets the per-connection bounds (see `db::manager`).
//!
//! # Failure policy
//! - [`run`] answers within `database.connect_timeout_secs` whatever the link does: the
//!   wait for a turn, for a connection, its health check and the work itself all share one
//!   deadline. A thread still blocked on a dead link when the caller has been answered keeps
//!   its turn: turns are a semaphore of `pool_size`, so at most that many threads can ever
//!   be stuck on the database, and later requests wait for a turn within their deadline.
//! - Failures are classified ([`DbFault`]): outages, full, read-only, locked and timed-out
//!   answer 503 with a clear text; only a real bug answers 500.
//! - [`Health`] tracks the state: while the database is unreachable requests fail at once,
//!   and [`Pool::watch`] re-checks it every `database.health_check_interval_ms` until it
//!   is back. `/ready` is [`Pool::readiness`]: a committed write, cached for that interval.

mod check;
mod connection;
pub mod fault;
mod health;
mod manager;
mod migrations;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::r2d2;
use tokio::sync::Semaphore;

pub use connection::DbConnection;
pub use fault::DbFault;
pub use health::Health;
pub use manager::{DbError, Manager, Pooled};
pub use migrations::run_migrations;

use crate::config::DatabaseSettings;
use crate::error::ApiError;

/// How much longer than the deadline the caller waits for the work's own answer: r2d2 and
/// libpq give up at the deadline with the reason (e.g. "Connection refused"), which is
/// worth more to the operator than our "no answer" from the same instant.
const REASON_MARGIN: Duration = Duration::from_millis(250);

/// The pool every request borrows from, with its turns and its health. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    connections: r2d2::Pool<Manager>,
    /// Opens connections outside the pool (r2d2 does not lend its manager).
    opener: Arc<Manager>,
    /// One permit per connection: held by the thread doing the work, for as long as it
    /// runs, even after its caller was answered.
    turns: Arc<Semaphore>,
    health: Arc<Health>,
    /// The deadline of one [`run`], and of one check.
    timeout: Duration,
    size: u32,
    /// Set once no migration is pending, so checks stop asking.
    migrated: Arc<AtomicBool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A connection borrowed with [`Pool::get`]; derefs to the connection.
pub struct Checkout(r2d2::PooledConnection<Manager>);

impl std::ops::Deref for Checkout {
    type Target = DbConnection;
    fn deref(&self) -> &DbConnection {
        &self.0.conn
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.0.conn
    }
}

/// A pool for `url` of `size` connections and a `timeout` deadline, every other setting at
/// its default: for tools and tests that have no [`DatabaseSettings`] at hand.
pub fn pool(url: &str, size: u32, timeout: Duration) -> Result<Pool, DbError> {
    let mut settings = crate::config::Settings::defaults().database;
    settings.url = url.to_owned();
    settings.pool_size = size;
    settings.connect_timeout_secs = timeout.as_secs().max(1);
    Pool::new(&settings)
}

/// Why a [`Pool::call`] failed: the database, or the work's own answer (e.g. a 400).
enum Failed {
    Fault(DbFault),
    Api(ApiError),
}

impl Pool {
    /// Builds the pool without connecting: a database that is down at start makes `/ready`
    /// answer 503 rather than the process exit, unless migrations must run first.
    pub fn new(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let health = Arc::new(Health::new(
            settings.health_check_interval(),
            settings.outage_log_interval(),
        ));
        let manager = Manager::new(settings)?;
        let opener = Arc::new(Manager::new(settings)?);
        let connections = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(0))
            .connection_timeout(settings.connect_timeout())
            .test_on_check_out(true)
            .error_handler(Box::new(manager::QuietErrors(Arc::clone(&health))))
            .build_unchecked(manager);
        Ok(Self {
            connections,
            opener,
            turns: Arc::new(Semaphore::new(settings.pool_size as usize)),
            health,
            timeout: settings.connect_timeout(),
            size: settings.pool_size,
            migrated: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A pooled connection now, blocking, outside the turns and the deadline of [`run`]:
    /// for tools and tests, never for a request.
    pub fn get(&self) -> Result<Checkout, r2d2::PoolError> {
        self.connections.get().map(Checkout)
    }

    /// `HOST:PORT` of a PostgreSQL database, or the SQLite file.
    pub fn address(&self) -> &str {
        self.opener.address()
    }

    /// One connection outside the pool (migrations at start), bounded by libpq's
    /// `connect_timeout` on PostgreSQL.
    pub fn open(&self) -> Result<DbConnection, DbError> {
        self.opener.open()
    }

    /// The database's state.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Runs `work` on a pooled connection on a blocking thread, all within the deadline;
    /// gives up early if the database is found unreachable meanwhile (by any request).
    async fn call<T, F>(&self, work: F) -> Result<T, Failed>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let unreachable = self.health.unreachable.notified();
        tokio::pin!(unreachable);
        unreachable.as_mut().enable();
        tokio::select! {
            biased;
            result = self.call_within_deadline(work) => result,
            () = unreachable => Err(Failed::Fault(
                self.health.outage().unwrap_or(DbFault::NoAnswer(self.timeout)),
            )),
        }
    }

    async fn call_within_deadline<T, F>(&self, work: F) -> Result<T, Failed>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = Instant::now() + self.timeout;
        let until = tokio::time::Instant::from_std(deadline);
        let turn =
            match tokio::time::timeout_at(until, Arc::clone(&self.turns).acquire_owned()).await {
                Ok(Ok(turn)) => turn,
                Ok(Err(_)) => return Err(Failed::Fault(DbFault::Bug("turns closed".into()))),
                // Every turn is held by a thread stuck on the database, if it is down.
                Err(_) => {
                    return Err(Failed::Fault(self.health.outage().unwrap_or_else(|| {
                        DbFault::Busy(format!(
                            "all {} database connections stayed in use for {} s",
                            self.size,
                            self.timeout.as_secs_f32()
                        ))
                    })))
                }
            };
        let (connections, timeout) = (self.connections.clone(), self.timeout);
        let health = Arc::clone(&self.health);
        let given_up = Arc::new(AtomicBool::new(false));
        let _give_up = GiveUpOnDrop(Arc::clone(&given_up));
        // Dropping the handle (deadline passed) leaves the thread running with its turn.
        let task = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let mut pooled = connections.get_timeout(left).map_err(|err| {
                ApiError::Database(no_connection(&err.to_string(), &health, timeout))
            })?;
            // A connection came too late: the caller has its 503, so the work must not
            // happen behind its back (a machine deleted after "try again").
            if given_up.load(Relaxed) {
                return Err(ApiError::Database(DbFault::NoAnswer(timeout)));
            }
            let started = Instant::now();
            let result = work(&mut pooled.conn);
            crate::metrics::METRICS.db_time(started.elapsed());
            if let Err(ApiError::Database(fault)) = &result {
                // After the deadline the link may be anywhere in a round trip: start afresh.
                pooled.broken = fault.breaks_connection() || Instant::now() >= deadline;
            }
            result
        });
        match tokio::time::timeout_at(until + REASON_MARGIN, task).await {
            Err(_) => Err(Failed::Fault(DbFault::NoAnswer(self.timeout))),
            Ok(Err(join)) => Err(Failed::Fault(DbFault::Bug(format!(
                "database task failed: {join}"
            )))),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(ApiError::Database(fault)))) => Err(Failed::Fault(fault)),
            Ok(Ok(Err(other))) => Err(Failed::Api(other)),
        }
    }

    /// Whether the database can serve the relay: reachable, migrated, and a write commits
    /// (with room to grow, on SQLite). The answer is reused for the check interval, and
    /// concurrent callers share one check.
    pub async fn readiness(&self) -> Result<(), &'static str> {
        if let Some(answer) = self.health.fresh() {
            return answer;
        }
        let _one_at_a_time = match self.health.checking.try_lock() {
            Ok(guard) => guard,
            // Down, and being checked already (it may take the whole deadline): say so now.
            Err(_) if self.health.outage().is_some() => {
                return Err(self.health.outage().map_or("", |fault| fault.client_text()))
            }
            Err(_) => self.health.checking.lock().await,
        };
        if let Some(answer) = self.health.fresh() {
            return answer;
        }
        let migrated = Arc::clone(&self.migrated);
        match self.call(move |conn| check::check(conn, &migrated)).await {
            Ok(()) => {
                self.health.check_passed();
                Ok(())
            }
            Err(failed) => {
                let fault = match failed {
                    Failed::Fault(fault) => fault,
                    Failed::Api(err) => DbFault::Bug(err.to_string()),
                };
                if fault.is_bug() {
                    tracing::error!(%fault, "the database check failed");
                }
                self.health.check_failed(&fault);
                Err(fault.client_text())
            }
        }
    }

    /// Checks the database now, again as soon as it goes down (a false alarm costs one
    /// check), then every check interval while it stays down — so it comes back without
    /// waiting for a request — logging a reminder now and then. Runs until the actix system
    /// stops; call it once, from inside the system.
    pub fn watch(&self) {
        let pool = self.clone();
        actix_rt::spawn(async move {
            loop {
                let _ = pool.readiness().await;
                pool.health.remind();
                if pool.health.is_down() {
                    tokio::time::sleep(pool.health.interval).await;
                } else {
                    pool.health.wake.notified().await;
                }
            }
        });
    }
}

/// Held by a caller while it waits for its database work. Dropped however the wait ends —
/// answered early, past the deadline, or the request itself dropped — it tells the blocking
/// thread to skip the work if it has not begun (harmless once it has run).
struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// The fault behind r2d2's "timed out waiting for connection[: last error]". r2d2 hands
/// its last error to one waiter only; the others learn it from the health, which heard it.
fn no_connection(message: &str, health: &Health, timeout: Duration) -> DbFault {
    match message.split_once(": ") {
        Some((_, last_error)) if !last_error.is_empty() => {
            DbFault::Unreachable(last_error.to_owned())
        }
        _ => health.outage().unwrap_or(DbFault::NoAnswer(timeout)),
    }
}

/// Runs blocking database work off the async threads, with a pooled connection, within
/// `database.connect_timeout_secs`; see the module's failure policy.
pub async fn run<T, F>(pool: &Pool, work: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut DbConnection) -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    if let Some(text) = pool.health.refusal() {
        return Err(ApiError::Unavailable(text));
    }
    match pool.call(work).await {
        Ok(value) => Ok(value),
        Err(Failed::Api(err)) => Err(err),
        Err(Failed::Fault(fault)) => {
            pool.health.report(&fault);
            Err(fault.into())
        }
    }
}

/// Runs `work` in a transaction: committed if it succeeds, rolled back if not. Unlike
/// diesel's `Connection::transaction`, a failed rollback never hides why the work failed:
/// SQLite rolls a transaction back by itself on a full disk or an I/O error, so the
/// ROLLBACK that follows fails ("no transaction is active"), and that is no reason to
/// answer 500. A connection whose rollback failed is discarded by the pool.
pub fn transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    use diesel::connection::{Connection, TransactionManager};
    type Manager = <DbConnection as Connection>::TransactionManager;
    Manager::begin_transaction(conn)?;
    match work(conn) {
        Ok(value) => {
            Manager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(err) => {
            if let Err(rollback) = Manager::rollback_transaction(conn) {
                tracing::debug!(%rollback, "rollback after a failed transaction failed");
            }
            Err(err)
        }
    }
}
