//! [`SseDecoder`]: server-sent events from a byte stream, as the `data` of each event.
//!
//! Only `data:` fields matter to a chat-completions stream; `event:`, `id:`, `retry:` and
//! comment lines are skipped. Lines may end in `\n` or `\r\n` and may be split anywhere between
//! network reads.

/// Longest line kept while waiting for its end: a stream that never ends a line must not grow
/// the agent's memory without bound.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// Splits bytes into events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The `data` of the event being read; `None` until a data line comes.
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of each event they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(i);
            bytes = &rest[1..];
            if self.partial.is_empty() {
                self.line(line, &mut events);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole, &mut events);
            }
        }
        if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(events)
    }

    /// The stream ended: the data of an event left without its closing blank line, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        let mut events = Vec::new();
        if !rest.is_empty() {
            self.line(&rest, &mut events);
        }
        events.pop().or_else(|| self.data.take())
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<String>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            events.extend(self.data.take());
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else { return };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = String::from_utf8_lossy(value);
        match &mut self.data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => self.data = Some(value.into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\nevent: x\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..cut]).expect("push");
            got.extend(d.push(&stream[cut..]).expect("push"));
            assert_eq!(got, ["{\"a\":1}", "two\nlines", "[DONE]"], "cut at {cut}");
            assert_eq!(d.finish(), None);
        }
    }

    #[test]
    fn an_unfinished_event_is_given_at_the_end() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: last").expect("push").is_empty());
        assert_eq!(d.finish().as_deref(), Some("last"));
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut d = SseDecoder::default();
        let big = vec![b'x'; MAX_LINE_BYTES];
        d.push(&big).expect("exactly the limit fits");
        assert_eq!(d.push(b"x"), Err(SseError::LineTooLong));
    }
}
