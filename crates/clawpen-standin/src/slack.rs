//! Slack: the Web API's conversations and `chat.postMessage` (slack.com/api), on the port of the
//! OAuth endpoints. `GET` or `POST /api/<method>`, arguments in the query string, a form or a
//! JSON body, the token as `Authorization: Bearer` or a `token` argument. Every answer is HTTP 200
//! `{"ok": true, …}` or `{"ok": false, "error"}`, as Slack does: `not_authed`, `invalid_auth`,
//! `token_expired`, `token_revoked`, `missing_scope` (with `needed` and `provided`),
//! `channel_not_found`, `thread_not_found`.

// An `Err` is the answer itself (a `Response`), made at most once per request.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::provider::{json_response, page_offset, page_token, Inner, Req, Shared};
use crate::{SlackChannel, SlackMessage};

/// Web API methods that only read; any other method is a write.
const READ_METHODS: &[&str] = &[
    "api.test", "auth.test", "bots.info", "conversations.history", "conversations.info", "conversations.list", "conversations.members", "conversations.replies", "emoji.list", "search.messages",
    "team.info", "users.conversations", "users.identity", "users.info", "users.list",
];

/// Whether a Web API method only reads.
pub(crate) fn is_read_method(method: &str) -> bool {
    READ_METHODS.contains(&method)
}

fn fail(error: &str) -> Response {
    json_response(StatusCode::OK, &json!({"ok": false, "error": error}))
}

/// A successful answer, with Slack's scope headers.
fn answer(scopes: &[String], accepted: &str, body: Value) -> Response {
    let mut response = json_response(StatusCode::OK, &body);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&scopes.join(",")) {
        headers.insert("x-oauth-scopes", value);
    }
    if let Ok(value) = HeaderValue::from_str(accepted) {
        headers.insert("x-accepted-oauth-scopes", value);
    }
    response
}

/// `Err(missing_scope)` unless the token has `needed`.
fn need(scopes: &[String], needed: &str) -> Result<(), Response> {
    if scopes.iter().any(|s| s == needed) {
        Ok(())
    } else {
        Err(json_response(StatusCode::OK, &json!({"ok": false, "error": "missing_scope", "needed": needed, "provided": scopes.join(",")})))
    }
}

/// Serves `/api/<method>` (OAuth's `oauth.v2.access` and `auth.revoke` are answered before).
pub(crate) fn api(shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    let Some(method) = req.path.strip_prefix("/api/") else {
        return json_response(StatusCode::NOT_FOUND, &json!({"ok": false, "error": "unknown_method", "req_method": req.path}));
    };
    let known = matches!(method, "auth.test" | "conversations.list" | "conversations.info" | "conversations.history" | "conversations.replies" | "chat.postMessage");
    if !known {
        return json_response(StatusCode::NOT_FOUND, &json!({"ok": false, "error": "unknown_method", "req_method": method}));
    }
    let params = req.params();
    let token = req.bearer().map(str::to_owned).or_else(|| params.get("token").cloned());
    let scopes = match inner.tokens.scopes_of(token.as_deref()) {
        Ok(scopes) => scopes,
        Err(denied) => return fail(denied.slack_error()),
    };
    let result = match method {
        "auth.test" => Ok(auth_test(inner, &scopes)),
        "conversations.list" => conversations_list(inner, &params, &scopes),
        "conversations.info" => conversations_info(inner, &params, &scopes),
        "conversations.history" => history(inner, &params, &scopes),
        "conversations.replies" => replies(inner, &params, &scopes),
        _ => post_message(shared, inner, &params, &scopes),
    };
    result.unwrap_or_else(|e| e)
}

fn auth_test(inner: &Inner, scopes: &[String]) -> Response {
    let c = &inner.content;
    let user = c.slack_user_id.trim_start_matches("U0").to_lowercase();
    answer(
        scopes,
        "",
        json!({"ok": true, "url": format!("https://{}.slack.com/", c.slack_team_name.to_lowercase().replace(' ', "-")), "team": c.slack_team_name, "user": user, "team_id": c.slack_team_id, "user_id": c.slack_user_id, "is_enterprise_install": false}),
    )
}

