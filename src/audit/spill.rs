//! The replay directory: batches Redis could not take, one ndjson file each (each
//! line is an event's exact `data`), bounded in files and bytes.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use super::stats::Counters;
use super::wire::Entry;

/// Replay files end in this, as Caracal's (`pending-*.ndjson`).
const EXT: &str = "ndjson";
/// A file being written; renamed to `.ndjson` once complete, so a reader never
/// sees half of one.
const PART: &str = "part";
/// The longest line read back; an event is a few hundred bytes.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// The replay directory and its bounds.
#[derive(Debug)]
pub(crate) struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    max_files: u64,
    seq: u64,
}

/// What a write did: how many entries were written; the rest were lost.
pub(crate) struct Written(pub(crate) usize);

impl Spill {
    /// Create the directory (mode 0700 on Unix) if needed.
    pub(crate) fn open(dir: PathBuf, max_bytes: u64, max_files: u64) -> io::Result<Self> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        if !fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        let spill = Self {
            dir,
            max_bytes,
            max_files,
            seq: 0,
        };
        // A file still in progress belongs to a process that died while writing it
        // (one process per directory): never renamed, so never counted as
        // persisted. Remove it, or it would hold a place under the caps for good.
        let mut removed = 0usize;
        for (path, _, complete) in spill.scan()? {
            if !complete && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::warn!(
                files = removed,
                "audit replay directory held unfinished files from an earlier process; removed"
            );
        }
        Ok(spill)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replay files and in-progress files, with their sizes; symlinks and other
    /// non-files are ignored.
    fn scan(&self) -> io::Result<Vec<(PathBuf, u64, bool)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let complete = match ext {
                Some(EXT) => true,
                Some(PART) => false,
                _ => continue,
            };
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                out.push((path, meta.len(), complete));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Complete replay files, oldest first (names start with the time).
    pub(crate) fn pending(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, _, complete)| *complete)
            .map(|(p, len, _)| (p, len))
            .collect())
    }

    /// Refresh the gauges of the directory's content.
    pub(crate) fn measure(&self, stats: &Counters) -> (u64, u64) {
        let (files, bytes) = self.scan().map_or((0, 0), |all| {
            (all.len() as u64, all.iter().map(|(_, len, _)| len).sum())
        });
        stats.spill_files.store(files, Relaxed);
        stats.spill_bytes.store(bytes, Relaxed);
        (files, bytes)
    }

    /// Write as many of `entries` as the bounds allow into a new file (mode 0600),
    /// synced before it is renamed into place.
    pub(crate) fn write(&mut self, entries: &[Entry], stats: &Counters) -> io::Result<Written> {
        let (files, bytes) = self.measure(stats);
        if files >= self.max_files {
            return Ok(Written(0));
        }
        let room = self.max_bytes.saturating_sub(bytes);
        let mut body = Vec::new();
        let mut n = 0;
        for e in entries {
            if (body.len() + e.data.len() + 1) as u64 > room {
                break;
            }
            body.extend_from_slice(e.data.as_bytes());
            body.push(b'\n');
            n += 1;
        }
        if n == 0 {
            return Ok(Written(0));
        }
        self.seq += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let stem = format!("audit-{nanos:020}-{}-{:06}", std::process::id(), self.seq);
        let part = self.dir.join(format!("{stem}.{PART}"));
        let done = self.dir.join(format!("{stem}.{EXT}"));
        let result = (|| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&part)?;
            file.write_all(&body)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&part, &done)?;
            sync_dir(&self.dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        self.measure(stats);
        Ok(Written(n))
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Reads a replay file line by line, each bounded by [`MAX_LINE`].
pub(crate) struct Lines {
    reader: BufReader<fs::File>,
    /// Lines that were too long or not an event.
    pub(crate) bad: usize,
}

impl Lines {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(Self {
            reader: BufReader::new(fs::File::open(path)?),
            bad: 0,
        })
    }

    /// Up to `n` entries; an empty vector at the end of the file.
    pub(crate) fn next_chunk(&mut self, n: usize) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut line = Vec::new();
        while out.len() < n {
            line.clear();
            let read = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
                // Skip the rest of an over-long line.
                self.bad += 1;
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    let r = (&mut self.reader)
                        .take(MAX_LINE as u64)
                        .read_until(b'\n', &mut rest)?;
                    if r == 0 || rest.last() == Some(&b'\n') {
                        break;
                    }
                }
                continue;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            match String::from_utf8(std::mem::take(&mut line))
                .ok()
                .and_then(Entry::from_data)
            {
                Some(e) => out.push(e),
                None => self.bad += 1,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("caracal-spill-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn entry(i: usize) -> Entry {
        Entry {
            id: format!("id-{i}"),
            data: format!(r#"{{"id":"id-{i}","pad":"{}"}}"#, "x".repeat(50)),
        }
    }

    #[test]
    fn files_are_private_complete_and_read_back() {
        let dir = temp_dir("roundtrip");
        let stats = Counters::default();
        let mut spill = Spill::open(dir.clone(), 1 << 20, 100).unwrap();
        let entries: Vec<_> = (0..5).map(entry).collect();
        assert_eq!(spill.write(&entries, &stats).unwrap().0, 5);
        let pending = spill.pending().unwrap();
        assert_eq!(pending.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&pending[0].0).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let mut lines = Lines::open(&pending[0].0).unwrap();
        assert_eq!(lines.next_chunk(3).unwrap(), entries[..3]);
        assert_eq!(lines.next_chunk(3).unwrap(), entries[3..]);
        assert!(lines.next_chunk(3).unwrap().is_empty());
        assert_eq!(stats.spill_files.load(Relaxed), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_caps_bound_files_and_bytes() {
        let dir = temp_dir("caps");
        let stats = Counters::default();
        let line = entry(0).data.len() as u64 + 1;
        let mut spill = Spill::open(dir.clone(), line * 3, 2).unwrap();
        let entries: Vec<_> = (0..5).map(entry).collect();
        // Three lines fit the byte cap; the other two are the caller's loss.
        assert_eq!(spill.write(&entries, &stats).unwrap().0, 3);
        assert_eq!(spill.write(&entries, &stats).unwrap().0, 0);
        let mut roomy = Spill::open(dir.clone(), 1 << 20, 2).unwrap();
        assert_eq!(roomy.write(&entries[..1], &stats).unwrap().0, 1);
        // Two files: the file cap.
        assert_eq!(roomy.write(&entries[..1], &stats).unwrap().0, 0);
        assert_eq!(roomy.pending().unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_lines_are_skipped_and_counted() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit-0.ndjson");
        let long = "y".repeat(MAX_LINE * 2 + 10);
        let body = format!(
            "{}\nnot json\n{long}\n\n{}\n{{\"id\":\"tail\"}}",
            entry(1).data,
            entry(2).data
        );
        fs::write(&path, body).unwrap();
        let mut lines = Lines::open(&path).unwrap();
        let got = lines.next_chunk(10).unwrap();
        let ids: Vec<_> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["id-1", "id-2", "tail"]);
        assert_eq!(lines.bad, 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unfinished_files_of_an_earlier_process_are_removed_at_open() {
        let dir = temp_dir("partial");
        fs::create_dir_all(&dir).unwrap();
        let part = dir.join(format!("audit-1-1-000001.{PART}"));
        fs::write(&part, b"{\"id\":\"half").unwrap();
        let done = dir.join(format!("audit-1-1-000002.{EXT}"));
        fs::write(&done, b"{\"id\":\"whole\"}\n").unwrap();
        let spill = Spill::open(dir.clone(), 1 << 20, 100).unwrap();
        assert!(!part.exists(), "the unfinished file is gone");
        assert_eq!(spill.pending().unwrap().len(), 1, "the complete one stays");
        let _ = fs::remove_dir_all(&dir);
    }
}
