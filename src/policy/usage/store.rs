//! The durable usage store: request counts per API key per UTC day, in an
//! SQLite database (`<data_dir>/usage.sqlite3`, WAL journal,
//! `synchronous = FULL`). Only the usage coordinator thread writes it; the
//! `coregate usage` command reads it, also while the gateway runs.
//!
//! Why SQLite (the `rusqlite` crate, bundled): a committed transaction
//! survives `kill -9` and power loss (it is fsynced), a torn write is rolled
//! back on the next open, WAL lets a reader run beside the writer, and
//! `PRAGMA quick_check` tells a damaged file from a good one so start-up can
//! refuse it instead of resetting usage. An append-only log would need its
//! own checksums, compaction and reader protocol to match that.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "usage.sqlite3";
/// The schema this build writes and reads.
const SCHEMA_VERSION: i64 = 1;

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// One row of recorded usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub key_name: String,
    pub day: i64,
    pub count: u64,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for writing. Errors
    /// name the file and say what to do; a damaged file is never reset.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| match not_writable(&path) {
            Some(why) => unwritable(&path, &why),
            None => format!("cannot open usage store {}: {e}", path.display()),
        })?;
        // SQLite opens a file it may not write read-only, without an error;
        // every write would fail later. Say so now, with the OS's reason.
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            let why = not_writable(&path).unwrap_or_else(|| "opened read-only".into());
            return Err(unwritable(&path, &why));
        }
        let store = Store { conn, path };
        store.check_integrity()?;
        store
            .conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| store.err("cannot set busy timeout", e))?;
        store
            .conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| store.err("cannot switch to WAL", e))?;
        store
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| store.err("cannot set synchronous", e))?;
        store
            .conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS usage (
                     key_id TEXT NOT NULL, day INTEGER NOT NULL, count INTEGER NOT NULL,
                     PRIMARY KEY (key_id, day)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS plans (name TEXT PRIMARY KEY, first_period INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', 1);",
            )
            .map_err(|e| store.err("cannot create its tables", e))?;
        store.check_schema()?;
        Ok(store)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens an existing store for reading (`coregate usage`).
    pub fn open_read_only(dir: &Path) -> Result<Store, String> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Err(format!(
                "no usage store at {} (the gateway creates it on its first start with usage plans or data_dir set)",
                path.display()
            ));
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open usage store {}: {e}", path.display()))?;
        let store = Store { conn, path };
        let _ = store.conn.busy_timeout(std::time::Duration::from_secs(5));
        store.check_integrity()?;
        store.check_schema()?;
        Ok(store)
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> String {
        format!("usage store {}: {what}: {e}", self.path.display())
    }

    fn check_integrity(&self) -> Result<(), String> {
        let result: Result<Vec<String>, rusqlite::Error> = self
            .conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
        match result {
            Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
            Ok(rows) => Err(format!(
                "usage store {} is damaged ({}); the gateway will not start over it, which would reset usage: restore it from a backup, or move it away to start with no recorded usage",
                self.path.display(),
                rows.join("; ")
            )),
            Err(e) => Err(format!(
                "usage store {} cannot be read ({e}); the gateway will not start over it, which would reset usage: restore it from a backup, or move it away to start with no recorded usage",
                self.path.display()
            )),
        }
    }

    fn check_schema(&self) -> Result<(), String> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT v FROM meta WHERE k = 'schema'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err("cannot read its schema version", e))?;
        match v {
            Some(SCHEMA_VERSION) => Ok(()),
            other => Err(format!(
                "usage store {} has schema version {other:?}; this build reads version {SCHEMA_VERSION}",
                self.path.display()
            )),
        }
    }

    /// Adds counts in one durable transaction: all of them or none.
    pub fn add(&mut self, deltas: &[(String, String, i64, u64)]) -> Result<(), String> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| format!("usage store {}: {e}", self.path.display()))?;
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO usage (key_id, day, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key_id, day) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(|e| format!("usage store {}: {e}", self.path.display()))?;
            let mut name = tx
                .prepare_cached("INSERT OR REPLACE INTO keys (key_id, name) VALUES (?1, ?2)")
                .map_err(|e| format!("usage store {}: {e}", self.path.display()))?;
            for (id, key_name, day, n) in deltas {
                let n = i64::try_from(*n).unwrap_or(i64::MAX);
                up.execute(params![id, day, n])
                    .map_err(|e| format!("usage store {}: {e}", self.path.display()))?;
                name.execute(params![id, key_name])
                    .map_err(|e| format!("usage store {}: {e}", self.path.display()))?;
            }
        }
        tx.commit()
            .map_err(|e| format!("usage store {}: commit: {e}", self.path.display()))
    }

    /// Requests of `key_id` on days `from..to`.
    pub fn sum(&self, key_id: &str, from: i64, to: i64) -> Result<u64, String> {
        let n: Option<i64> = self
            .conn
            .query_row(
                "SELECT SUM(count) FROM usage WHERE key_id = ?1 AND day >= ?2 AND day < ?3",
                params![key_id, from, to],
                |r| r.get(0),
            )
            .map_err(|e| self.err("cannot read usage", e))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// The first period (its first day) a plan was in force, recording
    /// `current` if the plan is new: the quota `offset` applies to it.
    pub fn first_period(&mut self, plan: &str, current: i64) -> Result<i64, String> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO plans (name, first_period) VALUES (?1, ?2)",
                params![plan, current],
            )
            .map_err(|e| self.err("cannot record a usage plan", e))?;
        self.conn
            .query_row(
                "SELECT first_period FROM plans WHERE name = ?1",
                params![plan],
                |r| r.get(0),
            )
            .map_err(|e| self.err("cannot read a usage plan", e))
    }

    /// The first period recorded for a plan, if any (read-only).
    pub fn recorded_first_period(&self, plan: &str) -> Result<Option<i64>, String> {
        self.conn
            .query_row(
                "SELECT first_period FROM plans WHERE name = ?1",
                params![plan],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err("cannot read a usage plan", e))
    }

    /// Recorded usage on days `from..to`, for one key (by id or name) or
    /// all, ordered by key name then day.
    pub fn rows(&self, key: Option<&str>, from: i64, to: i64) -> Result<Vec<UsageRow>, String> {
        let mut st = self
            .conn
            .prepare(
                "SELECT u.key_id, COALESCE(k.name, u.key_id), u.day, u.count
                 FROM usage u LEFT JOIN keys k ON k.key_id = u.key_id
                 WHERE u.day >= ?1 AND u.day < ?2
                   AND (?3 IS NULL OR u.key_id = ?3 OR k.name = ?3)
                 ORDER BY 2, u.day",
            )
            .map_err(|e| self.err("cannot read usage", e))?;
        let rows = st
            .query_map(params![from, to, key], |r| {
                Ok(UsageRow {
                    key_id: r.get(0)?,
                    key_name: r.get(1)?,
                    day: r.get(2)?,
                    count: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err("cannot read usage", e))?;
        Ok(rows)
    }
}

/// Why `path` cannot be opened for writing, as the OS says it (e.g.
/// `Read-only file system (os error 30)`), or None when it can. Called only
/// after SQLite failed or fell back to read-only, to name the cause.
fn not_writable(path: &Path) -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .err()
        .map(|e| e.to_string())
}

fn unwritable(path: &Path, why: &str) -> String {
    format!(
        "usage store {} is read-only or cannot be created ({why}); the gateway records usage there and will not start without it: make server.data_dir writable by the gateway's user, or point it elsewhere",
        path.display()
    )
}
