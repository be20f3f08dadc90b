//! Durable state: which release of each service is live, which instances run
//! it, and the history of every deploy, in one SQLite file.
//!
//! The orchestrator writes its intent before acting and the outcome after
//! (a deploy row reaches `switching` before the route table changes; the
//! release roles change with the deploy's `done` in one transaction), so a
//! baton that dies at any point comes back knowing what is live.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_core::{Color, Deploy, DeployKind, Phase};
use baton_runtime::Instance;
use rusqlite::{params, Connection};
use serde::Serialize;

/// A failure of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: corrupt record: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// What a release of a service is to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes the service's traffic.
    Active,
    /// Was active; kept warm for an instant rollback until `retire_at`.
    Previous,
    /// Being deployed, not yet live.
    Candidate,
}

/// One color of one service and the instances running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub service: String,
    pub color: Color,
    pub version: String,
    pub role: Role,
    pub instances: Vec<Instance>,
    /// For a previous release: when it is stopped (unix ms).
    pub retire_at: Option<i64>,
}

/// One deploy or rollback, as history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DeployRecord {
    pub id: i64,
    pub service: String,
    pub kind: DeployKind,
    pub version: String,
    pub color: Color,
    pub phase: Phase,
    pub requested_by: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The candidate's last log lines when it failed.
    pub log_tail: Option<String>,
}

/// A canary rollout as stored: enough to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRollout {
    /// Unix ms; a rollout not over by then is rolled back.
    pub deadline_at: i64,
    /// The deploy state machine at its last event.
    pub machine: Option<Deploy>,
}

/// An instance that could not be stopped (its host was unreachable), kept
/// until a later try succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub service: String,
    pub instance: Instance,
    /// Why the last try failed.
    pub reason: String,
    /// When it was first left over (unix ms).
    pub since: i64,
}

/// The state database.
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS releases (
    service   TEXT NOT NULL,
    color     TEXT NOT NULL,
    version   TEXT NOT NULL,
    role      TEXT NOT NULL,
    instances TEXT NOT NULL,
    retire_at INTEGER,
    PRIMARY KEY (service, color)
);
CREATE TABLE IF NOT EXISTS deploys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    service      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    version      TEXT NOT NULL,
    color        TEXT NOT NULL,
    phase        TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    error        TEXT,
    log_tail     TEXT
);
CREATE INDEX IF NOT EXISTS deploys_by_service ON deploys (service, id);
CREATE TABLE IF NOT EXISTS leftovers (
    service  TEXT NOT NULL,
    instance TEXT NOT NULL,
    reason   TEXT NOT NULL,
    since    INTEGER NOT NULL,
    PRIMARY KEY (service, instance)
);
CREATE TABLE IF NOT EXISTS rollouts (
    deploy      INTEGER PRIMARY KEY REFERENCES deploys (id),
    deadline_at INTEGER NOT NULL,
    machine     TEXT
);
";

/// An instance as the leftovers table keys it.
fn instance_key(instance: &Instance) -> Result<String> {
    serde_json::to_string(instance).map_err(|e| StoreError::Corrupt(format!("instance: {e}")))
}

