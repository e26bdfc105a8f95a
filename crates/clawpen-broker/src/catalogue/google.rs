//! Google: Calendar, Gmail and Drive, read-only, and Gmail drafts by proposal. There is no
//! code path to any send endpoint: a draft is created when a member approves it and stays a
//! draft until the person sends it from Gmail.

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{args, cut, cut_str, is_google_id, object, text, Draft, Exec, Kind, Provider, ToolDef, GOOGLE_ID, ONE_LINE, TEXT};
use crate::ToolError;

const CALENDAR_SCOPE: &str = "https://www.googleapis.com/auth/calendar.readonly";
const GMAIL_READ_SCOPE: &str = "https://www.googleapis.com/auth/gmail.readonly";
const GMAIL_COMPOSE_SCOPE: &str = "https://www.googleapis.com/auth/gmail.compose";
const DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive.readonly";

/// RFC 3339 date-time, with a zone.
const RFC3339: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$";
/// One email address, nothing around it (no name, no second address, no line break).
pub(crate) const EMAIL: &str = "^[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63}){1,8}$";

const CAP: usize = 16 * 1024;
/// Longest body or document text returned, in characters.
const BODY_CHARS: usize = 12_000;

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "calendar_list_events",
        provider: Provider::Google,
        source: "Google Calendar",
        description: "List events of the user's primary Google Calendar, soonest first (recurring events expanded). Defaults to upcoming events.",
        scopes: &[CALENDAR_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/calendar/v3/calendars/primary/events?singleEvents=true&orderBy=startTime",
        result_cap: CAP,
        fields: &["id", "summary", "start", "end", "location", "status", "organizer", "attendees", "description"],
        schema: || {
            object(
                json!({
                    "time_min": {"type": "string", "pattern": RFC3339, "description": "only events ending after this RFC 3339 time, e.g. \"2026-05-01T00:00:00Z\"; default now"},
                    "time_max": {"type": "string", "pattern": RFC3339, "description": "only events starting before this RFC 3339 time"},
                    "query": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": ONE_LINE, "description": "free text to look for in events"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 50, "description": "how many events, 1 to 50; default 10"},
                }),
                &[],
            )
        },
    },
    ToolDef {
        name: "calendar_get_event",
        provider: Provider::Google,
        source: "Google Calendar",
        description: "Read one event of the user's primary Google Calendar by its id (from calendar_list_events).",
        scopes: &[CALENDAR_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/calendar/v3/calendars/primary/events/{event_id}",
        result_cap: CAP,
        fields: &["id", "summary", "start", "end", "location", "status", "organizer", "attendees", "description"],
        schema: || object(json!({"event_id": {"type": "string", "pattern": GOOGLE_ID, "description": "the event's id, e.g. \"7kd0s8r3q2a1bc\""}}), &["event_id"]),
    },
    ToolDef {
        name: "gmail_search",
        provider: Provider::Google,
        source: "Gmail",
        description: "Search the user's Gmail with Gmail's search syntax (e.g. \"from:ana newer_than:7d\"); returns sender, recipients, subject, date and a snippet of each message.",
        scopes: &[GMAIL_READ_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/gmail/v1/users/me/messages?q= then /gmail/v1/users/me/messages/{id}?format=metadata",
        result_cap: CAP,
        fields: &["id", "thread_id", "from", "to", "subject", "date", "snippet"],
        schema: || {
            object(
                json!({
                    "query": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": ONE_LINE, "description": "a Gmail search, e.g. \"from:ana subject:invoice\""},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 20, "description": "how many messages, 1 to 20; default 10"},
                }),
                &["query"],
            )
        },
    },
    ToolDef {
        name: "gmail_read",
        provider: Provider::Google,
        source: "Gmail",
        description: "Read one Gmail message by its id (from gmail_search): headers and its plain-text body (cut when long).",
        scopes: &[GMAIL_READ_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/gmail/v1/users/me/messages/{message_id}?format=full",
        result_cap: CAP,
        fields: &["id", "thread_id", "from", "to", "cc", "subject", "date", "labels", "body", "attachments"],
        schema: || object(json!({"message_id": {"type": "string", "pattern": GOOGLE_ID, "description": "the message's id, e.g. \"18f2a9c4d1e0b7a3\""}}), &["message_id"]),
    },
    ToolDef {
        name: "gmail_create_draft",
        provider: Provider::Google,
        source: "Gmail",
        description: "Propose a Gmail draft to one recipient. Nothing is written now: the user approves the proposal in clawpen, then the draft appears in their Gmail Drafts, unsent, for them to send.",
        scopes: &[GMAIL_COMPOSE_SCOPE],
        kind: Kind::Propose,
        method: "POST (on approval)",
        path: "/gmail/v1/users/me/drafts",
        result_cap: 4096,
        fields: &["proposal", "state", "target", "text"],
        schema: || {
            object(
                json!({
                    "to": {"type": "string", "maxLength": 254, "pattern": EMAIL, "description": "one email address, e.g. \"ana@example.com\""},
                    "subject": {"type": "string", "minLength": 1, "maxLength": 250, "pattern": ONE_LINE, "description": "one line"},
                    "body": {"type": "string", "minLength": 1, "maxLength": 20000, "pattern": TEXT, "description": "the plain-text body"},
                    "in_reply_to": {"type": "string", "pattern": GOOGLE_ID, "description": "the id of the Gmail message this replies to (from gmail_search), to keep the thread"},
                }),
                &["to", "subject", "body"],
            )
        },
    },
    ToolDef {
        name: "drive_search",
        provider: Provider::Google,
        source: "Google Drive",
        description: "Search the user's Google Drive for files whose text contains the words; returns names, types and ids.",
        scopes: &[DRIVE_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/drive/v3/files?q=fullText contains '…' and trashed = false",
        result_cap: CAP,
        fields: &["id", "name", "mime_type", "modified_time", "size", "owner"],
        schema: || object(json!({"query": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": ONE_LINE, "description": "words to look for"}}), &["query"]),
    },
    ToolDef {
        name: "drive_read",
        provider: Provider::Google,
        source: "Google Drive",
        description: "Read the text of one Google Drive file by its id (from drive_search): Google Docs, Sheets (as CSV) and Slides as text, and plain-text files; cut when long.",
        scopes: &[DRIVE_SCOPE],
        kind: Kind::Read,
        method: "GET",
        path: "/drive/v3/files/{file_id} then …/export?mimeType=text/plain (Google Docs) or ?alt=media (text files)",
        result_cap: CAP,
        fields: &["id", "name", "mime_type", "text"],
        schema: || object(json!({"file_id": {"type": "string", "pattern": GOOGLE_ID, "description": "the file's id, e.g. \"1AbC_dEf-GhIjKlMnOpQrStUvWxYz012345\""}}), &["file_id"]),
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListEvents {
    time_min: Option<String>,
    time_max: Option<String>,
    query: Option<String>,
    max_results: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetEvent {
    event_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    query: String,
    max_results: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMessage {
    message_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDraft {
    to: String,
    subject: String,
    body: String,
    in_reply_to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveSearch {
    query: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveRead {
    file_id: String,
}

/// An id checked again where it is put in a path (the schema checked it first).
fn id(s: &str) -> Result<String, ToolError> {
    if is_google_id(s) {
        Ok(crate::http::segment(s))
    } else {
        Err(ToolError::new("invalid_arguments", "the id is not a Google id".to_owned()))
    }
}

pub(crate) async fn read(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Value, ToolError> {
    match tool {
        "calendar_list_events" => {
            let a: ListEvents = args(a)?;
            let mut q = vec![("singleEvents", "true".to_owned()), ("orderBy", "startTime".to_owned())];
            q.push(("timeMin", a.time_min.unwrap_or_else(|| x.broker.clock.now_rfc3339())));
            if let Some(t) = a.time_max {
                q.push(("timeMax", t));
            }
            if let Some(s) = a.query {
                q.push(("q", s));
            }
            q.push(("maxResults", a.max_results.unwrap_or(10).min(50).to_string()));
            let v = x.json(&x.get("/calendar/v3/calendars/primary/events", &q)).await?;
            let events: Vec<Value> = v["items"].as_array().map(|a| a.iter().take(50).map(|e| event(e, 500)).collect()).unwrap_or_default();
            Ok(json!({"events": events}))
        }
        "calendar_get_event" => {
            let a: GetEvent = args(a)?;
            let v = x.json(&x.get(&format!("/calendar/v3/calendars/primary/events/{}", id(&a.event_id)?), &[])).await?;
            Ok(event(&v, 4000))
        }
        "gmail_search" => {
            let a: Search = args(a)?;
            let n = a.max_results.unwrap_or(10).min(20);
            let list = x.json(&x.get("/gmail/v1/users/me/messages", &[("q", a.query), ("maxResults", n.to_string())])).await?;
            // Ids from the provider go into a path too: only those of an id's form.
            let ids: Vec<String> = list["messages"].as_array().map(|m| m.iter().filter_map(|m| m["id"].as_str()).filter(|s| is_google_id(s)).take(n as usize).map(str::to_owned).collect()).unwrap_or_default();
            let metadata = ids.iter().map(|mid| {
                let q = [("format", "metadata".to_owned()), ("metadataHeaders", "From".to_owned()), ("metadataHeaders", "To".to_owned()), ("metadataHeaders", "Subject".to_owned()), ("metadataHeaders", "Date".to_owned())];
                let req = x.get(&format!("/gmail/v1/users/me/messages/{}", crate::http::segment(mid)), &q);
                async move { x.json(&req).await }
            });
            let mut messages = Vec::new();
            for m in futures_util::future::join_all(metadata).await {
                let m = m?;
                messages.push(json!({
                    "id": text(&m["id"], 256),
                    "thread_id": text(&m["threadId"], 256),
                    "from": header(&m, "From", 300),
                    "to": header(&m, "To", 500),
                    "subject": header(&m, "Subject", 300),
                    "date": header(&m, "Date", 100),
                    "snippet": text(&m["snippet"], 300),
                }));
            }
            Ok(json!({"messages": messages}))
        }
        "gmail_read" => {
            let a: ReadMessage = args(a)?;
            let m = x.json(&x.get(&format!("/gmail/v1/users/me/messages/{}", id(&a.message_id)?), &[("format", "full".to_owned())])).await?;
            let payload = &m["payload"];
            let body = match find_part(payload, "text/plain", 0).and_then(|p| decode_data(&p["body"]["data"])) {
                Some(t) => t,
                None => find_part(payload, "text/html", 0).and_then(|p| decode_data(&p["body"]["data"])).map(|h| strip_html(&h)).unwrap_or_default(),
            };
            let mut attachments = Vec::new();
            collect_attachments(payload, &mut attachments, 0);
            Ok(json!({
                "id": text(&m["id"], 256),
                "thread_id": text(&m["threadId"], 256),
                "from": header(&m, "From", 300),
                "to": header(&m, "To", 1000),
                "cc": header(&m, "Cc", 1000),
                "subject": header(&m, "Subject", 300),
                "date": header(&m, "Date", 100),
                "labels": m["labelIds"].as_array().map(|l| l.iter().filter_map(Value::as_str).take(20).map(|s| cut(s, 50)).collect::<Vec<_>>()),
                "body": cut(&body, BODY_CHARS),
                "attachments": attachments,
            }))
        }
        "drive_search" => {
            let a: DriveSearch = args(a)?;
            let q = [
                ("q", drive_query(&a.query)),
                ("pageSize", "20".to_owned()),
                ("fields", "files(id,name,mimeType,modifiedTime,size,owners(emailAddress))".to_owned()),
                ("supportsAllDrives", "true".to_owned()),
                ("includeItemsFromAllDrives", "true".to_owned()),
            ];
            let v = x.json(&x.get("/drive/v3/files", &q)).await?;
            let files: Vec<Value> = v["files"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .take(20)
                        .map(|f| json!({"id": text(&f["id"], 256), "name": text(&f["name"], 300), "mime_type": text(&f["mimeType"], 100), "modified_time": text(&f["modifiedTime"], 40), "size": text(&f["size"], 20), "owner": text(&f["owners"][0]["emailAddress"], 254)}))
                        .collect()
                })
                .unwrap_or_default();
            Ok(compact(json!({"files": files})))
        }
        "drive_read" => {
            let a: DriveRead = args(a)?;
            let fid = id(&a.file_id)?;
            let meta = x.json(&x.get(&format!("/drive/v3/files/{fid}"), &[("fields", "id,name,mimeType,size".to_owned()), ("supportsAllDrives", "true".to_owned())])).await?;
            let mime = meta["mimeType"].as_str().unwrap_or("");
            let req = match export_type(mime) {
                Some(as_type) => x.get(&format!("/drive/v3/files/{fid}/export"), &[("mimeType", as_type.to_owned())]),
                None if is_text_type(mime) => x.get(&format!("/drive/v3/files/{fid}"), &[("alt", "media".to_owned()), ("supportsAllDrives", "true".to_owned())]),
                None => return Err(ToolError::new("unsupported_file", format!("drive_read reads Google Docs, Sheets, Slides and text files; this file is {}.", cut_str(mime, 100)))),
            };
            let (body, truncated) = x.text(&req).await?;
            // Docs exports start with a byte-order mark.
            let mut t = cut_str(body.trim_start_matches('\u{feff}'), BODY_CHARS);
            if truncated && !t.contains("… [cut: ") {
                t.push_str("… [cut: the file is longer than the broker reads]");
            }
            Ok(json!({"id": text(&meta["id"], 256), "name": text(&meta["name"], 300), "mime_type": cut(mime, 100), "text": t}))
        }
        _ => Err(ToolError::internal("not a Google read tool")),
    }
}

/// A calendar event, its declared fields only.
fn event(e: &Value, description_chars: usize) -> Value {
    let when = |v: &Value| text(v.get("dateTime").filter(|d| d.is_string()).or_else(|| v.get("date")).unwrap_or(&Value::Null), 40);
    let attendees: Option<Vec<Value>> = e["attendees"].as_array().map(|a| a.iter().take(25).map(|p| text(&p["email"], 254)).filter(|v| !v.is_null()).collect());
    compact(json!({
        "id": text(&e["id"], 256),
        "summary": text(&e["summary"], 300),
        "start": when(&e["start"]),
        "end": when(&e["end"]),
        "location": text(&e["location"], 300),
        "status": text(&e["status"], 20),
        "organizer": text(&e["organizer"]["email"], 254),
        "attendees": attendees,
        "description": text(&e["description"], description_chars),
    }))
}

/// Removes null fields of an object (and of the objects in its lists).
fn compact(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// A message header's value, cut; null when absent.
fn header(m: &Value, name: &str, max: usize) -> Value {
    m["payload"]["headers"].as_array().and_then(|h| h.iter().find(|h| h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))).map(|h| text(&h["value"], max)).unwrap_or(Value::Null)
}

fn find_part<'a>(p: &'a Value, mime: &str, depth: usize) -> Option<&'a Value> {
    if depth > 10 {
        return None;
    }
    if p["mimeType"].as_str() == Some(mime) && p["body"]["data"].is_string() {
        return Some(p);
    }
    p["parts"].as_array()?.iter().find_map(|part| find_part(part, mime, depth + 1))
}

fn collect_attachments(p: &Value, out: &mut Vec<Value>, depth: usize) {
    if depth > 10 || out.len() >= 20 {
        return;
    }
    if let Some(name) = p["filename"].as_str().filter(|n| !n.is_empty()) {
        out.push(cut(name, 100));
    }
    for part in p["parts"].as_array().into_iter().flatten() {
        collect_attachments(part, out, depth + 1);
    }
}

/// Gmail's base64url body data (padded or not), as text.
fn decode_data(v: &Value) -> Option<String> {
    let s: String = v.as_str()?.chars().filter(|c| !c.is_whitespace() && *c != '=').collect();
    let bytes = URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()?;
    Some(String::from_utf8_lossy(&bytes).replace('\0', ""))
}

/// HTML to rough text: tags dropped (script and style with their content), a few entities.
fn strip_html(h: &str) -> String {
    let mut out = String::with_capacity(h.len() / 2);
    let lower = h.to_ascii_lowercase();
    let mut i = 0;
    let bytes = h.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            for skip in ["<script", "<style"] {
                if lower[i..].starts_with(skip) {
                    let close = format!("</{}", &skip[1..]);
                    i = lower[i..].find(&close).map(|j| i + j).unwrap_or(bytes.len());
                    break;
                }
            }
            let tag_end = lower[i..].find('>').map(|j| i + j + 1).unwrap_or(bytes.len());
            let tag = &lower[i..tag_end];
            if tag.starts_with("<br") || tag.starts_with("<p") || tag.starts_with("</p") || tag.starts_with("<div") || tag.starts_with("</div") || tag.starts_with("<li") {
                out.push('\n');
            }
            i = tag_end;
        } else {
            let next = h[i..].find('<').map(|j| i + j).unwrap_or(bytes.len());
            out.push_str(&h[i..next]);
            i = next;
        }
    }
    let out = out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&");
    let mut lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines.dedup_by(|a, b| a.is_empty() && b.is_empty());
    lines.join("\n").trim().to_owned()
}

/// Drive's query for files containing the words: the words are a quoted string, `\` and `'`
/// escaped as Drive's query language wants.
pub(crate) fn drive_query(words: &str) -> String {
    format!("fullText contains '{}' and trashed = false", words.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What a Google-native file is exported as.
fn export_type(mime: &str) -> Option<&'static str> {
    match mime {
        "application/vnd.google-apps.document" => Some("text/plain"),
        "application/vnd.google-apps.spreadsheet" => Some("text/csv"),
        "application/vnd.google-apps.presentation" => Some("text/plain"),
        _ => None,
    }
}

fn is_text_type(mime: &str) -> bool {
    mime.starts_with("text/") || matches!(mime, "application/json" | "application/xml" | "application/x-yaml" | "application/yaml" | "application/csv" | "application/x-sh" | "application/javascript")
}

// ---- the draft proposal ----

/// Whether `s` is one address (the schema's pattern, checked again where it becomes a header).
pub(crate) fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    let local_ok = (1..=64).contains(&local.len()) && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"._%+'-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = (2..=9).contains(&labels.len()) && labels.iter().all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    local_ok && domain_ok && s.len() <= 254
}

fn is_one_line(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

/// A `Message-ID` as a header may carry it: `<…>`, nothing that ends a header.
fn is_message_id(s: &str) -> bool {
    s.len() <= 250 && s.starts_with('<') && s.ends_with('>') && s.len() > 2 && !s[1..s.len() - 1].chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

/// A subject as a header: ASCII as it is, anything else RFC 2047-encoded in short words.
fn encode_subject(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return s.to_owned();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

/// The RFC 2822 message of a draft. Every header value is checked to hold no line break, so
/// nothing the model wrote can add a header (a `Bcc:`) or start the body early.
pub(crate) fn raw_message(to: &str, subject: &str, body: &str, in_reply_to: Option<&str>, references: Option<&str>) -> Result<String, ToolError> {
    if !is_email(to) || !is_one_line(subject) || in_reply_to.is_some_and(|m| !is_message_id(m)) || references.is_some_and(|r| !r.split(' ').all(is_message_id)) {
        return Err(ToolError::new("invalid_arguments", "a header of the draft is not valid (one address, one line each)".to_owned()));
    }
    let mut m = format!("To: {to}\r\nSubject: {}\r\n", encode_subject(subject));
    if let Some(id) = in_reply_to {
        m.push_str(&format!("In-Reply-To: {id}\r\n"));
        let refs = match references {
            Some(r) => format!("{r} {id}"),
            None => id.to_owned(),
        };
        m.push_str(&format!("References: {refs}\r\n"));
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    let crlf = body.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n");
    let encoded = STANDARD.encode(crlf.as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(line).unwrap_or_default());
        m.push_str("\r\n");
    }
    Ok(m)
}

pub(crate) async fn propose(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Draft, ToolError> {
    if tool != "gmail_create_draft" {
        return Err(ToolError::internal("not a Google write tool"));
    }
    let a: CreateDraft = args(a)?;
    let mut payload = json!({"to": a.to, "subject": a.subject, "body": a.body});
    let mut shown_headers = String::new();
    let mut target = format!("Gmail draft to {}", a.to);
    if let Some(original) = &a.in_reply_to {
        if !x.conn.scopes.split_whitespace().any(|s| s == GMAIL_READ_SCOPE) {
            return Err(ToolError::new("scope_missing", "Replying in a thread reads the original message, which needs Gmail read access: ask the user to enable gmail_read in clawpen (Integrations) and reconnect Google, or leave out in_reply_to.".to_owned()));
        }
        // The original's thread and Message-ID, read now, so the proposal shows what will be
        // written. Provider data: kept only if it has a Message-ID's form.
        let q = [("format", "metadata".to_owned()), ("metadataHeaders", "Message-ID".to_owned()), ("metadataHeaders", "References".to_owned())];
        let m = x.json(&x.get(&format!("/gmail/v1/users/me/messages/{}", id(original)?), &q)).await?;
        if let Some(thread) = m["threadId"].as_str().filter(|t| is_google_id(t)) {
            payload["thread_id"] = json!(thread);
        }
        if let Some(mid) = header(&m, "Message-ID", 250).as_str().filter(|h| is_message_id(h)) {
            payload["in_reply_to_header"] = json!(mid);
            shown_headers.push_str(&format!("In-Reply-To: {mid}\n"));
            let references = header(&m, "References", 2000);
            let refs: Vec<&str> = references.as_str().map(|r| r.split_whitespace().filter(|x| is_message_id(x)).collect()).unwrap_or_default();
            if !refs.is_empty() {
                payload["references"] = json!(refs[refs.len().saturating_sub(10)..].join(" "));
            }
        }
        target.push_str(&format!(" (a reply to message {original})"));
    }
    // Checked now as well as on approval: a proposal that could not be written is not made.
    raw_message(&a.to, &a.subject, &a.body, payload["in_reply_to_header"].as_str(), payload["references"].as_str())?;
    let text = format!("To: {}\nSubject: {}\n{shown_headers}\n{}", a.to, a.subject, a.body);
    Ok(Draft { target, text, payload })
}

pub(crate) async fn perform(x: &Exec<'_>, tool: &str, payload: &Value) -> Result<String, ToolError> {
    if tool != "gmail_create_draft" {
        return Err(ToolError::internal("not a Google write tool"));
    }
    let s = |k: &str| payload[k].as_str();
    let (Some(to), Some(subject), Some(body)) = (s("to"), s("subject"), s("body")) else {
        return Err(ToolError::internal("the proposal's payload is incomplete"));
    };
    let raw = raw_message(to, subject, body, s("in_reply_to_header"), s("references"))?;
    let mut message = json!({"raw": URL_SAFE.encode(raw.as_bytes())});
    if let Some(thread) = s("thread_id").filter(|t| is_google_id(t)) {
        message["threadId"] = json!(thread);
    }
    let v = x.json(&x.post("/gmail/v1/users/me/drafts", json!({"message": message}))).await?;
    let draft = v["id"].as_str().filter(|d| is_google_id(d)).unwrap_or("?");
    Ok(format!("Gmail draft {draft} created for {to}; it was not sent (the user sends it from Gmail)"))
}

/// The account's email address, from whichever API the granted scopes reach.
pub(crate) async fn account(b: &crate::Broker, p: &crate::config::ResolvedProvider, token: &clawpen_vault::Secret<String>, scopes: &[String]) -> Option<String> {
    let has = |s: &str| scopes.iter().any(|x| x == s);
    let (path, query, pointer): (&str, &[(&str, String)], &str) = if has(GMAIL_READ_SCOPE) || has(GMAIL_COMPOSE_SCOPE) {
        ("/gmail/v1/users/me/profile", &[], "/emailAddress")
    } else if has(CALENDAR_SCOPE) {
        // The primary calendar's id is the account's address.
        let v = b.get_with_token(p, token, "/calendar/v3/users/me/calendarList", &[("minAccessRole", "owner".to_owned())]).await?;
        return v["items"].as_array()?.iter().find(|c| c["primary"] == Value::Bool(true)).and_then(|c| c["id"].as_str()).map(str::to_owned);
    } else if has(DRIVE_SCOPE) {
        ("/drive/v3/about", &[("fields", "user(emailAddress)".to_owned())], "/user/emailAddress")
    } else {
        return None;
    };
    let v = b.get_with_token(p, token, path, query).await?;
    v.pointer(pointer).and_then(Value::as_str).map(|s| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_queries_escape_quotes_and_backslashes() {
        assert_eq!(drive_query("budget 2026"), "fullText contains 'budget 2026' and trashed = false");
        assert_eq!(drive_query("o'brien"), "fullText contains 'o\\'brien' and trashed = false");
        assert_eq!(drive_query("x' or name contains '"), "fullText contains 'x\\' or name contains \\'' and trashed = false");
        assert_eq!(drive_query("a\\' b"), "fullText contains 'a\\\\\\' b' and trashed = false");
    }

    #[test]
    fn a_draft_has_no_header_a_model_could_add() {
        let raw = raw_message("ana@example.com", "Lunch?", "Hi Ana,\nlunch on Friday?\n", None, None).unwrap();
        assert!(raw.starts_with("To: ana@example.com\r\nSubject: Lunch?\r\nMIME-Version: 1.0\r\n"), "{raw}");
        let body_b64: String = raw.split("\r\n\r\n").nth(1).unwrap().replace("\r\n", "");
        assert_eq!(STANDARD.decode(body_b64).unwrap(), b"Hi Ana,\r\nlunch on Friday?\r\n");
        for (to, subject) in [("ana@example.com\r\nBcc: eve@evil.example", "x"), ("ana@example.com", "x\r\nBcc: eve@evil.example"), ("ana@example.com", "x\nBcc: e"), ("a@b.example, eve@evil.example", "x"), ("Ana <ana@example.com>", "x")] {
            assert!(raw_message(to, subject, "b", None, None).is_err(), "{to:?} {subject:?}");
        }
        assert!(raw_message("ana@example.com", "x", "b", Some("<a@b>\r\nBcc: e@f"), None).is_err());
        let reply = raw_message("ana@example.com", "Ré: déjeuner", "b", Some("<m1@mail.example>"), Some("<m0@mail.example>")).unwrap();
        assert!(reply.contains("In-Reply-To: <m1@mail.example>\r\nReferences: <m0@mail.example> <m1@mail.example>\r\n"));
        assert!(reply.contains("Subject: =?UTF-8?B?"));
    }

    #[test]
    fn html_bodies_become_text() {
        assert_eq!(strip_html("<html><style>p{}</style><p>Hello &amp; welcome</p><script>alert(1)</script><br>Bye</html>"), "Hello & welcome\n\nBye");
    }
}
