//! Telegram: tenants' own bots, pairing codes, the agent each Telegram member talks to, and the
//! update ids already taken (so that a retried update is answered once).
//!
//! Bot tokens and webhook secrets are not here: they are sealed in `secrets` under
//! [`BOT_TOKEN_PURPOSE`] and [`WEBHOOK_SECRET_PURPOSE`] with the bot's id as the record.

use sqlx::any::AnyRow;
use sqlx::Row;

use clawpen_core::ids::{AgentId, MemberId, TelegramBotId, TenantId};

use crate::{conflict_on_unique, now_ms, parse_id, Member, Result, Store, StoreError};

/// Purpose under which a tenant bot's token is sealed (record: the bot's id).
pub const BOT_TOKEN_PURPOSE: &str = "telegram.bot_token";
/// Purpose under which a tenant bot's webhook secret is sealed (record: the bot's id).
pub const WEBHOOK_SECRET_PURPOSE: &str = "telegram.webhook_secret";
/// `members.kind` of a Telegram user.
pub const MEMBER_KIND: &str = "telegram";

/// A tenant's own bot, as stored: never its token.
#[derive(Debug, Clone)]
pub struct TelegramBot {
    /// Opaque; the webhook URL carries it.
    pub id: TelegramBotId,
    pub tenant_id: TenantId,
    /// The agent the bot's users talk to.
    pub agent_id: AgentId,
    /// Telegram's id of the bot (`getMe`).
    pub bot_user_id: i64,
    pub username: String,
    /// `webhook` or `polling`.
    pub mode: String,
    /// `members` (only the tenant's Telegram members) or `open` (anyone who writes to it).
    pub access: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What redeeming a pairing code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The user is now a member of the code's tenant and talks to its agent. `again` when the
    /// user was a member of that tenant already (the link moved to the code's agent).
    Paired { member: MemberId, tenant: TenantId, agent: AgentId, again: bool },
    /// No such code (or, for a tenant's own bot, a code of another tenant).
    Unknown,
    Expired,
    Used,
    /// The user is a member of another tenant; the code was not spent.
    OtherTenant,
}

const BOT_COLUMNS: &str = "id, tenant_id, agent_id, bot_user_id, username, mode, access, created_at, updated_at";

