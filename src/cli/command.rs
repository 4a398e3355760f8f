//! `deorch do WORDS...`: the web page's search bar on the command line.
//! The node parses and plans the words (`crate::command`); the plan is
//! printed, and applied with `--run`.

use std::process::ExitCode;

use serde_json::Value;

use super::{unexpected, ClientArgs, CALL_TIMEOUT};
use crate::api::client;
use crate::api::{Request, Response};

/// Print `outcome` for a person.
fn print(outcome: &Value, run: bool) -> ExitCode {
    if outcome["code"] == "Parse" {
        eprintln!("error: {}", outcome["error"].as_str().unwrap_or_default());
        if let Some(s) = outcome["suggestions"].as_array().filter(|s| !s.is_empty()) {
            eprintln!("did you mean:");
            for s in s {
                eprintln!("  deorch do {}", s.as_str().unwrap_or_default());
            }
        }
        return ExitCode::from(2);
    }
    let plan = &outcome["plan"];
    println!("{}", plan["summary"].as_str().unwrap_or_default());
    println!("  same as: {}", plan["cli"].as_str().unwrap_or_default());
    let rows = outcome["results"].as_array().cloned().unwrap_or_default();
    if !rows.is_empty() {
        println!(
            "{:<16} {:<28} {:<12} {:<12} DETAIL",
            "KIND", "NAME", "PHASE", "NODE"
        );
        for r in &rows {
            let name = match r["namespace"].as_str() {
                Some(ns) if !ns.is_empty() && ns != crate::model::DEFAULT_NAMESPACE => {
                    format!("{ns}/{}", r["name"].as_str().unwrap_or_default())
                }
                _ => r["name"].as_str().unwrap_or_default().to_string(),
            };
            println!(
                "{:<16} {:<28} {:<12} {:<12} {}",
                r["kind"].as_str().unwrap_or_default(),
                name,
                r["phase"].as_str().unwrap_or("-"),
                r["node"].as_str().unwrap_or("-"),
                r["detail"].as_str().unwrap_or_default()
            );
        }
    }
    if plan["changes"] != true {
        return ExitCode::SUCCESS;
    }
    if !run {
        println!(
            "--- would apply (run again with --run):\n{}",
            plan["manifest"].as_str().unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let applied = &outcome["applied"];
    match applied["result"].as_str() {
        Some("applied") => {
            for a in applied["objects"].as_array().into_iter().flatten() {
                let key = a["key"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a["key"].to_string());
                println!("applied: {key} (generation {})", a["generation"]);
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("error: not applied: {applied}");
            ExitCode::FAILURE
        }
    }
}

/// Run `deorch do`.
pub fn run(
    words: &[String],
    run: bool,
    json: bool,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let q = words.join(" ");
    match client::call(&client.socket, &Request::Command { q, run }, CALL_TIMEOUT)? {
        Response::Command { outcome } if json => {
            println!("{outcome}");
            Ok(if outcome["code"] == "Parse" {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Response::Command { outcome } => Ok(print(&outcome, run)),
        Response::Error { message, .. } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
        other => unexpected(other),
    }
}

/// `text` with everything but unreserved characters percent-encoded (a
/// URL's query value).
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The page's URL for a query, from the node's HTTP URL (its pin
/// fragment dropped: a browser checks the certificate its own way).
pub fn page_url(http_url: &str, q: &str) -> String {
    let base = http_url.split('#').next().unwrap_or(http_url);
    format!("{}/?q={}", base.trim_end_matches('/'), percent(q))
}

/// Run `deorch url`.
pub fn url(words: &[String], client: &ClientArgs) -> anyhow::Result<ExitCode> {
    match client::call(&client.socket, &Request::Info, CALL_TIMEOUT)? {
        Response::Info(info) => match &info.http_url {
            Some(u) => {
                println!("{}", page_url(u, &words.join(" ")));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "error: node {} serves no web page: start it with --http-listen",
                    info.name
                );
                Ok(ExitCode::FAILURE)
            }
        },
        other => unexpected(other),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_url_encodes_the_query_and_drops_the_pin() {
        assert_eq!(
            super::page_url("https://10.0.0.7:8443#sha256=ab", "vm web1"),
            "https://10.0.0.7:8443/?q=vm%20web1"
        );
        assert_eq!(
            super::page_url("http://[::1]:80", "vms on city=é&x"),
            "http://[::1]:80/?q=vms%20on%20city%3D%C3%A9%26x"
        );
    }
}
