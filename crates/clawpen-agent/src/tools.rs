//! The built-in tools: `remember` and `write_note`. Each writes one file of the workspace whose
//! name the agent decides; no argument ever names a path, so a model cannot reach elsewhere.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::workspace::{date_name, Workspace};

/// Longest fact `remember` keeps: a fact is a line, not a document.
pub const MAX_FACT_CHARS: usize = 1000;
/// Longest text one `write_note` call adds.
pub const MAX_NOTE_CHARS: usize = 4000;

/// Why a tool call did nothing; sent to the model so it can correct itself.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("there is no tool named {0:?}; the tools are `remember` and `write_note`")]
    Unknown(String),
    #[error("bad arguments for `{tool}`: {problem}; expected {expected}")]
    BadArguments { tool: &'static str, problem: String, expected: &'static str },
    #[error("{}", io_message(.0))]
    Io(#[source] std::io::Error),
}

/// A write error in words for the model (which tells the user): a full workspace says so.
fn io_message(e: &std::io::Error) -> String {
    if crate::workspace::is_full(e) {
        crate::workspace::FULL_NOTICE.to_owned()
    } else {
        "the workspace could not be written, so nothing was saved".to_owned()
    }
}

/// The tools in the chat-completions `tools` format.
pub fn definitions() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "remember",
            "description": "Keep a lasting fact about the user or their world in long-term memory (MEMORY.md). One short fact per call.",
            "parameters": {"type": "object", "properties": {"fact": {"type": "string", "description": "The fact, one sentence."}}, "required": ["fact"]},
        }},
        {"type": "function", "function": {
            "name": "write_note",
            "description": "Add text to today's notes (memory/YYYY-MM-DD.md): what happened, what to follow up.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string", "description": "The text to add."}}, "required": ["text"]},
        }},
    ])
}

#[derive(Deserialize)]
struct RememberArgs {
    fact: String,
}

#[derive(Deserialize)]
struct NoteArgs {
    text: String,
}

/// Runs the tool `name` with the model's `arguments` (JSON text). The result is what the model
/// is told, success or not.
pub async fn dispatch(ws: &Workspace, name: &str, arguments: &str, today: time::Date) -> Result<String, ToolError> {
    match name {
        "remember" => {
            let a: RememberArgs = parse("remember", arguments, r#"{"fact": string}"#)?;
            let fact = checked("remember", "fact", &a.fact, MAX_FACT_CHARS, r#"{"fact": string}"#)?;
            // One fact, one bullet: line breaks inside it would start stray lines.
            let line = format!("- {}", fact.split_whitespace().collect::<Vec<_>>().join(" "));
            ws.append(&["MEMORY.md"], line).await.map_err(ToolError::Io)?;
            Ok("Remembered.".into())
        }
        "write_note" => {
            let a: NoteArgs = parse("write_note", arguments, r#"{"text": string}"#)?;
            let text = checked("write_note", "text", &a.text, MAX_NOTE_CHARS, r#"{"text": string}"#)?;
            let file = format!("{}.md", date_name(today));
            ws.append(&["memory", &file], text.to_owned()).await.map_err(ToolError::Io)?;
            Ok(format!("Added to today's notes (memory/{file})."))
        }
        other => Err(ToolError::Unknown(other.chars().take(64).collect())),
    }
}

fn parse<T: DeserializeOwned>(tool: &'static str, arguments: &str, expected: &'static str) -> Result<T, ToolError> {
    // Some models send no arguments at all for an empty object.
    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
    serde_json::from_str(arguments).map_err(|e| ToolError::BadArguments { tool, problem: e.to_string(), expected })
}

fn checked<'a>(tool: &'static str, field: &str, value: &'a str, max: usize, expected: &'static str) -> Result<&'a str, ToolError> {
    let v = value.trim();
    let bad = |problem: String| ToolError::BadArguments { tool, problem, expected };
    if v.is_empty() {
        return Err(bad(format!("`{field}` is empty")));
    }
    if v.chars().count() > max {
        return Err(bad(format!("`{field}` is longer than {max} characters")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tools_write_their_files_and_explain_mistakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::new(dir.path());
        let day = time::macros::date!(2026 - 03 - 04);
        dispatch(&ws, "remember", r#"{"fact": "likes\ntea"}"#, day).await.expect("remember");
        dispatch(&ws, "write_note", r#"{"text": "called mum"}"#, day).await.expect("note");
        assert_eq!(std::fs::read_to_string(dir.path().join("MEMORY.md")).expect("read"), "- likes tea\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("memory/2026-03-04.md")).expect("read"), "called mum\n");

        let e = dispatch(&ws, "remember", r#"{"text": "x"}"#, day).await.unwrap_err().to_string();
        assert!(e.contains("missing field `fact`") && e.contains(r#"{"fact": string}"#), "{e}");
        let e = dispatch(&ws, "write_note", "not json", day).await.unwrap_err().to_string();
        assert!(e.contains("bad arguments for `write_note`"), "{e}");
        let e = dispatch(&ws, "remember", r#"{"fact": "  "}"#, day).await.unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = dispatch(&ws, "shell", "{}", day).await.unwrap_err().to_string();
        assert!(e.contains("no tool named \"shell\""), "{e}");
    }
}