impl TelegramBot {
    fn from_row(r: &AnyRow) -> Result<TelegramBot> {
        Ok(TelegramBot {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            agent_id: parse_id(r.try_get("agent_id")?)?,
            bot_user_id: r.try_get("bot_user_id")?,
            username: r.try_get("username")?,
            mode: r.try_get("mode")?,
            access: r.try_get("access")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

impl Store {
    // ---- tenants' own bots ----

    /// Stores a tenant's bot. A tenant has at most one, and a Telegram bot serves one tenant:
    /// either taken already is a `Conflict`.
    pub async fn create_telegram_bot(&self, bot: &TelegramBot) -> Result<()> {
        sqlx::query(&format!("INSERT INTO telegram_bots ({BOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(bot.id.as_str())
            .bind(bot.tenant_id.as_str())
            .bind(bot.agent_id.as_str())
            .bind(bot.bot_user_id)
            .bind(&bot.username)
            .bind(&bot.mode)
            .bind(&bot.access)
            .bind(bot.created_at)
            .bind(bot.updated_at)
            .execute(&self.writer)
            .await
            .map_err(|e| conflict_on_unique(e, "this Telegram bot is already connected (to this or another account)"))?;
        Ok(())
    }

    /// The tenant's bot, if it has one.
    pub async fn get_telegram_bot(&self, tenant: &TenantId) -> Result<Option<TelegramBot>> {
        let row = sqlx::query(&format!("SELECT {BOT_COLUMNS} FROM telegram_bots WHERE tenant_id = $1"))
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(TelegramBot::from_row).transpose()
    }

    /// A bot by its id alone: for the webhook route (which then checks the bot's own secret)
    /// and the pollers, never for a tenant's request.
    pub async fn find_telegram_bot(&self, id: &TelegramBotId) -> Result<Option<TelegramBot>> {
        let row = sqlx::query(&format!("SELECT {BOT_COLUMNS} FROM telegram_bots WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(TelegramBot::from_row).transpose()
    }

    /// The tenant a Telegram bot (by Telegram's id of it) is connected to, if any.
    pub async fn telegram_bot_owner(&self, bot_user_id: i64) -> Result<Option<TenantId>> {
        let row = sqlx::query("SELECT tenant_id FROM telegram_bots WHERE bot_user_id = $1").bind(bot_user_id).fetch_optional(&self.pool).await?;
        row.map(|r| parse_id(r.try_get("tenant_id")?)).transpose()
    }

    /// Every tenant's bot (to start the pollers at server start).
    pub async fn all_telegram_bots(&self) -> Result<Vec<TelegramBot>> {
        let rows = sqlx::query(&format!("SELECT {BOT_COLUMNS} FROM telegram_bots ORDER BY created_at, id")).fetch_all(&self.pool).await?;
        rows.iter().map(TelegramBot::from_row).collect()
    }

    /// Points the tenant's bot at another of its agents: the bot's people talk to `agent` from
    /// now on. `NotFound` when the tenant has no bot, or `agent` is not the tenant's.
    pub async fn set_telegram_bot_agent(&self, tenant: &TenantId, agent: &AgentId) -> Result<()> {
        let res = sqlx::query("UPDATE telegram_bots SET agent_id = $1, updated_at = $2 WHERE tenant_id = $3 AND EXISTS (SELECT 1 FROM agents WHERE id = $1 AND tenant_id = $3)")
            .bind(agent.as_str())
            .bind(now_ms())
            .bind(tenant.as_str())
            .execute(&self.writer)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Removes a tenant's bot and its sealed token and webhook secret; another tenant's bot is
    /// `NotFound`.
    pub async fn delete_telegram_bot(&self, tenant: &TenantId, id: &TelegramBotId) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("DELETE FROM telegram_bots WHERE id = $1 AND tenant_id = $2").bind(id.as_str()).bind(tenant.as_str()).execute(&mut *tx).await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND id = $2 AND (purpose = $3 OR purpose = $4)")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(BOT_TOKEN_PURPOSE)
            .bind(WEBHOOK_SECRET_PURPOSE)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the sealed secrets of a bot whose row is gone (its agent was deleted).
    pub async fn delete_telegram_bot_secrets(&self, tenant: &TenantId, id: &TelegramBotId) -> Result<()> {
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND id = $2 AND (purpose = $3 OR purpose = $4)")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(BOT_TOKEN_PURPOSE)
            .bind(WEBHOOK_SECRET_PURPOSE)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // ---- pairing ----

    /// Stores a pairing code (its SHA-256) for an agent of a tenant.
    pub async fn create_pairing_code(&self, tenant: &TenantId, agent: &AgentId, code_sha256: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO telegram_pairing_codes (code_sha256, tenant_id, agent_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(code_sha256)
            .bind(tenant.as_str())
            .bind(agent.as_str())
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Spends a pairing code for the Telegram user `external_id`, in one transaction: the code
    /// must exist (and belong to `only_tenant` when given), be unused and unexpired at `now`, and
    /// the user must not belong to another tenant. Then the user is a member of the code's
    /// tenant (added, or kept) and talks to the code's agent.
    pub async fn redeem_pairing_code(&self, code_sha256: &str, only_tenant: Option<&TenantId>, external_id: &str, display_name: &str, now: i64) -> Result<Redeemed> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT tenant_id, agent_id, expires_at, used_at FROM telegram_pairing_codes WHERE code_sha256 = $1")
            .bind(code_sha256)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(Redeemed::Unknown) };
        let tenant: TenantId = parse_id(row.try_get("tenant_id")?)?;
        let agent: AgentId = parse_id(row.try_get("agent_id")?)?;
        if only_tenant.is_some_and(|t| *t != tenant) {
            return Ok(Redeemed::Unknown);
        }
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Ok(Redeemed::Used);
        }
        if row.try_get::<i64, _>("expires_at")? <= now {
            return Ok(Redeemed::Expired);
        }
        let existing = sqlx::query("SELECT id, tenant_id FROM members WHERE kind = $1 AND external_id = $2")
            .bind(MEMBER_KIND)
            .bind(external_id)
            .fetch_optional(&mut *tx)
            .await?;
        let existing: Option<(MemberId, TenantId)> = match existing {
            Some(r) => Some((parse_id(r.try_get("id")?)?, parse_id(r.try_get("tenant_id")?)?)),
            None => None,
        };
        if existing.as_ref().is_some_and(|(_, t)| *t != tenant) {
            return Ok(Redeemed::OtherTenant);
        }
        // Conditional, so that of two redeems racing for one code only one spends it.
        let spent = sqlx::query("UPDATE telegram_pairing_codes SET used_at = $1, used_by = $2 WHERE code_sha256 = $3 AND used_at IS NULL AND expires_at > $1")
            .bind(now)
            .bind(external_id)
            .bind(code_sha256)
            .execute(&mut *tx)
            .await?;
        if spent.rows_affected() == 0 {
            return Ok(Redeemed::Used);
        }
        let (member, again) = match existing {
            Some((id, _)) => (id, true),
            None => {
                let id = MemberId::new();
                sqlx::query("INSERT INTO members (id, tenant_id, kind, external_id, display_name, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(MEMBER_KIND)
                    .bind(external_id)
                    .bind(display_name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| conflict_on_unique(e, "this Telegram user was paired at the same moment"))?;
                (id, false)
            }
        };
        sqlx::query("INSERT INTO telegram_links (member_id, agent_id, updated_at) VALUES ($1, $2, $3) ON CONFLICT (member_id) DO UPDATE SET agent_id = excluded.agent_id, updated_at = excluded.updated_at")
            .bind(member.as_str())
            .bind(agent.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Redeemed::Paired { member, tenant, agent, again })
    }

    /// The Telegram user `external_id` as a member (of whichever tenant), with the agent linked
    /// for the shared bot if any.
    pub async fn telegram_member(&self, external_id: &str) -> Result<Option<(Member, Option<AgentId>)>> {
        let row = sqlx::query(
            "SELECT m.id, m.tenant_id, m.kind, m.external_id, m.display_name, m.created_at, l.agent_id AS link_agent \
             FROM members m LEFT JOIN telegram_links l ON l.member_id = m.id WHERE m.kind = $1 AND m.external_id = $2",
        )
        .bind(MEMBER_KIND)
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let link: Option<String> = r.try_get("link_agent")?;
        Ok(Some((Member::from_row(&r)?, link.map(parse_id).transpose()?)))
    }

    // ---- update ids ----

    /// Takes an update id of a bot: true the first time, false when it was taken already.
    pub async fn claim_telegram_update(&self, bot_key: &str, update_id: i64) -> Result<bool> {
        let res = sqlx::query("INSERT INTO telegram_updates (bot_key, update_id, received_at) VALUES ($1, $2, $3) ON CONFLICT (bot_key, update_id) DO NOTHING")
            .bind(bot_key)
            .bind(update_id)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Forgets update ids taken before `before` (Unix ms). Returns how many.
    pub async fn prune_telegram_updates(&self, before: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM telegram_updates WHERE received_at < $1").bind(before).execute(&self.writer).await?;
        Ok(res.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;

    fn bot(tenant: &TenantId, agent: &AgentId, bot_user_id: i64) -> TelegramBot {
        TelegramBot {
            id: TelegramBotId::new(),
            tenant_id: tenant.clone(),
            agent_id: agent.clone(),
            bot_user_id,
            username: format!("bot{bot_user_id}"),
            mode: "webhook".into(),
            access: "members".into(),
            created_at: now_ms(),
            updated_at: now_ms(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bots_are_one_per_tenant_and_scoped() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 100_000).await.unwrap();
            let ag_a = s.create_agent(&a.id, "x", 5).await.unwrap();
            let ag_b = s.create_agent(&b.id, "y", 5).await.unwrap();
            let ba = bot(&a.id, &ag_a.id, 111);
            s.create_telegram_bot(&ba).await.unwrap();
            s.put_secret(&a.id, BOT_TOKEN_PURPOSE, ba.id.as_str(), "v1:sealed").await.unwrap();
            // A second bot for A, or A's bot for B: refused.
            assert!(matches!(s.create_telegram_bot(&bot(&a.id, &ag_a.id, 222)).await, Err(StoreError::Conflict(_))), "{}", db.backend);
            assert!(matches!(s.create_telegram_bot(&bot(&b.id, &ag_b.id, 111)).await, Err(StoreError::Conflict(_))));
            assert_eq!(s.get_telegram_bot(&a.id).await.unwrap().unwrap().id, ba.id);
            assert_eq!(s.telegram_bot_owner(111).await.unwrap(), Some(a.id.clone()));
            assert_eq!(s.telegram_bot_owner(999).await.unwrap(), None);
            assert!(s.get_telegram_bot(&b.id).await.unwrap().is_none());
            assert_eq!(s.all_telegram_bots().await.unwrap().len(), 1);
            // B cannot delete A's bot; A can, and its sealed token goes with it.
            assert!(matches!(s.delete_telegram_bot(&b.id, &ba.id).await, Err(StoreError::NotFound)));
            s.delete_telegram_bot(&a.id, &ba.id).await.unwrap();
            assert!(s.find_telegram_bot(&ba.id).await.unwrap().is_none());
            assert!(s.get_secret(&a.id, BOT_TOKEN_PURPOSE, ba.id.as_str()).await.unwrap().is_none());
            // Deleting the agent takes its bot along.
            let bb = bot(&b.id, &ag_b.id, 333);
            s.create_telegram_bot(&bb).await.unwrap();
            s.delete_agent(&ag_b.id).await.unwrap();
            assert!(s.find_telegram_bot(&bb.id).await.unwrap().is_none(), "{}", db.backend);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pairing_codes_are_single_use_expiring_and_one_tenant_per_user() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 100_000).await.unwrap();
            let ag_a = s.create_agent(&a.id, "x", 5).await.unwrap();
            let ag_a2 = s.create_agent(&a.id, "x2", 5).await.unwrap();
            let ag_b = s.create_agent(&b.id, "y", 5).await.unwrap();
            let now = now_ms();
            s.create_pairing_code(&a.id, &ag_a.id, "code-a", now + 60_000).await.unwrap();
            s.create_pairing_code(&a.id, &ag_a.id, "code-a-2", now + 60_000).await.unwrap();
            s.create_pairing_code(&a.id, &ag_a2.id, "code-a-3", now + 60_000).await.unwrap();
            s.create_pairing_code(&a.id, &ag_a.id, "code-old", now - 1).await.unwrap();
            s.create_pairing_code(&b.id, &ag_b.id, "code-b", now + 60_000).await.unwrap();

            assert_eq!(s.redeem_pairing_code("nope", None, "1", "U1", now).await.unwrap(), Redeemed::Unknown);
            assert_eq!(s.redeem_pairing_code("code-old", None, "1", "U1", now).await.unwrap(), Redeemed::Expired);
            // A tenant's own bot takes only its tenant's codes; the code stays unspent.
            assert_eq!(s.redeem_pairing_code("code-a", Some(&b.id), "1", "U1", now).await.unwrap(), Redeemed::Unknown);
            let Redeemed::Paired { member, tenant, agent, again } = s.redeem_pairing_code("code-a", None, "1", "U1", now).await.unwrap() else { panic!() };
            assert_eq!((&tenant, &agent, again), (&a.id, &ag_a.id, false));
            assert_eq!(s.redeem_pairing_code("code-a", None, "2", "U2", now).await.unwrap(), Redeemed::Used, "{}", db.backend);
            // A second user of the same family.
            assert!(matches!(s.redeem_pairing_code("code-a-2", None, "2", "U2", now).await.unwrap(), Redeemed::Paired { again: false, .. }));
            // U1 is A's: B's code is refused and stays unspent for someone else.
            assert_eq!(s.redeem_pairing_code("code-b", None, "1", "U1", now).await.unwrap(), Redeemed::OtherTenant);
            assert!(matches!(s.redeem_pairing_code("code-b", None, "3", "U3", now).await.unwrap(), Redeemed::Paired { .. }));
            // Another code of A's moves U1 to that agent.
            assert!(matches!(s.redeem_pairing_code("code-a-3", None, "1", "U1", now).await.unwrap(), Redeemed::Paired { again: true, .. }));
            let (m, link) = s.telegram_member("1").await.unwrap().unwrap();
            assert_eq!((m.id, m.tenant_id, m.kind.as_str(), link), (member.clone(), a.id.clone(), MEMBER_KIND, Some(ag_a2.id.clone())));
            assert_eq!(s.list_members(&a.id).await.unwrap().len(), 2);
            assert!(s.telegram_member("4").await.unwrap().is_none());
            // Removing a member: only by its own tenant.
            assert!(matches!(s.remove_member(&b.id, &member).await, Err(StoreError::NotFound)));
            s.remove_member(&a.id, &member).await.unwrap();
            assert!(s.telegram_member("1").await.unwrap().is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_update_is_claimed_once_per_bot() {
        for db in backends().await {
            let s = &db.store;
            assert!(s.claim_telegram_update("bot-1", 10).await.unwrap());
            assert!(!s.claim_telegram_update("bot-1", 10).await.unwrap(), "{}", db.backend);
            assert!(s.claim_telegram_update("bot-2", 10).await.unwrap(), "another bot's update 10 is its own");
            assert_eq!(s.prune_telegram_updates(now_ms() + 1).await.unwrap(), 2);
            assert!(s.claim_telegram_update("bot-1", 10).await.unwrap());
        }
    }

    /// A tenant bot's sealed token moved into B's row does not open for B.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_bot_token_moved_to_another_tenant_does_not_open() {
        use clawpen_vault::{Binding, Keyring, Vault};
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 100_000).await.unwrap();
            let ag_a = s.create_agent(&a.id, "x", 5).await.unwrap();
            let ag_b = s.create_agent(&b.id, "y", 5).await.unwrap();
            let (bot_a, bot_b) = (bot(&a.id, &ag_a.id, 1), bot(&b.id, &ag_b.id, 2));
            s.create_telegram_bot(&bot_a).await.unwrap();
            s.create_telegram_bot(&bot_b).await.unwrap();
            let vault = Vault::new(Keyring::from_env_value(&"44".repeat(32)).unwrap());
            let bind = |t: &TenantId, id: &TelegramBotId| (t.to_string(), id.to_string());
            let (ta, ia) = bind(&a.id, &bot_a.id);
            let sealed = vault.seal(Binding { tenant: &ta, purpose: BOT_TOKEN_PURPOSE, record: &ia }, b"1:AAAA-token-of-a");
            s.put_secret(&a.id, BOT_TOKEN_PURPOSE, bot_a.id.as_str(), &sealed).await.unwrap();
            // The attacker copies A's ciphertext into B's bot row.
            s.put_secret(&b.id, BOT_TOKEN_PURPOSE, bot_b.id.as_str(), &sealed).await.unwrap();
            let (tb, ib) = bind(&b.id, &bot_b.id);
            let in_b = s.get_secret(&b.id, BOT_TOKEN_PURPOSE, bot_b.id.as_str()).await.unwrap().unwrap();
            assert!(vault.open(Binding { tenant: &tb, purpose: BOT_TOKEN_PURPOSE, record: &ib }, &in_b).is_err(), "{}", db.backend);
            // Nor under A's tenant with B's record, nor as A's webhook secret.
            assert!(vault.open(Binding { tenant: &ta, purpose: BOT_TOKEN_PURPOSE, record: &ib }, &in_b).is_err());
            assert!(vault.open(Binding { tenant: &ta, purpose: WEBHOOK_SECRET_PURPOSE, record: &ia }, &in_b).is_err());
            let own = s.get_secret(&a.id, BOT_TOKEN_PURPOSE, bot_a.id.as_str()).await.unwrap().unwrap();
            assert_eq!(vault.open(Binding { tenant: &ta, purpose: BOT_TOKEN_PURPOSE, record: &ia }, &own).unwrap().expose(), b"1:AAAA-token-of-a");
        }
    }
}
