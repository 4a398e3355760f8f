//! The CLI side of the local API (blocking; the CLI has no runtime).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Request, Response};

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node listens on the socket.
    #[error("cannot reach the node at {path}: {source} (is `deorch node run` running, and are you root?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The connection broke.
    #[error("talking to the node at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The node answered something unreadable.
    #[error("unreadable answer from the node at {path}: {message}")]
    Protocol {
        /// Socket path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// Send one request and wait for its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io_err = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io_err)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// Send one request whose answer is a stream (`Watch`, `Logs`) and hand
/// each response to `each` until the node closes the connection or `each`
/// answers false. `timeout` bounds the wait for each line (`None`: wait as
/// long as the node is silent, as a watch does).
pub fn stream(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), ClientError> {
    let path = socket.display().to_string();
    let io_err = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(timeout).map_err(io_err)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    loop {
        answer.clear();
        if reader.read_line(&mut answer).map_err(io_err)? == 0 {
            return Ok(());
        }
        let response = serde_json::from_str(&answer).map_err(|e| ClientError::Protocol {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if !each(response) {
            return Ok(());
        }
    }
}
