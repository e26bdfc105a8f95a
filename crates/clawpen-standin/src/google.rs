//! Google: Calendar v3, Gmail v1 and Drive v3 on one port (the real ones are all on
//! www.googleapis.com / gmail.googleapis.com), with Google's error body
//! `{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}`, 401 for
//! a missing, unknown, expired or revoked token, 403 `insufficientPermissions` for a missing
//! scope, and the `fields` partial-response parameter on every JSON answer.

// An `Err` is the answer itself (a `Response`), made at most once per request.
#![allow(clippy::result_large_err)]

use std::cmp::Reverse;
use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::OffsetDateTime;

use crate::oauth::Denied;
use crate::provider::{json_response, page_offset, page_token, parse_time, Inner, Req, Shared};
use crate::{CalendarEvent, DriveFile, Email, GmailDraft, SentMail};

type Answer = Result<Response, Response>;

const AUTH: &str = "https://www.googleapis.com/auth/";
const MAIL: &str = "https://mail.google.com/";
const CAL_READ: &[&str] = &["calendar.readonly", "calendar", "calendar.events", "calendar.events.readonly"];
const GMAIL_READ: &[&str] = &["gmail.readonly", "gmail.modify", MAIL, "gmail.metadata"];
const GMAIL_ANY: &[&str] = &["gmail.readonly", "gmail.modify", MAIL, "gmail.metadata", "gmail.compose", "gmail.send"];
const GMAIL_COMPOSE: &[&str] = &["gmail.compose", "gmail.modify", MAIL];
const GMAIL_SEND: &[&str] = &["gmail.send", "gmail.compose", "gmail.modify", MAIL];
const GMAIL_DRAFTS_READ: &[&str] = &["gmail.readonly", "gmail.compose", "gmail.modify", MAIL];
const DRIVE_META: &[&str] = &["drive", "drive.readonly", "drive.metadata.readonly", "drive.metadata"];
const DRIVE_CONTENT: &[&str] = &["drive", "drive.readonly"];
const USERINFO: &[&str] = &["openid", "email", "profile", "userinfo.email", "userinfo.profile"];
/// The id of My Drive, the parent of every file.
const DRIVE_ROOT: &str = "0AstandinRootFolderUk9PVA";

/// Serves every path that is not OAuth.
pub(crate) fn api(_shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    let segments = req.segments();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = req.method == Method::GET;
    let result = match s.as_slice() {
        ["calendar", "v3", "users", "me", "calendarList"] if get => calendar_list(inner, req),
        ["calendar", "v3", "calendars", calendar, "events"] if get => events_list(inner, req, calendar),
        ["calendar", "v3", "calendars", calendar, "events", id] if get => event_get(inner, req, calendar, id),
        ["gmail", "v1", "users", user, rest @ ..] => gmail(inner, req, user, rest, false),
        ["upload", "gmail", "v1", "users", user, rest @ ..] => gmail(inner, req, user, rest, true),
        ["drive", "v3", "files"] if get => drive_list(inner, req),
        ["drive", "v3", "files", id] if get => drive_get(inner, req, id),
        ["drive", "v3", "files", id, "export"] if get => drive_export(inner, req, id),
        ["oauth2", "v3" | "v2", "userinfo"] if get => userinfo(inner, req),
        _ => Err(not_found_page(req)),
    };
    result.unwrap_or_else(|e| e)
}

/// Google's HTML 404 for a path it does not serve.
fn not_found_page(req: &Req) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n  <p><b>404.</b> <ins>That’s an error.</ins>\n  <p>The requested URL <code>{}</code> was not found on this server.  <ins>That’s all we know.</ins>\n",
        req.path
    );
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html; charset=UTF-8")], html).into_response()
}

fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        _ => "UNKNOWN",
    }
}

/// Google's error body; `location` is (name, type) of the offending parameter or header.
fn error(status: StatusCode, message: &str, reason: &str, location: Option<(&str, &str)>) -> Response {
    let mut item = json!({"message": message, "domain": "global", "reason": reason});
    if let Some((name, kind)) = location {
        item["location"] = name.into();
        item["locationType"] = kind.into();
    }
    json_response(status, &json!({"error": {"code": status.as_u16(), "message": message, "errors": [item], "status": status_name(status)}}))
}

fn invalid_value(parameter: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "Invalid Value", "invalid", Some((parameter, "parameter")))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Requested entity was not found.", "notFound", None)
}

