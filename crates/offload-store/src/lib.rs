//! Durable server state in SQLite: users, token hashes, containers and their history.
//!
//! One connection behind a mutex, in WAL mode; schema changes are numbered migrations
//! tracked in `PRAGMA user_version`. Every method is synchronous: async callers run them
//! on a blocking thread and never hold the connection across an `.await`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use offload_core::{
    ContainerId, ContainerRecord, Generation, ImageRef, Location, MoveDirection, MovePhase,
    MoveRecord, MoveStep, Name, State, UserName,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a container named {0:?} already exists")]
    NameTaken(String),
    #[error("the state database holds an invalid value in {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
    #[error("the state database is at schema version {found}, newer than this offload ({known})")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The kind of a stored token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Single-use secret exchanged by `offload join` for an API token.
    Join,
    /// Bearer credential of a joined client, or of a dashboard session (with an expiry).
    Api,
    /// Single-use secret of a dashboard sign-in link, exchanged for a short-lived API token.
    DashboardLink,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Join => "join",
            TokenKind::Api => "api",
            TokenKind::DashboardLink => "link",
        }
    }
}

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: UserName,
    pub admin: bool,
}

/// One entry of a container's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

const MIGRATIONS: &[&str] = &[
    // 1: users, tokens, containers, history.
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('join', 'api')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        used_at INTEGER
    );
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL REFERENCES users(name),
        image TEXT NOT NULL,
        command TEXT NOT NULL,
        cpus REAL NOT NULL,
        memory_bytes INTEGER NOT NULL,
        location TEXT NOT NULL,
        state TEXT NOT NULL,
        generation INTEGER NOT NULL,
        runtime_id TEXT,
        reason TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        container_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_by_container ON events (container_id, seq);",
    // 2: moves in flight, and how the last move of each container ended.
    "CREATE TABLE moves (
        container_id TEXT PRIMARY KEY REFERENCES containers(id) ON DELETE CASCADE,
        direction TEXT NOT NULL,
        step TEXT NOT NULL,
        from_generation INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        timings TEXT NOT NULL
    );
    ALTER TABLE containers ADD COLUMN last_move TEXT;",
    // 3: queries to owners.
    "CREATE TABLE queries (
        id TEXT PRIMARY KEY,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        owner TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        deadline_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        answered_at INTEGER,
        move_bytes INTEGER NOT NULL
    );
    CREATE INDEX queries_by_owner ON queries (owner, created_at);",
    // 4: whether a move skipped the edge (`--force`).
    "ALTER TABLE moves ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;",
    // 5: environment variables, a JSON list of KEY=VALUE.
    "ALTER TABLE containers ADD COLUMN env TEXT NOT NULL DEFAULT '[]';",
    // 6: the cluster node a cloud copy is placed on.
    "ALTER TABLE containers ADD COLUMN node TEXT;",
    // 7: the event stream of `GET /v1/events`; `user` is null for the cloud's own events.
    "CREATE TABLE stream (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        user TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX stream_by_user ON stream (user, id);",
    // 8: the audit log, append-only; `user` is null when no valid credentials came.
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        user TEXT,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_user ON audit (user, id);
    CREATE INDEX audit_by_time ON audit (at_ms);",
    // 9: users an operator disabled, and when each user was last seen.
    "ALTER TABLE users ADD COLUMN disabled_at INTEGER;
    ALTER TABLE users ADD COLUMN last_seen_at INTEGER;",
    // 10: a query about a move to another cluster node (`cloud_moves = "ask"`) names it.
    "ALTER TABLE queries ADD COLUMN to_node TEXT;",
    // 11: dashboard sign-in links, a third kind of token.
    "CREATE TABLE tokens_new (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('join', 'api', 'link')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        used_at INTEGER
    );
    INSERT INTO tokens_new SELECT hash, user, kind, created_at, expires_at, used_at FROM tokens;
    DROP TABLE tokens;
    ALTER TABLE tokens_new RENAME TO tokens;",
    // 12: how far each webhook has delivered the event stream.
    "CREATE TABLE webhook_cursors (
        url TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    );",
    // 13: the server's own switches (a drain of the whole cloud).
    "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 14: several devices per user: the one an edge container is on, the one a query asks.
    "ALTER TABLE containers ADD COLUMN device TEXT;
     ALTER TABLE queries ADD COLUMN device TEXT;",
];

/// A user as the operator sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: UserName,
    pub admin: bool,
    pub created_at: i64,
    /// Set while the user is disabled: none of their tokens work.
    pub disabled_at: Option<i64>,
    /// The last authenticated request (to the minute).
    pub last_seen_at: Option<i64>,
    /// API tokens that still work (or would, once enabled).
    pub tokens: usize,
}

/// What an API token's hash turns out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    Valid(Principal),
    /// A real token of a user the operator disabled.
    Disabled(UserName),
    /// Unknown, expired or revoked.
    Invalid,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Set by the store; ignored when appending.
    pub id: u64,
    pub at_ms: i64,
    /// Who: none when the request carried no valid credentials.
    pub user: Option<UserName>,
    /// What, e.g. `start`, `move`, `accept`, `token_create`.
    pub action: String,
    /// On what: a container, query or user, as the request named it.
    pub target: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// The HTTP status answered (0 for actions on the server host).
    pub status: u16,
    pub detail: String,
}

/// One stored entry of the event stream: its body is the JSON the server wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: u64,
    pub at_ms: i64,
    pub user: Option<UserName>,
    pub body: String,
}

