//! Reading usage from provider answers: whole JSON bodies, or server-sent events as they pass.

use serde_json::Value;

use crate::config::Provider;

/// Tokens of one call. `input` excludes cached input (which is priced apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

fn int(v: &Value, path: &[&str]) -> i64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_i64).unwrap_or(0)
}

/// Usage of an OpenAI chat-completions answer or of its usage chunk.
pub fn openai(usage: &Value) -> Usage {
    chat_completions(Provider::Openai, usage)
}

/// Usage of a chat-completions answer (or its usage chunk) of `provider`, each in its own
/// fields. Every provider here counts cached input inside `prompt_tokens`; they differ in where
/// the cached count is and whether reasoning is inside `completion_tokens`:
/// - OpenAI: `prompt_tokens_details.cached_tokens`; reasoning inside `completion_tokens`.
/// - DeepSeek: `prompt_cache_hit_tokens`; reasoning inside `completion_tokens`.
/// - xAI: `prompt_tokens_details.cached_tokens`; `completion_tokens_details.reasoning_tokens`
///   beside `completion_tokens` (`total_tokens` is the sum of the three).
/// - Gemini: `prompt_tokens_details.cached_tokens`; thinking tokens in `total_tokens`, and in
///   `completion_tokens` or beside it depending on the model's version.
///
/// For the last two, output is what `total_tokens` says beyond the prompt, or completion plus
/// reasoning, whichever is more: hidden reasoning is billed as output, never missed.
pub fn chat_completions(provider: Provider, usage: &Value) -> Usage {
    let prompt = int(usage, &["prompt_tokens"]);
    let completion = int(usage, &["completion_tokens"]);
    let cached = match provider {
        Provider::Deepseek => int(usage, &["prompt_cache_hit_tokens"]),
        _ => int(usage, &["prompt_tokens_details", "cached_tokens"]),
    }
    .clamp(0, prompt.max(0));
    let output = match provider {
        Provider::Xai | Provider::Gemini => {
            let beside = completion + int(usage, &["completion_tokens_details", "reasoning_tokens"]);
            let total = usage.get("total_tokens").and_then(Value::as_i64).map(|t| t - prompt);
            match (provider, total) {
                // xAI's reasoning is always beside completion; Gemini's may be inside it.
                (Provider::Xai, t) => beside.max(t.unwrap_or(0)),
                (_, Some(t)) => completion.max(t),
                (_, None) => completion,
            }
        }
        _ => completion,
    };
    Usage { input: (prompt - cached).max(0), output: output.max(0), cache_read: cached, cache_write: 0 }
}

/// Usage of an Anthropic Messages answer.
pub fn anthropic(usage: &Value) -> Usage {
    Usage {
        input: int(usage, &["input_tokens"]),
        output: int(usage, &["output_tokens"]),
        cache_read: int(usage, &["cache_read_input_tokens"]),
        cache_write: int(usage, &["cache_creation_input_tokens"]),
    }
}

/// Usage gathered from a stream as its events pass.
#[derive(Debug, Clone)]
pub struct StreamUsage {
    /// Whose usage fields a chat-completions usage chunk has.
    provider: Provider,
    usage: Usage,
    seen: bool,
    /// Input counts came (Anthropic's `message_start`): a stream cut short knows its input.
    input_seen: bool,
    /// The final usage came (OpenAI's usage chunk, Anthropic's `message_delta`): nothing more is
    /// billed past it.
    ended: bool,
    /// Bytes of generated output seen (text, tool names and arguments, thinking): no tokenizer
    /// makes more tokens than bytes, so this bounds the output tokens that were streamed.
    pub generated_bytes: i64,
}

fn str_len(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_str).map_or(0, |s| s.len() as i64)
}

impl Default for StreamUsage {
    fn default() -> Self {
        StreamUsage::of(Provider::Openai)
    }
}

impl StreamUsage {
    /// A stream of `provider`'s.
    pub fn of(provider: Provider) -> Self {
        StreamUsage { provider, usage: Usage::default(), seen: false, input_seen: false, ended: false, generated_bytes: 0 }
    }

