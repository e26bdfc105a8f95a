//! The OAuth provider stand-ins ([`ProviderStandin`]): Google, GitHub, Slack, Trello and Notion,
//! each on a loopback port of its own with its OAuth 2.0 endpoints (`oauth`) and its REST API
//! (`google`, `github`, `slack`, `trello`, `notion`) on that one port. Every request is recorded on arrival, then answered under one lock:
//! concurrent requests are served one at a time, in the order they took the lock, so that 20
//! refreshes racing with one rotating refresh token give exactly one success.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{github, google, notion, oauth, slack, trello};

/// Which provider a [`ProviderStandin`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Google: OAuth (accounts.google.com, oauth2.googleapis.com), Calendar v3, Gmail v1, Drive v3.
    Google,
    /// GitHub: OAuth of a GitHub App with expiring user tokens (github.com), the REST API's issues.
    Github,
    /// Slack: OAuth v2 with user scopes and token rotation, the Web API's conversations.
    Slack,
    /// Trello: OAuth 2.0 (Atlassian 3LO, auth.atlassian.com) with PKCE and rotating refresh
    /// tokens, the REST API's boards, lists and cards (api.trello.com/1).
    Trello,
    /// Notion: OAuth of a public integration (HTTP Basic client auth, rotating refresh tokens),
    /// the API's search, pages, blocks and comments (api.notion.com/v1).
    Notion,
}

/// What a [`ProviderStandin`] accepts and the content its API serves.
#[derive(Debug, Clone)]
pub struct ProviderStandinConfig {
    /// The one registered OAuth client.
    pub client_id: String,
    /// Its secret, sent to the token endpoint as a form field (Trello: a JSON field) or with HTTP
    /// Basic (Notion: Basic only).
    pub client_secret: String,
    /// Lifetime of an access token (the `expires_in` of token answers). 0 issues tokens that are
    /// already expired.
    pub access_token_ttl_secs: u64,
    /// The client's registered redirect URIs. Empty: any `http(s)` URI is accepted.
    pub redirect_uris: Vec<String>,
    /// What the API returns (only the part of this provider is used).
    pub content: Content,
}

impl Default for ProviderStandinConfig {
    /// Client `standin-client-id` / `standin-client-secret`, tokens for an hour, any redirect URI,
    /// the default [`Content`].
    fn default() -> Self {
        Self { client_id: "standin-client-id".into(), client_secret: "standin-client-secret".into(), access_token_ttl_secs: 3600, redirect_uris: Vec::new(), content: Content::default() }
    }
}

/// The content the providers' APIs serve: one account per provider. Empty ids (and times) are
/// assigned when the stand-in starts or the item is added: counters, in order.
#[derive(Debug, Clone)]
pub struct Content {
    /// The Google account: the primary calendar's id, the Gmail user, the Drive owner.
    pub google_account: String,
    /// Events of the primary calendar.
    pub calendar_events: Vec<CalendarEvent>,
    /// The Gmail mailbox.
    pub emails: Vec<Email>,
    /// Files in My Drive.
    pub drive_files: Vec<DriveFile>,
    /// The GitHub user the tokens belong to.
    pub github_login: String,
    /// Issues and pull requests; a repository exists when one of them names it, or in [`Content::github_repos`].
    pub issues: Vec<Issue>,
    /// Repositories (`owner/name`) that exist even without issues.
    pub github_repos: Vec<String>,
    /// The Slack workspace's id (`T…`).
    pub slack_team_id: String,
    /// The Slack workspace's name.
    pub slack_team_name: String,
    /// The Slack user the tokens belong to (`U…`); the author of what `chat.postMessage` posts.
    pub slack_user_id: String,
    /// Slack channels; a message naming an unknown channel creates a public one.
    pub slack_channels: Vec<SlackChannel>,
    /// Slack messages, in any order (they are served by `ts`).
    pub slack_messages: Vec<SlackMessage>,
    /// The Trello member the tokens belong to (`username`).
    pub trello_username: String,
    /// Its `fullName`.
    pub trello_full_name: String,
    /// Trello boards (the member is on all of them).
    pub trello_boards: Vec<TrelloBoard>,
    /// Trello lists; a list naming an unknown board creates it.
    pub trello_lists: Vec<TrelloList>,
    /// Trello cards; a card naming an unknown board or list creates it.
    pub trello_cards: Vec<TrelloCard>,
    /// The Notion workspace the integration is installed in.
    pub notion_workspace_name: String,
    /// The Notion user who installed it (the `owner` of the token answers).
    pub notion_user_name: String,
    /// That user's email.
    pub notion_user_email: String,
    /// Notion pages shared with the integration (all at the workspace's top level).
    pub notion_pages: Vec<NotionPage>,
}

