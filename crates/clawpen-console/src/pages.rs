//! The tenant's pages, the login page and the error page.

use maud::html;

use crate::chart::{month_line, spend_chart_markup};
use crate::layout::{alert, badge, button_form, csrf_input, field_error, page, shell, td, Frame};
use crate::{credits, number};

// ---- login ----

/// The sign-in page: members sign in with email and password (POST /console/login), the
/// operator with the admin key (POST /console/login/admin). No links; `error` in an alert.
pub fn login_page(error: Option<&str>, email: &str, csrf: &str) -> String {
    shell("Sign in", &[], html! {
        main #main.login {
            h1 { "clawpen" }
            (alert("login-error", error))
            section.card aria-labelledby="member-login-h" {
                h2 #member-login-h { "Sign in" }
                form method="post" id="login-form" action="/console/login" {
                    (csrf_input(csrf))
                    div.field {
                        label for="login-email" { "Email" }
                        input #login-email type="email" name="email" value=(email) autocomplete="username" required autofocus[email.is_empty()];
                    }
                    div.field {
                        label for="login-password" { "Password" }
                        input #login-password type="password" name="password" autocomplete="current-password" required autofocus[!email.is_empty()];
                    }
                    button.primary type="submit" #login-submit { "Sign in" }
                }
            }
            section.card.operator aria-labelledby="admin-login-h" {
                h2 #admin-login-h { "Operator" }
                form method="post" id="admin-login-form" action="/console/login/admin" {
                    (csrf_input(csrf))
                    div.field {
                        label for="admin-key" { "Admin key" }
                        input #admin-key type="password" name="admin_key" autocomplete="current-password" required;
                    }
                    button type="submit" #admin-login-submit { "Sign in as operator" }
                }
            }
        }
    })
}

// ---- agents ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub tier: String,
    pub model: String,
    pub last_error: Option<String>,
}

/// The deploy form's value and error, kept when shown again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployForm {
    pub name: String,
    pub error: Option<String>,
    /// The tenant's own Telegram bot (its username), when it has one: the form then offers to
    /// have the new agent answer on it.
    pub telegram_bot: Option<String>,
    /// Whether "answer on Telegram" is ticked.
    pub telegram: bool,
}

