//! The session log `sessions/<session>.jsonl`: one JSON object a line, appended turn by turn,
//! and the recent history read back from it.
//!
//! Lines: `{"role": "user"|"assistant", "content", "ts", "run"}`, with `stopped_by` or
//! `error_code` on the lines of a turn that did not end in an answer, and
//! `{"role": "tool", "name", "arguments", "result", "ts", "run"}` for each tool call.

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::workspace::{Keep, Workspace};

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum LogLine {
    User {
        content: String,
        ts: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        /// Set when the run did not reach the model (a refusal or a failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
    Assistant {
        content: String,
        ts: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        /// The guardrail that ended the run, when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stopped_by: Option<String>,
        /// The meter's refusal code, when the reply is its refusal rather than the model's words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
    Tool {
        name: String,
        arguments: String,
        result: String,
        ts: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
    },
}

/// The log's file, below the workspace.
fn rel(session: &str) -> [String; 2] {
    ["sessions".to_owned(), format!("{session}.jsonl")]
}

/// Appends the lines of one turn in one write, so concurrent turns never interleave.
pub async fn append(ws: &Workspace, session: &str, lines: &[LogLine]) -> std::io::Result<()> {
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&serde_json::to_string(l)?);
        buf.push('\n');
    }
    let [dir, file] = rel(session);
    ws.append(&[&dir, &file], buf).await
}

/// What a session's history is read from, for a prompt of `budget` bytes of history: the session
/// log's file, how much of it, and which end.
pub fn history_read(session: &str, budget: usize) -> (Vec<String>, usize, Keep) {
    // JSON escapes and the other fields make a line longer than its content; four times the
    // budget is read so that escaping rarely costs a turn that would fit.
    (rel(session).to_vec(), budget.saturating_mul(4), Keep::Tail)
}

/// Of a session log's tail (read as [`history_read`] says): the newest user and assistant
/// messages that fit in `budget` bytes as sent (JSON), oldest first.
///
/// Tool lines are left out: what a tool did lives on in MEMORY.md and the notes, which the prompt
/// already carries. Lines of a refused or failed turn are left out too, so a refusal never reads
/// to the model as something it said.
pub fn history_of(tail: &crate::workspace::Bounded, budget: usize) -> Vec<ChatMessage> {
    fit(tail.text.lines().filter_map(|l| serde_json::from_str::<LogLine>(l).ok()), budget)
}

/// Takes messages from the end while they fit in `budget`.
fn fit(lines: impl DoubleEndedIterator<Item = LogLine>, budget: usize) -> Vec<ChatMessage> {
    let mut used = 0;
    let mut kept = Vec::new();
    for line in lines.rev() {
        let msg = match line {
            LogLine::User { content, error_code: None, .. } => ChatMessage::User { content },
            LogLine::Assistant { content, error_code: None, .. } => ChatMessage::Assistant { content: Some(content), tool_calls: Vec::new() },
            _ => continue,
        };
        // Wire size, envelope included: a thousand one-word turns weigh what they cost.
        let size = serde_json::to_string(&msg).map_or(usize::MAX, |s| s.len());
        if used + size > budget {
            break;
        }
        used += size;
        kept.push(msg);
    }
    kept.reverse();
    // An answer whose question did not fit would start the history mid-turn.
    if matches!(kept.first(), Some(ChatMessage::Assistant { .. })) {
        kept.remove(0);
    }
    kept
}

/// Every line of the session's log that fits in the last `budget` bytes, oldest first: the turns
/// as they happened, refused, failed and stopped ones included (what a client's history shows).
pub async fn transcript(ws: &Workspace, session: &str, budget: usize) -> std::io::Result<Vec<LogLine>> {
    let [dir, file] = rel(session);
    let Some(tail) = ws.read_bounded(&[&dir, &file], budget, Keep::Tail).await? else { return Ok(Vec::new()) };
    Ok(tail.text.lines().filter_map(|l| serde_json::from_str::<LogLine>(l).ok()).collect())
}

/// The sessions that have a log, with when each was last written (Unix ms).
pub async fn list(ws: &Workspace, max: usize) -> std::io::Result<Vec<(String, i64)>> {
    let files = ws.list("sessions", max).await?;
    Ok(files.into_iter().filter_map(|(name, at)| Some((name.strip_suffix(".jsonl")?.to_owned(), at))).collect())
}

/// A log line's time stamp in Unix milliseconds (0 when it does not parse).
pub fn ts_ms(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Now, as the RFC 3339 time stamp of a log line.
pub fn now_ts() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(c: &str) -> LogLine {
        LogLine::User { content: c.into(), ts: "t".into(), run: None, error_code: None }
    }
    fn assistant(c: &str) -> LogLine {
        LogLine::Assistant { content: c.into(), ts: "t".into(), run: None, stopped_by: None, error_code: None }
    }

    #[test]
    fn history_keeps_the_newest_whole_turns() {
        let tool = LogLine::Tool { name: "remember".into(), arguments: "{}".into(), result: "ok".into(), ts: "t".into(), run: None };
        let refused_q = LogLine::User { content: "q3".into(), ts: "t".into(), run: None, error_code: Some("cap_reached".into()) };
        let refused_a = LogLine::Assistant { content: "paused".into(), ts: "t".into(), run: None, stopped_by: None, error_code: Some("cap_reached".into()) };
        let lines = vec![user("q1-long"), assistant("a1"), user("q2"), tool, assistant("a2"), refused_q, refused_a];
        // `{"role":"assistant","content":"a1"}` is 36 bytes, `{"role":"user","content":"q2"}` 31:
        // 103 hold "a1", "q2", "a2" but not "q1-long", and the orphaned "a1" goes too.
        let got = fit(lines.clone().into_iter(), 103);
        assert_eq!(got, [ChatMessage::User { content: "q2".into() }, ChatMessage::Assistant { content: Some("a2".into()), tool_calls: vec![] }]);
        assert_eq!(fit(lines.into_iter(), 1000).len(), 4);
    }

    #[test]
    fn lines_read_back() {
        let l = LogLine::Tool { name: "n".into(), arguments: "{}".into(), result: "r".into(), ts: "t".into(), run: Some("run_1".into()) };
        let s = serde_json::to_string(&l).expect("json");
        assert_eq!(s, r#"{"role":"tool","name":"n","arguments":"{}","result":"r","ts":"t","run":"run_1"}"#);
        assert_eq!(serde_json::from_str::<LogLine>(&s).expect("parse"), l);
        // Lines written before runs existed still read.
        let old: LogLine = serde_json::from_str(r#"{"ts":"x","role":"user","content":"hi"}"#).expect("parse");
        assert_eq!(old, LogLine::User { content: "hi".into(), ts: "x".into(), run: None, error_code: None });
    }
}