/// An event of the Google calendar.
#[derive(Debug, Clone, Default)]
pub struct CalendarEvent {
    /// Empty: `standinevent0001`, `standinevent0002`, … (Google's base32hex alphabet).
    pub id: String,
    /// The title.
    pub summary: String,
    /// Free text; omitted from answers when empty, as Google does.
    pub description: String,
    /// Omitted when empty.
    pub location: String,
    /// RFC 3339 (`2025-06-04T09:00:00Z`), or a date (`2025-06-04`) for an all-day event.
    pub start: String,
    /// As `start`.
    pub end: String,
    /// Attendees' emails (`responseStatus: needsAction`).
    pub attendees: Vec<String>,
}

impl CalendarEvent {
    /// An event without location or attendees.
    pub fn new(summary: &str, description: &str, start: &str, end: &str) -> Self {
        Self { summary: summary.into(), description: description.into(), start: start.into(), end: end.into(), ..Self::default() }
    }

    /// An event that starts `hours` from now and lasts an hour: still upcoming whenever a test
    /// runs, as the seeded events are.
    pub fn in_hours(summary: &str, description: &str, hours: i64) -> Self {
        let start = OffsetDateTime::now_utc() + time::Duration::hours(hours);
        Self::new(summary, description, &rfc3339(start), &rfc3339(start + time::Duration::hours(1)))
    }
}

/// A message in the Gmail mailbox.
#[derive(Debug, Clone, Default)]
pub struct Email {
    /// Empty: 16 hex digits, in order (`18f0000000000001`, …). The thread id is the same.
    pub id: String,
    /// The `From` header, e.g. `Bob <bob@example.com>`.
    pub from: String,
    /// The `To` header.
    pub to: String,
    /// The `Subject` header.
    pub subject: String,
    /// The text/plain body.
    pub body: String,
    /// With an HTML body too, the message is `multipart/alternative` with two parts.
    pub html: Option<String>,
    /// RFC 3339; empty: when it was added. Served as an RFC 2822 `Date` header.
    pub date: String,
    /// Gmail labels (`INBOX`, `UNREAD`, `SENT`, `SPAM`, `TRASH`, …).
    pub labels: Vec<String>,
}

impl Email {
    /// An unread text email in the inbox, dated when it is added.
    pub fn new(from: &str, to: &str, subject: &str, body: &str) -> Self {
        Self { from: from.into(), to: to.into(), subject: subject.into(), body: body.into(), labels: vec!["INBOX".into(), "UNREAD".into()], ..Self::default() }
    }
}

/// A file in Google Drive.
#[derive(Debug, Clone, Default)]
pub struct DriveFile {
    /// Empty: `1standinDriveFile0000000000000001`, … (33 characters, like Drive's).
    pub id: String,
    /// The file name.
    pub name: String,
    /// [`DriveFile::GOOGLE_DOC`] (exported with `/export`) or a binary type such as `text/plain`
    /// (downloaded with `alt=media`).
    pub mime_type: String,
    /// The content.
    pub text: String,
    /// RFC 3339; empty: when it was added.
    pub modified_time: String,
}

impl DriveFile {
    /// Google Docs' MIME type.
    pub const GOOGLE_DOC: &'static str = "application/vnd.google-apps.document";

    /// A Google Doc.
    pub fn doc(name: &str, text: &str) -> Self {
        Self { name: name.into(), mime_type: Self::GOOGLE_DOC.into(), text: text.into(), ..Self::default() }
    }

    /// A `text/plain` file.
    pub fn text(name: &str, text: &str) -> Self {
        Self { name: name.into(), mime_type: "text/plain".into(), text: text.into(), ..Self::default() }
    }
}

/// A GitHub issue or pull request (GitHub lists both as issues).
#[derive(Debug, Clone, Default)]
pub struct Issue {
    /// `owner/name`; empty: `acme/app`.
    pub repo: String,
    /// The number, shared by issues and pull requests.
    pub number: u64,
    /// The title.
    pub title: String,
    /// The body (Markdown).
    pub body: String,
    /// A pull request: its item carries a `pull_request` object.
    pub is_pull_request: bool,
    /// `open` or `closed`; empty: `open`.
    pub state: String,
    /// The author's login; empty: `octocat`.
    pub user: String,
    /// Label names.
    pub labels: Vec<String>,
    /// Its comments, oldest first (`POST …/comments` appends here).
    pub comments: Vec<IssueComment>,
    /// RFC 3339; empty: derived from the number (a higher number is newer).
    pub created_at: String,
}

impl Issue {
    /// An open issue (or pull request) of `acme/app` by `octocat`, without labels or comments.
    pub fn new(number: u64, title: &str, body: &str, is_pull_request: bool) -> Self {
        Self { number, title: title.into(), body: body.into(), is_pull_request, ..Self::default() }
    }
}

/// A comment on a GitHub issue.
#[derive(Debug, Clone, Default)]
pub struct IssueComment {
    /// 0: assigned from 1000001 on, in order.
    pub id: u64,
    /// The author's login.
    pub user: String,
    /// The body (Markdown).
    pub body: String,
    /// RFC 3339; empty: when it was added.
    pub created_at: String,
}

impl IssueComment {
    /// A comment by `user`.
    pub fn new(user: &str, body: &str) -> Self {
        Self { user: user.into(), body: body.into(), ..Self::default() }
    }
}

