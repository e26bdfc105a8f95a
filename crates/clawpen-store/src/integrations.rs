//! Integrations (the broker's tables): OAuth states being spent, tenants' connections to
//! providers, the tools each tenant enabled, proposed writes, and the tool-call audit.
//!
//! Every query names the tenant, but [`Store::take_oauth_state`]: the OAuth callback knows only
//! the state, which is single-use and stored hashed. Tokens are never in these tables: a
//! connection's refresh token is sealed in `secrets` under [`REFRESH_TOKEN_PURPOSE`] (or
//! [`ACCESS_TOKEN_PURPOSE`] when the provider's token never expires) with the connection's id as
//! the record, and deleting the connection deletes them.

use sqlx::any::AnyRow;
use sqlx::Row;

use clawpen_core::ids::{AgentId, ConnectionId, ProposalId, TenantId};

use crate::{conflict_on_unique, now_ms, parse_id, Result, Store, StoreError};

/// Purpose under which a connection's refresh token is sealed (record: the connection's id).
pub const REFRESH_TOKEN_PURPOSE: &str = "oauth.refresh_token";
/// Purpose under which a connection's access token is sealed when the provider gave one that
/// never expires and no refresh token (a GitHub OAuth App, Slack without token rotation).
pub const ACCESS_TOKEN_PURPOSE: &str = "oauth.access_token";
/// Purpose under which the PKCE code_verifier of an OAuth state is sealed (record: the state's
/// hash); kept in the state's row, not in `secrets`.
pub const VERIFIER_PURPOSE: &str = "oauth.pkce_verifier";

/// `connections.status` of a working connection.
pub const STATUS_CONNECTED: &str = "connected";
/// `connections.status` once the provider refused the refresh token.
pub const STATUS_NEEDS_RECONNECTING: &str = "needs_reconnecting";

/// An OAuth state, as taken back by the callback.
#[derive(Debug, Clone)]
pub struct OAuthState {
    pub state_hash: String,
    pub tenant_id: TenantId,
    /// The member who began the connection.
    pub member: String,
    pub provider: String,
    /// Space-separated, as asked for.
    pub scopes: String,
    /// The PKCE code_verifier, sealed.
    pub verifier_sealed: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A tenant's connection to a provider. Never its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionId,
    pub tenant_id: TenantId,
    pub provider: String,
    /// The login or email of the account, when the provider told it.
    pub account: Option<String>,
    /// Space-separated, as granted.
    pub scopes: String,
    /// [`STATUS_CONNECTED`] or [`STATUS_NEEDS_RECONNECTING`].
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A write an agent proposed.
#[derive(Debug, Clone)]
pub struct ProposalRow {
    pub id: ProposalId,
    pub tenant_id: TenantId,
    /// 1, 2, 3 … per tenant.
    pub number: i64,
    pub agent_id: AgentId,
    pub tool: String,
    pub provider: String,
    pub connection_id: ConnectionId,
    /// Human-readable: "GitHub acme/app issue #12".
    pub target: String,
    /// What the write needs, as JSON.
    pub payload: String,
    /// Exactly what will be written.
    pub text: String,
    pub from_tool_result: bool,
    /// `pending`, `approved`, `rejected` or `failed`.
    pub state: String,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub outcome: Option<String>,
}

/// What a new proposal carries (its id, number, state and time are the store's).
#[derive(Debug, Clone)]
pub struct NewProposal<'a> {
    pub agent_id: &'a AgentId,
    pub tool: &'a str,
    pub provider: &'a str,
    pub connection_id: &'a ConnectionId,
    pub target: &'a str,
    pub payload: &'a str,
    pub text: &'a str,
    pub from_tool_result: bool,
}

/// One tool call, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallRow {
    pub tenant_id: TenantId,
    pub agent_id: AgentId,
    pub tool: String,
    /// Hex SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// `ok` or an error code.
    pub outcome: String,
    pub duration_ms: i64,
    /// Size of what the call returned.
    pub bytes: i64,
    pub at: i64,
}

