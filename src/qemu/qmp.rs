//! A small QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! QMP greets, then needs `qmp_capabilities`; afterwards every command gets
//! exactly one `return` or `error`, while asynchronous `event`s may arrive
//! interleaved at any time. [`Qmp::execute`] skips events (keeping them for
//! [`Qmp::take_events`]) until the reply to its own command arrives; commands
//! carry an `id` so a stray reply can never be mistaken for ours.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// QMP errors.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting or talking to the socket failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU did not answer in time.
    #[error("QMP socket {path}: no answer to {command} within {timeout:?}")]
    Timeout {
        /// Socket path.
        path: String,
        /// Command sent.
        command: String,
        /// Limit.
        timeout: Duration,
    },
    /// The connection closed (QEMU exited).
    #[error("QMP socket {path}: closed by QEMU")]
    Closed {
        /// Socket path.
        path: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP socket {path}: unexpected message {message}")]
    Protocol {
        /// Socket path.
        path: String,
        /// What arrived.
        message: String,
    },
    /// QEMU refused the command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// Command sent.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
}

/// An event QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `BLOCK_JOB_READY`.
    pub name: String,
    /// Its data.
    pub data: Value,
}

/// A negotiated QMP session.
pub struct Qmp {
    path: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
    events: VecDeque<QmpEvent>,
    /// QEMU's version triple from the greeting.
    pub version: (u64, u64, u64),
}

impl Qmp {
    /// Connect to `path`, read the greeting and negotiate capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let p = path.display().to_string();
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                path: p.clone(),
                command: "connect".into(),
                timeout,
            })?
            .map_err(|source| QmpError::Io {
                path: p.clone(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            path: p,
            reader: BufReader::new(r),
            writer: w,
            timeout,
            next_id: 1,
            events: VecDeque::new(),
            version: (0, 0, 0),
        };
        // The greeting comes first; an event seen before it (measured once:
        // a VNC_DISCONNECTED under load) is kept, not taken for a bad peer.
        let greeting = loop {
            let msg = qmp.read_message("greeting").await?;
            match msg.get("event").and_then(Value::as_str) {
                Some(name) => {
                    let name = name.to_string();
                    qmp.push_event(&name, &msg)
                }
                None => break msg,
            }
        };
        let v = &greeting["QMP"]["version"]["qemu"];
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                path: qmp.path.clone(),
                message: greeting.to_string(),
            });
        }
        qmp.version = (
            v["major"].as_u64().unwrap_or(0),
            v["minor"].as_u64().unwrap_or(0),
            v["micro"].as_u64().unwrap_or(0),
        );
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Run `command` with optional `arguments`; returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let reply = self.read_message(command).await?;
            if let Some(name) = reply.get("event").and_then(Value::as_str) {
                self.push_event(name, &reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to a command whose caller gave up (timeout).
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: err["class"].as_str().unwrap_or("?").into(),
                    desc: err["desc"].as_str().unwrap_or("?").into(),
                });
            }
            return Err(QmpError::Protocol {
                path: self.path.clone(),
                message: reply.to_string(),
            });
        }
    }

    /// Wait up to `timeout` for an event named `name` (earlier events of
    /// other names are kept).
    pub async fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e.name == name) {
            return Ok(self.events.remove(i).expect("index just found"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.read_raw())
                .await
                .map_err(|_| QmpError::Timeout {
                    path: self.path.clone(),
                    command: format!("event {name}"),
                    timeout,
                })??;
            if let Some(ev) = msg.get("event").and_then(Value::as_str) {
                if ev == name {
                    return Ok(QmpEvent {
                        name: ev.into(),
                        data: msg.get("data").cloned().unwrap_or(Value::Null),
                    });
                }
                let ev = ev.to_string();
                self.push_event(&ev, &msg);
            }
        }
    }

    /// Events received so far, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    fn push_event(&mut self, name: &str, msg: &Value) {
        if self.events.len() >= 1024 {
            self.events.pop_front();
        }
        self.events.push_back(QmpEvent {
            name: name.into(),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
        });
    }

    async fn read_message(&mut self, waiting_for: &str) -> Result<Value, QmpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_raw())
            .await
            .map_err(|_| QmpError::Timeout {
                path: self.path.clone(),
                command: waiting_for.into(),
                timeout,
            })?
    }

    async fn read_raw(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            message: line.trim().chars().take(200).collect(),
        })
    }
}