/// A Slack channel.
#[derive(Debug, Clone, Default)]
pub struct SlackChannel {
    /// Empty: `C0000001`, … in order.
    pub id: String,
    /// The name, without `#`.
    pub name: String,
    /// A private channel (needs `groups:*` scopes instead of `channels:*`).
    pub is_private: bool,
    /// Its member count.
    pub num_members: u64,
}

impl SlackChannel {
    /// A channel.
    pub fn new(id: &str, name: &str, is_private: bool, num_members: u64) -> Self {
        Self { id: id.into(), name: name.into(), is_private, num_members }
    }
}

/// A Slack message.
#[derive(Debug, Clone, Default)]
pub struct SlackMessage {
    /// The channel's id or name (`general` or `#general`; stored as the id).
    pub channel: String,
    /// The author's user id (`U…`).
    pub user: String,
    /// The text (Slack mrkdwn).
    pub text: String,
    /// Its timestamp id (`1717000000.000100`); empty: one a day before the start, a minute apart in order.
    pub ts: String,
    /// For a reply, the `ts` of the thread's parent.
    pub thread_ts: Option<String>,
}

impl SlackMessage {
    /// A message in `channel` (id or name).
    pub fn new(channel: &str, user: &str, text: &str) -> Self {
        Self { channel: channel.into(), user: user.into(), text: text.into(), ..Self::default() }
    }

    /// A reply in the thread of the message whose ts is `thread_ts`.
    pub fn reply(channel: &str, thread_ts: &str, user: &str, text: &str) -> Self {
        Self { thread_ts: Some(thread_ts.into()), ..Self::new(channel, user, text) }
    }
}

/// A Trello board.
#[derive(Debug, Clone, Default)]
pub struct TrelloBoard {
    /// 24 hex digits; empty: `5f00000000000000000b0001`, … (the first free one, in order).
    pub id: String,
    /// The name.
    pub name: String,
    /// The description (`desc`).
    pub desc: String,
}

impl TrelloBoard {
    /// A board without a description.
    pub fn new(name: &str) -> Self {
        Self { name: name.into(), ..Self::default() }
    }
}

/// A list of a Trello board.
#[derive(Debug, Clone, Default)]
pub struct TrelloList {
    /// 24 hex digits; empty: `5f00000000000000000a0001`, … (the first free one, in order).
    pub id: String,
    /// The board's id or name (stored as the id); empty: the first board.
    pub board: String,
    /// The name.
    pub name: String,
}

impl TrelloList {
    /// A list of `board` (id or name).
    pub fn new(board: &str, name: &str) -> Self {
        Self { board: board.into(), name: name.into(), ..Self::default() }
    }
}

/// A Trello card.
#[derive(Debug, Clone, Default)]
pub struct TrelloCard {
    /// 24 hex digits; empty: `5f00000000000000000c0001`, … (the first free one, in order).
    pub id: String,
    /// The board's id or name (stored as the id); empty: the list's board, else the first board.
    pub board: String,
    /// The list's id or name on that board (stored as the id); empty: the board's first list.
    pub list: String,
    /// The name.
    pub name: String,
    /// The description (Markdown).
    pub desc: String,
    /// The due time, RFC 3339 or a date (served as `2025-06-04T09:00:00.000Z`); `None`: no due date.
    pub due: Option<String>,
    /// `dueComplete`.
    pub due_complete: bool,
    /// Archived (`closed`): left out of a board's cards unless `filter=all` or `closed`.
    pub closed: bool,
    /// Label names (each a label of the board, its id and color derived from the name).
    pub labels: Vec<String>,
    /// `dateLastActivity`, RFC 3339; empty: a day before the start. A `PUT` sets it to now.
    pub last_activity: String,
}

impl TrelloCard {
    /// An open card of `list` (id or name) on `board` (id or name), without due date or labels.
    pub fn new(board: &str, list: &str, name: &str, desc: &str) -> Self {
        Self { board: board.into(), list: list.into(), name: name.into(), desc: desc.into(), ..Self::default() }
    }
}

/// A Notion page, at the workspace's top level.
#[derive(Debug, Clone, Default)]
pub struct NotionPage {
    /// A UUID (with or without dashes; stored with them); empty: `00000000-0000-4000-8000-000000000001`, … in order.
    pub id: String,
    /// The title.
    pub title: String,
    /// Its blocks, one a string: a paragraph, or `# `, `## `, `### ` a heading (`heading_1`, …)
    /// and `- ` a `bulleted_list_item`.
    pub paragraphs: Vec<String>,
    /// RFC 3339; empty: a day before the start.
    pub last_edited_time: String,
}

impl NotionPage {
    /// A page with these blocks.
    pub fn new(title: &str, paragraphs: &[&str]) -> Self {
        Self { title: title.into(), paragraphs: paragraphs.iter().map(|p| p.to_string()).collect(), ..Self::default() }
    }
}

