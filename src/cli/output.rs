//! How the CLI prints objects: tables, YAML, JSON, `describe`.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::OutputFormat;
use crate::store::{Event, Record};

/// Print records in the chosen format.
pub fn records(
    out: &mut dyn Write,
    records: &[Record],
    format: OutputFormat,
    show_kind: bool,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => {
            let items: Vec<Value> = records.iter().map(full_object).collect();
            let doc = if items.len() == 1 {
                items.into_iter().next().unwrap_or(Value::Null)
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            )
        }
        OutputFormat::Yaml => {
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                let text = serde_saphyr::to_string(&full_object(r))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                write!(out, "{text}")?;
            }
            Ok(())
        }
        OutputFormat::Table => table(out, records, show_kind),
    }
}

/// The object with its status, as stored.
fn full_object(r: &Record) -> Value {
    let mut obj = r.object.clone();
    if let (Some(status), Some(map)) = (&r.status, obj.as_object_mut()) {
        map.insert("status".into(), status.clone());
    }
    obj
}

fn table(out: &mut dyn Write, records: &[Record], show_kind: bool) -> io::Result<()> {
    if records.is_empty() {
        return writeln!(out, "No objects found.");
    }
    let mut rows = vec![vec![
        if show_kind { "KIND" } else { "" }.to_string(),
        "NAMESPACE".into(),
        "NAME".into(),
        "GEN".into(),
        "OBSERVED".into(),
        "STATUS".into(),
        "SOURCE".into(),
        "AGE".into(),
    ]];
    for r in records {
        let status = r.status.as_ref();
        let observed = status
            .and_then(|s| s.get("observedGeneration"))
            .and_then(Value::as_i64)
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            if show_kind {
                r.key.kind.as_str().to_string()
            } else {
                String::new()
            },
            if r.key.namespace.is_empty() {
                "-".into()
            } else {
                r.key.namespace.clone()
            },
            r.key.name.clone(),
            r.generation.to_string(),
            observed,
            summary(status),
            r.source.0.clone(),
            age(r.updated_ms),
        ]);
    }
    let skip_first = !show_kind;
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .filter(|(c, _)| !(skip_first && *c == 0))
            .map(|(c, cell)| format!("{:<w$}", cell, w = widths[c]))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// Phase, else the Ready condition, else "-".
fn summary(status: Option<&Value>) -> String {
    let Some(s) = status else { return "-".into() };
    if let Some(phase) = s.get("phase").and_then(Value::as_str) {
        return phase.to_string();
    }
    if let Some(conds) = s.get("conditions").and_then(Value::as_array) {
        if let Some(ready) = conds
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        {
            let st = ready.get("status").and_then(Value::as_str).unwrap_or("?");
            let reason = ready.get("reason").and_then(Value::as_str).unwrap_or("");
            return if st == "True" {
                "Ready".into()
            } else {
                format!("NotReady({reason})")
            };
        }
    }
    "-".into()
}

fn age(updated_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    duration_text(now.saturating_sub(updated_ms) / 1000)
}

/// `s` seconds, short: `42s`, `5m`, `3h`, `2d`.
pub fn duration_text(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Print recent warnings under a table.
pub fn warnings(out: &mut dyn Write, events: &[Event]) -> io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nWarnings:")?;
    for e in events {
        let first = e.message.lines().next().unwrap_or_default();
        writeln!(out, "  {} {}: {}", age(e.time_ms), e.reason, first)?;
        for line in e.message.lines().skip(1) {
            writeln!(out, "      {line}")?;
        }
    }
    Ok(())
}

/// `deorch describe`.
pub fn describe(out: &mut dyn Write, r: &Record, events: &[Event]) -> io::Result<()> {
    writeln!(out, "Kind:        {}", r.key.kind)?;
    if !r.key.namespace.is_empty() {
        writeln!(out, "Namespace:   {}", r.key.namespace)?;
    }
    writeln!(out, "Name:        {}", r.key.name)?;
    writeln!(out, "Generation:  {}", r.generation)?;
    writeln!(out, "Source:      {}", r.source.0)?;
    writeln!(out, "Hash:        {}", r.hash)?;
    writeln!(out, "Updated:     {} ago", age(r.updated_ms))?;
    let text =
        serde_saphyr::to_string(&full_object(r)).map_err(|e| io::Error::other(e.to_string()))?;
    writeln!(out, "Object:")?;
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "Events:")?;
    event_lines(out, events, "  ")
}

/// `deorch events`: oldest first, each with its object and source.
pub fn events(out: &mut dyn Write, events: &[Event], format: OutputFormat) -> io::Result<()> {
    match format {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(events).unwrap_or_default()
        ),
        OutputFormat::Yaml => {
            let text =
                serde_saphyr::to_string(&events).map_err(|e| io::Error::other(e.to_string()))?;
            write!(out, "{text}")
        }
        OutputFormat::Table => event_lines(out, events, ""),
    }
}

/// One line per event (level, reason, age, object, source), its message
/// indented below.
fn event_lines(out: &mut dyn Write, events: &[Event], indent: &str) -> io::Result<()> {
    if events.is_empty() {
        writeln!(out, "{indent}<none>")?;
    }
    for e in events {
        let obj = e.object.as_ref().map(|k| k.to_string()).unwrap_or_default();
        let from = e
            .source
            .as_ref()
            .map(|s| format!("  (from {})", s.0))
            .unwrap_or_default();
        writeln!(
            out,
            "{indent}{:<8} {:<18} {:>5} ago  {obj}{from}",
            e.level,
            e.reason,
            age(e.time_ms),
        )?;
        for line in e.message.lines() {
            writeln!(out, "{indent}    {line}")?;
        }
    }
    Ok(())
}
