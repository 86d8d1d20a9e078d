//! `ncps fsck`: the database against storage (the checks live in
//! `ncps_core::maintenance::fsck`). Findings on stdout, progress on stderr; fails while
//! problems remain.
#![allow(clippy::print_stdout, clippy::print_stderr)] // findings and progress are its interface

use anyhow::{Result, bail};
use ncps_core::maintenance::{FsckOptions, FsckOutput, FsckSummary, NAR_FILES_PER_PASS};

use crate::cli::FsckArgs;
use crate::progress::Progress;

/// Prints findings as they come.
struct Terminal {
    /// The bar over the NAR walk, on a terminal.
    progress: Option<Progress>,
}

impl FsckOutput for Terminal {
    fn finding(&mut self, line: &str) {
        match &self.progress {
            Some(progress) => progress.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn progress(&mut self, line: &str) {
        match &self.progress {
            Some(progress) => progress.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn nars_to_check(&mut self, total: u64) {
        // In a log, the walk's own periodic lines say the same.
        self.progress = Progress::on_terminal("fsck", "NARs", Some(total), None);
    }

    fn nar_checked(&mut self, bytes: u64) {
        if let Some(progress) = &mut self.progress {
            progress.item(bytes, None);
        }
    }
}

/// Runs every check, repairing with `--repair`; fails while problems remain.
pub async fn run(args: FsckArgs) -> Result<()> {
    let maintenance = super::open(&args.storage).await?;
    let repair = args.repair && !args.dry_run;
    let options = FsckOptions {
        repair,
        verify_hashes: args.verify_hashes,
        min_age: args.min_age,
        nar_files_per_pass: NAR_FILES_PER_PASS,
    };
    let mut out = Terminal { progress: None };
    let summary = maintenance.fsck(options, &mut out).await;
    if let Some(progress) = out.progress.take() {
        progress.finish();
    }
    let summary = summary?;
    println!("{}", summary_line(&summary, repair));
    let remaining = summary.remaining();
    if remaining > 0 {
        if repair {
            bail!("{remaining} problems could not be repaired");
        }
        bail!("{remaining} problems found; run again with --repair to fix them");
    }
    Ok(())
}

/// `fsck: N problems found, M repaired, K remaining; …`.
fn summary_line(s: &FsckSummary, repair: bool) -> String {
    let mut line = format!(
        "fsck: {} problem{} found",
        s.problems,
        if s.problems == 1 { "" } else { "s" }
    );
    if repair {
        line += &format!(", {} repaired", s.repaired);
    }
    line += &format!(", {} remaining", s.remaining());
    if s.left_alone > 0 {
        line += &format!(
            "; {} recent item{} left alone",
            s.left_alone,
            if s.left_alone == 1 { "" } else { "s" }
        );
    }
    if s.notes > 0 {
        line += &format!("; {} note{}", s.notes, if s.notes == 1 { "" } else { "s" });
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_remains() {
        let s = FsckSummary {
            problems: 3,
            repaired: 2,
            left_alone: 1,
            notes: 0,
        };
        assert_eq!(
            summary_line(&s, true),
            "fsck: 3 problems found, 2 repaired, 1 remaining; 1 recent item left alone"
        );
        assert_eq!(
            summary_line(&FsckSummary::default(), false),
            "fsck: 0 problems found, 0 remaining"
        );
    }
}