impl Content {
    /// The accounts of [`Content::default`] without any events, emails, files, issues, channels,
    /// messages, boards, lists, cards or pages.
    pub fn empty() -> Self {
        Content {
            calendar_events: Vec::new(), emails: Vec::new(), drive_files: Vec::new(), issues: Vec::new(), github_repos: Vec::new(), slack_channels: Vec::new(), slack_messages: Vec::new(),
            trello_boards: Vec::new(), trello_lists: Vec::new(), trello_cards: Vec::new(), notion_pages: Vec::new(), ..Content::default()
        }
    }
}

impl Default for Content {
    /// Google account `alice@example.com` with 3 events (the next three days), 3 emails (one of
    /// them multipart) and 3 Drive files (2 Google Docs, 1 text file); GitHub user `alice` with
    /// `acme/app`: issues 1 and 2 and pull request 3; Slack workspace `Acme` (`T0STANDIN`), user
    /// `U0ALICE`, channels `general` (public) and `project-x` (private) with 4 messages, one a
    /// thread with a reply; Trello member `alice` with board `Family`, lists `To do`, `Doing`,
    /// `Done` and 3 cards (`Pay the rent` due in 3 days); Notion workspace `Alice's Notion` of
    /// `Alice` with 3 pages (`Trip to Lisbon`, `Recipes`, `Reading list`).
    fn default() -> Self {
        let now = now_minute();
        let day = |days: i64, h: u8, m: u8| rfc3339((now.date() + time::Duration::days(days)).with_time(time::Time::from_hms(h, m, 0).unwrap_or(time::Time::MIDNIGHT)).assume_utc());
        let ago = |hours: i64| rfc3339(now - time::Duration::hours(hours));
        let ts = |minutes_ago: i64, n: u32| format!("{}.{n:06}", (now - time::Duration::minutes(minutes_ago)).unix_timestamp());
        let all_hands = ts(180, 200);
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Content {
            google_account: "alice@example.com".into(),
            calendar_events: vec![
                CalendarEvent { attendees: labels(&["alice@example.com", "bob@example.com"]), ..CalendarEvent::new("Team standup", "Daily sync of the app team.", &day(1, 9, 0), &day(1, 9, 15)) },
                CalendarEvent { location: "Dr. Rivera, 12 Main St".into(), ..CalendarEvent::new("Dentist", "", &day(2, 14, 0), &day(2, 15, 0)) },
                CalendarEvent { attendees: labels(&["alice@example.com", "bob@example.com", "carol@example.com"]), ..CalendarEvent::new("Quarterly planning", "Agenda: roadmap, budget, hiring.", &day(3, 10, 0), &day(3, 12, 0)) },
            ],
            emails: vec![
                Email { date: ago(2), ..Email::new("Bob Builder <bob@example.com>", "alice@example.com", "Lunch on Friday?", "Hi Alice,\n\nAre you free for lunch on Friday at noon?\n\nBob") },
                Email { date: ago(26), labels: labels(&["INBOX"]), ..Email::new("Shop <billing@shop.example>", "alice@example.com", "Your receipt #1042", "Thank you for your order.\nTotal: $42.00\n") },
                Email { date: ago(72), html: Some("<p>Here is the <b>draft</b> of the planning doc.</p>".into()), ..Email::new("Carol <carol@example.com>", "alice@example.com", "Planning doc draft", "Here is the draft of the planning doc.") },
            ],
            drive_files: vec![
                DriveFile { modified_time: ago(5), ..DriveFile::doc("Planning notes", "Q3 planning\n\n- Ship the mobile app\n- Hire two engineers") },
                DriveFile { modified_time: ago(30), ..DriveFile::text("todo.txt", "buy milk\ncall the dentist\n") },
                DriveFile { modified_time: ago(100), ..DriveFile::doc("Budget 2025", "Budget 2025\n\nMarketing: 10k\nInfrastructure: 25k") },
            ],
            github_login: "alice".into(),
            issues: vec![
                Issue { labels: labels(&["bug"]), comments: vec![IssueComment::new("bob", "I can reproduce this on 1.2.0.")], ..Issue::new(1, "Crash on startup when the config file is missing", "Steps: delete `config.toml`, run `app`: it panics.", false) },
                Issue { labels: labels(&["enhancement"]), ..Issue::new(2, "Add a dark mode", "The UI is too bright at night.", false) },
                Issue { user: "bob".into(), ..Issue::new(3, "Fall back to the defaults when the config file is missing", "Fixes #1.", true) },
            ],
            github_repos: vec!["acme/app".into()],
            slack_team_id: "T0STANDIN".into(),
            slack_team_name: "Acme".into(),
            slack_user_id: "U0ALICE".into(),
            slack_channels: vec![SlackChannel::new("C0GENERAL", "general", false, 12), SlackChannel::new("C0PROJECTX", "project-x", true, 4)],
            slack_messages: vec![
                SlackMessage { ts: ts(240, 100), ..SlackMessage::new("C0GENERAL", "U0BOB", "Welcome to the Acme workspace!") },
                SlackMessage { ts: all_hands.clone(), ..SlackMessage::new("C0GENERAL", "U0CAROL", "Reminder: all-hands at 3pm today.") },
                SlackMessage { ts: ts(170, 300), ..SlackMessage::reply("C0GENERAL", &all_hands, "U0ALICE", "Will it be recorded?") },
                SlackMessage { ts: ts(60, 400), ..SlackMessage::new("C0PROJECTX", "U0BOB", "The launch moved to next Tuesday.") },
            ],
            trello_username: "alice".into(),
            trello_full_name: "Alice Example".into(),
            trello_boards: vec![TrelloBoard { desc: "Family chores and plans.".into(), ..TrelloBoard::new("Family") }],
            trello_lists: vec![TrelloList::new("Family", "To do"), TrelloList::new("Family", "Doing"), TrelloList::new("Family", "Done")],
            trello_cards: vec![
                TrelloCard { labels: labels(&["health"]), last_activity: ago(50), ..TrelloCard::new("Family", "To do", "Book the dentist", "") },
                TrelloCard { last_activity: ago(6), ..TrelloCard::new("Family", "Doing", "Plan the trip", "Lisbon in May: flights, hotel, and a packing list.") },
                TrelloCard { due: Some(day(3, 9, 0)), labels: labels(&["money"]), last_activity: ago(30), ..TrelloCard::new("Family", "To do", "Pay the rent", "Transfer to the landlord.") },
            ],
            notion_workspace_name: "Alice's Notion".into(),
            notion_user_name: "Alice".into(),
            notion_user_email: "alice@example.com".into(),
            notion_pages: vec![
                NotionPage {
                    last_edited_time: ago(3),
                    ..NotionPage::new("Trip to Lisbon", &["Flights: TP1351 on Friday at 09:05, back on Monday.", "## Packing list", "- Passport", "- Sunscreen", "- Travel adapter"])
                },
                NotionPage { last_edited_time: ago(28), ..NotionPage::new("Recipes", &["## Pasta al limone", "Zest two lemons, then toss with butter, parmesan and the pasta water."]) },
                NotionPage { last_edited_time: ago(80), ..NotionPage::new("Reading list", &["Books for the summer:", "- The Left Hand of Darkness", "- Piranesi"]) },
            ],
        }
    }
}