fn channel_json(inner: &Inner, ch: &SlackChannel) -> Value {
    let team = &inner.content.slack_team_id;
    json!({
        "id": ch.id, "name": ch.name, "is_channel": true, "is_group": false, "is_im": false, "is_mpim": false, "is_private": ch.is_private, "created": 1_700_000_000,
        "is_archived": false, "is_general": ch.name == "general", "unlinked": 0, "name_normalized": ch.name, "is_shared": false, "is_org_shared": false,
        "is_pending_ext_shared": false, "pending_shared": [], "context_team_id": team, "updated": 1_700_000_000_000u64, "parent_conversation": null,
        "creator": inner.content.slack_user_id, "is_ext_shared": false, "shared_team_ids": [team], "pending_connected_team_ids": [], "is_member": true,
        "topic": {"value": "", "creator": "", "last_set": 0}, "purpose": {"value": "", "creator": "", "last_set": 0}, "previous_names": [], "num_members": ch.num_members,
    })
}

fn find_channel<'a>(inner: &'a Inner, params: &BTreeMap<String, String>) -> Result<&'a SlackChannel, Response> {
    let wanted = params.get("channel").map(|c| c.trim_start_matches('#')).unwrap_or_default();
    inner.content.slack_channels.iter().find(|ch| !wanted.is_empty() && (ch.id == wanted || ch.name == wanted)).ok_or_else(|| fail("channel_not_found"))
}

/// `limit` (default 100, 1..=max) and the offset of `cursor`.
fn window(params: &BTreeMap<String, String>, max: usize) -> Result<(usize, usize), Response> {
    let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(100).min(max);
    let offset = match params.get("cursor").map(String::as_str) {
        None | Some("") => 0,
        Some(cursor) => page_offset(cursor).ok_or_else(|| fail("invalid_cursor"))?,
    };
    Ok((limit, offset))
}

fn conversations_list(inner: &Inner, params: &BTreeMap<String, String>, scopes: &[String]) -> Result<Response, Response> {
    let types: Vec<&str> = params.get("types").map_or("public_channel", String::as_str).split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    for t in &types {
        let needed = match *t {
            "public_channel" => "channels:read",
            "private_channel" => "groups:read",
            "im" => "im:read",
            "mpim" => "mpim:read",
            _ => return Err(fail("invalid_types")),
        };
        need(scopes, needed)?;
    }
    let (limit, offset) = window(params, 1000)?;
    let all: Vec<&SlackChannel> = inner.content.slack_channels.iter().filter(|ch| types.contains(&if ch.is_private { "private_channel" } else { "public_channel" })).collect();
    let end = (offset + limit).min(all.len());
    let channels: Vec<Value> = all.get(offset.min(end)..end).unwrap_or_default().iter().map(|ch| channel_json(inner, ch)).collect();
    let next = if end < all.len() { page_token(end) } else { String::new() };
    Ok(answer(scopes, "channels:read,groups:read,mpim:read,im:read", json!({"ok": true, "channels": channels, "response_metadata": {"next_cursor": next}})))
}

fn conversations_info(inner: &Inner, params: &BTreeMap<String, String>, scopes: &[String]) -> Result<Response, Response> {
    let ch = find_channel(inner, params)?;
    need(scopes, if ch.is_private { "groups:read" } else { "channels:read" })?;
    Ok(answer(scopes, "channels:read,groups:read,mpim:read,im:read", json!({"ok": true, "channel": channel_json(inner, ch)})))
}

/// `ts` as (seconds, fraction) for ordering.
fn ts_key(ts: &str) -> (i64, u64) {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
    (secs.parse().unwrap_or(0), frac.parse().unwrap_or(0))
}

fn is_reply(m: &SlackMessage) -> bool {
    m.thread_ts.as_ref().is_some_and(|t| *t != m.ts)
}

fn message_json(inner: &Inner, m: &SlackMessage) -> Value {
    let mut v = json!({"type": "message", "user": m.user, "text": m.text, "ts": m.ts, "team": inner.content.slack_team_id});
    let in_channel = || inner.content.slack_messages.iter().filter(|x| x.channel == m.channel);
    if is_reply(m) {
        let parent = m.thread_ts.clone().unwrap_or_default();
        v["thread_ts"] = parent.clone().into();
        if let Some(p) = in_channel().find(|x| x.ts == parent) {
            v["parent_user_id"] = p.user.clone().into();
        }
        return v;
    }
    let mut replies: Vec<&SlackMessage> = in_channel().filter(|x| is_reply(x) && x.thread_ts.as_deref() == Some(m.ts.as_str())).collect();
    if !replies.is_empty() {
        replies.sort_by_key(|x| ts_key(&x.ts));
        let mut users: Vec<String> = replies.iter().map(|x| x.user.clone()).collect();
        users.dedup();
        v["thread_ts"] = m.ts.clone().into();
        v["reply_count"] = replies.len().into();
        v["reply_users_count"] = users.len().into();
        v["latest_reply"] = replies.last().map(|x| x.ts.clone()).unwrap_or_default().into();
        v["reply_users"] = users.into();
        v["is_locked"] = false.into();
        v["subscribed"] = false.into();
    }
    v
}