/// Whose events a reader sees.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// An admin: every event.
    All,
    /// A user: their own and the cloud's.
    User(&'a UserName),
}

/// A query as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRecord {
    pub id: String,
    pub container_id: ContainerId,
    pub owner: UserName,
    pub reason: String,
    pub created_at: i64,
    pub deadline_at: i64,
    /// `pending`, `accepted`, `declined`, `expired` or `withdrawn`.
    pub state: String,
    pub answered_at: Option<i64>,
    pub move_bytes: u64,
    /// A move inside the cloud: the cluster node (its ID) the container would move to.
    /// `None` for a move to the owner's machine.
    pub to_node: Option<String>,
    /// A move to the owner's machine: the device asked (its agent's name).
    pub device: Option<String>,
}

/// The server's state database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before the server acts on it (I4).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // SQLite rolls back an interrupted transaction, so a poisoned lock holds a
        // consistent connection.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the user, or updates the admin flag of an existing one.
    pub fn upsert_user(&self, user: &UserName, admin: bool, now: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO users (name, admin, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET admin = excluded.admin",
            params![user.as_str(), admin, now],
        )?;
        Ok(())
    }

    /// Stores a token's hash.
    pub fn insert_token(
        &self,
        hash: &str,
        user: &UserName,
        kind: TokenKind,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (hash, user, kind, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, user.as_str(), kind.as_str(), now, expires_at],
        )?;
        Ok(())
    }

    /// Marks an unused, unexpired join token used and returns whose it was. A second use,
    /// an expired or an unknown token gives `None`.
    pub fn consume_join_token(&self, hash: &str, now: i64) -> Result<Option<Principal>> {
        self.consume_single_use(hash, TokenKind::Join, now)
    }

    /// Marks an unused, unexpired single-use token of `kind` used and returns whose it was.
    pub fn consume_single_use(
        &self,
        hash: &str,
        kind: TokenKind,
        now: i64,
    ) -> Result<Option<Principal>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                "SELECT t.user, u.admin FROM tokens t JOIN users u ON u.name = t.user
                 WHERE t.hash = ?1 AND t.kind = ?3 AND t.used_at IS NULL
                   AND u.disabled_at IS NULL
                   AND (t.expires_at IS NULL OR t.expires_at > ?2)",
                params![hash, now, kind.as_str()],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
            )
            .optional()?;
        let Some((user, admin)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE tokens SET used_at = ?2 WHERE hash = ?1",
            params![hash, now],
        )?;
        tx.commit()?;
        Ok(Some(Principal {
            user: parse_user(user)?,
            admin,
        }))
    }

    /// Whose an API token's hash is, and whether it works now.
    pub fn api_token(&self, hash: &str, now: i64) -> Result<TokenLookup> {
        let found = self
            .conn()
            .query_row(
                "SELECT t.user, u.admin, u.disabled_at IS NOT NULL
                 FROM tokens t JOIN users u ON u.name = t.user
                 WHERE t.hash = ?1 AND t.kind = 'api'
                   AND (t.expires_at IS NULL OR t.expires_at > ?2)",
                params![hash, now],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, bool>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                },
            )
            .optional()?;
        Ok(match found {
            None => TokenLookup::Invalid,
            Some((user, _, true)) => TokenLookup::Disabled(parse_user(user)?),
            Some((user, admin, false)) => TokenLookup::Valid(Principal {
                user: parse_user(user)?,
                admin,
            }),
        })
    }

    /// Disables (`Some(at)`) or enables (`None`) a user; `false` if there is no such user.
    pub fn set_user_disabled(&self, user: &UserName, at: Option<i64>) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE users SET disabled_at = ?2 WHERE name = ?1",
            params![user.as_str(), at],
        )? == 1)
    }

    /// Notes that `user` made an authenticated request at `at`.
    pub fn touch_user(&self, user: &UserName, at: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE users SET last_seen_at = ?2 WHERE name = ?1",
            params![user.as_str(), at],
        )?;
        Ok(())
    }

    /// Every user, by name.
    pub fn users(&self, now: i64) -> Result<Vec<UserRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.name, u.admin, u.created_at, u.disabled_at, u.last_seen_at,
                    (SELECT COUNT(*) FROM tokens t WHERE t.user = u.name AND t.kind = 'api'
                       AND (t.expires_at IS NULL OR t.expires_at > ?1))
             FROM users u ORDER BY u.name",
        )?;
        let rows = stmt.query_map(params![now], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, admin, created_at, disabled_at, last_seen_at, tokens) = row?;
            out.push(UserRecord {
                name: parse_user(name)?,
                admin,
                created_at,
                disabled_at,
                last_seen_at,
                tokens: usize::try_from(tokens).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Revokes every API token and every unused join token of `user`; how many went.
    pub fn revoke_tokens_of(&self, user: &UserName) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM tokens WHERE user = ?1 AND (kind = 'api' OR used_at IS NULL)",
            params![user.as_str()],
        )?)
    }

    /// Revokes one token by its hash; whose it was, if it existed.
    pub fn revoke_token(&self, hash: &str) -> Result<Option<UserName>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let user: Option<String> = tx
            .query_row(
                "SELECT user FROM tokens WHERE hash = ?1",
                params![hash],
                |row| row.get(0),
            )
            .optional()?;
        tx.execute("DELETE FROM tokens WHERE hash = ?1", params![hash])?;
        tx.commit()?;
        user.map(parse_user).transpose()
    }

    /// The principal an API token's hash belongs to, if it works now.
    pub fn api_principal(&self, hash: &str, now: i64) -> Result<Option<Principal>> {
        Ok(match self.api_token(hash, now)? {
            TokenLookup::Valid(principal) => Some(principal),
            TokenLookup::Disabled(_) | TokenLookup::Invalid => None,
        })
    }

    /// Records a new container. Fails with [`StoreError::NameTaken`] if the owner already
    /// has a container of that name.
    pub fn insert_container(&self, record: &ContainerRecord) -> Result<()> {
        let command = serde_json::to_string(&record.command).unwrap_or_else(|_| "[]".to_owned());
        let env = serde_json::to_string(&record.env).unwrap_or_else(|_| "[]".to_owned());
        let result = self.conn().execute(
            "INSERT INTO containers (id, name, owner, image, command, cpus, memory_bytes, location,
                 state, generation, runtime_id, reason, created_at, updated_at, env, node, device)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                record.id.as_str(),
                record.name.as_str(),
                record.owner.as_str(),
                record.image.as_str(),
                command,
                record.cpus,
                record.memory_bytes as i64,
                record.location.as_str(),
                record.state.as_str(),
                record.generation.get() as i64,
                record.runtime_id,
                record.reason,
                record.created_at,
                record.updated_at,
                env,
                record.node,
                record.device,
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(record.name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the mutable fields of a container record.
    pub fn update_container(&self, record: &ContainerRecord) -> Result<()> {
        self.conn().execute(
            UPDATE_CONTAINER,
            rusqlite::params_from_iter(update_params(record).iter()),
        )?;
        Ok(())
    }

    /// Starts a move: the record (now `moving`) and the move row, in one transaction.
    pub fn begin_move(&self, record: &ContainerRecord, mv: &MoveRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            UPDATE_CONTAINER,
            rusqlite::params_from_iter(update_params(record).iter()),
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO moves (container_id, direction, step, from_generation,
                 started_at, timings, forced) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                mv.container_id.as_str(),
                mv.direction().as_str(),
                mv.phase.step().as_str(),
                mv.from.get() as i64,
                mv.started_at,
                serde_json::to_string(&mv.timings).unwrap_or_else(|_| "{}".into()),
                mv.forced,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records the phase a move is about to enter, and the timings so far.
    pub fn update_move(&self, mv: &MoveRecord) -> Result<()> {
        self.conn().execute(
            "UPDATE moves SET step = ?2, timings = ?3 WHERE container_id = ?1",
            params![
                mv.container_id.as_str(),
                mv.phase.step().as_str(),
                serde_json::to_string(&mv.timings).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        Ok(())
    }

    /// Ends a move: the record's new state and the removal of the move row, together.
    pub fn finish_move(&self, record: &ContainerRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            UPDATE_CONTAINER,
            rusqlite::params_from_iter(update_params(record).iter()),
        )?;
        tx.execute(
            "DELETE FROM moves WHERE container_id = ?1",
            params![record.id.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every move in flight.
    pub fn moves(&self) -> Result<Vec<MoveRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT container_id, direction, step, from_generation, started_at, timings, forced
             FROM moves",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, bool>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, direction, step, from_generation, started_at, timings, forced) = row?;
            let direction = MoveDirection::parse(&direction)
                .ok_or_else(|| corrupt("moves.direction", &direction))?;
            let step = MoveStep::parse(&step).ok_or_else(|| corrupt("moves.step", &step))?;
            out.push(MoveRecord {
                container_id: ContainerId::parse(&id)
                    .map_err(|_| corrupt("moves.container_id", &id))?,
                phase: MovePhase::from_parts(direction, step).ok_or_else(|| {
                    corrupt(
                        "moves.step",
                        format!("{} in a move {}", step.as_str(), direction.as_str()),
                    )
                })?,
                from: Generation::new(
                    u64::try_from(from_generation).map_err(|_| {
                        corrupt("moves.from_generation", from_generation.to_string())
                    })?,
                ),
                forced,
                started_at,
                timings: serde_json::from_str(&timings)
                    .map_err(|_| corrupt("moves.timings", &timings))?,
            });
        }
        Ok(out)
    }

    /// The move in flight for one container.
    pub fn move_of(&self, id: &ContainerId) -> Result<Option<MoveRecord>> {
        Ok(self.moves()?.into_iter().find(|m| &m.container_id == id))
    }

    /// A container by id.
    pub fn container(&self, id: &ContainerId) -> Result<Option<ContainerRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM containers WHERE id = ?1"),
                params![id.as_str()],
                row_to_raw,
            )
            .optional()?
            .map(RawContainer::into_record)
            .transpose()
    }

    /// One of `owner`'s containers by id or name.
    pub fn find_container(
        &self,
        owner: &UserName,
        id_or_name: &str,
    ) -> Result<Option<ContainerRecord>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM containers WHERE owner = ?1 AND (id = ?2 OR name = ?2)
                     ORDER BY id = ?2 DESC LIMIT 1"
                ),
                params![owner.as_str(), id_or_name],
                row_to_raw,
            )
            .optional()?
            .map(RawContainer::into_record)
            .transpose()
    }

    /// All containers, or those of one owner, oldest first.
    pub fn containers(&self, owner: Option<&UserName>) -> Result<Vec<ContainerRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM containers WHERE ?1 IS NULL OR owner = ?1
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![owner.map(UserName::as_str)], row_to_raw)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.into_record()?);
        }
        Ok(out)
    }

    /// Forgets a container and its history.
    pub fn delete_container(&self, id: &ContainerId) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM containers WHERE id = ?1", params![id.as_str()])?;
        tx.execute(
            "DELETE FROM events WHERE container_id = ?1",
            params![id.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Appends to a container's history.
    pub fn record_event(&self, id: &ContainerId, at: i64, kind: &str, detail: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO events (container_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![id.as_str(), at, kind, detail],
        )?;
        Ok(())
    }

    /// The latest `limit` history entries of a container, oldest first.
    pub fn events(&self, id: &ContainerId, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, kind, detail FROM (
                 SELECT seq, at, kind, detail FROM events WHERE container_id = ?1
                 ORDER BY seq DESC LIMIT ?2)
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![id.as_str(), limit as i64], |row| {
            Ok(Event {
                at: row.get(0)?,
                kind: row.get(1)?,
                detail: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Store {
    /// Appends to the event stream; the id it returns is larger than every earlier one.
    pub fn append_stream(&self, at_ms: i64, user: Option<&UserName>, body: &str) -> Result<u64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO stream (at_ms, user, body) VALUES (?1, ?2, ?3)",
            params![at_ms, user.map(UserName::as_str), body],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// Up to `limit` entries after `after` that `audience` sees, oldest first.
    pub fn stream_after(
        &self,
        audience: Audience<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StreamEntry>> {
        let conn = self.conn();
        let (sql, user) = match audience {
            Audience::All => (
                "SELECT id, at_ms, user, body FROM stream WHERE id > ?1 ORDER BY id LIMIT ?3",
                None,
            ),
            Audience::User(user) => (
                "SELECT id, at_ms, user, body FROM stream
                 WHERE id > ?1 AND (user = ?2 OR user IS NULL) ORDER BY id LIMIT ?3",
                Some(user.as_str()),
            ),
        };
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![after as i64, user, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at_ms, user, body) = row?;
            let user = match user {
                Some(u) => Some(UserName::parse(&u).map_err(|_| corrupt("stream.user", u))?),
                None => None,
            };
            out.push(StreamEntry {
                id: id as u64,
                at_ms,
                user,
                body,
            });
        }
        Ok(out)
    }

    /// Up to `limit` of `user`'s own entries of kind `kind`, newest first.
    pub fn stream_recent(
        &self,
        user: &UserName,
        kind: &str,
        limit: usize,
    ) -> Result<Vec<StreamEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at_ms, body FROM stream
             WHERE user = ?1
               AND CASE WHEN json_valid(body) THEN json_extract(body, '$.kind') END = ?2
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![user.as_str(), kind, limit as i64], |row| {
            Ok(StreamEntry {
                id: row.get::<_, i64>(0)? as u64,
                at_ms: row.get(1)?,
                user: Some(user.clone()),
                body: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether `audience` may resume after entry `id`: it is still kept and is theirs to
    /// see. Another user's entry answers as an unknown one does.
    pub fn stream_visible(&self, audience: Audience<'_>, id: u64) -> Result<bool> {
        let user: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT user FROM stream WHERE id = ?1",
                params![id as i64],
                |row| row.get(0),
            )
            .optional()?;
        Ok(match (user, audience) {
            (None, _) => false,
            (Some(_), Audience::All) | (Some(None), Audience::User(_)) => true,
            (Some(Some(owner)), Audience::User(user)) => owner == user.as_str(),
        })
    }

    /// The id after which the last `tail` entries `audience` sees begin (0: from the start).
    pub fn stream_tail_start(&self, audience: Audience<'_>, tail: usize) -> Result<u64> {
        let conn = self.conn();
        let (sql, user) = match audience {
            Audience::All => (
                "SELECT id FROM stream ORDER BY id DESC LIMIT 1 OFFSET ?2",
                None,
            ),
            Audience::User(user) => (
                "SELECT id FROM stream WHERE user = ?1 OR user IS NULL
                 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                Some(user.as_str()),
            ),
        };
        let id: Option<i64> = conn
            .query_row(sql, params![user, tail as i64], |row| row.get(0))
            .optional()?;
        Ok(id.unwrap_or(0) as u64)
    }

    /// A switch of the server's, if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Sets (`Some`) or clears (`None`) a switch.
    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(value) => self.conn().execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?,
            None => self
                .conn()
                .execute("DELETE FROM settings WHERE key = ?1", params![key])?,
        };
        Ok(())
    }

    /// The last event a webhook delivered (or gave up on), if it ever ran.
    pub fn webhook_cursor(&self, url: &str) -> Result<Option<u64>> {
        let id: Option<i64> = self
            .conn()
            .query_row(
                "SELECT last_id FROM webhook_cursors WHERE url = ?1",
                params![url],
                |row| row.get(0),
            )
            .optional()?;
        Ok(id.map(|id| u64::try_from(id).unwrap_or(0)))
    }

    /// Notes that a webhook is done with every event up to `last_id`.
    pub fn set_webhook_cursor(&self, url: &str, last_id: u64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO webhook_cursors (url, last_id) VALUES (?1, ?2)
             ON CONFLICT (url) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
            params![url, i64::try_from(last_id).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    /// The newest entry's id, 0 when the stream is empty.
    pub fn stream_head(&self) -> Result<u64> {
        let id: Option<i64> = self
            .conn()
            .query_row("SELECT MAX(id) FROM stream", [], |row| row.get(0))?;
        Ok(id.unwrap_or(0) as u64)
    }

    /// Forgets entries older than `before_ms`; returns how many went.
    pub fn prune_stream(&self, before_ms: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM stream WHERE at_ms < ?1", params![before_ms])?)
    }

    /// Appends to the audit log, which has no way to change or remove an entry.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit (at_ms, user, action, target, outcome, status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                entry.at_ms,
                entry.user.as_ref().map(UserName::as_str),
                entry.action,
                entry.target,
                entry.outcome,
                entry.status,
                entry.detail
            ],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// The newest `limit` audit entries at or after `since_ms`, of `user` if given,
    /// oldest first.
    pub fn audit(
        &self,
        user: Option<&UserName>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at_ms, user, action, target, outcome, status, detail FROM (
                 SELECT * FROM audit WHERE at_ms >= ?1 AND (?2 IS NULL OR user = ?2)
                 ORDER BY id DESC LIMIT ?3)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(
            params![since_ms, user.map(UserName::as_str), limit as i64],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, u16>(6)?,
                    row.get::<_, String>(7)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at_ms, user, action, target, outcome, status, detail) = row?;
            let user = match user {
                Some(u) => Some(UserName::parse(&u).map_err(|_| corrupt("audit.user", u))?),
                None => None,
            };
            out.push(AuditEntry {
                id: id as u64,
                at_ms,
                user,
                action,
                target,
                outcome,
                status,
                detail,
            });
        }
        Ok(out)
    }

    pub fn insert_query(&self, q: &QueryRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO queries (id, container_id, owner, reason, created_at, deadline_at, state,
                 answered_at, move_bytes, to_node, device)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                q.id,
                q.container_id.as_str(),
                q.owner.as_str(),
                q.reason,
                q.created_at,
                q.deadline_at,
                q.state,
                q.answered_at,
                q.move_bytes as i64,
                q.to_node,
                q.device
            ],
        )?;
        Ok(())
    }

    /// Moves a pending query to `state`; `false` if it was no longer pending.
    pub fn close_query(&self, id: &str, state: &str, at: i64) -> Result<bool> {
        let changed = self.conn().execute(
            "UPDATE queries SET state = ?2, answered_at = ?3 WHERE id = ?1 AND state = 'pending'",
            params![id, state, at],
        )?;
        Ok(changed == 1)
    }

    pub fn query(&self, id: &str) -> Result<Option<QueryRecord>> {
        Ok(self
            .queries_where("id = ?1", params![id])?
            .into_iter()
            .next())
    }

    /// A user's queries, newest first (at most 100).
    pub fn queries_of(&self, owner: &UserName) -> Result<Vec<QueryRecord>> {
        self.queries_where(
            "owner = ?1 ORDER BY created_at DESC LIMIT 100",
            params![owner.as_str()],
        )
    }

    /// Every query still waiting for an answer.
    pub fn pending_queries(&self) -> Result<Vec<QueryRecord>> {
        self.queries_where("state = 'pending'", params![])
    }

    fn queries_where(&self, clause: &str, args: impl rusqlite::Params) -> Result<Vec<QueryRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, container_id, owner, reason, created_at, deadline_at, state, answered_at,
                 move_bytes, to_node, device FROM queries WHERE {clause}"
        ))?;
        let rows = stmt.query_map(args, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<i64>>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, Option<String>>(9)?,
                row.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                container,
                owner,
                reason,
                created_at,
                deadline_at,
                state,
                answered_at,
                bytes,
                to_node,
                device,
            ) = row?;
            out.push(QueryRecord {
                id,
                container_id: ContainerId::parse(&container)
                    .map_err(|_| corrupt("queries.container_id", &container))?,
                owner: parse_user(owner)?,
                reason,
                created_at,
                deadline_at,
                state,
                answered_at,
                move_bytes: bytes.max(0) as u64,
                to_node,
                device,
            });
        }
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

const COLUMNS: &str = "id, name, owner, image, command, cpus, memory_bytes, location, state, \
                       generation, runtime_id, reason, created_at, updated_at, last_move, env, node, \
                       device";

const UPDATE_CONTAINER: &str = "UPDATE containers SET location = ?2, state = ?3, generation = ?4,
         runtime_id = ?5, reason = ?6, updated_at = ?7, last_move = ?8, node = ?9, device = ?10
     WHERE id = ?1";

fn update_params(record: &ContainerRecord) -> [Box<dyn rusqlite::ToSql + '_>; 10] {
    [
        Box::new(record.id.as_str()),
        Box::new(record.location.as_str()),
        Box::new(record.state.as_str()),
        Box::new(record.generation.get() as i64),
        Box::new(record.runtime_id.as_deref()),
        Box::new(record.reason.as_deref()),
        Box::new(record.updated_at),
        Box::new(
            record
                .last_move
                .as_ref()
                .and_then(|m| serde_json::to_string(m).ok()),
        ),
        Box::new(record.node.as_deref()),
        Box::new(record.device.as_deref()),
    ]
}

struct RawContainer {
    id: String,
    name: String,
    owner: String,
    image: String,
    command: String,
    cpus: f64,
    memory_bytes: i64,
    location: String,
    state: String,
    generation: i64,
    runtime_id: Option<String>,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    last_move: Option<String>,
    env: String,
    node: Option<String>,
    device: Option<String>,
}

fn row_to_raw(row: &Row<'_>) -> rusqlite::Result<RawContainer> {
    Ok(RawContainer {
        id: row.get(0)?,
        name: row.get(1)?,
        owner: row.get(2)?,
        image: row.get(3)?,
        command: row.get(4)?,
        cpus: row.get(5)?,
        memory_bytes: row.get(6)?,
        location: row.get(7)?,
        state: row.get(8)?,
        generation: row.get(9)?,
        runtime_id: row.get(10)?,
        reason: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        last_move: row.get(14)?,
        env: row.get(15)?,
        node: row.get(16)?,
        device: row.get(17)?,
    })
}

fn corrupt(column: &'static str, value: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        column,
        value: value.into(),
    }
}

fn parse_user(value: String) -> Result<UserName> {
    UserName::parse(&value).map_err(|_| corrupt("users.name", value))
}

impl RawContainer {
    fn into_record(self) -> Result<ContainerRecord> {
        Ok(ContainerRecord {
            id: ContainerId::parse(&self.id).map_err(|_| corrupt("containers.id", &self.id))?,
            name: Name::parse(&self.name).map_err(|_| corrupt("containers.name", &self.name))?,
            owner: parse_user(self.owner)?,
            image: ImageRef::parse(&self.image)
                .map_err(|_| corrupt("containers.image", &self.image))?,
            command: serde_json::from_str(&self.command)
                .map_err(|_| corrupt("containers.command", &self.command))?,
            env: serde_json::from_str(&self.env)
                .map_err(|_| corrupt("containers.env", &self.env))?,
            cpus: self.cpus,
            memory_bytes: u64::try_from(self.memory_bytes)
                .map_err(|_| corrupt("containers.memory_bytes", self.memory_bytes.to_string()))?,
            location: Location::parse(&self.location)
                .ok_or_else(|| corrupt("containers.location", &self.location))?,
            state: State::parse(&self.state)
                .ok_or_else(|| corrupt("containers.state", &self.state))?,
            generation: Generation::new(
                u64::try_from(self.generation)
                    .map_err(|_| corrupt("containers.generation", self.generation.to_string()))?,
            ),
            runtime_id: self.runtime_id,
            node: self.node,
            device: self.device,
            reason: self.reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_move: match self.last_move {
                Some(text) => Some(
                    serde_json::from_str(&text)
                        .map_err(|_| corrupt("containers.last_move", text))?,
                ),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        UserName::parse(name).unwrap()
    }

    fn record(owner: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: ContainerId::random(),
            name: Name::parse(name).unwrap(),
            owner: user(owner),
            image: ImageRef::parse("busybox").unwrap(),
            command: vec!["sleep".into(), "1".into()],
            env: vec!["COURSE=os101".into()],
            cpus: 1.0,
            memory_bytes: 1 << 28,
            location: Location::Cloud,
            state: State::Creating,
            generation: Generation::FIRST,
            runtime_id: None,
            reason: None,
            created_at: 1,
            updated_at: 1,
            last_move: None,
            node: None,
            device: None,
        }
    }

    #[test]
    fn each_user_reads_their_own_stream_and_the_clouds() {
        let store = Store::open_in_memory().unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        let a = store.append_stream(10, Some(&alice), "a").unwrap();
        let cloud = store.append_stream(11, None, "cloud").unwrap();
        let b = store.append_stream(12, Some(&bob), "b").unwrap();
        assert!(a < cloud && cloud < b);
        let bodies = |audience, after| -> Vec<String> {
            let entries = store.stream_after(audience, after, 10).unwrap();
            entries.into_iter().map(|e| e.body).collect()
        };
        assert_eq!(bodies(Audience::User(&alice), 0), ["a", "cloud"]);
        assert_eq!(bodies(Audience::User(&bob), a), ["cloud", "b"]);
        assert_eq!(bodies(Audience::All, 0), ["a", "cloud", "b"]);
        assert_eq!(bodies(Audience::All, b), Vec::<String>::new());
        assert_eq!(store.stream_after(Audience::All, 0, 2).unwrap().len(), 2);

        assert!(store.stream_visible(Audience::User(&alice), a).unwrap());
        assert!(store.stream_visible(Audience::User(&alice), cloud).unwrap());
        assert!(!store.stream_visible(Audience::User(&alice), b).unwrap());
        assert!(!store.stream_visible(Audience::All, b + 1).unwrap());
        assert_eq!(store.stream_head().unwrap(), b);
        assert_eq!(
            store.stream_tail_start(Audience::User(&alice), 1).unwrap(),
            a
        );
        assert_eq!(
            store.stream_tail_start(Audience::User(&alice), 5).unwrap(),
            0
        );
        assert_eq!(store.stream_tail_start(Audience::All, 0).unwrap(), b);

        assert_eq!(store.prune_stream(12).unwrap(), 2);
        assert!(!store.stream_visible(Audience::All, a).unwrap());
        assert_eq!(bodies(Audience::All, 0), ["b"]);
        // Ids are never reused, even after the newest entries went.
        assert_eq!(store.prune_stream(100).unwrap(), 1);
        assert!(store.append_stream(13, None, "c").unwrap() > b);
    }

    #[test]
    fn recent_entries_of_a_kind_are_the_users_own_newest_first() {
        let store = Store::open_in_memory().unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        let ended = |n: u32| format!(r#"{{"kind":"move_ended","n":{n}}}"#);
        store.append_stream(1, Some(&alice), &ended(1)).unwrap();
        store
            .append_stream(2, Some(&alice), r#"{"kind":"move_phase"}"#)
            .unwrap();
        store.append_stream(3, Some(&bob), &ended(2)).unwrap();
        store.append_stream(4, None, &ended(3)).unwrap();
        store.append_stream(5, Some(&alice), &ended(4)).unwrap();
        store.append_stream(6, Some(&alice), "not json").unwrap();
        let bodies = |limit| -> Vec<String> {
            let found = store.stream_recent(&alice, "move_ended", limit).unwrap();
            found.into_iter().map(|e| e.body).collect()
        };
        assert_eq!(bodies(10), [ended(4), ended(1)]);
        assert_eq!(bodies(1), [ended(4)]);
    }

    #[test]
    fn the_audit_log_reads_back_by_user_and_time_oldest_first() {
        let store = Store::open_in_memory().unwrap();
        let entry = |at_ms, user: Option<&str>, action: &str| AuditEntry {
            id: 0,
            at_ms,
            user: user.map(|u| UserName::parse(u).unwrap()),
            action: action.to_owned(),
            target: Some("c1".to_owned()),
            outcome: "ok".to_owned(),
            status: 200,
            detail: String::new(),
        };
        store
            .append_audit(&entry(10, Some("alice"), "start"))
            .unwrap();
        store.append_audit(&entry(20, None, "read")).unwrap();
        store.append_audit(&entry(30, Some("bob"), "stop")).unwrap();
        store
            .append_audit(&entry(40, Some("alice"), "move"))
            .unwrap();
        let actions = |user: Option<&str>, since, limit| -> Vec<String> {
            let user = user.map(|u| UserName::parse(u).unwrap());
            let got = store.audit(user.as_ref(), since, limit).unwrap();
            got.into_iter().map(|e| e.action).collect()
        };
        assert_eq!(actions(None, 0, 10), ["start", "read", "stop", "move"]);
        assert_eq!(actions(Some("alice"), 0, 10), ["start", "move"]);
        assert_eq!(actions(Some("alice"), 11, 10), ["move"]);
        assert_eq!(actions(None, 0, 2), ["stop", "move"]);
        let all = store.audit(None, 0, 10).unwrap();
        assert_eq!(all[1].user, None);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn a_disabled_users_tokens_stop_working_until_enabled_and_revoked_ones_never_again() {
        let store = Store::open_in_memory().unwrap();
        let alice = user("alice");
        store.upsert_user(&alice, false, 0).unwrap();
        store
            .insert_token("api1", &alice, TokenKind::Api, 0, None)
            .unwrap();
        store
            .insert_token("api2", &alice, TokenKind::Api, 0, None)
            .unwrap();
        store
            .insert_token("join1", &alice, TokenKind::Join, 0, Some(100))
            .unwrap();
        assert!(matches!(
            store.api_token("api1", 1).unwrap(),
            TokenLookup::Valid(_)
        ));
        assert!(store.set_user_disabled(&alice, Some(5)).unwrap());
        assert_eq!(
            store.api_token("api1", 6).unwrap(),
            TokenLookup::Disabled(alice.clone())
        );
        assert_eq!(store.api_principal("api1", 6).unwrap(), None);
        assert_eq!(store.consume_join_token("join1", 6).unwrap(), None);
        assert!(store.users(6).unwrap()[0].disabled_at.is_some());
        assert!(store.set_user_disabled(&alice, None).unwrap());
        assert!(!store.set_user_disabled(&user("nobody"), None).unwrap());
        assert!(store.api_principal("api1", 7).unwrap().is_some());

        assert_eq!(store.revoke_token("api1").unwrap(), Some(alice.clone()));
        assert_eq!(store.revoke_token("api1").unwrap(), None);
        assert_eq!(store.api_token("api1", 8).unwrap(), TokenLookup::Invalid);
        assert_eq!(store.users(8).unwrap()[0].tokens, 1);
        // The unused join token and the other API token.
        assert_eq!(store.revoke_tokens_of(&alice).unwrap(), 2);
        assert_eq!(store.api_token("api2", 8).unwrap(), TokenLookup::Invalid);
        store.touch_user(&alice, 9).unwrap();
        let users = store.users(9).unwrap();
        assert_eq!((users[0].tokens, users[0].last_seen_at), (0, Some(9)));
    }

    #[test]
    fn join_tokens_are_single_use_and_expire() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        store
            .insert_token("h1", &user("alice"), TokenKind::Join, 0, Some(100))
            .unwrap();
        store
            .insert_token("h2", &user("alice"), TokenKind::Join, 0, Some(100))
            .unwrap();
        assert_eq!(store.consume_join_token("h2", 100).unwrap(), None);
        let p = store.consume_join_token("h1", 50).unwrap().unwrap();
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(store.consume_join_token("h1", 51).unwrap(), None);
        assert_eq!(store.api_principal("h1", 51).unwrap(), None);
    }

    #[test]
    fn dashboard_links_work_once_until_they_expire_and_are_not_join_tokens() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        for hash in ["l1", "l2", "l3"] {
            store
                .insert_token(hash, &user("alice"), TokenKind::DashboardLink, 0, Some(300))
                .unwrap();
        }
        store
            .insert_token("j1", &user("alice"), TokenKind::Join, 0, None)
            .unwrap();
        let link = TokenKind::DashboardLink;
        assert_eq!(store.consume_join_token("l1", 10).unwrap(), None);
        assert_eq!(store.consume_single_use("j1", link, 10).unwrap(), None);
        assert_eq!(store.api_principal("l1", 10).unwrap(), None);
        let p = store.consume_single_use("l1", link, 10).unwrap().unwrap();
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(store.consume_single_use("l1", link, 11).unwrap(), None);
        assert_eq!(store.consume_single_use("l2", link, 300).unwrap(), None);
        store.set_user_disabled(&user("alice"), Some(20)).unwrap();
        assert_eq!(store.consume_single_use("l3", link, 30).unwrap(), None);
    }

    #[test]
    fn containers_round_trip_and_names_are_unique_per_owner() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        store.upsert_user(&user("bob"), false, 0).unwrap();
        let mut a = record("alice", "box");
        store.insert_container(&a).unwrap();
        assert!(matches!(
            store.insert_container(&record("alice", "box")),
            Err(StoreError::NameTaken(_))
        ));
        store.insert_container(&record("bob", "box")).unwrap();
        a.state = State::Running;
        a.runtime_id = Some("abc".into());
        a.node = Some("n0de".into());
        a.device = Some("desktop".into());
        store.update_container(&a).unwrap();
        assert_eq!(store.container(&a.id).unwrap().unwrap(), a);
        assert_eq!(
            store
                .find_container(&user("alice"), "box")
                .unwrap()
                .unwrap(),
            a
        );
        assert!(
            store
                .find_container(&user("bob"), a.id.as_str())
                .unwrap()
                .is_none()
        );
        assert_eq!(store.containers(Some(&user("alice"))).unwrap().len(), 1);
        assert_eq!(store.containers(None).unwrap().len(), 2);
        store.delete_container(&a.id).unwrap();
        assert!(store.container(&a.id).unwrap().is_none());
    }

    #[test]
    fn moves_begin_step_and_finish_atomically() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        let mut rec = record("alice", "box");
        store.insert_container(&rec).unwrap();
        rec.state = State::Moving;
        let mut mv = MoveRecord::new(rec.id.clone(), MoveDirection::ToEdge, rec.generation);
        mv.started_at = 5;
        store.begin_move(&rec, &mv).unwrap();
        assert_eq!(
            store.container(&rec.id).unwrap().unwrap().state,
            State::Moving
        );
        mv.phase = MovePhase::ToEdge(offload_core::moves::ToEdge::StoppingCloud);
        mv.timings.precopy_ms = Some(12);
        store.update_move(&mv).unwrap();
        assert_eq!(store.move_of(&rec.id).unwrap(), Some(mv.clone()));
        rec.state = State::Running;
        rec.location = Location::Edge;
        rec.generation = mv.to();
        store.finish_move(&rec).unwrap();
        assert!(store.moves().unwrap().is_empty());
        assert_eq!(store.container(&rec.id).unwrap().unwrap(), rec);
    }

    #[test]
    fn a_stored_move_in_an_impossible_phase_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        let rec = record("alice", "box");
        store.insert_container(&rec).unwrap();
        let mut mv = MoveRecord::new(rec.id.clone(), MoveDirection::ToCloud, rec.generation);
        mv.forced = true;
        store.begin_move(&rec, &mv).unwrap();
        assert_eq!(store.moves().unwrap(), vec![mv]);
        store
            .conn()
            .execute("UPDATE moves SET step = 'preparing'", [])
            .unwrap();
        let err = store.moves().unwrap_err();
        assert!(err.to_string().contains("moves.step"), "{err}");
    }

    #[test]
    fn queries_close_once() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_user(&user("alice"), false, 0).unwrap();
        let rec = record("alice", "box");
        store.insert_container(&rec).unwrap();
        let q = QueryRecord {
            id: "q1".into(),
            container_id: rec.id.clone(),
            owner: user("alice"),
            reason: "cpu".into(),
            created_at: 1,
            deadline_at: 61,
            state: "pending".into(),
            answered_at: None,
            move_bytes: 5,
            to_node: None,
            device: None,
        };
        store.insert_query(&q).unwrap();
        assert_eq!(store.pending_queries().unwrap(), vec![q.clone()]);
        let to_node = QueryRecord {
            id: "q2".into(),
            to_node: Some("n0de".into()),
            device: Some("laptop".into()),
            ..q.clone()
        };
        store.insert_query(&to_node).unwrap();
        assert_eq!(store.query("q2").unwrap(), Some(to_node));
        assert!(store.close_query("q2", "withdrawn", 5).unwrap());
        assert!(store.close_query("q1", "declined", 5).unwrap());
        assert!(!store.close_query("q1", "accepted", 6).unwrap());
        assert_eq!(store.query("q1").unwrap().unwrap().state, "declined");
        assert_eq!(store.queries_of(&user("alice")).unwrap().len(), 2);
        assert!(store.pending_queries().unwrap().is_empty());
    }

    #[test]
    fn reopening_keeps_state_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let a = record("alice", "box");
        {
            let store = Store::open(&path).unwrap();
            store.upsert_user(&user("alice"), true, 0).unwrap();
            store.insert_container(&a).unwrap();
            store.record_event(&a.id, 5, "created", "x").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.container(&a.id).unwrap().unwrap(), a);
        assert_eq!(store.events(&a.id, 10).unwrap().len(), 1);
    }
}
