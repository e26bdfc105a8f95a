//! One run of the assistant loop: build the prompt, call the model through the meter, run the
//! tools it asks for, call it again, until it answers, a guardrail stops the run, or the meter
//! refuses.

use std::time::Duration;

use rand::RngCore;
use tokio::time::{timeout_at, Instant};

use crate::chat::{ChatMessage, ChatRequest, Completion, ToolCall};
use crate::config::AgentConfig;
use crate::meter_client::{self, MeterError, Refusal};
use crate::session::{now_ts, LogLine};
use crate::workspace::{today_utc, Workspace};
use crate::{broker_client, prompt, tools};

/// A guardrail that ended a run before the model answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model asked for more tool calls than `max_tool_calls`.
    MaxToolCalls,
    /// The run took longer than `max_run`.
    MaxRunTime,
}

impl Stop {
    /// The code in `MessageOut::stopped_by`.
    pub fn code(self) -> &'static str {
        match self {
            Stop::MaxToolCalls => "max_tool_calls",
            Stop::MaxRunTime => "max_run_time",
        }
    }

    /// What the user is told.
    pub fn reply(self, config: &AgentConfig) -> String {
        match self {
            Stop::MaxToolCalls => {
                let n = config.max_tool_calls;
                format!("I stopped: this request needed more than {n} tool {}.", if n == 1 { "call" } else { "calls" })
            }
            Stop::MaxRunTime => format!("I stopped: this request took longer than {}.", spoken(config.max_run)),
        }
    }
}

/// A duration the way a person says it.
fn spoken(d: Duration) -> String {
    let plural = |n: u128, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        plural(d.as_secs() as u128, "second")
    } else {
        plural(d.as_millis(), "millisecond")
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    /// The model's final text.
    Answer(String),
    /// A guardrail stopped the run.
    Stopped(Stop),
    /// The meter declined a call; its message is for the user.
    Refused(Refusal),
    /// The meter could not be reached or its answer broke off.
    Failed(MeterError),
}

/// One run: its id, how it ended, and the tool calls it made (as session-log lines).
#[derive(Debug)]
pub struct Turn {
    /// Sent as `x-clawpen-run` on every model call of the run.
    pub run_id: String,
    pub ending: Ending,
    /// One line per tool call made, in order.
    pub tool_lines: Vec<LogLine>,
}

/// A fresh run id: `run_` and 24 hex digits, within the meter's `[A-Za-z0-9_-]{1,64}`. The meter
/// accepts only runs the server opened, so this is for runs without one (tests with a fake meter).
pub fn new_run_id() -> String {
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("run_{hex}")
}

/// Runs the loop for the user's `text` in `session`, in the run `run_id` the server opened (a
/// made-up id when it gave none).
/// The text of every model answer is also sent to `deltas` as it arrives (when given): the
/// gateway's `chat` deltas and the message route's event stream come from it.
pub async fn run(config: &AgentConfig, ws: &Workspace, session: &str, text: &str, run_id: Option<String>, deltas: Option<meter_client::Deltas>) -> Turn {
    let deadline = Instant::now() + config.max_run;
    let today = today_utc();
    let run_id = run_id.unwrap_or_else(new_run_id);
    // The integration tools are asked for while the prompt is read: the model call waits on both.
    let socket = config.control_socket();
    let (messages, integrations) = tokio::join!(prompt::build(ws, session, text, today), broker_client::tools(&socket));
    let broker_tools = broker_client::names(&integrations);
    let mut tools = tools::definitions();
    if let Some(all) = tools.as_array_mut() {
        all.extend(integrations);
    }
    let mut run = Run { config, ws, today, deadline, run_id: &run_id, messages, tool_lines: Vec::new(), deltas, tools, broker_tools };
    let ending = run.steps().await;
    let tool_lines = run.tool_lines;
    Turn { run_id, ending, tool_lines }
}

