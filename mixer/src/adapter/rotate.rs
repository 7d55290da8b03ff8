//! ROTATED_FILE for the stdio adapter: lines append to `outputPath`; when the next line would
//! take the file past `maxMegabytesBeforeRotation` it is renamed to
//! `NAME-YYYY-MM-DDTHH-MM-SS.mmmZ.EXT` beside it and a new file begins. Rotated files beyond
//! `maxRotatedFiles`, or older than `maxDaysBeforeRotation` days, are removed (oldest first).
//! Istio's defaults: 100 MB, 30 days, 1000 files. No line is split across files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use keel_config::mixer::StdioParams;

/// When to rotate and what to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub max_files: usize,
}

impl Rotation {
    /// The limits a stdio handler configures, with Istio's defaults for what it leaves out.
    pub fn of(params: &StdioParams) -> Rotation {
        let positive = |v: Option<i64>, default: u64| {
            v.and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        Rotation {
            max_bytes: positive(params.max_megabytes_before_rotation, 100).saturating_mul(1 << 20),
            max_age: Duration::from_secs(
                positive(params.max_days_before_rotation, 30).saturating_mul(86_400),
            ),
            max_files: usize::try_from(positive(params.max_rotated_files, 1000))
                .unwrap_or(usize::MAX),
        }
    }
}

/// An open rotated log.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl RotatingFile {
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            file,
            size,
            rotation,
        })
    }

    pub fn rotation(&self) -> Rotation {
        self.rotation
    }

    /// Appends `text` and a newline, rotating first when the line would not fit.
    pub fn write_line(&mut self, text: &str, now: SystemTime) -> std::io::Result<()> {
        let n = text.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.rotation.max_bytes {
            self.rotate(now)?;
        }
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += n;
        Ok(())
    }

    fn rotate(&mut self, now: SystemTime) -> std::io::Result<()> {
        self.file.flush()?;
        let (stem, ext) = split_name(&self.path);
        let stamp = keel_attributes::value::format_timestamp(now).replace(':', "-");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut target = dir.join(format!("{stem}-{stamp}{ext}"));
        let mut i = 1;
        while target.exists() {
            target = dir.join(format!("{stem}-{stamp}.{i}{ext}"));
            i += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        self.prune(now);
        Ok(())
    }

    /// The rotated files of this log, oldest first.
    pub fn rotated(&self) -> Vec<PathBuf> {
        let (stem, ext) = split_name(&self.path);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let prefix = format!("{stem}-");
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n.starts_with(&prefix) && n.ends_with(&ext) && p != &self.path
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The stamp sorts in time order.
        out.sort();
        out
    }

    fn prune(&self, now: SystemTime) {
        let rotated = self.rotated();
        let excess = rotated.len().saturating_sub(self.rotation.max_files);
        for (i, p) in rotated.iter().enumerate() {
            let too_old = std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| {
                    now.duration_since(t)
                        .is_ok_and(|age| age > self.rotation.max_age)
                });
            if i < excess || too_old {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// `/var/log/mixer.log` -> (`mixer`, `.log`); a name without an extension has none.
fn split_name(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("log")
        .to_owned();
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    (stem, ext)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rotates_by_size_keeps_every_line_and_prunes_the_oldest() {
        let dir = std::env::temp_dir().join(format!("keel-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mixer.log");
        let rotation = Rotation {
            max_bytes: 100,
            max_age: Duration::from_secs(3600),
            max_files: 3,
        };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        // 30-byte lines: three fit in 100 bytes, the fourth starts a new file.
        for i in 0..15 {
            let line = format!("line {i:02} {}", "x".repeat(22));
            assert_eq!(line.len() + 1, 31);
            f.write_line(&line, t0 + Duration::from_millis(i)).unwrap();
        }
        let rotated = f.rotated();
        assert_eq!(rotated.len(), 3, "{rotated:?}");
        for p in &rotated {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("mixer-2025-") && name.ends_with(".log"),
                "{name}"
            );
            assert_eq!(std::fs::read_to_string(p).unwrap().lines().count(), 3);
        }
        // The current file has the newest lines; the oldest rotated file was pruned.
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.starts_with("line 12 "), "{current}");
        let oldest = std::fs::read_to_string(&rotated[0]).unwrap();
        assert!(
            oldest.starts_with("line 03 "),
            "the first file was pruned: {oldest}"
        );
        // Reopening continues the current file's size.
        drop(f);
        let f = RotatingFile::open(&path, rotation).unwrap();
        assert_eq!(f.size, 93);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_come_from_the_handler_with_istios_defaults() {
        let r = Rotation::of(&StdioParams::default());
        assert_eq!(r.max_bytes, 100 << 20);
        assert_eq!(r.max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(r.max_files, 1000);
        let p = StdioParams {
            max_megabytes_before_rotation: Some(1),
            max_days_before_rotation: Some(2),
            max_rotated_files: Some(5),
            ..Default::default()
        };
        assert_eq!(
            Rotation::of(&p),
            Rotation {
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(2 * 86_400),
                max_files: 5
            }
        );
    }
}