/// One request as a provider stand-in received it.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, as sent (not percent-decoded).
    pub path: String,
    /// The query string without `?`, as sent; empty without one.
    pub query: String,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    /// The body, as text (lossy UTF-8).
    pub body: String,
    /// The status it was answered with (0 while being answered).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// A Gmail draft made with `drafts.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GmailDraft {
    /// The draft's id (`r-…`).
    pub id: String,
    /// Its message's id.
    pub message_id: String,
    /// Its message's thread.
    pub thread_id: String,
    /// The RFC 2822 message, decoded from `raw`.
    pub raw: String,
}

impl GmailDraft {
    /// A header of the message (first match, name case-insensitive, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        google::raw_header(&self.raw, name)
    }
}

/// A message sent with `messages.send` or `drafts.send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    /// The sent message's id.
    pub message_id: String,
    /// Its thread.
    pub thread_id: String,
    /// The draft it was sent from (`drafts.send`).
    pub draft_id: Option<String>,
    /// The RFC 2822 message.
    pub raw: String,
}

impl SentMail {
    /// A header of the message (first match, name case-insensitive, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        google::raw_header(&self.raw, name)
    }
}

/// A Trello card changed with `PUT /1/cards/{id}` (recorded when applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrelloUpdate {
    /// The card's id.
    pub card_id: String,
    /// The parameters of the request, from the query string and the body (JSON or form; the
    /// body's win, JSON non-strings as their JSON text), `key` and `token` left out.
    pub fields: BTreeMap<String, String>,
}

/// A comment made with Notion's `POST /v1/comments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotionComment {
    /// The comment's id (a UUID).
    pub id: String,
    /// The page it is on (with dashes).
    pub page_id: String,
    /// Its discussion: a new one, or the one of `discussion_id` for a reply.
    pub discussion_id: String,
    /// Its text: the `plain_text` (or `text.content`) of its rich text items, joined.
    pub text: String,
    /// When it was made (`2025-06-04T09:00:00.000Z`).
    pub created_time: String,
}

/// Tokens minted by [`ProviderStandin::issue_tokens`], as if an authorization had been completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
}

/// State shared by the handlers and the [`ProviderStandin`] handle.
pub(crate) struct Shared {
    pub(crate) kind: ProviderKind,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) ttl: Duration,
    pub(crate) redirect_uris: Vec<String>,
    /// `http://127.0.0.1:PORT`, for the URLs in answers (GitHub's `url`, `Link`).
    pub(crate) base_url: String,
    pub(crate) started: OffsetDateTime,
    inner: Mutex<Inner>,
}

