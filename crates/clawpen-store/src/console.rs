//! The web console's tables: members' passwords (argon2id PHC strings, hashed by the server)
//! and sign-in sessions, kept by the SHA-256 of their cookie's token.

use sqlx::any::AnyRow;
use sqlx::Row;

use clawpen_core::ids::{MemberId, TenantId};

use crate::{now_ms, parse_id, Member, Result, Store, Tenant};

/// A signed-in browser. `member` and `tenant` are `None` for the operator's (admin) session.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub token_hash: String,
    pub member: Option<MemberId>,
    pub tenant: Option<TenantId>,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl WebSession {
    fn from_row(r: &AnyRow) -> Result<WebSession> {
        let member: Option<String> = r.try_get("member_id")?;
        let tenant: Option<String> = r.try_get("tenant_id")?;
        Ok(WebSession {
            token_hash: r.try_get("token_hash")?,
            member: member.map(parse_id).transpose()?,
            tenant: tenant.map(parse_id).transpose()?,
            csrf: r.try_get("csrf")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    }
}

impl Store {
    /// Sets (or replaces) a member's password hash.
    pub async fn set_password(&self, member: &MemberId, password_hash: &str) -> Result<()> {
        sqlx::query("INSERT INTO web_logins (member_id, password_hash, updated_at) VALUES ($1, $2, $3) ON CONFLICT (member_id) DO UPDATE SET password_hash = excluded.password_hash, updated_at = excluded.updated_at")
            .bind(member.as_str())
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The `web` member whose email is `email` (compared as stored: the server lowercases), with
    /// its password hash if it has one.
    pub async fn web_login(&self, email: &str) -> Result<Option<(Member, Option<String>)>> {
        let row = sqlx::query(
            "SELECT m.id, m.tenant_id, m.kind, m.external_id, m.display_name, m.created_at, l.password_hash FROM members m LEFT JOIN web_logins l ON l.member_id = m.id WHERE m.kind = 'web' AND m.external_id = $1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some((Member::from_row(&r)?, r.try_get("password_hash")?)))
    }

    pub async fn create_web_session(&self, s: &WebSession) -> Result<()> {
        sqlx::query("INSERT INTO web_sessions (token_hash, member_id, tenant_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&s.token_hash)
            .bind(s.member.as_ref().map(|m| m.as_str().to_owned()))
            .bind(s.tenant.as_ref().map(|t| t.as_str().to_owned()))
            .bind(&s.csrf)
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The session of a token's hash, if it has not expired by `now` (Unix ms).
    pub async fn web_session(&self, token_hash: &str, now: i64) -> Result<Option<WebSession>> {
        let row = sqlx::query("SELECT token_hash, member_id, tenant_id, csrf, created_at, expires_at FROM web_sessions WHERE token_hash = $1 AND expires_at > $2")
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(WebSession::from_row).transpose()
    }

    /// [`Store::web_session`] with its member and tenant, in one query: `None` also when a
    /// member's session no longer has its member.
    pub async fn web_session_with_member(&self, token_hash: &str, now: i64) -> Result<Option<(WebSession, Option<(Tenant, Member)>)>> {
        let row = sqlx::query(
            "SELECT s.token_hash, s.member_id, s.tenant_id, s.csrf, s.created_at, s.expires_at, \
             m.id AS m_id, m.kind AS m_kind, m.external_id AS m_external_id, m.display_name AS m_display_name, m.created_at AS m_created_at, \
             t.name AS t_name, t.plan AS t_plan, t.uid AS t_uid, t.created_at AS t_created_at \
             FROM web_sessions s LEFT JOIN members m ON m.id = s.member_id AND m.tenant_id = s.tenant_id LEFT JOIN tenants t ON t.id = s.tenant_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let session = WebSession::from_row(&r)?;
        let Some(tenant_id) = session.tenant.clone() else { return Ok(Some((session, None))) };
        let member_id: Option<String> = r.try_get("m_id")?;
        let tenant_name: Option<String> = r.try_get("t_name")?;
        let (Some(member_id), Some(tenant_name)) = (member_id, tenant_name) else { return Ok(None) };
        let tenant = Tenant { id: tenant_id.clone(), name: tenant_name, plan: r.try_get("t_plan")?, uid: r.try_get("t_uid")?, created_at: r.try_get("t_created_at")? };
        let member = Member { id: parse_id(member_id)?, tenant_id, kind: r.try_get("m_kind")?, external_id: r.try_get("m_external_id")?, display_name: r.try_get("m_display_name")?, created_at: r.try_get("m_created_at")? };
        Ok(Some((session, Some((tenant, member)))))
    }

    /// Ends one session.
    pub async fn delete_web_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1").bind(token_hash).execute(&self.writer).await?;
        Ok(())
    }

    /// Ends every session of a member, or with `None` every operator session. Returns how many.
    pub async fn delete_web_sessions_of(&self, member: Option<&MemberId>) -> Result<u64> {
        let res = match member {
            Some(m) => sqlx::query("DELETE FROM web_sessions WHERE member_id = $1").bind(m.as_str()).execute(&self.writer).await?,
            None => sqlx::query("DELETE FROM web_sessions WHERE member_id IS NULL AND tenant_id IS NULL").execute(&self.writer).await?,
        };
        Ok(res.rows_affected())
    }

    /// Forgets sessions that expired before `now`.
    pub async fn prune_web_sessions(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1").bind(now).execute(&self.writer).await?.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_end_at_sign_out_everywhere_and_with_their_member() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::for_testing(dir.path()).await.unwrap();
        let t = store.create_tenant("t", "free", 0).await.unwrap().id;
        let m = store.add_member(&t, "web", "ana@example.com", "Ana").await.unwrap();
        store.set_password(&m.id, "$argon2id$v=19$x").await.unwrap();
        store.set_password(&m.id, "$argon2id$v=19$y").await.unwrap();
        let (found, hash) = store.web_login("ana@example.com").await.unwrap().unwrap();
        assert_eq!((found.id.clone(), hash.as_deref()), (m.id.clone(), Some("$argon2id$v=19$y")));
        assert!(store.web_login("bob@example.com").await.unwrap().is_none());
        let now = now_ms();
        for (i, member) in [Some(m.id.clone()), Some(m.id.clone()), None].into_iter().enumerate() {
            let tenant = member.as_ref().map(|_| t.clone());
            store.create_web_session(&WebSession { token_hash: format!("h{i}"), member, tenant, csrf: "c".into(), created_at: now, expires_at: now + 1000 }).await.unwrap();
        }
        assert!(store.web_session("h0", now).await.unwrap().is_some());
        assert!(store.web_session("h0", now + 1000).await.unwrap().is_none(), "expired");
        let (s0, who) = store.web_session_with_member("h0", now).await.unwrap().unwrap();
        let (tenant, member) = who.unwrap();
        assert_eq!((s0.token_hash.as_str(), tenant.id.clone(), member.id.clone()), ("h0", t.clone(), m.id.clone()));
        assert!(store.web_session_with_member("h2", now).await.unwrap().unwrap().1.is_none(), "the operator's");
        assert_eq!(store.delete_web_sessions_of(Some(&m.id)).await.unwrap(), 2);
        assert!(store.web_session("h1", now).await.unwrap().is_none());
        assert!(store.web_session("h2", now).await.unwrap().is_some(), "the operator's stays");
        assert_eq!(store.delete_web_sessions_of(None).await.unwrap(), 1);
    }
}