/// The state of a run between model calls.
struct Run<'a> {
    config: &'a AgentConfig,
    ws: &'a Workspace,
    /// The day whose notes `write_note` adds to; fixed for the run so its calls agree.
    today: time::Date,
    deadline: Instant,
    run_id: &'a str,
    /// The conversation so far, sent whole on every call.
    messages: Vec<ChatMessage>,
    tool_lines: Vec<LogLine>,
    /// Where answer text goes as it arrives.
    deltas: Option<meter_client::Deltas>,
    /// The tools offered to the model: the agent's own, then the integrations'.
    tools: serde_json::Value,
    /// Which of them the broker answers.
    broker_tools: Vec<String>,
}

impl Run<'_> {
    async fn steps(&mut self) -> Ending {
        let tools = std::mem::take(&mut self.tools);
        loop {
            let completion = match self.call_model(&tools).await {
                Ok(c) => c,
                Err(ending) => return ending,
            };
            if completion.tool_calls.is_empty() {
                return Ending::Answer(completion.content);
            }
            let Completion { content, tool_calls, .. } = completion;
            self.messages.push(ChatMessage::Assistant { content: Some(content).filter(|c| !c.is_empty()), tool_calls: tool_calls.clone() });
            for call in tool_calls {
                if let Some(stop) = self.guard() {
                    return Ending::Stopped(stop);
                }
                self.run_tool(call).await;
            }
        }
    }

    /// One model call, bounded by what is left of the run's time.
    async fn call_model(&self, tools: &serde_json::Value) -> Result<Completion, Ending> {
        let request = ChatRequest { model: &self.config.model, messages: &self.messages, max_tokens: self.config.max_tokens, stream: true, tools };
        let socket = self.config.control_socket();
        match timeout_at(self.deadline, meter_client::complete(&socket, self.run_id, &request, self.deltas.as_ref())).await {
            Err(_) => Err(Ending::Stopped(Stop::MaxRunTime)),
            Ok(Err(MeterError::Refused(r))) => Err(Ending::Refused(r)),
            Ok(Err(e)) => Err(Ending::Failed(e)),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// The guardrail the next tool call would break, if any.
    fn guard(&self) -> Option<Stop> {
        if self.tool_lines.len() as u64 >= u64::from(self.config.max_tool_calls) {
            return Some(Stop::MaxToolCalls);
        }
        if Instant::now() >= self.deadline {
            return Some(Stop::MaxRunTime);
        }
        None
    }

    /// Runs one call and answers it; a failed call is answered with what went wrong, so the model
    /// can correct itself.
    async fn run_tool(&mut self, call: ToolCall) {
        let ToolCall { id, function, .. } = call;
        let result = if self.broker_tools.contains(&function.name) {
            broker_client::call(&self.config.control_socket(), self.run_id, &function.name, &function.arguments).await
        } else {
            match tools::dispatch(self.ws, &function.name, &function.arguments, self.today).await {
                Ok(r) => r,
                Err(e) => format!("Error: {e}"),
            }
        };
        self.tool_lines.push(LogLine::Tool {
            name: function.name,
            arguments: function.arguments,
            result: result.clone(),
            ts: now_ts(),
            run: Some(self.run_id.to_owned()),
        });
        self.messages.push(ChatMessage::Tool { tool_call_id: id, content: result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_fresh_and_meter_safe() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{a}");
    }

    #[test]
    fn stops_are_explained_in_plain_words() {
        let mut c = AgentConfig::new("a", "t", "/data", "/run");
        assert_eq!(Stop::MaxToolCalls.reply(&c), "I stopped: this request needed more than 8 tool calls.");
        assert_eq!(Stop::MaxRunTime.reply(&c), "I stopped: this request took longer than 90 seconds.");
        c.max_run = Duration::from_millis(300);
        assert_eq!(Stop::MaxRunTime.reply(&c), "I stopped: this request took longer than 300 milliseconds.");
    }
}