/// Everything that changes, behind the one lock.
pub(crate) struct Inner {
    pub(crate) log: Vec<ProviderRequest>,
    pub(crate) tokens: oauth::Tokens,
    pub(crate) content: Content,
    pub(crate) drafts: Vec<GmailDraft>,
    pub(crate) sent: Vec<SentMail>,
    pub(crate) trello_updates: Vec<TrelloUpdate>,
    pub(crate) notion_comments: Vec<NotionComment>,
    /// Numbers messages, drafts, comments and posts made through the API.
    pub(crate) counter: u64,
    /// The next issue comment id.
    pub(crate) next_comment: u64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not hide the record from the test that wants to see it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    pub(crate) fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Assigns what is empty: ids in order, times, the default repo, channel ids for names,
    /// Trello board and list ids for names, Notion page ids.
    fn fill(&mut self, started: OffsetDateTime) {
        trello::fill(&mut self.content, started);
        notion::fill(&mut self.content, started);
        let now = rfc3339(started);
        let c = &mut self.content;
        for (i, e) in c.calendar_events.iter_mut().enumerate() {
            if e.id.is_empty() {
                e.id = format!("standinevent{:04}", i + 1);
            }
        }
        for (i, m) in c.emails.iter_mut().enumerate() {
            if m.id.is_empty() {
                m.id = format!("{:016x}", 0x18f0_0000_0000_0000u64 + i as u64 + 1);
            }
            if m.date.is_empty() {
                m.date = now.clone();
            }
        }
        for (i, f) in c.drive_files.iter_mut().enumerate() {
            if f.id.is_empty() {
                f.id = format!("1standinDriveFile{:016}", i + 1);
            }
            if f.modified_time.is_empty() {
                f.modified_time = now.clone();
            }
        }
        for issue in &mut c.issues {
            if issue.repo.is_empty() {
                issue.repo = "acme/app".into();
            }
            if issue.state.is_empty() {
                issue.state = "open".into();
            }
            if issue.user.is_empty() {
                issue.user = "octocat".into();
            }
            if issue.created_at.is_empty() {
                issue.created_at = rfc3339(started - time::Duration::days(30) + time::Duration::hours(issue.number as i64));
            }
            for comment in &mut issue.comments {
                if comment.id == 0 {
                    comment.id = self.next_comment;
                    self.next_comment += 1;
                }
                if comment.created_at.is_empty() {
                    comment.created_at = now.clone();
                }
            }
        }
        for (i, ch) in c.slack_channels.iter_mut().enumerate() {
            if ch.id.is_empty() {
                ch.id = format!("C{:07}", i + 1);
            }
        }
        let day_before = (started - time::Duration::days(1)).unix_timestamp();
        for i in 0..c.slack_messages.len() {
            let name = c.slack_messages[i].channel.trim_start_matches('#').to_owned();
            let id = match c.slack_channels.iter().find(|ch| ch.id == name || ch.name == name) {
                Some(ch) => ch.id.clone(),
                None => {
                    let id = format!("C{:07}", c.slack_channels.len() + 1);
                    c.slack_channels.push(SlackChannel::new(&id, &name, false, 3));
                    id
                }
            };
            let m = &mut c.slack_messages[i];
            m.channel = id;
            if m.ts.is_empty() {
                m.ts = format!("{}.{:06}", day_before + 60 * i as i64, i + 1);
            }
        }
    }
}

