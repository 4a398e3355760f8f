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