fn unauthenticated(denied: Denied) -> Response {
    let see = "Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
    let (message, reason, item, challenge) = match denied {
        Denied::Missing => (format!("Request is missing required authentication credential. {see}"), "required", "Login Required.", "Bearer realm=\"https://accounts.google.com/\""),
        _ => (format!("Request had invalid authentication credentials. {see}"), "authError", "Invalid Credentials", "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""),
    };
    let body = json!({"error": {"code": 401, "message": message, "errors": [{"message": item, "domain": "global", "reason": reason, "location": "Authorization", "locationType": "header"}], "status": "UNAUTHENTICATED"}});
    let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

fn full_scope(scope: &str) -> String {
    if scope.starts_with("https://") || matches!(scope, "openid" | "email" | "profile") {
        scope.to_owned()
    } else {
        format!("{AUTH}{scope}")
    }
}

fn insufficient(any_of: &[&str]) -> Response {
    let needed: Vec<String> = any_of.iter().map(|s| full_scope(s)).collect();
    let body = json!({"error": {
        "code": 403, "message": "Request had insufficient authentication scopes.",
        "errors": [{"message": "Insufficient Permission", "domain": "global", "reason": "insufficientPermissions"}],
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com", "metadata": {"service": "googleapis.com"}}],
    }});
    let mut response = json_response(StatusCode::FORBIDDEN, &body);
    let challenge = format!("Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\", scope=\"{}\"", needed.join(" "));
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The bearer token's scopes, when it is usable and has one of `any_of`.
fn authed(inner: &Inner, req: &Req, any_of: &[&str]) -> Result<Vec<String>, Response> {
    let scopes = inner.tokens.scopes_of(req.bearer()).map_err(unauthenticated)?;
    if has_any(&scopes, any_of) {
        Ok(scopes)
    } else {
        Err(insufficient(any_of))
    }
}

fn has_any(granted: &[String], any_of: &[&str]) -> bool {
    any_of.iter().any(|s| {
        let full = full_scope(s);
        granted.iter().any(|g| *g == full || g == s || (*s == "email" && g == "https://www.googleapis.com/auth/userinfo.email"))
    })
}

/// A JSON answer, cut down to the `fields` parameter (or to `default` without one).
fn ok(req: &Req, body: Value, default: Option<&str>) -> Answer {
    let mask = match req.q("fields").or(default) {
        Some(fields) if fields != "*" => Some(parse_mask(fields).ok_or_else(|| error(StatusCode::BAD_REQUEST, &format!("Invalid field selection {fields}"), "invalidParameter", Some(("fields", "parameter"))))?),
        _ => None,
    };
    let body = match mask {
        Some(mask) => apply_mask(&body, &mask),
        None => body,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// A positive integer parameter, `default` without one, at most `max`.
fn count(req: &Req, name: &str, default: usize, max: usize) -> Result<usize, Response> {
    match req.q(name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.min(max)),
            _ => Err(invalid_value(name)),
        },
    }
}

/// The page at `pageToken` of `items`: (items, next page token).
fn page<T: Clone>(req: &Req, items: &[T], size: usize) -> Result<(Vec<T>, Option<String>), Response> {
    let offset = match req.q("pageToken") {
        None | Some("") => 0,
        Some(token) => page_offset(token).ok_or_else(|| error(StatusCode::BAD_REQUEST, "Invalid page token.", "badRequest", Some(("pageToken", "parameter"))))?,
    };
    let end = (offset + size).min(items.len());
    let slice = items.get(offset.min(items.len())..end).unwrap_or_default().to_vec();
    Ok((slice, (end < items.len()).then(|| page_token(end))))
}

/// A stable number for a string (FNV-1a), for etags.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn display_name(email: &str) -> String {
    let local = email.split('@').next().unwrap_or(email);
    let mut chars = local.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Calendar

fn calendar_id_ok(inner: &Inner, calendar: &str) -> Result<(), Response> {
    if calendar == "primary" || calendar == inner.content.google_account {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, "Not Found", "notFound", None))
    }
}

fn calendar_list(inner: &Inner, req: &Req) -> Answer {
    authed(inner, req, CAL_READ)?;
    let account = &inner.content.google_account;
    let entry = json!({
        "kind": "calendar#calendarListEntry", "etag": format!("\"{}\"", fnv(account) % 10_000_000_000_000_000), "id": account, "summary": account, "timeZone": "UTC",
        "colorId": "14", "backgroundColor": "#9fe1e7", "foregroundColor": "#000000", "selected": true, "accessRole": "owner", "defaultReminders": [{"method": "popup", "minutes": 10}], "primary": true,
    });
    ok(req, json!({"kind": "calendar#calendarList", "etag": "\"p33c9v1ns0ef900o\"", "nextSyncToken": "CPjz6_r-_oYDEhFhbGljZUBleGFtcGxlLmNvbQ==", "items": [entry]}), None)
}

fn event_json(account: &str, e: &CalendarEvent, updated: &str) -> Value {
    let time = |t: &str| if t.len() == 10 { json!({"date": t}) } else { json!({"dateTime": t, "timeZone": "UTC"}) };
    let eid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{} {account}", e.id));
    let mut v = json!({
        "kind": "calendar#event", "etag": format!("\"{}\"", fnv(&e.id) % 10_000_000_000_000_000), "id": e.id, "status": "confirmed",
        "htmlLink": format!("https://www.google.com/calendar/event?eid={eid}"), "created": updated, "updated": updated, "summary": e.summary,
        "creator": {"email": account, "self": true}, "organizer": {"email": account, "self": true},
        "start": time(&e.start), "end": time(&e.end), "iCalUID": format!("{}@google.com", e.id), "sequence": 0,
        "reminders": {"useDefault": true}, "eventType": "default",
    });
    if !e.description.is_empty() {
        v["description"] = e.description.clone().into();
    }
    if !e.location.is_empty() {
        v["location"] = e.location.clone().into();
    }
    if !e.attendees.is_empty() {
        v["attendees"] = e.attendees.iter().map(|a| if a == account { json!({"email": a, "organizer": true, "self": true, "responseStatus": "accepted"}) } else { json!({"email": a, "responseStatus": "needsAction"}) }).collect();
    }
    v
}

fn events_list(inner: &Inner, req: &Req, calendar: &str) -> Answer {
    authed(inner, req, CAL_READ)?;
    calendar_id_ok(inner, calendar)?;
    let bound = |name: &str| -> Result<Option<OffsetDateTime>, Response> {
        match req.q(name) {
            None => Ok(None),
            // Google wants a time zone offset in both.
            Some(v) => OffsetDateTime::parse(v, &Rfc3339).map(Some).map_err(|_| error(StatusCode::BAD_REQUEST, "Bad Request", "badRequest", None)),
        }
    };
    let (min, max) = (bound("timeMin")?, bound("timeMax")?);
    let size = count(req, "maxResults", 250, 2500)?;
    let single = req.q("singleEvents") == Some("true");
    let by_start = match req.q("orderBy") {
        None | Some("updated") => false,
        Some("startTime") if single => true,
        Some("startTime") => return Err(error(StatusCode::BAD_REQUEST, "The requested ordering is not available for the particular query.", "badRequest", None)),
        Some(_) => return Err(invalid_value("orderBy")),
    };
    let terms: Vec<String> = req.q("q").unwrap_or_default().split_whitespace().map(str::to_lowercase).collect();
    let account = &inner.content.google_account;
    let mut events: Vec<&CalendarEvent> = inner
        .content
        .calendar_events
        .iter()
        .filter(|e| {
            let (start, end) = (parse_time(&e.start), parse_time(&e.end));
            let after = min.is_none_or(|m| end.is_none_or(|end| end > m));
            let before = max.is_none_or(|m| start.is_none_or(|start| start < m));
            let text = format!("{} {} {} {} {account}", e.summary, e.description, e.location, e.attendees.join(" ")).to_lowercase();
            after && before && terms.iter().all(|t| text.contains(t.as_str()))
        })
        .collect();
    if by_start {
        events.sort_by_key(|e| parse_time(&e.start));
    }
    let (events, next) = page(req, &events, size)?;
    let updated = crate::provider::rfc3339(OffsetDateTime::now_utc());
    let mut body = json!({
        "kind": "calendar#events", "etag": "\"p33c9v1ns0ef900o\"", "summary": account, "description": "", "updated": updated, "timeZone": "UTC", "accessRole": "owner",
        "defaultReminders": [{"method": "popup", "minutes": 10}],
        "items": events.iter().map(|e| event_json(account, e, &updated)).collect::<Vec<_>>(),
    });
    match next {
        Some(token) => body["nextPageToken"] = token.into(),
        None => body["nextSyncToken"] = "CPjz6_r-_oYDEPjz6_r-_oYDGAUg7_TL1wI=".into(),
    }
    ok(req, body, None)
}

fn event_get(inner: &Inner, req: &Req, calendar: &str, id: &str) -> Answer {
    authed(inner, req, CAL_READ)?;
    calendar_id_ok(inner, calendar)?;
    let account = &inner.content.google_account;
    let event = inner.content.calendar_events.iter().find(|e| e.id == id).ok_or_else(|| error(StatusCode::NOT_FOUND, "Not Found", "notFound", None))?;
    ok(req, event_json(account, event, &crate::provider::rfc3339(OffsetDateTime::now_utc())), None)
}

// ---------------------------------------------------------------------------------------------
// Gmail

fn gmail(inner: &mut Inner, req: &Req, user: &str, rest: &[&str], upload: bool) -> Answer {
    let me = user == "me" || user == inner.content.google_account;
    let delegation = |inner: &Inner| error(StatusCode::FORBIDDEN, &format!("Delegation denied for {}", inner.content.google_account), "forbidden", None);
    let (get, post) = (req.method == Method::GET, req.method == Method::POST);
    let needed = match rest {
        ["profile"] if get && !upload => GMAIL_ANY,
        ["messages"] if get && !upload => GMAIL_READ,
        ["messages", "send"] if post => GMAIL_SEND,
        ["messages", _] if get && !upload => GMAIL_READ,
        ["drafts"] if get && !upload => GMAIL_DRAFTS_READ,
        ["drafts"] if post => GMAIL_COMPOSE,
        ["drafts", "send"] if post && !upload => GMAIL_COMPOSE,
        _ => return Err(not_found_page(req)),
    };
    let scopes = authed(inner, req, needed)?;
    if !me {
        return Err(delegation(inner));
    }
    match rest {
        ["profile"] => {
            let total = inner.content.emails.len();
            ok(req, json!({"emailAddress": inner.content.google_account, "messagesTotal": total, "threadsTotal": total, "historyId": (10_000 + total).to_string()}), None)
        }
        ["messages"] => messages_list(inner, req, &scopes),
        ["messages", "send"] => messages_send(inner, req, upload),
        ["messages", id] => message_get(inner, req, &scopes, id),
        ["drafts"] if get => drafts_list(inner, req),
        ["drafts"] => drafts_create(inner, req, upload),
        _ => drafts_send(inner, req),
    }
}

/// A token with `gmail.metadata` and no scope that reads bodies.
fn metadata_only(scopes: &[String]) -> bool {
    has_any(scopes, &["gmail.metadata"]) && !has_any(scopes, &["gmail.readonly", "gmail.modify", MAIL])
}

fn email_time(e: &Email) -> OffsetDateTime {
    parse_time(&e.date).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn messages_list(inner: &Inner, req: &Req, scopes: &[String]) -> Answer {
    let q = req.q("q").unwrap_or_default();
    if !q.is_empty() && metadata_only(scopes) {
        return Err(error(StatusCode::FORBIDDEN, "Metadata scope does not support 'q' parameter", "forbidden", None));
    }
    let size = count(req, "maxResults", 100, 500)?;
    let labels = req.q_all("labelIds");
    let spam_trash = req.q("includeSpamTrash") == Some("true");
    let query = GmailQuery::parse(q);
    let now = OffsetDateTime::now_utc();
    let mut found: Vec<(usize, &Email)> = inner
        .content
        .emails
        .iter()
        .enumerate()
        .filter(|(_, e)| (spam_trash || !e.labels.iter().any(|l| l == "SPAM" || l == "TRASH")) && labels.iter().all(|l| e.labels.iter().any(|el| el == l)) && query.matches(e, now))
        .collect();
    found.sort_by_key(|(i, e)| Reverse((email_time(e), *i)));
    let refs: Vec<Value> = found.iter().map(|(_, e)| json!({"id": e.id, "threadId": e.id})).collect();
    let (messages, next) = page(req, &refs, size)?;
    let mut body = json!({"resultSizeEstimate": refs.len()});
    if !messages.is_empty() {
        body["messages"] = messages.into();
    }
    if let Some(token) = next {
        body["nextPageToken"] = token.into();
    }
    ok(req, body, None)
}

fn b64url(data: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(data.as_bytes())
}

fn rfc2822(e: &Email) -> String {
    email_time(e).format(&Rfc2822).unwrap_or_default()
}

fn boundary(e: &Email) -> String {
    format!("000000000000{}", e.id)
}

/// The top-level headers, in the raw message's order.
fn email_headers(e: &Email) -> Vec<(&'static str, String)> {
    let content_type = match e.html {
        Some(_) => format!("multipart/alternative; boundary=\"{}\"", boundary(e)),
        None => "text/plain; charset=\"UTF-8\"".to_owned(),
    };
    vec![
        ("MIME-Version", "1.0".to_owned()),
        ("Date", rfc2822(e)),
        ("Message-ID", format!("<{}@mail.standin.example>", e.id)),
        ("Subject", e.subject.clone()),
        ("From", e.from.clone()),
        ("To", e.to.clone()),
        ("Content-Type", content_type),
    ]
}

/// The RFC 2822 text of a message (CRLF line ends).
fn raw_message(e: &Email) -> String {
    let mut raw: String = email_headers(e).iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    raw.push_str("\r\n");
    let crlf = |s: &str| s.replace("\r\n", "\n").replace('\n', "\r\n");
    match &e.html {
        None => raw.push_str(&crlf(&e.body)),
        Some(html) => {
            let b = boundary(e);
            raw.push_str(&format!(
                "--{b}\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\n{}\r\n\r\n--{b}\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n\r\n{}\r\n\r\n--{b}--\r\n",
                crlf(&e.body),
                crlf(html)
            ));
        }
    }
    raw
}

/// Gmail's snippet: the start of the text, whitespace collapsed, HTML-escaped.
fn snippet(text: &str) -> String {
    let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = collapsed.chars().take(200).collect();
    cut.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn message_get(inner: &Inner, req: &Req, scopes: &[String], id: &str) -> Answer {
    let (index, e) = inner.content.emails.iter().enumerate().find(|(_, e)| e.id == id).ok_or_else(not_found)?;
    let format = req.q("format").unwrap_or("full");
    if !matches!(format, "full" | "metadata" | "minimal" | "raw") {
        return Err(error(StatusCode::BAD_REQUEST, &format!("Invalid value at 'format' ({format})"), "invalidArgument", None));
    }
    if metadata_only(scopes) && matches!(format, "full" | "raw") {
        return Err(error(StatusCode::FORBIDDEN, &format!("Metadata scope doesn't allow format {}", format.to_uppercase()), "forbidden", None));
    }
    let raw = raw_message(e);
    let mut body = json!({
        "id": e.id, "threadId": e.id, "labelIds": e.labels, "snippet": snippet(&e.body), "sizeEstimate": raw.len(),
        "historyId": (10_000 + index).to_string(), "internalDate": (email_time(e).unix_timestamp() * 1000).to_string(),
    });
    let headers = |only: &[&str]| -> Vec<Value> {
        email_headers(e).into_iter().filter(|(k, _)| only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(k))).map(|(name, value)| json!({"name": name, "value": value})).collect()
    };
    let mime = if e.html.is_some() { "multipart/alternative" } else { "text/plain" };
    match format {
        "raw" => body["raw"] = b64url(&raw).into(),
        "minimal" => {}
        "metadata" => body["payload"] = json!({"partId": "", "mimeType": mime, "filename": "", "headers": headers(&req.q_all("metadataHeaders")), "body": {"size": 0}}),
        _ => {
            let part = |id: &str, mime: &str, text: &str| json!({"partId": id, "mimeType": mime, "filename": "", "headers": [{"name": "Content-Type", "value": format!("{mime}; charset=\"UTF-8\"")}], "body": {"size": text.len(), "data": b64url(text)}});
            body["payload"] = match &e.html {
                None => json!({"partId": "", "mimeType": "text/plain", "filename": "", "headers": headers(&[]), "body": {"size": e.body.len(), "data": b64url(&e.body)}}),
                Some(html) => json!({"partId": "", "mimeType": mime, "filename": "", "headers": headers(&[]), "body": {"size": 0}, "parts": [part("0", "text/plain", &e.body), part("1", "text/html", html)]}),
            };
        }
    }
    ok(req, body, None)
}

/// base64url or base64, padded or not (proto `bytes` in JSON), to text.
fn decode_raw(data: &str) -> Option<String> {
    let normal: String = data.chars().filter(|c| !c.is_whitespace() && *c != '=').map(|c| match c { '+' => '-', '/' => '_', c => c }).collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(normal).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The header `name` of an RFC 2822 message (unfolded), if present.
pub(crate) fn raw_header(raw: &str, name: &str) -> Option<String> {
    let head = raw.replace("\r\n", "\n");
    let head = head.split("\n\n").next().unwrap_or_default();
    let mut found: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(value) = found.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case(name) {
                found = Some(v.trim().to_owned());
            }
        }
    }
    found
}

/// The RFC 2822 message of a `messages.send` or `drafts.create` request: JSON `raw` (at
/// `json_path`), or the body of an `/upload/…?uploadType=media` request.
fn request_message(req: &Req, upload: bool, in_message: bool) -> Result<(String, Option<String>), Response> {
    if upload {
        if req.q("uploadType").unwrap_or("media") != "media" {
            return Err(error(StatusCode::BAD_REQUEST, "Only uploadType=media is supported by this stand-in", "badRequest", None));
        }
        return Ok((String::from_utf8_lossy(&req.body).into_owned(), None));
    }
    let missing = || error(StatusCode::BAD_REQUEST, if in_message { "Invalid draft" } else { "'raw' RFC822 payload message string or uploading message via /upload/* URL required" }, "invalidArgument", None);
    let body = req.json().ok_or_else(missing)?;
    let message = if in_message { body.get("message").cloned().unwrap_or(Value::Null) } else { body };
    let raw = message.get("raw").and_then(Value::as_str).ok_or_else(missing)?;
    let text = decode_raw(raw).ok_or_else(|| error(StatusCode::BAD_REQUEST, "Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed", "invalidArgument", None))?;
    Ok((text, message.get("threadId").and_then(Value::as_str).map(str::to_owned)))
}

fn has_recipient(raw: &str) -> bool {
    ["To", "Cc", "Bcc"].iter().any(|h| raw_header(raw, h).is_some_and(|v| !v.is_empty()))
}

fn new_message_id(inner: &mut Inner) -> (u64, String) {
    let n = inner.next();
    (n, format!("{:016x}", 0x1900_0000_0000_0000u64 + n))
}

fn messages_send(inner: &mut Inner, req: &Req, upload: bool) -> Answer {
    let (raw, thread) = request_message(req, upload, false)?;
    if !has_recipient(&raw) {
        return Err(error(StatusCode::BAD_REQUEST, "Recipient address required", "invalidArgument", None));
    }
    let (_, id) = new_message_id(inner);
    let thread_id = thread.unwrap_or_else(|| id.clone());
    inner.sent.push(SentMail { message_id: id.clone(), thread_id: thread_id.clone(), draft_id: None, raw });
    ok(req, json!({"id": id, "threadId": thread_id, "labelIds": ["SENT"]}), None)
}

fn drafts_create(inner: &mut Inner, req: &Req, upload: bool) -> Answer {
    let (raw, thread) = request_message(req, upload, true)?;
    let (n, message_id) = new_message_id(inner);
    let id = format!("r-{}", 5_000_000_000_000_000_000u64 + n);
    let thread_id = thread.unwrap_or_else(|| message_id.clone());
    inner.drafts.push(GmailDraft { id: id.clone(), message_id: message_id.clone(), thread_id: thread_id.clone(), raw });
    ok(req, json!({"id": id, "message": {"id": message_id, "threadId": thread_id, "labelIds": ["DRAFT"]}}), None)
}

fn drafts_list(inner: &Inner, req: &Req) -> Answer {
    let size = count(req, "maxResults", 100, 500)?;
    let all: Vec<Value> = inner.drafts.iter().rev().map(|d| json!({"id": d.id, "message": {"id": d.message_id, "threadId": d.thread_id}})).collect();
    let (drafts, next) = page(req, &all, size)?;
    let mut body = json!({"resultSizeEstimate": all.len()});
    if !drafts.is_empty() {
        body["drafts"] = drafts.into();
    }
    if let Some(token) = next {
        body["nextPageToken"] = token.into();
    }
    ok(req, body, None)
}

fn drafts_send(inner: &mut Inner, req: &Req) -> Answer {
    let id = req.json().and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned)).ok_or_else(|| error(StatusCode::BAD_REQUEST, "Invalid draft", "invalidArgument", None))?;
    let index = inner.drafts.iter().position(|d| d.id == id).ok_or_else(not_found)?;
    if !has_recipient(&inner.drafts[index].raw) {
        return Err(error(StatusCode::BAD_REQUEST, "Recipient address required", "invalidArgument", None));
    }
    let draft = inner.drafts.remove(index);
    inner.sent.push(SentMail { message_id: draft.message_id.clone(), thread_id: draft.thread_id.clone(), draft_id: Some(draft.id), raw: draft.raw });
    ok(req, json!({"id": draft.message_id, "threadId": draft.thread_id, "labelIds": ["SENT"]}), None)
}

