//! Reading usage from provider answers: whole JSON bodies, or server-sent events as they pass.

use serde_json::Value;

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
    let cached = int(usage, &["prompt_tokens_details", "cached_tokens"]);
    Usage {
        input: (int(usage, &["prompt_tokens"]) - cached).max(0),
        output: int(usage, &["completion_tokens"]),
        cache_read: cached,
        cache_write: 0,
    }
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
#[derive(Debug, Default, Clone)]
pub struct StreamUsage {
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

impl StreamUsage {
    /// An OpenAI chunk: the usage chunk (sent last when `include_usage` is on) has it all.
    pub fn observe_openai(&mut self, chunk: &Value) {
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = openai(u);
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