/// The tenant's agents and the deploy form.
pub fn agents_page(frame: &Frame, agents: &[AgentRow], deploy: &DeployForm) -> String {
    page(frame, "/console/agents", &[], html! {
        section aria-labelledby="agents-h" {
            h2 #agents-h.visually-hidden { "Your agents" }
            @if agents.is_empty() {
                p.empty #agents-empty { "No agents yet: give your first one a name and press Deploy." }
            } @else {
                table.cards #agents {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Tier" } th scope="col" { "Model" } th scope="col" { "Last error" } } }
                    tbody {
                        @for a in agents {
                            tr data-agent-id=(a.id) {
                                (td("Name", html! { a.agent-link href={ "/console/agents/" (a.id) } { (a.name) } }))
                                (td("State", badge(&a.state)))
                                (td("Tier", html! { (a.tier) }))
                                (td("Model", html! { code { (a.model) } }))
                                (td("Last error", html! { @if let Some(e) = &a.last_error { span.error-text { (e) } } @else { span.muted { "—" } } }))
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="deploy-h" {
            h2 #deploy-h { "Deploy an agent" }
            form method="post" id="deploy-form" action="/console/deploy" {
                (csrf_input(&frame.csrf))
                div.field {
                    label for="deploy-name" { "Name" }
                    div.row {
                        input #deploy-name type="text" name="name" value=(deploy.name) required minlength="1" maxlength="64" autocomplete="off" aria-invalid=[deploy.error.as_ref().map(|_| "true")] aria-describedby=[deploy.error.as_ref().map(|_| "deploy-name-error")];
                        button.primary type="submit" #deploy-submit { "Deploy" }
                    }
                    (field_error("deploy-name-error", deploy.error.as_deref()))
                }
                @if let Some(bot) = &deploy.telegram_bot {
                    div.check {
                        input #deploy-telegram type="checkbox" name="telegram" value="on" checked[deploy.telegram] aria-describedby="deploy-telegram-desc";
                        label for="deploy-telegram" { "Answer on Telegram as @" (bot) }
                        p.hint #deploy-telegram-desc { "The people paired with the bot talk to the new agent from now on, and it greets them there." }
                    }
                }
            }
        }
    })
}

// ---- one agent ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDetail {
    pub id: String,
    pub name: String,
    pub state: String,
    pub tier: String,
    pub model: String,
}

/// One line of MEMORY.md or memory/*.md (`line` counts from 1, as the server gives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLine {
    pub file: String,
    pub line: usize,
    pub text: String,
}

#[derive(Debug, Clone, Copy)]
pub struct AgentPage<'a> {
    pub agent: &'a AgentDetail,
    /// The query string for /gateway/connect (already encoded by the server).
    pub gateway_query: &'a str,
    pub soul: &'a str,
    pub user: &'a str,
    pub memory: &'a [MemoryLine],
    pub persona_error: Option<&'a str>,
}

/// One agent: Start/Stop, the chat (chat.js), the persona, the memory.
pub fn agent_page(frame: &Frame, p: &AgentPage) -> String {
    let a = p.agent;
    let base = format!("/console/agents/{}", a.id);
    page(frame, "/console/agents", &["chat.js"], html! {
        section.agent-head #agent data-agent-id=(a.id) aria-label="Agent" {
            p.facts {
                span.name { (a.name) } " "
                (badge(&a.state)) " "
                span.tier { "Tier " (a.tier) } " · "
                span.model { "Model " code { (a.model) } }
            }
            div.actions {
                form method="post" class="inline" action={ (base) "/start" } { (csrf_input(&frame.csrf)) button type="submit" #agent-start { "Start" } }
                form method="post" class="inline" action={ (base) "/stop" } { (csrf_input(&frame.csrf)) button type="submit" #agent-stop data-confirm="Stop this agent?" { "Stop" } }
            }
        }
        section.card #chat data-gateway-query=(p.gateway_query) aria-labelledby="chat-h" {
            h2 #chat-h { "Chat" }
            ol #chat-log aria-live="polite" aria-label="Conversation" {}
            noscript { p.note { "The chat needs JavaScript. Everything else on this page works without it." } }
            form #chat-form {
                label for="chat-input" { "Message" }
                textarea #chat-input name="message" rows="3" disabled placeholder="Write to your agent. Enter sends, Shift+Enter makes a new line." {}
                div.actions {
                    button.primary type="submit" #chat-send disabled { "Send" }
                    button type="button" #chat-abort hidden disabled { "Abort" }
                }
            }
            p #chat-status role="status" {}
        }
        section.card #persona aria-labelledby="persona-h" {
            h2 #persona-h { "Persona" }
            (alert("persona-error", p.persona_error))
            form method="post" id="persona-form" action={ (base) "/persona" } {
                (csrf_input(&frame.csrf))
                div.field {
                    label for="persona-soul" { "SOUL.md" span.hint { " — who the agent is, how it speaks" } }
                    // The newline after the tag is dropped by the parser, so a leading newline of the text survives.
                    textarea #persona-soul name="soul" rows="10" aria-describedby=[p.persona_error.map(|_| "persona-error")] { "\n" (p.soul) }
                }
                div.field {
                    label for="persona-user" { "USER.md" span.hint { " — who you are, what it should know about you" } }
                    textarea #persona-user name="user" rows="8" aria-describedby=[p.persona_error.map(|_| "persona-error")] { "\n" (p.user) }
                }
                button.primary type="submit" #persona-save { "Save" }
            }
        }
        section.card #memory aria-labelledby="memory-h" {
            h2 #memory-h { "Memory" }
            @if p.memory.is_empty() {
                p.empty #memory-empty { "Nothing remembered yet." }
            } @else {
                ul.memory #memory-lines {
                    @for m in p.memory {
                        li.memory-line data-file=(m.file) data-line=(m.line) {
                            span.mem-src { (m.file) ":" (m.line) }
                            span.mem-text { (m.text) }
                            form method="post" class="inline" action={ (base) "/memory/forget" } {
                                (csrf_input(&frame.csrf))
                                input type="hidden" name="file" value=(m.file);
                                input type="hidden" name="line" value=(m.line);
                                input type="hidden" name="text" value=(m.text);
                                button.small type="submit" data-confirm="Forget this line?" { "Forget" }
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---- usage ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySpend {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Micro-credits.
    pub spent: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// RFC 3339 or `YYYY-MM-DD HH:MM`, shown as given.
    pub at: String,
    pub agent: String,
    pub model: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// Micro-credits.
    pub cost: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageView {
    /// Oldest first, up to about 31.
    pub days: Vec<DaySpend>,
    pub daily_cap: Option<i64>,
    pub monthly_cap: Option<i64>,
    pub month_spent: i64,
    pub balance: i64,
    pub calls: Vec<CallRow>,
}

/// Spending: the chart, the month against its cap, the balance, the latest calls.
pub fn usage_page(frame: &Frame, u: &UsageView) -> String {
    page(frame, "/console/usage", &[], html! {
        section.card #spending aria-labelledby="spending-h" {
            h2 #spending-h { "Daily spend" }
            figure.chart { (spend_chart_markup(u)) }
            p.month-line #month-line { (month_line(u)) }
            dl.facts {
                dt { "Balance" } dd #balance { (credits(u.balance)) }
                dt { "Daily cap" } dd #daily-cap { @if let Some(c) = u.daily_cap { (credits(c)) } @else { "none" } }
                dt { "Monthly cap" } dd #monthly-cap { @if let Some(c) = u.monthly_cap { (credits(c)) } @else { "none" } }
            }
        }
        section.card aria-labelledby="calls-h" {
            h2 #calls-h { "Latest calls" }
            @if u.calls.is_empty() {
                p.empty #calls-empty { "No calls yet." }
            } @else {
                table.cards #calls {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Agent" } th scope="col" { "Model" } th.num scope="col" { "Tokens in" } th.num scope="col" { "Tokens out" } th.num scope="col" { "Cost" } } }
                    tbody {
                        @for c in &u.calls {
                            tr {
                                (td("When", html! { time { (c.at) } }))
                                (td("Agent", html! { (c.agent) }))
                                (td("Model", html! { code { (c.model) } }))
                                td.num data-label="Tokens in" { (number(c.tokens_in)) }
                                td.num data-label="Tokens out" { (number(c.tokens_out)) }
                                td.num data-label="Cost" { (credits(c.cost)) }
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---- integrations ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRow {
    pub id: String,
    pub account: Option<String>,
    /// `connected` | `needs_reconnecting`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRow {
    /// `google`.
    pub name: String,
    /// `Google`.
    pub display: String,
    pub configured: bool,
    pub connection: Option<ConnectionRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRow {
    pub name: String,
    pub provider: String,
    pub description: String,
    pub enabled: bool,
    pub writes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRow {
    pub number: i64,
    pub tool: String,
    pub target: String,
    pub text: String,
    pub from_tool_result: bool,
}

/// Connections, the tool choice, and the proposals waiting for approval.
pub fn integrations_page(frame: &Frame, providers: &[ProviderRow], tools: &[ToolRow], proposals: &[ProposalRow]) -> String {
    // Tools grouped by provider, in the order their providers first appear.
    let mut groups: Vec<(&str, Vec<(usize, &ToolRow)>)> = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| *p == t.provider) { Some((_, g)) => g.push((i, t)), None => groups.push((&t.provider, vec![(i, t)])) }
    }
    let display = |name: &str| providers.iter().find(|p| p.name == name).map(|p| p.display.clone()).unwrap_or_else(|| name.to_owned());
    page(frame, "/console/integrations", &[], html! {
        section.card #proposals aria-labelledby="proposals-h" {
            h2 #proposals-h { "Waiting for your approval" }
            @if proposals.is_empty() {
                p.empty #proposals-empty { "Nothing waiting for your approval." }
            } @else {
                @for p in proposals {
                    article.proposal id={ "proposal-" (p.number) } data-proposal=(p.number) {
                        h3 { "#" (p.number) " · " code { (p.tool) } }
                        p.target { "To: " span.target-value { (p.target) } }
                        @if p.from_tool_result {
                            p.warning role="note" { "This came from content the agent read, not from you." }
                        }
                        pre.proposal-text { (p.text) }
                        div.actions {
                            (button_form(&frame.csrf, &format!("/console/proposals/{}/approve", p.number), "Approve", "primary", None))
                            (button_form(&frame.csrf, &format!("/console/proposals/{}/reject", p.number), "Reject", "", None))
                        }
                    }
                }
            }
        }
        section.card #providers aria-labelledby="providers-h" {
            h2 #providers-h { "Connections" }
            @if providers.is_empty() { p.empty { "No providers on this server." } }
            ul.providers {
                @for p in providers {
                    li.provider id={ "provider-" (crate::layout::class_word(&p.name)) } data-provider=(p.name) {
                        h3 { (p.display) }
                        @match (&p.connection, p.configured) {
                            (Some(c), _) => {
                                p.account { @if let Some(acc) = &c.account { "Connected as " strong.account-name { (acc) } } @else { "Connected" } " " (badge(&c.status)) }
                                @if c.status == "needs_reconnecting" {
                                    p.warning role="note" { (p.display) " asks to be connected again before the agent can use it." }
                                }
                                div.actions {
                                    @if c.status == "needs_reconnecting" {
                                        @if p.configured {
                                            (button_form(&frame.csrf, &format!("/console/integrations/{}/connect", p.name), "Reconnect", "primary", None))
                                        }
                                    }
                                    (button_form(&frame.csrf, &format!("/console/integrations/connections/{}/disconnect", c.id), "Disconnect", "", Some(&format!("Disconnect {}?", p.display))))
                                }
                            }
                            (None, true) => {
                                (button_form(&frame.csrf, &format!("/console/integrations/{}/connect", p.name), &format!("Connect {}", p.display), "primary", None))
                            }
                            (None, false) => { p.muted.not-configured { "Not set up on this server." } }
                        }
                    }
                }
            }
        }
        section.card #tools aria-labelledby="tools-h" {
            h2 #tools-h { "Tools your agents may use" }
            @if tools.is_empty() {
                p.empty #tools-empty { "No tools yet: connect an account first." }
            } @else {
                form method="post" id="tools-form" action="/console/integrations/tools" {
                    (csrf_input(&frame.csrf))
                    @for (provider, ts) in &groups {
                        fieldset.tools data-provider=(provider) {
                            legend { (display(provider)) }
                            @for (i, t) in ts {
                                div.check {
                                    input type="checkbox" name="tools" value=(t.name) id={ "tool-" (i) } checked[t.enabled] aria-describedby={ "tool-" (i) "-desc" };
                                    label for={ "tool-" (i) } { code { (t.name) } @if t.writes { " " span.writes { "(proposes writes you approve)" } } }
                                    p.hint id={ "tool-" (i) "-desc" } { (t.description) }
                                }
                            }
                        }
                    }
                    button.primary type="submit" #tools-save { "Save" }
                }
            }
        }
    })
}

// ---- Telegram ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedRow {
    pub id: String,
    pub name: String,
    pub external_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelegramView {
    pub bot_username: Option<String>,
    pub pairing_code: Option<String>,
    pub paired: Vec<PairedRow>,
    pub error: Option<String>,
}

/// The tenant's Telegram bot, pairing codes and the people paired.
pub fn telegram_page(frame: &Frame, t: &TelegramView) -> String {
    page(frame, "/console/telegram", &[], html! {
        (alert("telegram-error", t.error.as_deref()))
        @match &t.bot_username {
            None => {
                section.card #telegram-bot aria-labelledby="bot-h" {
                    h2 #bot-h { "Connect a bot" }
                    p { "Create a bot with @BotFather in Telegram (send it /newbot), then paste the token it gives you here." }
                    form method="post" id="telegram-bot-form" action="/console/telegram/bot" {
                        (csrf_input(&frame.csrf))
                        div.field {
                            label for="telegram-token" { "Bot token" }
                            input #telegram-token type="password" name="token" required autocomplete="off" spellcheck="false" aria-describedby="telegram-token-hint";
                            p.hint #telegram-token-hint { "Looks like 123456789:AA… — it stays on this server." }
                        }
                        button.primary type="submit" #telegram-connect { "Connect" }
                    }
                }
            }
            Some(bot) => {
                section.card #telegram-bot aria-labelledby="bot-h" {
                    h2 #bot-h { "Bot" }
                    p { "Connected to " strong #bot-username { "@" (bot) } }
                    (button_form(&frame.csrf, "/console/telegram/bot/delete", "Disconnect", "", Some("Disconnect the bot? Paired people stay, but the bot stops answering.")))
                }
                section.card #pairing aria-labelledby="pairing-h" {
                    h2 #pairing-h { "Pair a person" }
                    @if let Some(code) = &t.pairing_code {
                        p.pairing-code #pairing-code { (code) }
                        p #pairing-instructions { "In Telegram, send " code { "/pair " (code) } " to @" (bot) " from the account you want to pair." }
                    } @else {
                        p { "Make a pairing code, then send it to @" (bot) " from the Telegram account to pair." }
                    }
                    (button_form(&frame.csrf, "/console/telegram/pairing-code", "New pairing code", "primary", None))
                }
            }
        }
        section.card #paired aria-labelledby="paired-h" {
            h2 #paired-h { "Paired people" }
            @if t.paired.is_empty() {
                p.empty #paired-empty { "Nobody paired yet." }
            } @else {
                table.cards #paired-table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Telegram id" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for p in &t.paired {
                            tr data-member-id=(p.id) {
                                (td("Name", html! { (p.name) }))
                                (td("Telegram id", html! { code { (p.external_id) } }))
                                (td("", button_form(&frame.csrf, &format!("/console/members/{}/remove", p.id), "Remove", "", Some(&format!("Remove {}?", p.name)))))
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---- members ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub id: String,
    /// `password`, `telegram`, …
    pub kind: String,
    pub name: String,
    pub external_id: String,
    /// The member looking at the page (no Remove).
    pub you: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembersView {
    pub members: Vec<MemberRow>,
    pub form_email: String,
    pub form_name: String,
    pub error: Option<String>,
}

/// The tenant's members and the form to add one who signs in.
pub fn members_page(frame: &Frame, m: &MembersView) -> String {
    let err = m.error.as_ref().map(|_| "member-error");
    page(frame, "/console/members", &[], html! {
        section.card aria-labelledby="members-h" {
            h2 #members-h { "Members" }
            @if m.members.is_empty() {
                p.empty { "No members." }
            } @else {
                table.cards #members {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Signs in as" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for r in &m.members {
                            tr data-member-id=(r.id) .you[r.you] {
                                (td("Name", html! { (r.name) @if r.you { " " span.muted { "(you)" } } }))
                                (td("Kind", html! { (r.kind) }))
                                (td("Signs in as", html! { code { (r.external_id) } }))
                                (td("", html! { @if !r.you { (button_form(&frame.csrf, &format!("/console/members/{}/remove", r.id), "Remove", "", Some(&format!("Remove {}?", r.name)))) } }))
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="add-member-h" {
            h2 #add-member-h { "Add a person who signs in" }
            (alert("member-error", m.error.as_deref()))
            form method="post" id="member-form" action="/console/members" {
                (csrf_input(&frame.csrf))
                div.field {
                    label for="member-email" { "Email" }
                    input #member-email type="email" name="email" value=(m.form_email) required autocomplete="off" aria-describedby=[err];
                }
                div.field {
                    label for="member-name" { "Name" }
                    input #member-name type="text" name="name" value=(m.form_name) required autocomplete="off" aria-describedby=[err];
                }
                div.field {
                    label for="member-password" { "Password" }
                    input #member-password type="password" name="password" required minlength="12" autocomplete="new-password" aria-describedby={ "member-password-hint" @if let Some(e) = err { " " (e) } };
                    p.hint #member-password-hint { "At least 12 characters. Give it to them in person; they sign in with this email and password." }
                }
                button.primary type="submit" #member-add { "Add" }
            }
        }
    })
}

// ---- errors ----

/// An error in plain words and a link back to /console.
pub fn error_page(frame: &Frame, status: u16, text: &str) -> String {
    page(frame, "", &[], html! {
        section.card.error-page {
            p.status-code #error-status { "Error " (status) }
            p #error-text { (text) }
            p { a href="/console" #error-back { "Back to the console" } }
        }
    })
}