/// A Gmail search (`q`): words and `key:value` operators, `-` negates, `OR` between two terms.
struct GmailQuery {
    /// All groups must match; a group matches when one of its terms does.
    groups: Vec<Vec<(bool, Option<String>, String)>>,
}

impl GmailQuery {
    fn parse(q: &str) -> Self {
        let mut tokens = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for c in q.chars() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    if !current.is_empty() {
                        tokens.push(std::mem::take(&mut current));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            tokens.push(current);
        }
        let mut groups: Vec<Vec<(bool, Option<String>, String)>> = Vec::new();
        let mut or_next = false;
        for token in tokens {
            if token == "OR" {
                or_next = !groups.is_empty();
                continue;
            }
            let (negate, body) = match token.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => (true, rest.to_owned()),
                _ => (false, token),
            };
            let term = match body.split_once(':') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => (negate, Some(k.to_lowercase()), v.to_lowercase()),
                _ => (negate, None, body.to_lowercase()),
            };
            match groups.last_mut() {
                Some(group) if or_next => group.push(term),
                _ => groups.push(vec![term]),
            }
            or_next = false;
        }
        GmailQuery { groups }
    }

    fn matches(&self, e: &Email, now: OffsetDateTime) -> bool {
        self.groups.iter().all(|group| group.iter().any(|(negate, key, value)| Self::term(e, now, key.as_deref(), value) != *negate))
    }

    fn term(e: &Email, now: OffsetDateTime, key: Option<&str>, value: &str) -> bool {
        let label = |l: &str| e.labels.iter().any(|x| x.eq_ignore_ascii_case(l));
        let date = email_time(e);
        let day = |v: &str| -> Option<OffsetDateTime> {
            if let Ok(secs) = v.parse::<i64>() {
                return OffsetDateTime::from_unix_timestamp(secs).ok();
            }
            parse_time(&v.replace('/', "-"))
        };
        let age = |v: &str| -> Option<OffsetDateTime> {
            let (n, unit) = v.split_at(v.len().checked_sub(1)?);
            let n: i64 = n.parse().ok()?;
            let days = match unit {
                "d" => n,
                "m" => n * 30,
                "y" => n * 365,
                _ => return None,
            };
            Some(now - time::Duration::days(days))
        };
        match key {
            None => format!("{} {} {} {}", e.from, e.to, e.subject, e.body).to_lowercase().contains(value),
            Some("from") => e.from.to_lowercase().contains(value),
            Some("to") => e.to.to_lowercase().contains(value),
            Some("subject") => e.subject.to_lowercase().contains(value),
            Some("is") => match value {
                "unread" => label("UNREAD"),
                "read" => !label("UNREAD"),
                other => label(other),
            },
            Some("in" | "label") => value == "anywhere" || label(value) || label(&value.replace('-', "_")),
            Some("newer_than") => age(value).is_some_and(|t| date > t),
            Some("older_than") => age(value).is_some_and(|t| date < t),
            Some("after" | "newer") => day(value).is_some_and(|t| date >= t),
            Some("before" | "older") => day(value).is_some_and(|t| date < t),
            Some("has") => false,
            Some(other) => format!("{} {} {} {}", e.from, e.to, e.subject, e.body).to_lowercase().contains(&format!("{other}:{value}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drive

fn is_google_type(mime: &str) -> bool {
    mime.starts_with("application/vnd.google-apps.")
}

fn file_json(account: &str, f: &DriveFile) -> Value {
    let google = is_google_type(&f.mime_type);
    let link = if google { format!("https://docs.google.com/document/d/{}/edit?usp=drivesdk", f.id) } else { format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", f.id) };
    let mut v = json!({
        "kind": "drive#file", "id": f.id, "name": f.name, "mimeType": f.mime_type, "starred": false, "trashed": false, "parents": [DRIVE_ROOT],
        "webViewLink": link, "createdTime": f.modified_time, "modifiedTime": f.modified_time, "version": "1",
        "owners": [{"kind": "drive#user", "displayName": display_name(account), "emailAddress": account, "me": true}],
    });
    if !google {
        v["size"] = f.text.len().to_string().into();
    }
    v
}

fn file_not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("File not found: {id}."), "notFound", Some(("fileId", "parameter")))
}

fn drive_list(inner: &Inner, req: &Req) -> Answer {
    authed(inner, req, DRIVE_META)?;
    let query = match req.q("q").map(str::trim) {
        Some(q) if !q.is_empty() => Some(DriveQuery::parse(q).ok_or_else(|| invalid_value("q"))?),
        _ => None,
    };
    let size = count(req, "pageSize", 100, 1000)?;
    let account = &inner.content.google_account;
    let mut files: Vec<&DriveFile> = inner.content.drive_files.iter().filter(|f| query.as_ref().is_none_or(|q| q.eval(f, account))).collect();
    for key in req.q("orderBy").unwrap_or_default().split(',').rev() {
        let mut words = key.split_whitespace();
        let (field, desc) = (words.next().unwrap_or_default(), words.next() == Some("desc"));
        match field {
            "name" | "name_natural" => files.sort_by_key(|f| f.name.to_lowercase()),
            "modifiedTime" | "createdTime" | "recency" | "modifiedByMeTime" | "viewedByMeTime" => files.sort_by_key(|f| parse_time(&f.modified_time)),
            _ => continue,
        }
        if desc {
            files.reverse();
        }
    }
    let (files, next) = page(req, &files, size)?;
    let mut body = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": files.iter().map(|f| file_json(account, f)).collect::<Vec<_>>()});
    if let Some(token) = next {
        body["nextPageToken"] = token.into();
    }
    ok(req, body, Some("kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)"))
}

fn drive_get(inner: &Inner, req: &Req, id: &str) -> Answer {
    let scopes = authed(inner, req, DRIVE_META)?;
    let file = inner.content.drive_files.iter().find(|f| f.id == id).ok_or_else(|| file_not_found(id))?;
    if req.q("alt") != Some("media") {
        return ok(req, file_json(&inner.content.google_account, file), Some("kind,id,name,mimeType"));
    }
    if !has_any(&scopes, DRIVE_CONTENT) {
        return Err(insufficient(DRIVE_CONTENT));
    }
    if is_google_type(&file.mime_type) {
        return Err(error(StatusCode::FORBIDDEN, "Only files with binary content can be downloaded. Use Export with Docs Editors files.", "fileNotDownloadable", Some(("alt", "parameter"))));
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, file.mime_type.clone())], file.text.clone()).into_response())
}