    /// An OpenAI chunk: the usage chunk (sent last when `include_usage` is on) has it all.
    pub fn observe_openai(&mut self, chunk: &Value) {
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = chat_completions(self.provider, u);
            self.seen = true;
            self.input_seen = true;
            self.ended = true;
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let Some(delta) = choice.get("delta") else { continue };
            self.generated_bytes += str_len(delta.get("content")) + str_len(delta.get("refusal")) + str_len(delta.get("reasoning_content"));
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                self.generated_bytes += str_len(call.pointer("/function/name")) + str_len(call.pointer("/function/arguments"));
            }
        }
    }

    /// An Anthropic event: input and cache counts come in `message_start`, output in each
    /// `message_delta` (cumulative, so the last one counts).
    pub fn observe_anthropic(&mut self, event: &Value) {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = event.pointer("/message/usage") {
                    self.usage = anthropic(u);
                    self.seen = true;
                    self.input_seen = true;
                }
            }
            Some("message_delta") => {
                if let Some(u) = event.get("usage") {
                    self.usage.output = int(u, &["output_tokens"]);
                    // Newer API versions repeat cumulative input counts here too.
                    if u.get("input_tokens").is_some() {
                        self.usage.input = int(u, &["input_tokens"]);
                    }
                    if u.get("cache_read_input_tokens").is_some() {
                        self.usage.cache_read = int(u, &["cache_read_input_tokens"]);
                    }
                    if u.get("cache_creation_input_tokens").is_some() {
                        self.usage.cache_write = int(u, &["cache_creation_input_tokens"]);
                    }
                    self.seen = true;
                    self.ended = true;
                }
            }
            Some("content_block_delta") => {
                let d = event.get("delta");
                let field = |k: &str| str_len(d.and_then(|d| d.get(k)));
                self.generated_bytes += field("text") + field("partial_json") + field("thinking");
            }
            Some("content_block_start") => {
                self.generated_bytes += str_len(event.pointer("/content_block/name"));
            }
            _ => {}
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.seen.then_some(self.usage)
    }

    /// Whether the final usage was seen.
    pub fn finished(&self) -> bool {
        self.ended
    }

    /// What a stream cut short had generated, at most: input as reported (`None` when it never
    /// came), and output as reported or as the bytes seen, whichever is more.
    pub fn so_far(&self) -> (Option<Usage>, i64) {
        let output = if self.seen { self.usage.output.max(self.generated_bytes) } else { self.generated_bytes };
        (self.input_seen.then_some(self.usage), output)
    }
}

/// Splits a byte stream into server-sent events (each returned with its blank-line terminator).
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

