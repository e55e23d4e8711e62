//! Man pages and shell completions generated from the binaries' clap definitions.
//!
//! The flag definitions are the one source of truth for `-h`, the environment
//! variables and the packaged documentation, so the `.deb` ships pages generated from
//! them rather than hand-written copies that drift. Each binary calls
//! [`exit_if_requested`] as the first line of `main`: with `POLYMUR_GENERATE_DOCS=<dir>`
//! set it writes its page and completions there and exits, without parsing flags or
//! starting anything (scripts/package and tests/package.rs run every binary that way).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

/// The environment variable that turns a binary into its own documentation generator.
pub const GENERATE_DOCS_ENV: &str = "POLYMUR_GENERATE_DOCS";

/// Why the documentation could not be written (the path says where).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct DocgenError {
    /// The file or directory that failed.
    pub path: PathBuf,
    /// The underlying I/O error.
    #[source]
    pub source: io::Error,
}

/// Writes, for the command named `<name>`:
/// `<out_dir>/man/<name>.1`, `<out_dir>/completions/bash/<name>`,
/// `<out_dir>/completions/zsh/_<name>` and `<out_dir>/completions/fish/<name>.fish`
/// — the file names Debian's bash-completion, zsh and fish look up. Returns the paths.
pub fn generate(cmd: Command, out_dir: &Path) -> Result<Vec<PathBuf>, DocgenError> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();

    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(|source| DocgenError {
            path: out_dir.join("man"),
            source,
        })?;
    written.push(write(
        &out_dir.join("man").join(format!("{name}.1")),
        &page,
    )?);

    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
        let path = out_dir.join("completions").join(dir).join(file);
        written.push(write(&path, &script)?);
    }
    Ok(written)
}

/// `None` (run normally) unless `POLYMUR_GENERATE_DOCS` names a directory; then the
/// documentation of `C` is written there and the exit code says whether it worked.
pub fn from_env(cmd: impl FnOnce() -> Command) -> Option<ExitCode> {
    let dir = std::env::var_os(GENERATE_DOCS_ENV).filter(|d| !d.is_empty())?;
    Some(match generate(cmd(), Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{GENERATE_DOCS_ENV}: {e}");
            ExitCode::FAILURE
        }
    })
}

/// The one line each binary's `main` starts with:
/// `polymur::docgen::exit_if_requested::<Args>();` — [`from_env`], then exit with its
/// code when the documentation was asked for. Nothing has started yet at that point,
/// so exiting directly skips no cleanup.
pub fn exit_if_requested(cmd: impl FnOnce() -> Command) {
    if let Some(code) = from_env(cmd) {
        std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, DocgenError> {
    let err = |source| DocgenError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    fs::write(path, bytes).map_err(err)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_man_page_and_three_completions_named_after_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("polymur-demo").about("demo daemon").arg(
            clap::Arg::new("destinations")
                .long("destinations")
                .help("Comma-delimited list of host:port[:instance] destinations"),
        );
        let files = generate(cmd, dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        let man = fs::read_to_string(dir.path().join("man/polymur-demo.1")).unwrap();
        assert!(man.starts_with(".ie"), "{man}");
        assert!(man.contains(".TH polymur-demo 1"), "{man}");
        assert!(man.contains("destinations"), "{man}");
        let bash = fs::read_to_string(dir.path().join("completions/bash/polymur-demo")).unwrap();
        assert!(bash.contains("--destinations"), "{bash}");
        let zsh = fs::read_to_string(dir.path().join("completions/zsh/_polymur-demo")).unwrap();
        assert!(zsh.starts_with("#compdef polymur-demo"), "{zsh}");
        let fish =
            fs::read_to_string(dir.path().join("completions/fish/polymur-demo.fish")).unwrap();
        assert!(fish.contains("-l destinations"), "{fish}");
    }

    #[test]
    fn an_unwritable_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = generate(Command::new("x"), &file).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