fn drive_export(inner: &Inner, req: &Req, id: &str) -> Answer {
    authed(inner, req, DRIVE_CONTENT)?;
    let file = inner.content.drive_files.iter().find(|f| f.id == id).ok_or_else(|| file_not_found(id))?;
    let Some(mime) = req.q("mimeType") else {
        return Err(error(StatusCode::BAD_REQUEST, "Required parameter: mimeType", "required", Some(("mimeType", "parameter"))));
    };
    if !is_google_type(&file.mime_type) {
        return Err(error(StatusCode::FORBIDDEN, "Export only supports Docs Editors files.", "fileNotExportable", None));
    }
    let text = file.text.replace("\r\n", "\n");
    let body = match mime {
        // As Docs exports plain text: a byte order mark and CRLF line ends.
        "text/plain" => format!("\u{feff}{}", text.replace('\n', "\r\n")),
        "text/markdown" => text,
        "text/html" => {
            let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let paragraphs: String = escaped.lines().map(|l| format!("<p>{l}</p>")).collect();
            format!("<html><head><meta content=\"text/html; charset=UTF-8\" http-equiv=\"content-type\"></head><body>{paragraphs}</body></html>")
        }
        _ => return Err(error(StatusCode::BAD_REQUEST, "The requested conversion is not supported.", "badRequest", Some(("convertTo", "parameter")))),
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, format!("{mime}; charset=utf-8"))], body).into_response())
}

