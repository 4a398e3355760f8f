//! `deorch man --out DIR`: the manual pages, made from the command line's
//! own definition (`clap_mangen`), so they never drift from `--help`.
//! One page per visible command (`deorch.1`, `deorch-node.1`,
//! `deorch-node-run.1`, ...); hidden commands (this one, the fence) get
//! none. scripts/deb.sh runs it to put the pages in the package.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

/// Write one page per visible command into `dir` (created if missing);
/// returns the files written, the top-level page first.
pub fn write(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Building sets every subcommand's display name (`deorch-node-run`),
    // which names its page.
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    page(&cmd, dir, &mut out)?;
    Ok(out)
}

fn page(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("deorch manual")
        .source(format!("deorch {}", env!("CARGO_PKG_VERSION")));
    let path = man
        .generate_to(dir)
        .with_context(|| format!("writing {} in {}", man.get_filename(), dir.display()))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, dir, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_command_and_none_for_hidden_ones() {
        let dir = std::env::temp_dir().join(format!("deorch-man-{}", std::process::id()));
        let files = write(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "deorch.1");
        for want in [
            "deorch-node-run.1",
            "deorch-validate.1",
            "deorch-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        for hidden in ["deorch-man.1", "deorch-node-fence.1", "deorch-schemas.1"] {
            assert!(!names.iter().any(|n| n == hidden), "{hidden}: {names:?}");
        }
        // The node's page documents its flags and their environment
        // variables.
        let run = std::fs::read_to_string(dir.join("deorch-node-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH"), "{run}");
        assert!(
            run.contains("config") && run.contains("DEORCH_CONFIG"),
            "{run}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