/// One provider's OAuth endpoints and API on a free loopback port, in a background task, until
/// dropped. See the crate's README for the paths and the shapes of the answers.
pub struct ProviderStandin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ProviderStandin {
    /// Binds 127.0.0.1 on a free port and serves `kind` in the background.
    pub async fn start(kind: ProviderKind, config: ProviderStandinConfig) -> std::io::Result<ProviderStandin> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let started = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc());
        let mut inner = Inner {
            log: Vec::new(), tokens: oauth::Tokens::default(), content: config.content, drafts: Vec::new(), sent: Vec::new(), trello_updates: Vec::new(), notion_comments: Vec::new(), counter: 0,
            next_comment: 1_000_001,
        };
        inner.fill(started);
        let shared = Arc::new(Shared {
            kind,
            client_id: config.client_id,
            client_secret: config.client_secret,
            ttl: Duration::from_secs(config.access_token_ttl_secs),
            redirect_uris: config.redirect_uris,
            base_url: format!("http://{addr}"),
            started,
            inner: Mutex::new(inner),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(ProviderStandin { addr, shared, task })
    }

    /// The provider it plays.
    pub fn kind(&self) -> ProviderKind {
        self.shared.kind
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the base of both the OAuth host and the API host.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order (OAuth endpoints included).
    pub fn requests(&self) -> Vec<ProviderRequest> {
        self.shared.lock().log.clone()
    }

    /// The requests that would change something at the provider: `POST`, `PUT`, `PATCH` or
    /// `DELETE` to an API path (Slack: any Web API method that is not a read, whatever the HTTP
    /// method; Notion: not `POST /v1/search` nor a `…/query`), whether or not the stand-in
    /// implements it. OAuth (authorize, token, revoke) is not here.
    pub fn writes(&self) -> Vec<ProviderRequest> {
        let kind = self.shared.kind;
        self.requests().into_iter().filter(|r| is_write(kind, &r.method, &r.path)).collect()
    }

    /// How many requests the token endpoint received with this `grant_type`, answered or refused.
    /// GitHub and Slack take a code without `grant_type`: those count as `authorization_code`.
    pub fn token_requests(&self, grant_type: &str) -> usize {
        self.shared.lock().tokens.requests(grant_type)
    }

    /// Revokes the grant that `token` (an access or a refresh token) belongs to, as the user would
    /// in the provider's settings: its refresh tokens are refused from now on (`invalid_grant` or
    /// the provider's error) and its access tokens answer 401 (Slack: `token_revoked`). False for
    /// an unknown or already revoked token.
    pub fn revoke(&self, token: &str) -> bool {
        self.shared.lock().tokens.revoke_token(token)
    }

    /// Revokes every grant issued so far.
    pub fn revoke_all(&self) {
        self.shared.lock().tokens.revoke_all();
    }

    /// Every access token issued so far is expired from now on (refresh tokens still work).
    pub fn expire_access_tokens(&self) {
        self.shared.lock().tokens.expire_all();
    }

    /// Mints a grant with `scopes` without the authorization flow (not recorded, not counted), for
    /// tests that start from a connected account. Google's refresh token is as with `access_type=offline`,
    /// Trello's as with `offline_access`. Notion's `scopes` are the integration's capabilities
    /// (`read_content`, `update_content`, `insert_content`, `read_comments`, `insert_comments`):
    /// none is all of them, as the authorization flow grants.
    pub fn issue_tokens(&self, scopes: &[&str]) -> IssuedTokens {
        let kind = self.shared.kind;
        let ttl = self.shared.ttl;
        let (access_token, refresh_token) = self.shared.lock().tokens.grant(kind, scopes.iter().map(|s| s.to_string()).collect(), ttl);
        IssuedTokens { access_token, refresh_token }
    }

    /// Gmail: what was sent with `messages.send` and `drafts.send`, in order.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.shared.lock().sent.clone()
    }

    /// Gmail: the drafts made with `drafts.create` and not sent.
    pub fn drafts(&self) -> Vec<GmailDraft> {
        self.shared.lock().drafts.clone()
    }

    /// Trello: the card updates (`PUT /1/cards/{id}`) applied, in order.
    pub fn trello_updates(&self) -> Vec<TrelloUpdate> {
        self.shared.lock().trello_updates.clone()
    }

    /// Trello: the [`writes`](Self::writes) other than card updates (`POST /1/cards`,
    /// `DELETE /1/cards/{id}`, any other write path), answered or refused. Empty for other providers.
    pub fn trello_other_writes(&self) -> Vec<ProviderRequest> {
        match self.shared.kind {
            ProviderKind::Trello => self.writes().into_iter().filter(|r| !trello::is_card_update(&r.method, &r.path)).collect(),
            _ => Vec::new(),
        }
    }

    /// Notion: the comments made with `POST /v1/comments`, in order.
    pub fn notion_comments(&self) -> Vec<NotionComment> {
        self.shared.lock().notion_comments.clone()
    }

    /// Notion: the [`writes`](Self::writes) other than `POST /v1/comments` (`PATCH /v1/pages/{id}`,
    /// `POST /v1/pages`, `PATCH` or `DELETE /v1/blocks/{id}`, `PATCH /v1/blocks/{id}/children`,
    /// any other write path), answered or refused. Empty for other providers.
    pub fn notion_other_writes(&self) -> Vec<ProviderRequest> {
        match self.shared.kind {
            ProviderKind::Notion => self.writes().into_iter().filter(|r| !notion::is_comment_create(&r.method, &r.path)).collect(),
            _ => Vec::new(),
        }
    }

    /// The content as it is now (with assigned ids, posted comments and Slack posts).
    pub fn content(&self) -> Content {
        self.shared.lock().content.clone()
    }

    /// Adds an email; returns its id.
    pub fn add_email(&self, email: Email) -> String {
        self.add(|c| c.emails.push(email), |c| c.emails.last().map(|e| e.id.clone()))
    }

    /// Adds a calendar event; returns its id.
    pub fn add_calendar_event(&self, event: CalendarEvent) -> String {
        self.add(|c| c.calendar_events.push(event), |c| c.calendar_events.last().map(|e| e.id.clone()))
    }

    /// Adds a Drive file; returns its id.
    pub fn add_drive_file(&self, file: DriveFile) -> String {
        self.add(|c| c.drive_files.push(file), |c| c.drive_files.last().map(|f| f.id.clone()))
    }

    /// Adds an issue or pull request (replacing one with the same repo and number); returns its number.
    pub fn add_issue(&self, issue: Issue) -> u64 {
        let number = issue.number;
        self.add(
            |c| {
                let repo = if issue.repo.is_empty() { "acme/app" } else { issue.repo.as_str() };
                c.issues.retain(|i| !(i.number == number && i.repo == repo));
                c.issues.push(issue);
            },
            |_| None,
        );
        number
    }

    /// Adds a Slack message (creating its channel if it names an unknown one); returns its `ts`.
    pub fn add_slack_message(&self, message: SlackMessage) -> String {
        self.add(|c| c.slack_messages.push(message), |c| c.slack_messages.last().map(|m| m.ts.clone()))
    }

    /// Adds a Trello card (creating its board or list if it names an unknown one); returns its id.
    pub fn add_trello_card(&self, card: TrelloCard) -> String {
        self.add(|c| c.trello_cards.push(card), |c| c.trello_cards.last().map(|c| c.id.clone()))
    }

    /// Adds a Notion page; returns its id (with dashes).
    pub fn add_notion_page(&self, page: NotionPage) -> String {
        self.add(|c| c.notion_pages.push(page), |c| c.notion_pages.last().map(|p| p.id.clone()))
    }

    fn add(&self, push: impl FnOnce(&mut Content), id: impl FnOnce(&Content) -> Option<String>) -> String {
        let mut inner = self.shared.lock();
        push(&mut inner.content);
        inner.fill(self.shared.started);
        id(&inner.content).unwrap_or_default()
    }
}

