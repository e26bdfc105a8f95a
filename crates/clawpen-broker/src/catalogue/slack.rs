//! Slack: the user's channels and their messages, read with user scopes. A reply is only ever
//! prepared: `slack_prepare_reply` makes no provider call at all and the user sends the text
//! themselves; the broker has no code path that posts a message.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{args, object, text, Exec, Kind, Provider, ToolDef, TEXT};
use crate::ToolError;

const CHANNEL: &str = "^[CGD][A-Z0-9]{2,20}$";
const TS: &str = "^[0-9]{1,12}\\.[0-9]{1,6}$";
const CAP: usize = 16 * 1024;

fn channel_schema() -> Value {
    json!({"type": "string", "pattern": CHANNEL, "description": "the channel's id, e.g. \"C024BE91L\" (from slack_list_channels)"})
}

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "slack_list_channels",
        provider: Provider::Slack,
        source: "Slack",
        description: "List the Slack channels and conversations the user is in (ids, names, topics).",
        scopes: &["channels:read", "groups:read", "im:read", "mpim:read"],
        kind: Kind::Read,
        method: "GET",
        path: "/api/conversations.list?types=public_channel,private_channel,mpim,im&exclude_archived=true&limit=200",
        result_cap: CAP,
        fields: &["id", "name", "is_private", "is_im", "is_member", "topic", "num_members"],
        schema: || object(json!({}), &[]),
    },
    ToolDef {
        name: "slack_read_channel",
        provider: Provider::Slack,
        source: "Slack",
        description: "Read the latest messages of a Slack channel, newest first.",
        scopes: &["channels:history", "groups:history", "im:history", "mpim:history"],
        kind: Kind::Read,
        method: "GET",
        path: "/api/conversations.history?channel={channel_id}&limit={limit}",
        result_cap: CAP,
        fields: &["ts", "user", "text", "thread_ts", "reply_count"],
        schema: || object(json!({"channel_id": channel_schema(), "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "how many messages, 1 to 100; default 20"}}), &["channel_id"]),
    },
    ToolDef {
        name: "slack_read_thread",
        provider: Provider::Slack,
        source: "Slack",
        description: "Read a Slack thread: the message with timestamp ts and its replies.",
        scopes: &["channels:history", "groups:history", "im:history", "mpim:history"],
        kind: Kind::Read,
        method: "GET",
        path: "/api/conversations.replies?channel={channel_id}&ts={ts}&limit=100",
        result_cap: CAP,
        fields: &["ts", "user", "text", "thread_ts", "reply_count"],
        schema: || object(json!({"channel_id": channel_schema(), "ts": {"type": "string", "pattern": TS, "description": "the thread's timestamp, e.g. \"1712345678.123456\""}}), &["channel_id", "ts"]),
    },
    ToolDef {
        name: "slack_prepare_reply",
        provider: Provider::Slack,
        source: "Slack",
        description: "Prepare a Slack reply for the user to send themselves. Nothing is posted: the text is handed back to show the user.",
        scopes: &[],
        kind: Kind::Draft,
        method: "",
        path: "(none: no provider call)",
        result_cap: 8192,
        fields: &["draft", "note"],
        schema: || {
            object(
                json!({
                    "channel_id": channel_schema(),
                    "thread_ts": {"type": "string", "pattern": TS, "description": "the thread to reply in, if any"},
                    "text": {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": TEXT, "description": "the reply"},
                }),
                &["channel_id", "text"],
            )
        },
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadChannel {
    channel_id: String,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadThread {
    channel_id: String,
    ts: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrepareReply {
    channel_id: String,
    thread_ts: Option<String>,
    text: String,
}

fn channel(s: &str) -> Result<String, ToolError> {
    let ok = (3..=21).contains(&s.len()) && matches!(s.as_bytes()[0], b'C' | b'G' | b'D') && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok { Ok(s.to_owned()) } else { Err(ToolError::new("invalid_arguments", "argument `channel_id` is not a Slack channel id".to_owned())) }
}

fn ts(s: &str) -> Result<String, ToolError> {
    let ok = s.split_once('.').is_some_and(|(a, b)| (1..=12).contains(&a.len()) && (1..=6).contains(&b.len()) && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
    if ok { Ok(s.to_owned()) } else { Err(ToolError::new("invalid_arguments", "argument `ts` is not a Slack timestamp".to_owned())) }
}

fn message(m: &Value) -> Value {
    json!({
        "ts": text(&m["ts"], 20),
        "user": text(&m["user"], 30),
        "text": text(&m["text"], 2000),
        "thread_ts": text(&m["thread_ts"], 20),
        "reply_count": m["reply_count"].as_u64(),
    })
}

fn messages(v: &Value) -> Vec<Value> {
    v["messages"].as_array().map(|a| a.iter().take(100).map(message).collect()).unwrap_or_default()
}

pub(crate) async fn read(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Value, ToolError> {
    match tool {
        "slack_list_channels" => {
            let _: NoArgs = args(a)?;
            let q = [("types", "public_channel,private_channel,mpim,im".to_owned()), ("exclude_archived", "true".to_owned()), ("limit", "200".to_owned())];
            let v = x.json(&x.get("/api/conversations.list", &q)).await?;
            let channels: Vec<Value> = v["channels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(200)
                        .map(|c| json!({"id": text(&c["id"], 30), "name": text(&c["name"], 100), "is_private": c["is_private"].as_bool(), "is_im": c["is_im"].as_bool(), "is_member": c["is_member"].as_bool(), "topic": text(&c["topic"]["value"], 200), "num_members": c["num_members"].as_u64()}))
                        .collect()
                })
                .unwrap_or_default();
            Ok(json!({"channels": channels}))
        }
        "slack_read_channel" => {
            let a: ReadChannel = args(a)?;
            let q = [("channel", channel(&a.channel_id)?), ("limit", a.limit.unwrap_or(20).clamp(1, 100).to_string())];
            let v = x.json(&x.get("/api/conversations.history", &q)).await?;
            Ok(json!({"channel_id": a.channel_id, "messages": messages(&v)}))
        }
        "slack_read_thread" => {
            let a: ReadThread = args(a)?;
            let q = [("channel", channel(&a.channel_id)?), ("ts", ts(&a.ts)?), ("limit", "100".to_owned())];
            let v = x.json(&x.get("/api/conversations.replies", &q)).await?;
            Ok(json!({"channel_id": a.channel_id, "messages": messages(&v)}))
        }
        _ => Err(ToolError::internal("not a Slack read tool")),
    }
}

/// The draft of a reply, for the user to send: no request is made.
pub(crate) fn prepare_reply(a: &Value) -> Result<Value, ToolError> {
    let a: PrepareReply = args(a)?;
    channel(&a.channel_id)?;
    if let Some(t) = &a.thread_ts {
        ts(t)?;
    }
    Ok(json!({
        "draft": {"channel_id": a.channel_id, "thread_ts": a.thread_ts, "text": a.text},
        "note": "Nothing was posted. Show the user this text so they can send it themselves in Slack.",
    }))
}

/// The account as `user (team)`.
pub(crate) async fn account(b: &crate::Broker, p: &crate::config::ResolvedProvider, token: &clawpen_vault::Secret<String>) -> Option<String> {
    let v = b.get_with_token(p, token, "/api/auth.test", &[]).await?;
    if v["ok"] != Value::Bool(true) {
        return None;
    }
    match (v["user"].as_str(), v["team"].as_str()) {
        (Some(u), Some(t)) => Some(format!("{u} ({t})")),
        (Some(u), None) => Some(u.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_timestamps_are_checked_again() {
        assert!(channel("C024BE91L").is_ok() && channel("D0123").is_ok());
        for bad in ["c024", "X024BE91L", "C0/..", "C", "C024BE91L\n"] {
            assert!(channel(bad).is_err(), "{bad}");
        }
        assert!(ts("1712345678.123456").is_ok());
        assert!(ts("1712345678").is_err() && ts("1.2.3").is_err() && ts("a.1").is_err());
    }

    #[test]
    fn a_prepared_reply_is_only_handed_back() {
        let v = prepare_reply(&json!({"channel_id": "C024BE91L", "text": "On my way"})).unwrap();
        assert_eq!(v["draft"]["text"], "On my way");
        assert!(v["note"].as_str().unwrap().starts_with("Nothing was posted"));
    }
}
