//! How the CLI prints objects: tables, YAML, JSON, `describe`.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::OutputFormat;
use crate::store::{Event, Record};

/// Print records in the chosen format. JSON: the object when `one` was
/// asked for by name, else a `List` (whatever its length, so a script
/// reads `items` alike for none, one or many).
pub fn records(
    out: &mut dyn Write,
    records: &[Record],
    format: OutputFormat,
    show_kind: bool,
    one: bool,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => {
            let items: Vec<Value> = records.iter().map(full_object).collect();
            let doc = if one && items.len() == 1 {
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

/// Print one document (not a record: a ticket, a list of volumes) as
/// pretty JSON or YAML.
pub fn value(out: &mut dyn Write, v: &Value, format: OutputFormat) -> io::Result<()> {
    match format {
        OutputFormat::Yaml => {
            let text = serde_saphyr::to_string(v).map_err(|e| io::Error::other(e.to_string()))?;
            write!(out, "{text}")
        }
        _ => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_default()
        ),
    }
}

/// Where Debian's `novnc` package puts its pages.
const NOVNC_DIR: &str = "/usr/share/novnc";

/// Open a console ticket's noVNC page in a browser (`xdg-open`, else
/// `$BROWSER`); the address is printed too, for a machine without one.
pub fn open_console(ticket: &Value, http: Option<&str>) -> anyhow::Result<std::process::ExitCode> {
    let Some(url) = ticket["url"].as_str() else {
        anyhow::bail!(
            "{} has no noVNC websocket: connect a VNC client to {}:{}",
            ticket["vm"].as_str().unwrap_or("the VM"),
            ticket["host"].as_str().unwrap_or("?"),
            ticket["vncPort"]
        );
    };
    // A path (`/console.html#...`) is served by the node's HTTP API, whose
    // address the node wrote with its certificate's pin after a `#`.
    let url = match (url.starts_with('/'), http) {
        (true, Some(base)) => format!("{}{url}", base.split('#').next().unwrap_or(base)),
        (true, None) => anyhow::bail!("the console page {url} is served by the node's HTTP API, which does not listen (--http-listen)"),
        // QEMU's websocket without TLS: a noVNC page of this machine's
        // (Debian's `novnc` package) opens it.
        (false, _) if url.starts_with("vnc.html") => {
            let page = std::path::Path::new(NOVNC_DIR).join("vnc.html");
            if !page.exists() {
                anyhow::bail!("{url} is a noVNC page: install noVNC (Debian: novnc, {NOVNC_DIR}) or open it in yours");
            }
            format!("file://{NOVNC_DIR}/{url}")
        }
        (false, _) => url.to_string(),
    };
    let url = url.as_str();
    println!("{url}");
    let opener = std::env::var("BROWSER").unwrap_or_else(|_| "xdg-open".into());
    match std::process::Command::new(&opener).arg(url).status() {
        Ok(s) if s.success() => Ok(std::process::ExitCode::SUCCESS),
        Ok(s) => anyhow::bail!("{opener} {url}: {s}"),
        Err(e) => anyhow::bail!("cannot open a browser ({opener}: {e}): open the address above"),
    }
}

/// The object with its status, as stored.
pub fn full_object(r: &Record) -> Value {
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
        rows.push(cells(r, show_kind));
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

/// One record's row: kind (when shown), namespace, name, generation,
/// observed generation, status, source, age.
fn cells(r: &Record, show_kind: bool) -> Vec<String> {
    let status = r.status.as_ref();
    let observed = status
        .and_then(|s| s.get("observedGeneration"))
        .and_then(Value::as_i64)
        .map(|g| g.to_string())
        .unwrap_or_else(|| "-".into());
    vec![
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
    ]
}

/// Widths of the watch table's columns (it cannot measure rows to come).
const WATCH_WIDTHS: [usize; 9] = [8, 18, 12, 24, 5, 8, 16, 24, 0];

/// The header of `deorch get -w`'s table.
pub fn watch_header(out: &mut dyn Write, show_kind: bool) -> io::Result<()> {
    let head = [
        "EVENT",
        "KIND",
        "NAMESPACE",
        "NAME",
        "GEN",
        "OBSERVED",
        "STATUS",
        "SOURCE",
        "AGE",
    ]
    .map(String::from);
    watch_cells(out, &head, show_kind)
}

/// One change of `deorch get -w`: a table row, or one JSON document per
/// line, or one YAML document, each `{type, object}`.
pub fn watch_event(
    out: &mut dyn Write,
    change: &str,
    r: &Record,
    format: OutputFormat,
    show_kind: bool,
) -> io::Result<()> {
    let doc = || serde_json::json!({"type": change, "object": full_object(r)});
    match format {
        OutputFormat::Json => writeln!(out, "{}", doc())?,
        OutputFormat::Yaml => {
            let text =
                serde_saphyr::to_string(&doc()).map_err(|e| io::Error::other(e.to_string()))?;
            write!(out, "---\n{text}")?;
        }
        OutputFormat::Table => {
            let mut row = vec![change.to_string()];
            row.extend(cells(r, show_kind));
            watch_cells(out, &row, show_kind)?;
        }
    }
    out.flush()
}

fn watch_cells(out: &mut dyn Write, row: &[String], show_kind: bool) -> io::Result<()> {
    let cells: Vec<String> = row
        .iter()
        .zip(WATCH_WIDTHS)
        .enumerate()
        .filter(|(c, _)| show_kind || *c != 1)
        .map(|(_, (cell, w))| format!("{cell:<w$}"))
        .collect();
    writeln!(out, "{}", cells.join("  ").trim_end())
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

/// `deorch describe -o json|yaml`: the record's facts, the whole object
/// (status included) and its events.
pub fn described(r: &Record, events: &[Event]) -> Value {
    serde_json::json!({
        "kind": r.key.kind.to_string(),
        "namespace": r.key.namespace,
        "name": r.key.name,
        "generation": r.generation,
        "source": r.source.0,
        "hash": r.hash,
        "updatedMs": r.updated_ms,
        "object": full_object(r),
        "events": events,
    })
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
pub fn event_lines(out: &mut dyn Write, events: &[Event], indent: &str) -> io::Result<()> {
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