impl SseSplitter {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let end = find_event_end(&self.buf);
            match end {
                Some(n) => events.push(self.buf.drain(..n).collect()),
                None => break,
            }
        }
        events
    }

    /// What is left when the stream ends (an event without its terminator).
    pub fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` payload of one event (lines joined), if any.
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (!data.is_empty()).then(|| data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_providers_usage_fields_are_read_as_it_bills_them() {
        // OpenAI: cached inside prompt_tokens, reasoning inside completion_tokens.
        let u = chat_completions(Provider::Openai, &json!({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140, "prompt_tokens_details": {"cached_tokens": 30}, "completion_tokens_details": {"reasoning_tokens": 25}}));
        assert_eq!(u, Usage { input: 70, output: 40, cache_read: 30, cache_write: 0 });
        // DeepSeek: prompt_cache_hit_tokens + prompt_cache_miss_tokens = prompt_tokens.
        let u = chat_completions(Provider::Deepseek, &json!({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "completion_tokens_details": {"reasoning_tokens": 25}}));
        assert_eq!(u, Usage { input: 36, output: 40, cache_read: 64, cache_write: 0 });
        // xAI: reasoning beside completion; total is the sum of the three.
        let u = chat_completions(Provider::Xai, &json!({"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135, "prompt_tokens_details": {"text_tokens": 32, "cached_tokens": 6}, "completion_tokens_details": {"reasoning_tokens": 94}}));
        assert_eq!(u, Usage { input: 26, output: 103, cache_read: 6, cache_write: 0 });
        // Gemini: thinking counted in total, whether or not completion_tokens has it.
        let beside = chat_completions(Provider::Gemini, &json!({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 86, "completion_tokens_details": {"reasoning_tokens": 60}}));
        let inside = chat_completions(Provider::Gemini, &json!({"prompt_tokens": 21, "completion_tokens": 65, "total_tokens": 86, "completion_tokens_details": {"reasoning_tokens": 60}}));
        assert_eq!((beside.output, inside.output), (65, 65));
        // OpenAI's own reading of the same xAI body would miss the reasoning: the dialect matters.
        assert_eq!(chat_completions(Provider::Openai, &json!({"prompt_tokens": 32, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 94}})).output, 9);
        // Nonsense never goes negative.
        let u = chat_completions(Provider::Deepseek, &json!({"prompt_tokens": 5, "completion_tokens": -3, "prompt_cache_hit_tokens": 50}));
        assert_eq!(u, Usage { input: 0, output: 0, cache_read: 5, cache_write: 0 });
        // A stream reads its usage chunk in its provider's dialect.
        let mut s = StreamUsage::of(Provider::Xai);
        s.observe_openai(&json!({"choices": [], "usage": {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135, "completion_tokens_details": {"reasoning_tokens": 94}}}));
        assert_eq!(s.usage.output, 103);
    }

    #[test]
    fn splits_events_across_chunks() {
        let mut s = SseSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        let ev = s.push(b":1}\n\ndata: [DONE]\n\nevent: x\r\ndata: y\r\n\r\n");
        assert_eq!(ev.len(), 3);
        assert_eq!(event_data(&ev[0]).unwrap(), "{\"a\":1}");
        assert_eq!(event_data(&ev[1]).unwrap(), "[DONE]");
        assert_eq!(event_data(&ev[2]).unwrap(), "y");
    }

    #[test]
    fn anthropic_stream_usage_is_cumulative() {
        let mut u = StreamUsage::default();
        u.observe_anthropic(&json!({"type": "message_start", "message": {"usage": {"input_tokens": 20, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5, "output_tokens": 1}}}));
        u.observe_anthropic(&json!({"type": "message_delta", "usage": {"output_tokens": 7}}));
        u.observe_anthropic(&json!({"type": "message_delta", "usage": {"output_tokens": 12}}));
        assert_eq!(u.usage(), Some(Usage { input: 20, output: 12, cache_read: 10, cache_write: 5 }));
    }

    #[test]
    fn openai_usage_separates_cached_input() {
        let u = openai(&json!({"prompt_tokens": 30, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 10}}));
        assert_eq!(u, Usage { input: 20, output: 4, cache_read: 10, cache_write: 0 });
        let mut s = StreamUsage::default();
        s.observe_openai(&json!({"choices": [{"delta": {"content": "hi"}}], "usage": null}));
        assert_eq!(s.usage(), None);
        s.observe_openai(&json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}));
        assert_eq!(s.usage().unwrap().output, 1);
    }

    #[test]
    fn a_stream_cut_short_bounds_its_output_by_the_bytes_seen() {
        let mut s = StreamUsage::default();
        s.observe_openai(&json!({"choices": [{"index": 0, "delta": {"content": "héllo"}}]}));
        s.observe_openai(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{\"a\""}}]}}]}));
        assert_eq!(s.so_far(), (None, 6 + 1 + 4));
        let mut a = StreamUsage::default();
        a.observe_anthropic(&json!({"type": "message_start", "message": {"usage": {"input_tokens": 20, "output_tokens": 1}}}));
        a.observe_anthropic(&json!({"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "hmm"}}));
        let (input, output) = a.so_far();
        assert_eq!((input.unwrap().input, output), (20, 3));
    }
}
