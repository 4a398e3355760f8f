//! `deorch import FILE --spacesuit NAME`: a disk image (vmdk, vhd, vhdx,
//! qcow2, raw, vdi) or an appliance (OVA, OVF) into the node's image
//! directory, with a progress bar on a terminal; prints the Spacesuit
//! manifests, or writes them into a manifest directory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::import::{self, Progress, Request, Target};

/// `deorch import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The disk image, `.ova` or `.ovf` (its disks beside it).
    pub file: PathBuf,
    /// Name of the Spacesuit to make (an appliance's further disks are its
    /// disks disk2, disk3, ..., their images NAME-disk2, NAME-disk3, ...).
    #[arg(long)]
    pub spacesuit: String,
    /// Namespace of the Spacesuit.
    #[arg(short, long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Directory of imported images (on the node that imports them):
    /// images go to IMAGES/NAMESPACE/NAME.qcow2.
    #[arg(long, default_value = import::DEFAULT_IMAGES)]
    pub images: PathBuf,
    /// Format of the imported image: qcow2 (sparse; `dir` storage) or raw.
    #[arg(long = "to", value_enum, default_value_t = Target::Qcow2)]
    pub target: Target,
    /// The disk's format (a qemu-img name: vmdk, vpc, vhdx, qcow2, raw,
    /// vdi) instead of probing it.
    #[arg(long)]
    pub format: Option<String>,
    /// Output of the manifests: YAML documents (default) or JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
    /// Write the manifests into this directory (the node's manifest
    /// directory, e.g. /etc/deorch/manifests) as NAME.yaml instead of
    /// printing them.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Replace images (and a manifest file) already there.
    #[arg(long)]
    pub force: bool,
    /// Leave the SHA-256 out of the Spacesuit (saves hashing the image,
    /// about as long as the conversion; but then only nodes that have the
    /// file, at that path, can make VMs from it).
    #[arg(long)]
    pub no_sha256: bool,
}

/// Output formats of `import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// YAML documents (the VM as a comment).
    Yaml,
    /// A JSON list of the Spacesuits, then the VM.
    Json,
}

/// A progress bar on standard error, drawn only on a terminal.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new() -> Bar {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        if !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        // Drawn from the first step on (a bar of nothing would show full).
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{wide_msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Bar { bar: Some(bar) }
    }
}

impl Progress for Bar {
    fn step(&mut self, what: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_position(0);
            b.set_message(what.to_string());
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }
    fn done(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
        }
    }
}

/// Run `deorch import`.
pub fn run(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let req = Request {
        file: a.file.clone(),
        name: a.spacesuit.clone(),
        namespace: a.namespace.clone(),
        images: a.images.clone(),
        format: a.format.clone(),
        target: a.target,
        replace: a.force,
        sha256: !a.no_sha256,
    };
    let manifest_file = a
        .manifests
        .as_ref()
        .map(|d| d.join(format!("{}.yaml", a.spacesuit)));
    if let Some(f) = &manifest_file {
        anyhow::ensure!(
            a.output == Output::Yaml,
            "--manifests writes YAML: leave out --output"
        );
        anyhow::ensure!(
            a.force || !f.exists(),
            "{} exists already: pass --force to replace it",
            f.display()
        );
    }
    let mut bar = Bar::new();
    let result = import::import(&req, &mut bar);
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    let imported = result?;
    for d in &imported.disks {
        eprintln!(
            "{} -> {} ({} bytes{}): disk {} of spacesuit {}",
            d.from,
            d.path.display(),
            d.image_size,
            d.sha256
                .as_ref()
                .map(|h| format!(", sha256 {h}"))
                .unwrap_or_default(),
            d.disk,
            a.spacesuit
        );
    }
    let text = match a.output {
        Output::Yaml => imported.to_yaml().map_err(anyhow::Error::msg)?,
        Output::Json => {
            let mut all = vec![serde_json::to_value(&imported.spacesuit)?];
            if let Some(vm) = &imported.vm {
                all.push(serde_json::to_value(vm)?);
            }
            serde_json::to_string_pretty(&all)? + "\n"
        }
    };
    // What the node will read must be what `deorch validate` accepts.
    if a.output == Output::Yaml {
        let parsed = crate::manifest::parse_str(std::path::Path::new("<import>"), &text);
        if let Some(d) = parsed.diagnostics.first() {
            anyhow::bail!("the manifest made does not validate: {d}\n{text}");
        }
    }
    match manifest_file {
        Some(f) => {
            crate::state_file::write(&f, text.as_bytes())
                .with_context(|| format!("writing {}", f.display()))?;
            eprintln!("wrote {}", f.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}
