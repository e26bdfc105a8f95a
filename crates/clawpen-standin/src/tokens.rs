//! The stand-in's "model": word counts and the deterministic reply (rules in the crate docs).

use serde_json::Value;

pub(crate) fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// The text of a message `content` or an Anthropic `system`: a string, or its parts' texts.
pub(crate) fn text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().map(part_text).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

fn part_text(part: &Value) -> String {
    match part["type"].as_str() {
        Some("tool_use") => part.get("input").map(Value::to_string).unwrap_or_default(),
        Some("tool_result") => text(&part["content"]),
        _ => part["text"].as_str().unwrap_or_default().to_owned(),
    }
}

/// How a model counts input: words (the usual) or, for models whose name contains `bytes`, one
/// token per byte of text (the worst a real tokenizer can do); and what an image costs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counter {
    pub bytes: bool,
    pub image_tokens: u64,
}

impl Counter {
    pub(crate) fn for_model(model: &str, image_tokens: u64) -> Counter {
        Counter { bytes: model.contains("bytes"), image_tokens }
    }

    fn text(&self, s: &str) -> u64 {
        if self.bytes {
            s.len() as u64
        } else {
            words(s)
        }
    }

    /// A message's text, its OpenAI tool call arguments, its images, and 4 for the message itself.
    fn message(&self, message: &Value) -> u64 {
        let calls = message["tool_calls"].as_array().map_or(0, |calls| calls.iter().map(|c| self.text(c["function"]["arguments"].as_str().unwrap_or_default())).sum());
        self.text(&text(&message["content"])) + calls + images(&message["content"]) * self.image_tokens + 4
    }

    /// Input tokens of a conversation (`system` is `null` for OpenAI, whose system prompt is a
    /// message).
    pub(crate) fn input(&self, system: &Value, messages: &[Value]) -> u64 {
        self.text(&text(system)) + messages.iter().map(|m| self.message(m)).sum::<u64>()
    }
}

/// Input tokens of a conversation counted in words, images free.
#[cfg(test)]
pub(crate) fn input_tokens(system: &Value, messages: &[Value]) -> u64 {
    Counter { bytes: false, image_tokens: 0 }.input(system, messages)
}

/// Image parts of a `content` (OpenAI `image_url`, Anthropic `image`, also inside an Anthropic
/// `tool_result`).
pub(crate) fn images(content: &Value) -> u64 {
    let Value::Array(parts) = content else { return 0 };
    parts
        .iter()
        .map(|p| match p["type"].as_str() {
            Some("image_url" | "image") => 1,
            Some("tool_result") => images(&p["content"]),
            _ => 0,
        })
        .sum()
}

/// The text of the last message with role `user`, or empty.
pub(crate) fn last_user_text(messages: &[Value]) -> String {
    messages.iter().rev().find(|m| m["role"] == "user").map(|m| text(&m["content"])).unwrap_or_default()
}

/// The usual reply to a prompt.
pub(crate) fn reply_to(prompt: &str) -> String {
    if words(prompt) == 0 {
        "stand-in reply".to_owned()
    } else {
        format!("stand-in reply to: {prompt}")
    }
}

/// A text reply as emitted: its words, cut to the request's max tokens.
#[derive(Debug, PartialEq)]
pub(crate) struct Reply {
    pub words: Vec<String>,
    /// Whether max tokens cut it short.
    pub cut: bool,
}

impl Reply {
    pub(crate) fn new(text: &str, max_tokens: Option<u64>) -> Self {
        let mut words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let keep = max_tokens.map_or(words.len(), |max| usize::try_from(max).unwrap_or(usize::MAX).min(words.len()));
        let cut = keep < words.len();
        words.truncate(keep);
        Self { words, cut }
    }

    pub(crate) fn text(&self) -> String {
        self.words.join(" ")
    }

    /// The reply as streamed: each word, with a leading space after the first.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.words.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn words_split_on_any_whitespace() {
        assert_eq!(words(""), 0);
        assert_eq!(words("  \n\t "), 0);
        assert_eq!(words("hello there\n meter\t!"), 4);
    }

    #[test]
    fn input_counts_words_plus_four_per_message() {
        let messages = [json!({"role": "system", "content": "be brief"}), json!({"role": "user", "content": "hello there meter"})];
        assert_eq!(input_tokens(&Value::Null, &messages), (2 + 4) + (3 + 4));
        // Anthropic's system prompt adds its words, with no per-message overhead.
        assert_eq!(input_tokens(&json!("be brief"), &messages[1..]), 2 + 3 + 4);
        assert_eq!(input_tokens(&json!([{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}]), &messages[1..]), 2 + 3 + 4);
    }

    #[test]
    fn parts_tool_calls_and_tool_results_count_their_text() {
        let openai = [
            json!({"role": "user", "content": [{"type": "text", "text": "look at"}, {"type": "image_url", "image_url": {"url": "x y z"}}, {"type": "text", "text": "this"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\": \"a b\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "file body here"}),
        ];
        assert_eq!(input_tokens(&Value::Null, &openai), (3 + 4) + (3 + 4) + (3 + 4));
        let anthropic = [
            json!({"role": "assistant", "content": [{"type": "text", "text": "reading"}, {"type": "tool_use", "id": "t", "name": "read", "input": {"path": "a b"}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "file body"}]}]}),
        ];
        // The input is compact JSON: `{"path":"a b"}` is two words.
        assert_eq!(input_tokens(&Value::Null, &anthropic), (1 + 2 + 4) + (2 + 4));
    }

    #[test]
    fn images_and_byte_models_count_their_worst() {
        let counter = Counter::for_model("gpt-bytes", 100);
        assert!(counter.bytes);
        let messages = [json!({"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "image_url", "image_url": {"url": "data:,"}}]})];
        // "héllo" is 6 bytes; one image; 4 for the message.
        assert_eq!(counter.input(&Value::Null, &messages), 6 + 100 + 4);
        let words = Counter::for_model("gpt-test", 100);
        assert_eq!(words.input(&Value::Null, &messages), 1 + 100 + 4);
        let nested = json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}, {"type": "image", "source": {}}]}]);
        assert_eq!(images(&nested), 2);
    }

    #[test]
    fn the_reply_answers_the_last_user_message() {
        let messages = [json!({"role": "user", "content": "first"}), json!({"role": "assistant", "content": "x"}), json!({"role": "user", "content": "second  one"})];
        assert_eq!(reply_to(&last_user_text(&messages)), "stand-in reply to: second  one");
        assert_eq!(reply_to(&last_user_text(&messages[1..2])), "stand-in reply");
        assert_eq!(reply_to(" "), "stand-in reply");
        let reply = Reply::new("stand-in reply to: second  one", None);
        assert_eq!((reply.text().as_str(), reply.tokens(), reply.cut), ("stand-in reply to: second one", 5, false));
    }

    #[test]
    fn max_tokens_cuts_the_reply() {
        let text = "stand-in reply to: a b c";
        assert_eq!(Reply::new(text, Some(6)), Reply::new(text, None));
        assert!(!Reply::new(text, Some(6)).cut);
        let cut = Reply::new(text, Some(2));
        assert_eq!((cut.text().as_str(), cut.tokens(), cut.cut), ("stand-in reply", 2, true));
        assert_eq!(Reply::new(text, Some(0)).tokens(), 0);
    }
}
