//! Crash-safe multi-file writes for the directory store.
//!
//! A transaction first writes every new file's content to a hidden temporary beside its
//! target and fsyncs it, then writes a journal naming each rename and removal with a final
//! `commit` record and fsyncs that, then carries the operations out and removes the journal.
//! [`recover`] runs at open: a committed journal is replayed (renames whose temporary is
//! still there, removals), an uncommitted one is rolled back (its temporaries deleted). So a
//! crash leaves either the whole transaction or none of it, and never a half-written file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FileWrite;

const JOURNAL: &str = ".keel-journal";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Write { tmp: PathBuf, target: PathBuf },
    Remove { target: PathBuf },
    Commit,
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.keel-tmp"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Applies `writes` under `dir` atomically (see the module docs).
pub(super) fn commit(dir: &Path, writes: &[FileWrite]) -> io::Result<()> {
    let mut records = Vec::with_capacity(writes.len() + 1);
    let mut temps = Vec::new();
    // Every directory a file lands in, and their ancestors up to `dir`: each is fsynced so
    // that the temporaries (and later the renames) survive a power loss.
    let mut dirs = std::collections::BTreeSet::new();
    let staged = (|| -> io::Result<()> {
        for w in writes {
            if w.path.is_absolute()
                || w.path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is outside the configuration directory",
                        w.path.display()
                    ),
                ));
            }
            let target = dir.join(&w.path);
            let parent = target.parent().unwrap_or(dir).to_path_buf();
            let mut d = parent.as_path();
            while d.starts_with(dir) {
                dirs.insert(d.to_path_buf());
                match d.parent() {
                    Some(p) if d != dir => d = p,
                    _ => break,
                }
            }
            match &w.content {
                Some(content) => {
                    fs::create_dir_all(&parent)?;
                    let tmp = temp_path(&target);
                    temps.push(tmp.clone());
                    let mut f = File::create(&tmp)?;
                    f.write_all(content)?;
                    f.sync_all()?;
                    records.push(Record::Write {
                        tmp: tmp.strip_prefix(dir).unwrap_or(&tmp).to_path_buf(),
                        target: w.path.clone(),
                    });
                }
                None => records.push(Record::Remove {
                    target: w.path.clone(),
                }),
            }
        }
        for d in dirs.iter().rev() {
            sync_dir(d)?;
        }
        records.push(Record::Commit);
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).map_err(io::Error::other)?);
            text.push('\n');
        }
        let mut f = File::create(dir.join(JOURNAL))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        sync_dir(dir)
    })();
    if let Err(e) = staged {
        // Nothing was committed: take the temporaries (and any partial journal) away.
        for t in &temps {
            let _ = fs::remove_file(t);
        }
        let _ = fs::remove_file(dir.join(JOURNAL));
        return Err(e);
    }
    // Committed: from here the transaction must complete, now or at the next open.
    let applied = replay(dir, &records).and_then(|()| {
        for d in dirs.iter().rev() {
            sync_dir(d)?;
        }
        fs::remove_file(dir.join(JOURNAL))?;
        sync_dir(dir)
    });
    if let Err(e) = applied {
        let _ = recover(dir);
        return Err(e);
    }
    Ok(())
}

fn replay(dir: &Path, records: &[Record]) -> io::Result<()> {
    for r in records {
        match r {
            Record::Write { tmp, target } => {
                let tmp = dir.join(tmp);
                if tmp.exists() {
                    fs::rename(&tmp, dir.join(target))?;
                }
            }
            Record::Remove { target } => match fs::remove_file(dir.join(target)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Record::Commit => {}
        }
    }
    Ok(())
}

/// Finishes or undoes a transaction a crash interrupted.
pub(super) fn recover(dir: &Path) -> io::Result<()> {
    let journal = dir.join(JOURNAL);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // A torn last line means the journal was never committed.
    let records: Vec<Record> = text
        .lines()
        .map_while(|l| serde_json::from_str(l).ok())
        .collect();
    if matches!(records.last(), Some(Record::Commit)) {
        tracing::info!(dir = %dir.display(), "completing a configuration write interrupted by a crash");
        replay(dir, &records)?;
    } else {
        tracing::info!(dir = %dir.display(), "rolling back an uncommitted configuration write");
        for r in &records {
            if let Record::Write { tmp, .. } = r {
                let _ = fs::remove_file(dir.join(tmp));
            }
        }
    }
    fs::remove_file(&journal)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("keel-journal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn commit_writes_and_removes() {
        let dir = tmpdir("commit");
        fs::write(dir.join("old.yaml"), "x").unwrap();
        commit(
            &dir,
            &[
                FileWrite {
                    path: "a/b.yaml".into(),
                    content: Some(b"hello".to_vec()),
                },
                FileWrite {
                    path: "old.yaml".into(),
                    content: None,
                },
            ],
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("a/b.yaml")).unwrap(), "hello");
        assert!(!dir.join("old.yaml").exists());
        assert!(!dir.join(JOURNAL).exists());
        assert!(!dir.join("a/.b.yaml.keel-tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_committed_journal_is_replayed_and_an_uncommitted_one_rolled_back() {
        let dir = tmpdir("recover");
        // Crash after the journal was committed but before the renames.
        fs::write(dir.join(".a.yaml.keel-tmp"), "new a").unwrap();
        fs::write(dir.join("a.yaml"), "old a").unwrap();
        fs::write(dir.join("gone.yaml"), "x").unwrap();
        fs::write(
            dir.join(JOURNAL),
            "{\"op\":\"write\",\"tmp\":\".a.yaml.keel-tmp\",\"target\":\"a.yaml\"}\n{\"op\":\"remove\",\"target\":\"gone.yaml\"}\n{\"op\":\"commit\"}\n",
        )
        .unwrap();
        recover(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.yaml")).unwrap(), "new a");
        assert!(!dir.join("gone.yaml").exists());
        assert!(!dir.join(JOURNAL).exists());

        // Crash while the journal was being written: nothing changes.
        fs::write(dir.join(".b.yaml.keel-tmp"), "new b").unwrap();
        fs::write(dir.join("b.yaml"), "old b").unwrap();
        fs::write(
            dir.join(JOURNAL),
            "{\"op\":\"write\",\"tmp\":\".b.yaml.keel-tmp\",\"target\":\"b.yaml\"}\n{\"op\":\"comm",
        )
        .unwrap();
        recover(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("b.yaml")).unwrap(), "old b");
        assert!(!dir.join(".b.yaml.keel-tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