const CONNECTION_COLUMNS: &str = "id, tenant_id, provider, account, scopes, status, created_at, updated_at";
const PROPOSAL_COLUMNS: &str = "id, tenant_id, number, agent_id, tool, provider, connection_id, target, payload, text, from_tool_result, state, created_at, decided_at, decided_by, outcome";

impl Connection {
    fn from_row(r: &AnyRow) -> Result<Connection> {
        Ok(Connection {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            provider: r.try_get("provider")?,
            account: r.try_get("account")?,
            scopes: r.try_get("scopes")?,
            status: r.try_get("status")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

impl ProposalRow {
    fn from_row(r: &AnyRow) -> Result<ProposalRow> {
        Ok(ProposalRow {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            number: r.try_get("number")?,
            agent_id: parse_id(r.try_get("agent_id")?)?,
            tool: r.try_get("tool")?,
            provider: r.try_get("provider")?,
            connection_id: parse_id(r.try_get("connection_id")?)?,
            target: r.try_get("target")?,
            payload: r.try_get("payload")?,
            text: r.try_get("text")?,
            from_tool_result: r.try_get::<i64, _>("from_tool_result")? != 0,
            state: r.try_get("state")?,
            created_at: r.try_get("created_at")?,
            decided_at: r.try_get("decided_at")?,
            decided_by: r.try_get("decided_by")?,
            outcome: r.try_get("outcome")?,
        })
    }
}

impl Store {
    // ---- OAuth states ----

    /// Stores a state (its hash) for a connection a member of `tenant` began.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_oauth_state(&self, state_hash: &str, tenant: &TenantId, member: &str, provider: &str, scopes: &str, verifier_sealed: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO oauth_states (state_hash, tenant_id, member, provider, scopes, verifier_sealed, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(state_hash)
            .bind(tenant.as_str())
            .bind(member)
            .bind(provider)
            .bind(scopes)
            .bind(verifier_sealed)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Takes a state: one `DELETE … RETURNING`, so of two callbacks racing with the same state
    /// exactly one gets it. An expired state is taken (and so spent) like any other; the caller
    /// checks `expires_at`.
    pub async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthState>> {
        let row = sqlx::query("DELETE FROM oauth_states WHERE state_hash = $1 RETURNING state_hash, tenant_id, member, provider, scopes, verifier_sealed, created_at, expires_at")
            .bind(state_hash)
            .fetch_optional(&self.writer)
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(OAuthState {
            state_hash: r.try_get("state_hash")?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            member: r.try_get("member")?,
            provider: r.try_get("provider")?,
            scopes: r.try_get("scopes")?,
            verifier_sealed: r.try_get("verifier_sealed")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        }))
    }

    /// Forgets states that expired before `now` (Unix ms). Returns how many.
    pub async fn prune_oauth_states(&self, now: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM oauth_states WHERE expires_at <= $1").bind(now).execute(&self.writer).await?;
        Ok(res.rows_affected())
    }

    // ---- connections ----

    /// Stores a connection and its sealed token in one transaction: a new row, or the tenant's
    /// existing connection to the same provider updated in place (account, scopes, status
    /// `connected`) when it has the same id. `token_purpose` is [`REFRESH_TOKEN_PURPOSE`] or
    /// [`ACCESS_TOKEN_PURPOSE`]; the other purpose's secret of the connection is removed.
    /// `Conflict` when the tenant's connection to that provider has another id (made meanwhile:
    /// read it and seal for its id).
    pub async fn save_connection(&self, c: &Connection, token_purpose: &str, sealed: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query(&format!(
            "INSERT INTO connections ({CONNECTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, provider) DO UPDATE SET account = excluded.account, scopes = excluded.scopes, status = excluded.status, updated_at = excluded.updated_at \
             WHERE connections.id = excluded.id"
        ))
        .bind(c.id.as_str())
        .bind(c.tenant_id.as_str())
        .bind(&c.provider)
        .bind(c.account.as_deref())
        .bind(&c.scopes)
        .bind(&c.status)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "a connection with this id exists already"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("the tenant's {} connection has another id", c.provider)));
        }
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND id = $2 AND (purpose = $3 OR purpose = $4)")
            .bind(c.tenant_id.as_str())
            .bind(c.id.as_str())
            .bind(REFRESH_TOKEN_PURPOSE)
            .bind(ACCESS_TOKEN_PURPOSE)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO secrets (tenant_id, purpose, id, sealed, updated_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(c.tenant_id.as_str())
            .bind(token_purpose)
            .bind(c.id.as_str())
            .bind(sealed)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's connections, oldest first.
    pub async fn connections(&self, tenant: &TenantId) -> Result<Vec<Connection>> {
        let rows = sqlx::query(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = $1 ORDER BY created_at, id"))
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Connection::from_row).collect()
    }

    /// A connection of the tenant by id; another tenant's is `None`.
    pub async fn get_connection(&self, tenant: &TenantId, id: &ConnectionId) -> Result<Option<Connection>> {
        let row = sqlx::query(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Connection::from_row).transpose()
    }

    /// The tenant's connection to `provider`, if any.
    pub async fn connection_for(&self, tenant: &TenantId, provider: &str) -> Result<Option<Connection>> {
        let row = sqlx::query(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE tenant_id = $1 AND provider = $2"))
            .bind(tenant.as_str())
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Connection::from_row).transpose()
    }

    /// Sets a connection's status. Returns whether the tenant has that connection.
    pub async fn set_connection_status(&self, tenant: &TenantId, id: &ConnectionId, status: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE connections SET status = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
            .bind(status)
            .bind(now_ms())
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replaces a connection's sealed token, in place (a rotated refresh token). Returns whether
    /// the tenant still has that connection: one deleted meanwhile gets no token back.
    pub async fn replace_connection_token(&self, tenant: &TenantId, id: &ConnectionId, token_purpose: &str, sealed: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("UPDATE connections SET updated_at = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(now_ms())
            .bind(tenant.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        crate::secrets::upsert_secret(&mut *tx, tenant, token_purpose, id.as_str(), sealed).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes a connection of the tenant and its sealed tokens; another tenant's is `NotFound`.
    pub async fn delete_connection(&self, tenant: &TenantId, id: &ConnectionId) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("DELETE FROM connections WHERE tenant_id = $1 AND id = $2").bind(tenant.as_str()).bind(id.as_str()).execute(&mut *tx).await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND id = $2 AND (purpose = $3 OR purpose = $4)")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(REFRESH_TOKEN_PURPOSE)
            .bind(ACCESS_TOKEN_PURPOSE)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- enabled tools ----

    /// Replaces the set of tools the tenant enabled.
    pub async fn set_enabled_tools(&self, tenant: &TenantId, tools: &[String]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM enabled_tools WHERE tenant_id = $1").bind(tenant.as_str()).execute(&mut *tx).await?;
        let now = now_ms();
        for tool in tools {
            sqlx::query("INSERT INTO enabled_tools (tenant_id, tool, enabled_at) VALUES ($1, $2, $3) ON CONFLICT (tenant_id, tool) DO NOTHING")
                .bind(tenant.as_str())
                .bind(tool)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tools the tenant enabled, by name.
    pub async fn enabled_tools(&self, tenant: &TenantId) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT tool FROM enabled_tools WHERE tenant_id = $1 ORDER BY tool").bind(tenant.as_str()).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("tool")?)).collect()
    }

    // ---- proposals ----

    /// Records a pending proposal with the tenant's next number.
    pub async fn create_proposal(&self, tenant: &TenantId, p: &NewProposal<'_>) -> Result<ProposalRow> {
        // On SQLite writes queue on one connection; on PostgreSQL two tenants' writers may race
        // for a number, which the unique index refuses: then take the next one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.writer.begin().await?;
            let row = sqlx::query("SELECT COALESCE(MAX(number), 0) AS n FROM proposals WHERE tenant_id = $1").bind(tenant.as_str()).fetch_one(&mut *tx).await?;
            let number: i64 = row.try_get::<i64, _>("n")? + 1;
            let proposal = ProposalRow {
                id: ProposalId::new(),
                tenant_id: tenant.clone(),
                number,
                agent_id: p.agent_id.clone(),
                tool: p.tool.to_owned(),
                provider: p.provider.to_owned(),
                connection_id: p.connection_id.clone(),
                target: p.target.to_owned(),
                payload: p.payload.to_owned(),
                text: p.text.to_owned(),
                from_tool_result: p.from_tool_result,
                state: "pending".to_owned(),
                created_at: now_ms(),
                decided_at: None,
                decided_by: None,
                outcome: None,
            };
            let inserted = sqlx::query(&format!("INSERT INTO proposals ({PROPOSAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, NULL)"))
                .bind(proposal.id.as_str())
                .bind(tenant.as_str())
                .bind(number)
                .bind(proposal.agent_id.as_str())
                .bind(&proposal.tool)
                .bind(&proposal.provider)
                .bind(proposal.connection_id.as_str())
                .bind(&proposal.target)
                .bind(&proposal.payload)
                .bind(&proposal.text)
                .bind(proposal.from_tool_result as i64)
                .bind(&proposal.state)
                .bind(proposal.created_at)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(proposal);
                }
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() && attempt < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The tenant's proposals, newest first; only the pending ones when `pending_only`.
    pub async fn proposals(&self, tenant: &TenantId, pending_only: bool, limit: i64) -> Result<Vec<ProposalRow>> {
        let rows = sqlx::query(&format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE tenant_id = $1 AND ($2 = 0 OR state = 'pending') ORDER BY number DESC LIMIT $3"))
            .bind(tenant.as_str())
            .bind(pending_only as i64)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ProposalRow::from_row).collect()
    }

    /// A proposal of the tenant by number.
    pub async fn get_proposal(&self, tenant: &TenantId, number: i64) -> Result<Option<ProposalRow>> {
        let row = sqlx::query(&format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE tenant_id = $1 AND number = $2"))
            .bind(tenant.as_str())
            .bind(number)
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(ProposalRow::from_row).transpose()
    }

    /// Decides a pending proposal (`approved` or `rejected`), conditionally: of two members
    /// deciding at once exactly one does. Returns whether this call decided it.
    pub async fn decide_proposal(&self, tenant: &TenantId, number: i64, state: &str, member: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE proposals SET state = $1, decided_at = $2, decided_by = $3 WHERE tenant_id = $4 AND number = $5 AND state = 'pending'")
            .bind(state)
            .bind(now_ms())
            .bind(member)
            .bind(tenant.as_str())
            .bind(number)
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records what performing an approved proposal did; `state` stays `approved` or becomes
    /// `failed`.
    pub async fn finish_proposal(&self, tenant: &TenantId, number: i64, state: &str, outcome: &str) -> Result<()> {
        sqlx::query("UPDATE proposals SET state = $1, outcome = $2 WHERE tenant_id = $3 AND number = $4 AND state = 'approved' AND outcome IS NULL")
            .bind(state)
            .bind(outcome)
            .bind(tenant.as_str())
            .bind(number)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // ---- tool calls ----

    /// Appends a tool call to the audit.
    pub async fn record_tool_call(&self, c: &ToolCallRow) -> Result<()> {
        sqlx::query("INSERT INTO tool_calls (tenant_id, agent_id, tool, args_digest, outcome, duration_ms, bytes, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(c.tenant_id.as_str())
            .bind(c.agent_id.as_str())
            .bind(&c.tool)
            .bind(&c.args_digest)
            .bind(&c.outcome)
            .bind(c.duration_ms)
            .bind(c.bytes)
            .bind(c.at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The tenant's latest tool calls, newest first.
    pub async fn tool_calls(&self, tenant: &TenantId, limit: i64) -> Result<Vec<ToolCallRow>> {
        let rows = sqlx::query("SELECT tenant_id, agent_id, tool, args_digest, outcome, duration_ms, bytes, at FROM tool_calls WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(tenant.as_str())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ToolCallRow {
                    tenant_id: parse_id(r.try_get("tenant_id")?)?,
                    agent_id: parse_id(r.try_get("agent_id")?)?,
                    tool: r.try_get("tool")?,
                    args_digest: r.try_get("args_digest")?,
                    outcome: r.try_get("outcome")?,
                    duration_ms: r.try_get("duration_ms")?,
                    bytes: r.try_get("bytes")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;

    fn connection(tenant: &TenantId, provider: &str) -> Connection {
        Connection {
            id: ConnectionId::new(),
            tenant_id: tenant.clone(),
            provider: provider.into(),
            account: Some("a@example.com".into()),
            scopes: "s1 s2".into(),
            status: STATUS_CONNECTED.into(),
            created_at: now_ms(),
            updated_at: now_ms(),
        }
    }

    /// A state is taken once; a second take (or another racing one) gets nothing.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_oauth_state_is_taken_once() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            s.create_oauth_state("h1", &a.id, "mb_x", "google", "s1", "v1:x", now_ms() + 60_000).await.unwrap();
            let takes = futures_join(s, "h1").await;
            assert_eq!(takes.iter().filter(|t| t.is_some()).count(), 1, "{}", db.backend);
            let got = takes.into_iter().flatten().next().unwrap();
            assert_eq!((got.tenant_id, got.member.as_str(), got.provider.as_str()), (a.id.clone(), "mb_x", "google"));
            assert!(s.take_oauth_state("h1").await.unwrap().is_none());
            s.create_oauth_state("h2", &a.id, "mb_x", "google", "s1", "v1:x", now_ms() - 1).await.unwrap();
            assert_eq!(s.prune_oauth_states(now_ms()).await.unwrap(), 1);
        }
    }

    async fn futures_join(s: &Store, hash: &str) -> Vec<Option<OAuthState>> {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (s, hash) = (s.clone(), hash.to_owned());
            tasks.push(tokio::spawn(async move { s.take_oauth_state(&hash).await.unwrap() }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// Connections are one per tenant and provider, scoped by tenant, and take their sealed
    /// token with them.
    #[tokio::test(flavor = "multi_thread")]
    async fn connections_are_scoped_and_take_their_token_along() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 100_000).await.unwrap();
            let ca = connection(&a.id, "google");
            s.save_connection(&ca, REFRESH_TOKEN_PURPOSE, "v1:sealed").await.unwrap();
            assert_eq!(s.get_secret(&a.id, REFRESH_TOKEN_PURPOSE, ca.id.as_str()).await.unwrap().as_deref(), Some("v1:sealed"));
            // A second Google connection for A under another id: refused (reconnecting reuses the id).
            assert!(matches!(s.save_connection(&connection(&a.id, "google"), REFRESH_TOKEN_PURPOSE, "v1:x").await, Err(StoreError::Conflict(_))), "{}", db.backend);
            // The same id again: updated in place, the token replaced.
            let mut again = ca.clone();
            again.scopes = "s1".into();
            again.status = STATUS_CONNECTED.into();
            s.save_connection(&again, ACCESS_TOKEN_PURPOSE, "v1:access").await.unwrap();
            assert!(s.get_secret(&a.id, REFRESH_TOKEN_PURPOSE, ca.id.as_str()).await.unwrap().is_none());
            assert_eq!(s.get_connection(&a.id, &ca.id).await.unwrap().unwrap().scopes, "s1");
            assert_eq!(s.connections(&a.id).await.unwrap().len(), 1);
            // B sees none of it and can change none of it.
            assert!(s.get_connection(&b.id, &ca.id).await.unwrap().is_none());
            assert!(s.connection_for(&b.id, "google").await.unwrap().is_none());
            assert!(!s.set_connection_status(&b.id, &ca.id, STATUS_NEEDS_RECONNECTING).await.unwrap());
            assert!(!s.replace_connection_token(&b.id, &ca.id, REFRESH_TOKEN_PURPOSE, "v1:evil").await.unwrap());
            assert!(s.get_secret(&b.id, REFRESH_TOKEN_PURPOSE, ca.id.as_str()).await.unwrap().is_none());
            assert!(matches!(s.delete_connection(&b.id, &ca.id).await, Err(StoreError::NotFound)));
            assert!(s.set_connection_status(&a.id, &ca.id, STATUS_NEEDS_RECONNECTING).await.unwrap());
            assert_eq!(s.connection_for(&a.id, "google").await.unwrap().unwrap().status, STATUS_NEEDS_RECONNECTING);
            s.delete_connection(&a.id, &ca.id).await.unwrap();
            assert!(s.get_secret(&a.id, ACCESS_TOKEN_PURPOSE, ca.id.as_str()).await.unwrap().is_none());
            assert!(!s.replace_connection_token(&a.id, &ca.id, REFRESH_TOKEN_PURPOSE, "v1:late").await.unwrap(), "no token for a deleted connection");
            assert!(s.get_secret(&a.id, REFRESH_TOKEN_PURPOSE, ca.id.as_str()).await.unwrap().is_none());
        }
    }

    /// Proposal numbers count per tenant; a proposal is decided once.
    #[tokio::test(flavor = "multi_thread")]
    async fn proposals_are_numbered_per_tenant_and_decided_once() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 100_000).await.unwrap();
            let agent = AgentId::new();
            let conn = ConnectionId::new();
            let new = NewProposal { agent_id: &agent, tool: "github_comment", provider: "github", connection_id: &conn, target: "GitHub a/b issue #1", payload: "{}", text: "hi", from_tool_result: true };
            assert_eq!(s.create_proposal(&a.id, &new).await.unwrap().number, 1);
            assert_eq!(s.create_proposal(&a.id, &new).await.unwrap().number, 2);
            assert_eq!(s.create_proposal(&b.id, &new).await.unwrap().number, 1, "{}", db.backend);
            assert!(s.decide_proposal(&a.id, 1, "approved", "mb_1").await.unwrap());
            assert!(!s.decide_proposal(&a.id, 1, "rejected", "mb_2").await.unwrap());
            assert!(!s.decide_proposal(&b.id, 2, "approved", "mb_1").await.unwrap(), "B has no #2");
            s.finish_proposal(&a.id, 1, "failed", "GitHub answered 404").await.unwrap();
            let p = s.get_proposal(&a.id, 1).await.unwrap().unwrap();
            assert_eq!((p.state.as_str(), p.outcome.as_deref(), p.decided_by.as_deref(), p.from_tool_result), ("failed", Some("GitHub answered 404"), Some("mb_1"), true));
            assert_eq!(s.proposals(&a.id, true, 100).await.unwrap().iter().map(|p| p.number).collect::<Vec<_>>(), vec![2]);
            assert_eq!(s.proposals(&a.id, false, 100).await.unwrap().len(), 2);
            // Enabled tools and the audit, scoped likewise.
            s.set_enabled_tools(&a.id, &["gmail_search".into(), "github_comment".into()]).await.unwrap();
            assert_eq!(s.enabled_tools(&a.id).await.unwrap(), vec!["github_comment".to_string(), "gmail_search".into()]);
            assert!(s.enabled_tools(&b.id).await.unwrap().is_empty());
            let call = ToolCallRow { tenant_id: a.id.clone(), agent_id: agent.clone(), tool: "gmail_search".into(), args_digest: "00".into(), outcome: "ok".into(), duration_ms: 3, bytes: 10, at: now_ms() };
            s.record_tool_call(&call).await.unwrap();
            assert_eq!(s.tool_calls(&a.id, 10).await.unwrap(), vec![call]);
            assert!(s.tool_calls(&b.id, 10).await.unwrap().is_empty());
        }
    }
}