fn history_scope(ch: &SlackChannel) -> &'static str {
    if ch.is_private {
        "groups:history"
    } else {
        "channels:history"
    }
}

fn history(inner: &Inner, params: &BTreeMap<String, String>, scopes: &[String]) -> Result<Response, Response> {
    let ch = find_channel(inner, params)?;
    need(scopes, history_scope(ch))?;
    let (limit, offset) = window(params, 999)?;
    let inclusive = params.get("inclusive").is_some_and(|i| i == "true" || i == "1");
    let oldest = params.get("oldest").map(|t| ts_key(t));
    let latest = params.get("latest").map(|t| ts_key(t));
    let mut top: Vec<&SlackMessage> = inner
        .content
        .slack_messages
        .iter()
        .filter(|m| m.channel == ch.id && !is_reply(m))
        .filter(|m| {
            let k = ts_key(&m.ts);
            oldest.is_none_or(|o| if inclusive { k >= o } else { k > o }) && latest.is_none_or(|l| if inclusive { k <= l } else { k < l })
        })
        .collect();
    top.sort_by_key(|m| std::cmp::Reverse(ts_key(&m.ts)));
    let end = (offset + limit).min(top.len());
    let messages: Vec<Value> = top.get(offset.min(end)..end).unwrap_or_default().iter().map(|m| message_json(inner, m)).collect();
    let has_more = end < top.len();
    let mut body = json!({"ok": true, "messages": messages, "has_more": has_more, "pin_count": 0, "channel_actions_ts": null, "channel_actions_count": 0});
    if has_more {
        body["response_metadata"] = json!({"next_cursor": page_token(end)});
    }
    Ok(answer(scopes, "channels:history,groups:history,mpim:history,im:history", body))
}

fn replies(inner: &Inner, params: &BTreeMap<String, String>, scopes: &[String]) -> Result<Response, Response> {
    let ch = find_channel(inner, params)?;
    need(scopes, history_scope(ch))?;
    let ts = params.get("ts").cloned().unwrap_or_default();
    let in_channel = || inner.content.slack_messages.iter().filter(|m| m.channel == ch.id);
    let Some(message) = in_channel().find(|m| m.ts == ts) else {
        return Err(fail("thread_not_found"));
    };
    let parent = if is_reply(message) { message.thread_ts.clone().unwrap_or_default() } else { message.ts.clone() };
    let mut thread: Vec<&SlackMessage> = in_channel().filter(|m| m.ts == parent || (is_reply(m) && m.thread_ts.as_deref() == Some(parent.as_str()))).collect();
    thread.sort_by_key(|m| ts_key(&m.ts));
    let (limit, offset) = window(params, 1000)?;
    let end = (offset + limit).min(thread.len());
    let messages: Vec<Value> = thread.get(offset.min(end)..end).unwrap_or_default().iter().map(|m| message_json(inner, m)).collect();
    let has_more = end < thread.len();
    let mut body = json!({"ok": true, "messages": messages, "has_more": has_more});
    if has_more {
        body["response_metadata"] = json!({"next_cursor": page_token(end)});
    }
    Ok(answer(scopes, "channels:history,groups:history,mpim:history,im:history", body))
}

fn post_message(shared: &Shared, inner: &mut Inner, params: &BTreeMap<String, String>, scopes: &[String]) -> Result<Response, Response> {
    need(scopes, "chat:write")?;
    let channel = find_channel(inner, params)?.id.clone();
    let text = params.get("text").cloned().unwrap_or_default();
    if text.trim().is_empty() && !params.contains_key("blocks") && !params.contains_key("attachments") {
        return Err(fail("no_text"));
    }
    let n = inner.next();
    let ts = format!("{}.{n:06}", shared.started.unix_timestamp());
    let message = SlackMessage { channel: channel.clone(), user: inner.content.slack_user_id.clone(), text, ts: ts.clone(), thread_ts: params.get("thread_ts").cloned() };
    inner.content.slack_messages.push(message.clone());
    let json = message_json(inner, &message);
    Ok(answer(scopes, "chat:write", json!({"ok": true, "channel": channel, "ts": ts, "message": json})))
}
