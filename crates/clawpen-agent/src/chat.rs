//! The OpenAI chat-completions wire types the agent sends to the meter, and the completion it
//! assembles from the answer.

use serde::{Deserialize, Serialize};

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        /// `null` (not absent) when the model only called tools, as the API expects.
        content: Option<String>,
        /// The calls the model made; absent on a plain answer.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        /// The id of the call this answers.
        tool_call_id: String,
        content: String,
    },
}

/// A tool call as the model made it (and as it is echoed back in the next request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function part of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet checked.
    pub arguments: String,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    pub max_tokens: u32,
    /// Always true: the agent reads the answer as server-sent events.
    pub stream: bool,
    /// The built-in tools, in the API's `tools` format.
    pub tools: &'a serde_json::Value,
}

/// What one model call produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The text, all deltas joined.
    pub content: String,
    /// The tool calls in index order, their argument pieces joined.
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `tool_calls`, `length`, … when the stream said.
    pub finish_reason: Option<String>,
}
