//! Writing output files safely: the one place every command and the ONNX exporter create files.
//!
//! An output is written to a temporary file in the target's folder and renamed over the target
//! only when complete, so readers see either the old file or the whole new one. The temporary
//! is created by `tempfile` with `O_CREAT | O_EXCL` under an unpredictable name: an existing
//! file or symlink of that name is never opened, so another user cannot redirect the write.
//! The rename replaces a symlink at the target rather than writing through it.
//!
//! Targets that are not regular files (a FIFO, a device, `/dev/stdout`) are refused: renaming
//! over them would replace the node with a regular file. A temporary is removed on every error
//! path (dropping an uncommitted [`PendingFile`] deletes it); one left by a killed run carries
//! [`TEMP_MARK`] and its process id in its name, so the next run into the same folder recognizes
//! it (its process is gone) and removes it. A process killed by SIGBUS (an input truncated while
//! mapped) removes its temporaries itself: see [`crate::output_sigbus`].

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The marker of every temporary name: `.NAME.ortho-tmp-PID.RANDOM`.
pub const TEMP_MARK: &str = ".ortho-tmp-";

/// The folder a target lives in (`.` for a bare file name).
pub fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses a target that exists and is not a regular file (a FIFO, a device, a folder, or a
/// symlink to one of them): renaming over it would replace it with a regular file.
pub fn check_target(target: &Path) -> io::Result<()> {
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        // Missing, or a dangling symlink: the rename creates (or replaces) it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file (a FIFO, a device or a terminal)"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing to write over {kind}; use '-o -' for stdout"),
    ))
}

/// Whether `pid` names a running process. Without `/proc` nothing is known, so every process
/// counts as running and no temporary is removed.
fn process_running(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

/// The process id in a temporary's file name, when the name has the temporaries' form.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, after) = rest.rsplit_once(TEMP_MARK)?;
    let (pid, _) = after.split_once('.')?;
    pid.parse().ok()
}

/// Removes the temporaries in `dir` left by runs that were killed (their process is gone).
/// Returns how many were removed. Errors are ignored: cleaning is a courtesy, never a reason
/// for the current run to fail.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        // Only plain files: a symlink of that name is someone else's, never followed or removed.
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && pid != std::process::id() && !process_running(pid) {
            if std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// An output being written: a temporary next to `target`, renamed over it by [`commit`].
/// Dropped without committing, the temporary is removed.
///
/// [`commit`]: PendingFile::commit
pub struct PendingFile {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    /// The temporary's entry in the SIGBUS handler's table (a process killed by a truncated
    /// input removes it); dropped after `tmp`, so it outlives the file.
    _sigbus: crate::output_sigbus::Registration,
}

impl PendingFile {
    /// Starts writing `target`: checks it, clears stale temporaries in its folder and creates
    /// the exclusive temporary.
    pub fn create(target: &Path) -> io::Result<PendingFile> {
        check_target(target)?;
        let dir = parent_dir(target);
        remove_stale_temporaries(&dir);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}{TEMP_MARK}{}.", std::process::id());
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix);
        // tempfile's default mode is 0600; an output gets the mode any new file gets (0666
        // less the umask), as before.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = b.tempfile_in(&dir)?;
        let _sigbus = crate::output_sigbus::register_temp(tmp.path());
        crate::output_sigbus::test_hold();
        Ok(PendingFile {
            tmp,
            target: target.to_path_buf(),
            _sigbus,
        })
    }

    /// The temporary's file, to write the contents.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Where the temporary lives (for error messages).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the temporary over the target (rechecked: it may have become a FIFO since).
    pub fn commit(self) -> io::Result<()> {
        check_target(&self.target)?;
        self.tmp.persist(&self.target).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Writes `bytes` to `target` through a [`PendingFile`].
pub fn write_file(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut p = PendingFile::create(target)?;
    p.file().write_all(bytes)?;
    p.commit()
}

/// Commits several pending files as one output (a model and its external data): if a later
/// rename fails, the files already renamed by this call are removed again, so a failed run
/// leaves none of its outputs behind.
pub fn commit_all(files: Vec<PendingFile>) -> io::Result<()> {
    for f in &files {
        check_target(&f.target)?;
    }
    let mut done: Vec<PathBuf> = Vec::new();
    for f in files {
        let target = f.target.clone();
        if let Err(e) = f.commit() {
            for d in &done {
                let _ = std::fs::remove_file(d);
            }
            return Err(e);
        }
        done.push(target);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(tag)
            .tempdir()
            .expect("temp dir")
    }

    fn listing(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_leaves_only_the_target() {
        let d = dir("out-ok");
        let t = d.path().join("a.bin");
        write_file(&t, b"hello").expect("write");
        assert_eq!(std::fs::read(&t).expect("read"), b"hello");
        assert_eq!(listing(d.path()), vec!["a.bin".to_string()]);
    }

    #[test]
    fn dropped_pending_file_leaves_nothing() {
        let d = dir("out-drop");
        let t = d.path().join("a.bin");
        {
            let mut p = PendingFile::create(&t).expect("create");
            p.file().write_all(b"partial").expect("write");
            assert!(p.temp_path().exists());
        }
        assert!(listing(d.path()).is_empty());
    }

    #[test]
    fn symlink_target_is_replaced_not_followed() {
        let d = dir("out-link");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").expect("write");
        let t = d.path().join("out");
        std::os::unix::fs::symlink(&victim, &t).expect("symlink");
        write_file(&t, b"new").expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
        assert!(!std::fs::symlink_metadata(&t)
            .expect("meta")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn non_regular_targets_are_refused() {
        let d = dir("out-dir");
        let e = write_file(d.path(), b"x").expect_err("a folder");
        assert!(e.to_string().contains("folder"), "{e}");
        let e = write_file(Path::new("/dev/null"), b"x").expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = dir("out-stale");
        // PIDs above the kernel's maximum (4,194,304) never run.
        let stale = d.path().join(format!(".m.onnx{TEMP_MARK}4294967.abc123"));
        std::fs::write(&stale, b"partial").expect("write");
        let mine = d
            .path()
            .join(format!(".m.onnx{TEMP_MARK}{}.xyz", std::process::id()));
        std::fs::write(&mine, b"in use").expect("write");
        let other = d.path().join(".m.onnx.not-ours");
        std::fs::write(&other, b"x").expect("write");
        write_file(&d.path().join("m.onnx"), b"model").expect("write");
        assert!(!stale.exists(), "the killed run's temporary is removed");
        assert!(mine.exists(), "a live process's temporary is kept");
        assert!(other.exists(), "other files are kept");
    }

    #[test]
    fn temp_names_parse() {
        assert_eq!(temp_owner(".a.onnx.ortho-tmp-123.XyZ"), Some(123));
        assert_eq!(temp_owner("a.onnx.ortho-tmp-123.XyZ"), None);
        assert_eq!(temp_owner(".a.onnx.tmp-123"), None);
    }
}