/// Milliseconds since the epoch, the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `baton.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let conn = Connection::open(dir.join("baton.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every release of a service.
    pub fn releases(&self, service: &str) -> Result<Vec<Release>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT service, color, version, role, instances, retire_at FROM releases WHERE service = ?1 ORDER BY color",
        )?;
        let rows = stmt.query_map([service], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (service, color, version, role, instances, retire_at) = row?;
            Ok(Release {
                service,
                color: parse(&color)?,
                version,
                role: from_text(&role)?,
                instances: serde_json::from_str(&instances)
                    .map_err(|e| StoreError::Corrupt(format!("instances: {e}")))?,
                retire_at,
            })
        })
        .collect()
    }

    /// Records a release (replacing what that color held).
    pub fn put_release(&self, r: &Release) -> Result<()> {
        put_release(&self.conn(), r)
    }

    /// Forgets a color once its instances are stopped.
    pub fn remove_release(&self, service: &str, color: Color) -> Result<()> {
        self.conn().execute(
            "DELETE FROM releases WHERE service = ?1 AND color = ?2",
            params![service, color.as_str()],
        )?;
        Ok(())
    }

    /// Records that `instance` could not be stopped, or why it still could
    /// not be (keeping when it was first left over).
    pub fn add_leftover(&self, service: &str, instance: &Instance, reason: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO leftovers (service, instance, reason, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (service, instance) DO UPDATE SET reason = excluded.reason",
            params![service, instance_key(instance)?, reason, now_ms()],
        )?;
        Ok(())
    }

    /// Forgets a leftover once it is stopped.
    pub fn remove_leftover(&self, service: &str, instance: &Instance) -> Result<()> {
        self.conn().execute(
            "DELETE FROM leftovers WHERE service = ?1 AND instance = ?2",
            params![service, instance_key(instance)?],
        )?;
        Ok(())
    }

    /// Every leftover, oldest first.
    pub fn leftovers(&self) -> Result<Vec<Leftover>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT service, instance, reason, since FROM leftovers ORDER BY since, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (service, instance, reason, since) = row?;
            Ok(Leftover {
                service,
                instance: serde_json::from_str(&instance)
                    .map_err(|e| StoreError::Corrupt(format!("leftover: {e}")))?,
                reason,
                since,
            })
        })
        .collect()
    }

    /// The outcome of a switch, in one transaction: `color` becomes active,
    /// the other color (if recorded) previous until `retire_at`, and the
    /// deploy is done.
    pub fn record_switch(
        &self,
        deploy_id: i64,
        service: &str,
        color: Color,
        retire_at: i64,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE releases SET role = 'previous', retire_at = ?3 WHERE service = ?1 AND color = ?2",
            params![service, color.other().as_str(), retire_at],
        )?;
        tx.execute(
            "UPDATE releases SET role = 'active', retire_at = NULL WHERE service = ?1 AND color = ?2",
            params![service, color.as_str()],
        )?;
        finish(&tx, deploy_id, Phase::Done, None, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Starts a deploy's history record; returns its id.
    pub fn begin_deploy(
        &self,
        service: &str,
        kind: DeployKind,
        version: &str,
        color: Color,
        requested_by: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deploys (service, kind, version, color, phase, requested_by, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                service,
                to_text(&kind),
                version,
                color.as_str(),
                to_text(&Phase::Starting),
                requested_by,
                now_ms()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Moves a deploy to `phase` (recorded before the phase's work begins).
    pub fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.conn().execute(
            "UPDATE deploys SET phase = ?2 WHERE id = ?1",
            params![id, to_text(&phase)],
        )?;
        Ok(())
    }

    /// Ends a deploy that did not switch.
    pub fn fail_deploy(&self, id: i64, error: &str, log_tail: Option<&str>) -> Result<()> {
        finish(&self.conn(), id, Phase::Failed, Some(error), log_tail)
    }

    /// Records that a deploy is a canary rollout, to be over by `deadline_at`.
    pub fn begin_rollout(&self, deploy: i64, deadline_at: i64) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO rollouts (deploy, deadline_at) VALUES (?1, ?2)",
            params![deploy, deadline_at],
        )?;
        Ok(())
    }

    /// Keeps a rollout's state machine, so a restarted baton resumes it
    /// at the same step and weight.
    pub fn save_rollout(&self, deploy: i64, machine: &Deploy) -> Result<()> {
        let json = serde_json::to_string(machine)
            .map_err(|e| StoreError::Corrupt(format!("rollout: {e}")))?;
        self.conn().execute(
            "UPDATE rollouts SET machine = ?2 WHERE deploy = ?1",
            params![deploy, json],
        )?;
        Ok(())
    }

    /// A deploy's rollout: its deadline and its last saved state.
    pub fn rollout(&self, deploy: i64) -> Result<Option<SavedRollout>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT deadline_at, machine FROM rollouts WHERE deploy = ?1")?;
        let mut rows = stmt.query_map([deploy], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        let (deadline_at, machine) = row?;
        let machine = machine
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("rollout of deploy {deploy}: {e}")))?;
        Ok(Some(SavedRollout {
            deadline_at,
            machine,
        }))
    }

    /// Finished deploys and rollbacks of each service, by outcome:
    /// `(service, kind, phase, count)`.
    pub fn deploy_counts(&self) -> Result<Vec<(String, DeployKind, Phase, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT service, kind, phase, count(*) FROM deploys WHERE finished_at IS NOT NULL GROUP BY service, kind, phase ORDER BY service",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (service, kind, phase, n) = row?;
            Ok((service, from_text(&kind)?, from_text(&phase)?, n as u64))
        })
        .collect()
    }

    /// Deploys that never reached an outcome (baton died during them).
    pub fn unfinished_deploys(&self) -> Result<Vec<DeployRecord>> {
        self.deploys("WHERE finished_at IS NULL ORDER BY id", params![])
    }

    /// A service's deploys, newest first.
    pub fn history(&self, service: &str, limit: usize) -> Result<Vec<DeployRecord>> {
        self.deploys(
            "WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
            params![service, limit as i64],
        )
    }

    fn deploys(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<DeployRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, service, kind, version, color, phase, requested_by, started_at, finished_at, error, log_tail FROM deploys {filter}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                (
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ),
                (
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ),
                (
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ),
                (
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ),
            ))
        })?;
        rows.map(|row| {
            let (
                (id, service, kind),
                (version, color, phase),
                (requested_by, started_at, finished_at),
                (error, log_tail),
            ) = row?;
            Ok(DeployRecord {
                id,
                service,
                kind: from_text(&kind)?,
                version,
                color: parse(&color)?,
                phase: from_text(&phase)?,
                requested_by,
                started_at,
                finished_at,
                error,
                log_tail,
            })
        })
        .collect()
    }

    /// One deploy by id.
    pub fn deploy(&self, id: i64) -> Result<DeployRecord> {
        self.deploys("WHERE id = ?1", params![id])?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt(format!("deploy #{id} is missing")))
    }

    /// The newest deploy of a service, if any.
    pub fn last_deploy(&self, service: &str) -> Result<Option<DeployRecord>> {
        Ok(self.history(service, 1)?.into_iter().next())
    }
}
fn put_release(conn: &Connection, r: &Release) -> Result<()> {
    let instances = serde_json::to_string(&r.instances)
        .map_err(|e| StoreError::Corrupt(format!("instances: {e}")))?;
    conn.execute(
        "INSERT OR REPLACE INTO releases (service, color, version, role, instances, retire_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.service,
            r.color.as_str(),
            r.version,
            to_text(&r.role),
            instances,
            r.retire_at
        ],
    )?;
    Ok(())
}

fn finish(
    conn: &Connection,
    id: i64,
    phase: Phase,
    error: Option<&str>,
    log_tail: Option<&str>,
) -> Result<()> {
    conn.execute(
        "UPDATE deploys SET phase = ?2, finished_at = ?3, error = ?4, log_tail = ?5 WHERE id = ?1",
        params![id, to_text(&phase), now_ms(), error, log_tail],
    )?;
    Ok(())
}

/// The lowercase name serde gives a unit enum variant.
fn to_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn from_text<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("unknown value {s:?}")))
}

fn parse(color: &str) -> Result<Color> {
    color
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))
}

#[cfg(test)]
mod tests;