impl Drop for ProviderStandin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_write(kind: ProviderKind, method: &str, path: &str) -> bool {
    if oauth::is_oauth_path(kind, path) {
        return false;
    }
    match kind {
        ProviderKind::Slack => path.strip_prefix("/api/").is_some_and(|m| !slack::is_read_method(m)),
        ProviderKind::Notion => matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") && !notion::is_read_post(path),
        _ => matches!(method, "POST" | "PUT" | "PATCH" | "DELETE"),
    }
}

/// Records the request, then answers it under the lock.
async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let req = Req::new(method, &uri, headers, body);
    let mut guard = shared.lock();
    let inner = &mut *guard;
    let index = inner.log.len();
    inner.log.push(ProviderRequest {
        method: req.method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        authorization: req.header("authorization").map(str::to_owned),
        body: String::from_utf8_lossy(&req.body).into_owned(),
        status: 0,
        at: Instant::now(),
    });
    let response = match oauth::route(&shared, inner, &req) {
        Some(response) => response,
        None => match shared.kind {
            ProviderKind::Google => google::api(&shared, inner, &req),
            ProviderKind::Github => github::api(&shared, inner, &req),
            ProviderKind::Slack => slack::api(&shared, inner, &req),
            ProviderKind::Trello => trello::api(&shared, inner, &req),
            ProviderKind::Notion => notion::api(&shared, inner, &req),
        },
    };
    inner.log[index].status = response.status().as_u16();
    response
}

/// A request, parsed enough for every handler.
pub(crate) struct Req {
    pub(crate) method: Method,
    /// As sent (percent-encoded).
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Req {
    fn new(method: Method, uri: &Uri, headers: HeaderMap, body: Bytes) -> Self {
        let query = uri.query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
        Req { method, path: uri.path().to_owned(), query, headers, body }
    }

    /// A query parameter (the first of that name).
    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated query parameter.
    pub(crate) fn q_all(&self, name: &str) -> Vec<&str> {
        self.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The token of `Authorization: <scheme> <token>` when the scheme is one of `schemes` (any case).
    pub(crate) fn auth_token(&self, schemes: &[&str]) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.trim().split_once(' ')?;
        schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)).then_some(token.trim())
    }

    pub(crate) fn bearer(&self) -> Option<&str> {
        self.auth_token(&["Bearer"])
    }

    fn content_type(&self) -> &str {
        self.header(header::CONTENT_TYPE.as_str()).unwrap_or_default()
    }

    pub(crate) fn is_json(&self) -> bool {
        self.content_type().starts_with("application/json")
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The query's parameters, then the body's (a form, or a JSON object whose non-string values
    /// are taken as their JSON text); the body's win.
    pub(crate) fn params(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self.query.iter().cloned().collect();
        if self.content_type().starts_with("application/x-www-form-urlencoded") {
            if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&self.body) {
                out.extend(pairs);
            }
        } else if self.is_json() {
            if let Some(Value::Object(map)) = self.json() {
                for (k, v) in map {
                    match v {
                        Value::Null => {}
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => {
                            out.insert(k, other.to_string());
                        }
                    }
                }
            }
        }
        out
    }

    /// The path's segments, percent-decoded.
    pub(crate) fn segments(&self) -> Vec<String> {
        self.path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode(s, false)).collect()
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in forms).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

/// An opaque page token for the item at `offset`.
pub(crate) fn page_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

/// The offset of a [`page_token`].
pub(crate) fn page_offset(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    String::from_utf8(bytes).ok()?.strip_prefix("offset:")?.parse().ok()
}

/// RFC 3339 in UTC, whole seconds (`2025-06-04T09:00:00Z`).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_default()
}

/// An RFC 3339 time, or a date (`2025-06-04`, midnight UTC).
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    let date = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(date.midnight().assume_utc())
}

fn now_minute() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_time(time::Time::from_hms(now.hour(), now.minute(), 0).unwrap_or(time::Time::MIDNIGHT))
}