/// Drive's search language (`q`): `name contains 'x'`, `fullText contains 'x'`, `mimeType = '…'`,
/// `modifiedTime > '…'`, `trashed = false`, `'root' in parents`, `'me' in owners`, with `and`,
/// `or`, `not` and parentheses.
enum DriveQuery {
    Or(Vec<DriveQuery>),
    And(Vec<DriveQuery>),
    Not(Box<DriveQuery>),
    /// field, operator, value (a string, or `true`/`false`).
    Cmp(String, String, String),
    /// value, collection.
    In(String, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Word(String),
    Op(String),
    Open,
    Close,
}

impl DriveQuery {
    fn parse(q: &str) -> Option<DriveQuery> {
        let tokens = Self::tokenize(q)?;
        let mut pos = 0;
        let query = Self::or(&tokens, &mut pos)?;
        (pos == tokens.len()).then_some(query)
    }

    fn tokenize(q: &str) -> Option<Vec<Token>> {
        let chars: Vec<char> = q.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                c if c.is_whitespace() => i += 1,
                '(' => {
                    tokens.push(Token::Open);
                    i += 1;
                }
                ')' => {
                    tokens.push(Token::Close);
                    i += 1;
                }
                '\'' | '"' => {
                    let mut s = String::new();
                    i += 1;
                    loop {
                        match chars.get(i)? {
                            '\\' => {
                                s.push(*chars.get(i + 1)?);
                                i += 2;
                            }
                            q if *q == c => {
                                i += 1;
                                break;
                            }
                            other => {
                                s.push(*other);
                                i += 1;
                            }
                        }
                    }
                    tokens.push(Token::Str(s));
                }
                '=' | '!' | '<' | '>' => {
                    let two = chars.get(i + 1) == Some(&'=');
                    let op: String = if two { [c, '='].iter().collect() } else { c.to_string() };
                    if op == "!" {
                        return None;
                    }
                    tokens.push(Token::Op(op));
                    i += if two { 2 } else { 1 };
                }
                _ => {
                    let start = i;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                        i += 1;
                    }
                    if start == i {
                        return None;
                    }
                    tokens.push(Token::Word(chars[start..i].iter().collect()));
                }
            }
        }
        Some(tokens)
    }

    fn or(t: &[Token], pos: &mut usize) -> Option<DriveQuery> {
        let mut items = vec![Self::and(t, pos)?];
        while t.get(*pos) == Some(&Token::Word("or".into())) {
            *pos += 1;
            items.push(Self::and(t, pos)?);
        }
        Some(if items.len() == 1 { items.remove(0) } else { DriveQuery::Or(items) })
    }

    fn and(t: &[Token], pos: &mut usize) -> Option<DriveQuery> {
        let mut items = vec![Self::not(t, pos)?];
        while t.get(*pos) == Some(&Token::Word("and".into())) {
            *pos += 1;
            items.push(Self::not(t, pos)?);
        }
        Some(if items.len() == 1 { items.remove(0) } else { DriveQuery::And(items) })
    }

    fn not(t: &[Token], pos: &mut usize) -> Option<DriveQuery> {
        match t.get(*pos)? {
            Token::Word(w) if w == "not" => {
                *pos += 1;
                Some(DriveQuery::Not(Box::new(Self::not(t, pos)?)))
            }
            Token::Open => {
                *pos += 1;
                let inner = Self::or(t, pos)?;
                (t.get(*pos) == Some(&Token::Close)).then_some(())?;
                *pos += 1;
                Some(inner)
            }
            Token::Str(value) => {
                let (Some(Token::Word(word)), Some(Token::Word(collection))) = (t.get(*pos + 1), t.get(*pos + 2)) else { return None };
                if word != "in" || !matches!(collection.as_str(), "parents" | "owners" | "writers" | "readers") {
                    return None;
                }
                *pos += 3;
                Some(DriveQuery::In(value.clone(), collection.clone()))
            }
            Token::Word(field) => {
                let op = match t.get(*pos + 1)? {
                    Token::Op(op) => op.clone(),
                    Token::Word(w) if w == "contains" => w.clone(),
                    _ => return None,
                };
                let value = match t.get(*pos + 2)? {
                    Token::Str(s) => s.clone(),
                    Token::Word(w) if w == "true" || w == "false" => w.clone(),
                    _ => return None,
                };
                let text = ["contains", "=", "!="].contains(&op.as_str());
                let valid = match field.as_str() {
                    "name" | "mimeType" => text,
                    "fullText" => op == "contains",
                    "modifiedTime" | "createdTime" | "viewedByMeTime" => op != "contains" && Self::time(&value).is_some(),
                    "trashed" | "starred" | "sharedWithMe" => (op == "=" || op == "!=") && (value == "true" || value == "false"),
                    _ => false,
                };
                if !valid {
                    return None;
                }
                *pos += 3;
                Some(DriveQuery::Cmp(field.clone(), op, value))
            }
            _ => None,
        }
    }

    /// Drive takes RFC 3339, the offset defaulting to UTC.
    fn time(value: &str) -> Option<OffsetDateTime> {
        parse_time(value).or_else(|| parse_time(&format!("{value}Z")))
    }

    fn eval(&self, f: &DriveFile, account: &str) -> bool {
        match self {
            DriveQuery::Or(items) => items.iter().any(|q| q.eval(f, account)),
            DriveQuery::And(items) => items.iter().all(|q| q.eval(f, account)),
            DriveQuery::Not(q) => !q.eval(f, account),
            DriveQuery::In(value, collection) => match collection.as_str() {
                "parents" => value == "root" || value == DRIVE_ROOT,
                _ => value == account || value == "me",
            },
            DriveQuery::Cmp(field, op, value) => {
                let text = |have: &str| match op.as_str() {
                    "contains" => have.to_lowercase().contains(&value.to_lowercase()),
                    "=" => have == value,
                    _ => have != value,
                };
                match field.as_str() {
                    "name" => text(&f.name),
                    "mimeType" => text(&f.mime_type),
                    "fullText" => text(&format!("{} {}", f.name, f.text)),
                    "trashed" | "starred" | "sharedWithMe" => (value == "false") == (op == "="),
                    _ => {
                        let (Some(have), Some(want)) = (parse_time(&f.modified_time), Self::time(value)) else { return false };
                        match op.as_str() {
                            "<" => have < want,
                            "<=" => have <= want,
                            ">" => have > want,
                            ">=" => have >= want,
                            "=" => have == want,
                            _ => have != want,
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// userinfo and partial responses

fn userinfo(inner: &Inner, req: &Req) -> Answer {
    authed(inner, req, USERINFO)?;
    let account = &inner.content.google_account;
    let name = display_name(account);
    ok(req, json!({"sub": (100_000_000_000_000_000_000u128 + (fnv(account) % 1_000_000_000) as u128).to_string(), "email": account, "email_verified": true, "name": name, "given_name": name}), None)
}

/// A `fields` selection: names, each with the selection of its value (`None`: all of it).
#[derive(Debug, Default)]
struct Mask(BTreeMap<String, Option<Mask>>);

/// Parses `a,b(c,d),e/f,*`.
fn parse_mask(fields: &str) -> Option<Mask> {
    let chars: Vec<char> = fields.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let mask = mask_items(&chars, &mut pos)?;
    (pos == chars.len()).then_some(mask)
}

fn mask_items(c: &[char], pos: &mut usize) -> Option<Mask> {
    let mut mask = Mask::default();
    loop {
        let (name, sub) = mask_item(c, pos)?;
        mask_merge(&mut mask, name, sub);
        if c.get(*pos) != Some(&',') {
            return Some(mask);
        }
        *pos += 1;
    }
}

fn mask_item(c: &[char], pos: &mut usize) -> Option<(String, Option<Mask>)> {
    let start = *pos;
    while *pos < c.len() && !matches!(c[*pos], ',' | '(' | ')' | '/') {
        *pos += 1;
    }
    let name: String = c[start..*pos].iter().collect();
    if name.is_empty() {
        return None;
    }
    match c.get(*pos) {
        Some('/') => {
            *pos += 1;
            let (child, sub) = mask_item(c, pos)?;
            let mut mask = Mask::default();
            mask_merge(&mut mask, child, sub);
            Some((name, Some(mask)))
        }
        Some('(') => {
            *pos += 1;
            let mask = mask_items(c, pos)?;
            if c.get(*pos) != Some(&')') {
                return None;
            }
            *pos += 1;
            Some((name, Some(mask)))
        }
        _ => Some((name, None)),
    }
}

fn mask_merge(mask: &mut Mask, name: String, sub: Option<Mask>) {
    if let Some(slot) = mask.0.get_mut(&name) {
        match (slot, sub) {
            (Some(existing), Some(sub)) => {
                for (k, v) in sub.0 {
                    mask_merge(existing, k, v);
                }
            }
            (slot, None) => *slot = None,
            (None, Some(_)) => {}
        }
    } else {
        mask.0.insert(name, sub);
    }
}

fn apply_mask(value: &Value, mask: &Mask) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| apply_mask(v, mask)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if let Some(sub) = mask.0.get(k).or_else(|| mask.0.get("*")) {
                    out.insert(k.clone(), sub.as_ref().map_or_else(|| v.clone(), |s| apply_mask(v, s)));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}
